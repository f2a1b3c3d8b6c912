// Fixture: the master reaching into the worker side.
#include "worker/local_worker.h"

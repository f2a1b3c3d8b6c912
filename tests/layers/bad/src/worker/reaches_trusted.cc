// Fixture: the worker side reaching into the master.
#include "trusted/tensor.h"

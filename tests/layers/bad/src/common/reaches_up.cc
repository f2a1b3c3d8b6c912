// Fixture: shared code reaching up.
#include "wire/matrix.h"

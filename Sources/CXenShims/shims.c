#include "CXenShims.h"

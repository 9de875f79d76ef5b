// Linux declarations Swift's Glibc module does not export. Kept to headers
// and one-line forwards; every symbol defined here is prefixed CXenShims_.
#ifndef CXEN_SHIMS_H
#define CXEN_SHIMS_H
#include <sys/eventfd.h>
#endif

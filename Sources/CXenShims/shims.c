#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include "CXenShims.h"

int CXenShims_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }

int CXenShims_pin_current_thread(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

int CXenShims_available_cpus(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
    return CPU_COUNT(&set);
}

static _Thread_local int counting_this_thread;
static long counted_allocations;

void CXenShims_count_allocations_on_this_thread(int enabled) { counting_this_thread = enabled; }

void CXenShims_allocation_hook(long size) {
    (void)size;
    if (counting_this_thread) __atomic_fetch_add(&counted_allocations, 1, __ATOMIC_RELAXED);
}

long CXenShims_counted_allocations(void) { return __atomic_load_n(&counted_allocations, __ATOMIC_RELAXED); }
void CXenShims_reset_counted_allocations(void) { __atomic_store_n(&counted_allocations, 0, __ATOMIC_RELAXED); }

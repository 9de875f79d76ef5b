#include <errno.h>
#include <malloc.h>
#include <unistd.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <linux/fs.h>
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
// Relaxed everywhere: a statistic read after the measured threads were
// joined (the join orders their increments), guarding no other data.
static long counted_allocations;

void CXenShims_count_allocations_on_this_thread(int enabled) { counting_this_thread = enabled; }

void CXenShims_allocation_hook(long size) {
    (void)size;
    if (counting_this_thread) __atomic_fetch_add(&counted_allocations, 1, __ATOMIC_RELAXED);
}

long CXenShims_counted_allocations(void) { return __atomic_load_n(&counted_allocations, __ATOMIC_RELAXED); }
void CXenShims_reset_counted_allocations(void) { __atomic_store_n(&counted_allocations, 0, __ATOMIC_RELAXED); }

long CXenShims_send_with_fds(int socket, const void *buffer, unsigned long len, const int *fds, int count) {
    if (count < 0 || count > 8) { errno = EINVAL; return -1; }
    struct iovec iov = { .iov_base = (void *)buffer, .iov_len = len };
    // SAFETY: `buffer` (len bytes) and `fds` (count <= 8) are the caller's
    // for the call; the control buffer is a local sized and aligned for 8
    // descriptors, and CMSG_* stay inside it.
    union { char space[CMSG_SPACE(sizeof(int) * 8)]; struct cmsghdr align; } control;
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (count > 0) {
        memset(&control, 0, sizeof control);
        msg.msg_control = control.space;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * count);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * count);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * count);
    }
    long n;
    do { n = sendmsg(socket, &msg, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
    return n;
}

long CXenShims_receive_with_fds(int socket, void *buffer, unsigned long len, int *fds, int max, int *count) {
    struct iovec iov = { .iov_base = buffer, .iov_len = len };
    // SAFETY: `buffer` (len bytes) and `fds` (max entries) are the caller's
    // for the call; the kernel fills at most the local control buffer, and
    // CMSG_NXTHDR walks only what it filled.
    union { char space[CMSG_SPACE(sizeof(int) * 8)]; struct cmsghdr align; } control;
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space, .msg_controllen = sizeof control.space };
    *count = 0;
    long n;
    do { n = recvmsg(socket, &msg, MSG_CMSG_CLOEXEC); } while (n < 0 && errno == EINTR);
    if (n < 0) return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int received = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *passed = (int *)CMSG_DATA(c);
        for (int i = 0; i < received; i++) {
            if (*count < max) fds[(*count)++] = passed[i];
            else close(passed[i]);  /* more than the caller takes: do not leak */
        }
    }
    return n;
}

int CXenShims_stream_socketpair(int fds[2]) { return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds); }

int CXenShims_punch_hole(int fd, long long offset, long long length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
}

int CXenShims_block_device_geometry(int fd, unsigned long long *bytes, int *logical, int *physical) {
    unsigned int pbs = 0;
    if (ioctl(fd, BLKGETSIZE64, bytes) != 0) return -1;
    if (ioctl(fd, BLKSSZGET, logical) != 0) return -1;
    if (ioctl(fd, BLKPBSZGET, &pbs) != 0) pbs = (unsigned int)*logical;
    *physical = (int)pbs;
    return 0;
}

int CXenShims_block_discard(int fd, unsigned long long offset, unsigned long long length, int secure) {
    unsigned long long range[2] = { offset, length };
    return ioctl(fd, secure ? BLKSECDISCARD : BLKDISCARD, range);
}

int CXenShims_O_DIRECT(void) { return O_DIRECT; }

#include <sys/syscall.h>
int CXenShims_pidfd_open(int pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

int CXenShims_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

size_t CXenShims_heap_in_use(void) { return mallinfo2().uordblks; }

int CXenShims_ioctl(int fd, unsigned long request, void *argument) { return ioctl(fd, request, argument); }

// System calls made by this thread through the funnel (benchmarks read the
// ring workers' counts: the figure that does not swing between runs).
static _Thread_local unsigned long long syscalls_on_this_thread;
void CXenShims_count_syscall(void) { syscalls_on_this_thread++; }
unsigned long long CXenShims_syscalls_on_this_thread(void) { return syscalls_on_this_thread; }

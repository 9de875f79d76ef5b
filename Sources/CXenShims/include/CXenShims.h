// Linux declarations Swift's Glibc module does not export. Kept to headers
// and one-line forwards; every symbol defined here is prefixed CXenShims_.
#ifndef CXEN_SHIMS_H
#define CXEN_SHIMS_H
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/epoll.h>

/// memfd_create(2): anonymous shared memory with an fd (guest memory, grant
/// tables) that can be mapped several times and passed to other processes.
int CXenShims_memfd_create(const char *name, unsigned int flags);
/// MFD_CLOEXEC (its header needs _GNU_SOURCE, which Swift's importer lacks).
static const unsigned int CXenShims_MFD_CLOEXEC = 0x0001U;

/// Pins the calling thread to one CPU (CPU_SET is a macro Swift cannot call).
/// Returns 0, or an errno value.
int CXenShims_pin_current_thread(int cpu);
/// CPUs this process may run on.
int CXenShims_available_cpus(void);

/// Allocation counting limited to threads that opt in: the malloc
/// interposer calls the hook on the allocating thread, and a C thread-local
/// (Swift has none) says whether that thread is being measured.
void CXenShims_count_allocations_on_this_thread(int enabled);
void CXenShims_allocation_hook(long size);
long CXenShims_counted_allocations(void);
void CXenShims_reset_counted_allocations(void);
/// sendmsg(2) of `len` bytes with up to 8 file descriptors as SCM_RIGHTS.
/// Returns bytes sent or -1 (errno set).
long CXenShims_send_with_fds(int socket, const void *buffer, unsigned long len, const int *fds, int count);
/// recvmsg(2) into `buffer`, storing up to `max` passed descriptors in `fds`
/// and their number in `*count` (close-on-exec). Returns bytes read, 0 at
/// end of stream, or -1 (errno set).
long CXenShims_receive_with_fds(int socket, void *buffer, unsigned long len, int *fds, int max, int *count);
/// fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE): discard on a file.
int CXenShims_punch_hole(int fd, long long offset, long long length);
/// Block device geometry (BLKGETSIZE64, BLKSSZGET, BLKPBSZGET); 0 or -1.
int CXenShims_block_device_geometry(int fd, unsigned long long *bytes, int *logical, int *physical);
/// BLKDISCARD / BLKSECDISCARD on a block device range; 0 or -1.
int CXenShims_block_discard(int fd, unsigned long long offset, unsigned long long length, int secure);
/// socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC).
int CXenShims_stream_socketpair(int fds[2]);
/// pidfd_open(2): a descriptor that becomes readable when `pid` exits (-1, errno).
int CXenShims_pidfd_open(int pid);
/// pipe2(fds, O_CLOEXEC), which the C library only declares under _GNU_SOURCE.
int CXenShims_pipe_cloexec(int fds[2]);
/// O_DIRECT, which the C library only defines under _GNU_SOURCE.
int CXenShims_O_DIRECT(void);
/// Bytes the C heap has handed out and not had back (mallinfo2's uordblks):
/// tests bound a component's memory with it.
size_t CXenShims_heap_in_use(void);
/// ioctl(2) is variadic, which Swift cannot call. Only XenSystem's funnel
/// calls it (tools/check-layering.sh enforces that).
int CXenShims_ioctl(int fd, unsigned long request, void *argument);

/// One more system call on this thread; how many so far (thread-local).
void CXenShims_count_syscall(void);
unsigned long long CXenShims_syscalls_on_this_thread(void);
#endif

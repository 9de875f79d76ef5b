#ifndef CXENAIO_H
#define CXENAIO_H
// Thin, allocation-free wrappers over libaio and liburing for the block
// backend's I/O engines. Both libraries are mostly static inline functions
// and macros, which Swift cannot call reliably; these give each engine the
// same five calls. Control blocks are allocated once, at create.
#include <stddef.h>
#include <stdint.h>

#include <sys/uio.h>

enum { CXENAIO_READ = 0, CXENAIO_WRITE = 1, CXENAIO_FDATASYNC = 2, CXENAIO_READV = 3, CXENAIO_WRITEV = 4 };

typedef struct CXenAIO_aio CXenAIO_aio;
/// An aio context for `depth` operations in flight, signalling `eventfd`
/// on every completion. NULL with errno set on failure.
CXenAIO_aio *CXenAIO_aio_create(unsigned depth, int eventfd);
void CXenAIO_aio_destroy(CXenAIO_aio *ctx);
/// Queues one operation (not yet submitted): 0, or -EAGAIN if `depth`
/// operations are already queued or in flight. For READV/WRITEV, `buffer`
/// is a `struct iovec` array and `length` its count.
/// SAFETY: the caller owns `buffer` (and for READV/WRITEV the iovec array
/// and every buffer it names) and keeps it valid until the operation's tag
/// comes back from reap, or until destroy has returned.
int CXenAIO_aio_prepare(CXenAIO_aio *ctx, int kind, int fd, void *buffer, size_t length, int64_t offset, uint64_t tag);
/// Submits everything queued: the number submitted, or -errno. Operations
/// the kernel refused are completed with their error and returned by reap.
int CXenAIO_aio_submit(CXenAIO_aio *ctx);
/// Takes up to `max` completions without blocking: tags and results
/// (bytes or -errno).
int CXenAIO_aio_reap(CXenAIO_aio *ctx, uint64_t *tags, int64_t *results, int max);

/// Whether completions are waiting, without a system call (reads the
/// completion ring the kernel shares with us, as fio's libaio engine does).
int CXenAIO_aio_ready(CXenAIO_aio *ctx);

typedef struct CXenAIO_uring CXenAIO_uring;
CXenAIO_uring *CXenAIO_uring_create(unsigned depth, int eventfd);
void CXenAIO_uring_destroy(CXenAIO_uring *ctx);
int CXenAIO_uring_prepare(CXenAIO_uring *ctx, int kind, int fd, void *buffer, size_t length, int64_t offset, uint64_t tag);
int CXenAIO_uring_submit(CXenAIO_uring *ctx);
int CXenAIO_uring_ready(CXenAIO_uring *ctx);
int CXenAIO_uring_reap(CXenAIO_uring *ctx, uint64_t *tags, int64_t *results, int max);

/// io_submit, io_getevents and io_uring_enter calls made on this thread.
unsigned long long CXenAIO_syscalls_on_this_thread(void);

#endif

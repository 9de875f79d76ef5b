#include "CXenAIO.h"
#include <errno.h>
#include <libaio.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// MARK: libaio

struct CXenAIO_aio {
    io_context_t context;
    int eventfd;
    unsigned depth;
    struct iocb *blocks;        // depth control blocks
    struct iocb **free;         // free list (stack) of control blocks
    unsigned freeCount;
    struct iocb **queued;       // prepared, not yet submitted
    unsigned queuedCount;
    struct io_event *events;    // reap buffer, depth entries
    // Completions of refused submissions, reported by the next reap.
    uint64_t *failedTags;
    int64_t *failedResults;
    unsigned failedCount;
};

CXenAIO_aio *CXenAIO_aio_create(unsigned depth, int eventfd) {
    CXenAIO_aio *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->depth = depth;
    c->eventfd = eventfd;
    c->blocks = calloc(depth, sizeof *c->blocks);
    c->free = calloc(depth, sizeof *c->free);
    c->queued = calloc(depth, sizeof *c->queued);
    c->events = calloc(depth, sizeof *c->events);
    c->failedTags = calloc(depth, sizeof *c->failedTags);
    c->failedResults = calloc(depth, sizeof *c->failedResults);
    if (!c->blocks || !c->free || !c->queued || !c->events || !c->failedTags || !c->failedResults) {
        CXenAIO_aio_destroy(c);
        errno = ENOMEM;
        return NULL;
    }
    int rc = io_setup((int)depth, &c->context);
    if (rc < 0) {
        c->context = 0;
        CXenAIO_aio_destroy(c);
        errno = -rc;
        return NULL;
    }
    for (unsigned i = 0; i < depth; i++) c->free[i] = &c->blocks[i];
    c->freeCount = depth;
    return c;
}

void CXenAIO_aio_destroy(CXenAIO_aio *c) {
    if (!c) return;
    if (c->context) io_destroy(c->context);   // waits for what is in flight
    free(c->blocks); free(c->free); free(c->queued); free(c->events);
    free(c->failedTags); free(c->failedResults);
    free(c);
}

int CXenAIO_aio_prepare(CXenAIO_aio *c, int kind, int fd, void *buffer, size_t length, int64_t offset, uint64_t tag) {
    if (c->freeCount == 0) return -EAGAIN;
    struct iocb *b = c->free[--c->freeCount];
    switch (kind) {
    case CXENAIO_READ: io_prep_pread(b, fd, buffer, length, offset); break;
    case CXENAIO_WRITE: io_prep_pwrite(b, fd, buffer, length, offset); break;
    case CXENAIO_READV: io_prep_preadv(b, fd, buffer, (int)length, offset); break;
    case CXENAIO_WRITEV: io_prep_pwritev(b, fd, buffer, (int)length, offset); break;
    default: io_prep_fdsync(b, fd); break;
    }
    io_set_eventfd(b, c->eventfd);
    b->data = (void *)(uintptr_t)tag;
    c->queued[c->queuedCount++] = b;
    return 0;
}

// System calls the engines made on this thread (io_submit, io_getevents,
// io_uring_enter): added to the funnel's count by the ring worker.
static _Thread_local unsigned long long engine_syscalls;
unsigned long long CXenAIO_syscalls_on_this_thread(void) { return engine_syscalls; }

int CXenAIO_aio_submit(CXenAIO_aio *c) {
    int total = 0;
    while (c->queuedCount > 0) {
        engine_syscalls++;
        int n = io_submit(c->context, (long)c->queuedCount, c->queued);
        if (n == -EINTR || n == -EAGAIN) continue;
        if (n < 0) {
            // The first one was refused (EINVAL for an fdsync the file
            // system cannot do, EBADF...): complete it with the error.
            struct iocb *b = c->queued[0];
            c->failedTags[c->failedCount] = (uint64_t)(uintptr_t)b->data;
            c->failedResults[c->failedCount++] = n;
            c->free[c->freeCount++] = b;
            n = 1;
        } else {
            total += n;
        }
        memmove(c->queued, c->queued + n, (c->queuedCount - (unsigned)n) * sizeof *c->queued);
        c->queuedCount -= (unsigned)n;
    }
    return total;
}

int CXenAIO_aio_reap(CXenAIO_aio *c, uint64_t *tags, int64_t *results, int max) {
    int out = 0;
    while (c->failedCount > 0 && out < max) {
        c->failedCount--;
        tags[out] = c->failedTags[c->failedCount];
        results[out++] = c->failedResults[c->failedCount];
    }
    if (out == max) return out;
    struct timespec zero = {0, 0};
    int n;
    do { engine_syscalls++; n = io_getevents(c->context, 0, max - out, c->events, &zero); } while (n == -EINTR);
    if (n < 0) return out > 0 ? out : n;
    for (int i = 0; i < n; i++) {
        struct iocb *b = c->events[i].obj;
        tags[out] = (uint64_t)(uintptr_t)c->events[i].data;
        // res is unsigned long: a negative errno shows up as a huge value.
        results[out++] = (int64_t)(long)c->events[i].res;
        c->free[c->freeCount++] = b;
    }
    return out;
}

// The kernel's aio completion ring header (fs/aio.c, stable ABI since 2.6):
// io_context_t points at it in our address space.
struct kernel_aio_ring {
    unsigned id, nr, head, tail, magic, compat_features, incompat_features, header_length;
};
#define KERNEL_AIO_RING_MAGIC 0xa10a10a1

int CXenAIO_aio_ready(CXenAIO_aio *c) {
    if (c->failedCount > 0) return 1;
    // SAFETY: the kernel maps this ring into our address space for the
    // context's life (until destroy). It writes tail at any time, hence the
    // acquiring load; head moves only inside our own io_getevents calls, on
    // this same thread, so a plain read sees the current value.
    const struct kernel_aio_ring *ring = (const struct kernel_aio_ring *)c->context;
    // Unknown layout: say yes and let io_getevents decide.
    if (ring->magic != KERNEL_AIO_RING_MAGIC) return 1;
    // Acquire: the events before tail are visible once we see tail.
    unsigned tail = __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
    return ring->head != tail;
}

// MARK: io_uring

struct CXenAIO_uring {
    struct io_uring ring;
    unsigned depth;
    unsigned inFlight;   // prepared or submitted, not yet reaped
};

CXenAIO_uring *CXenAIO_uring_create(unsigned depth, int eventfd) {
    CXenAIO_uring *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    int rc = io_uring_queue_init(depth, &c->ring, 0);
    if (rc < 0) { free(c); errno = -rc; return NULL; }
    rc = io_uring_register_eventfd(&c->ring, eventfd);
    if (rc < 0) { io_uring_queue_exit(&c->ring); free(c); errno = -rc; return NULL; }
    c->depth = depth;
    return c;
}

void CXenAIO_uring_destroy(CXenAIO_uring *c) {
    if (!c) return;
    io_uring_queue_exit(&c->ring);
    free(c);
}

int CXenAIO_uring_prepare(CXenAIO_uring *c, int kind, int fd, void *buffer, size_t length, int64_t offset, uint64_t tag) {
    // The completion queue is twice the submission queue; never have more
    // in flight than the submission queue holds, so it cannot overflow.
    if (c->inFlight >= c->depth) return -EAGAIN;
    struct io_uring_sqe *sqe = io_uring_get_sqe(&c->ring);
    if (!sqe) return -EAGAIN;
    switch (kind) {
    case CXENAIO_READ: io_uring_prep_read(sqe, fd, buffer, (unsigned)length, (uint64_t)offset); break;
    case CXENAIO_WRITE: io_uring_prep_write(sqe, fd, buffer, (unsigned)length, (uint64_t)offset); break;
    case CXENAIO_READV: io_uring_prep_readv(sqe, fd, buffer, (unsigned)length, (uint64_t)offset); break;
    case CXENAIO_WRITEV: io_uring_prep_writev(sqe, fd, buffer, (unsigned)length, (uint64_t)offset); break;
    default: io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC); break;
    }
    io_uring_sqe_set_data64(sqe, tag);
    c->inFlight++;
    return 0;
}

int CXenAIO_uring_submit(CXenAIO_uring *c) {
    int n;
    // io_uring_submit enters the kernel (no SQPOLL here).
    do { engine_syscalls++; n = io_uring_submit(&c->ring); } while (n == -EINTR);
    return n;
}

int CXenAIO_uring_ready(CXenAIO_uring *c) { return io_uring_cq_ready(&c->ring) > 0; }

int CXenAIO_uring_reap(CXenAIO_uring *c, uint64_t *tags, int64_t *results, int max) {
    int out = 0;
    struct io_uring_cqe *cqe;
    while (out < max && io_uring_peek_cqe(&c->ring, &cqe) == 0) {
        tags[out] = io_uring_cqe_get_data64(cqe);
        results[out++] = cqe->res;
        io_uring_cqe_seen(&c->ring, cqe);
        c->inFlight--;
    }
    return out;
}

// Built from Xen's io/ring.h and io/blkif.h exactly as a C backend would be.
// With no __XEN_INTERFACE_VERSION__ the header maps xen_mb/rmb/wmb onto
// mb/rmb/wmb, which we define as a userspace x86 program does: a full fence
// for mb, compiler barriers for rmb/wmb (x86 keeps loads and stores in order).
#include <stdint.h>
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xen/xen.h>
#include <xen/grant_table.h>

// SAFETY: `shared` in every function below is the ring area the Swift
// caller owns (RingPages) and keeps mapped until both peer threads have been
// joined; the front/back structs are ours (calloc) until cxr_*_free. The
// other peer writes the area concurrently; ring.h's macros read each index
// once and order it against the slots with these fences: mb orders an index
// store before the following event load, rmb an index load before the slot
// loads, wmb the slot stores before the index store.
#define mb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#if defined(__x86_64__) || defined(__i386__)
#define rmb() __asm__ __volatile__("" ::: "memory")
#define wmb() __asm__ __volatile__("" ::: "memory")
#else
#define rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define wmb() __atomic_thread_fence(__ATOMIC_RELEASE)
#endif

#include <xen/io/blkif.h>
#include "CXenRingReference.h"

struct cxr_front { blkif_front_ring_t ring; };
struct cxr_back { blkif_back_ring_t ring; };

unsigned cxr_blkif_ring_size(size_t bytes) { return __CONST_RING_SIZE(blkif, bytes); }
size_t cxr_blkif_entry_size(void) { return sizeof(union blkif_sring_entry); }

void cxr_shared_init(void *shared, uint32_t start) {
    blkif_sring_t *s = shared;
    SHARED_RING_INIT(s);
    s->req_prod = s->rsp_prod = start;
    s->req_event = s->rsp_event = start + 1;
}

cxr_front *cxr_front_attach(void *shared, size_t bytes, uint32_t start) {
    cxr_front *f = calloc(1, sizeof *f);
    if (f) FRONT_RING_ATTACH(&f->ring, (blkif_sring_t *)shared, start, bytes);
    return f;
}

cxr_back *cxr_back_attach(void *shared, size_t bytes, uint32_t start) {
    cxr_back *b = calloc(1, sizeof *b);
    if (b) BACK_RING_ATTACH(&b->ring, (blkif_sring_t *)shared, start, bytes);
    return b;
}

void cxr_front_free(cxr_front *front) { free(front); }
void cxr_back_free(cxr_back *back) { free(back); }

uint32_t cxr_front_req_prod_pvt(const cxr_front *f) { return f->ring.req_prod_pvt; }
uint32_t cxr_front_rsp_cons(const cxr_front *f) { return f->ring.rsp_cons; }
unsigned cxr_front_free_requests(const cxr_front *f) { return RING_FREE_REQUESTS(&f->ring); }
int cxr_front_full(const cxr_front *f) { return RING_FULL(&f->ring); }

void cxr_front_produce(cxr_front *f, uint8_t op, uint64_t id, uint64_t sector) {
    blkif_request_t *req = RING_GET_REQUEST(&f->ring, f->ring.req_prod_pvt);
    req->operation = op;
    req->nr_segments = 1;
    req->handle = 0;
    req->id = id;
    req->sector_number = sector;
    req->seg[0].gref = (grant_ref_t)id;
    req->seg[0].first_sect = 0;
    req->seg[0].last_sect = 7;
    f->ring.req_prod_pvt++;
}

int cxr_front_push(cxr_front *f) {
    int notify;
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&f->ring, notify);
    return notify;
}

unsigned cxr_front_unconsumed_responses(const cxr_front *f) { return RING_HAS_UNCONSUMED_RESPONSES(&f->ring); }
int cxr_front_response_prod_overflow(const cxr_front *f, uint32_t prod) { return RING_RESPONSE_PROD_OVERFLOW(&f->ring, prod); }

int cxr_front_consume(cxr_front *f, uint64_t *id, uint8_t *op, int16_t *status) {
    RING_IDX rp = f->ring.sring->rsp_prod;
    rmb(); /* read the index before the slot */
    if (f->ring.rsp_cons == rp) return 0;
    blkif_response_t rsp;
    RING_COPY_RESPONSE(&f->ring, f->ring.rsp_cons, &rsp);
    f->ring.rsp_cons++;
    *id = rsp.id;
    *op = rsp.operation;
    *status = rsp.status;
    return 1;
}

int cxr_front_final_check(cxr_front *f) {
    int more;
    RING_FINAL_CHECK_FOR_RESPONSES(&f->ring, more);
    return more;
}

uint32_t cxr_back_req_cons(const cxr_back *b) { return b->ring.req_cons; }
uint32_t cxr_back_rsp_prod_pvt(const cxr_back *b) { return b->ring.rsp_prod_pvt; }
unsigned cxr_back_unconsumed_requests(const cxr_back *b) { return RING_HAS_UNCONSUMED_REQUESTS(&b->ring); }
int cxr_back_request_prod_overflow(const cxr_back *b, uint32_t prod) { return RING_REQUEST_PROD_OVERFLOW(&b->ring, prod); }
int cxr_back_request_cons_overflow(const cxr_back *b, uint32_t cons) { return RING_REQUEST_CONS_OVERFLOW(&b->ring, cons); }

int cxr_back_consume(cxr_back *b, uint32_t prod, uint64_t *id, uint8_t *op, uint64_t *sector) {
    if (b->ring.req_cons == prod || RING_REQUEST_CONS_OVERFLOW(&b->ring, b->ring.req_cons)) return 0;
    blkif_request_t req;
    RING_COPY_REQUEST(&b->ring, b->ring.req_cons, &req);
    b->ring.req_cons++;
    *id = req.id;
    *op = req.operation;
    *sector = req.sector_number;
    return 1;
}

void cxr_back_produce(cxr_back *b, uint64_t id, uint8_t op, int16_t status) {
    blkif_response_t *rsp = RING_GET_RESPONSE(&b->ring, b->ring.rsp_prod_pvt);
    memset(rsp, 0, sizeof *rsp);
    rsp->id = id;
    rsp->operation = op;
    rsp->status = status;
    b->ring.rsp_prod_pvt++;
}

int cxr_back_push(cxr_back *b) {
    int notify;
    RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&b->ring, notify);
    return notify;
}

int cxr_back_final_check(cxr_back *b) {
    int more;
    RING_FINAL_CHECK_FOR_REQUESTS(&b->ring, more);
    return more;
}

uint32_t cxr_header_load(const void *shared, unsigned word) {
    return __atomic_load_n((const uint32_t *)shared + word, __ATOMIC_SEQ_CST);
}

void cxr_header_store(void *shared, unsigned word, uint32_t value) {
    __atomic_store_n((uint32_t *)shared + word, value, __ATOMIC_SEQ_CST);
}

// ---- The peer loops: the benchmark's C baseline and the interop tests' C end.

static int kick(int fd, cxr_peer_stats *st) {
    uint64_t one = 1;
    st->notifications++;
    return write(fd, &one, sizeof one) == sizeof one ? 0 : -1;
}

/// Sleeps until the peer kicks us; 10 s without a kick is a lost wakeup.
static int wait_for_kick(int fd, cxr_peer_stats *st) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int n;
    do { n = poll(&p, 1, 10000); } while (n < 0 && errno == EINTR);
    if (n == 0) return CXR_ERROR_TIMEOUT;
    if (n < 0) return CXR_ERROR_IO;
    uint64_t count;
    if (read(fd, &count, sizeof count) != sizeof count) return CXR_ERROR_IO;
    st->sleeps++;
    return CXR_OK;
}

void cxr_run_frontend(void *shared, size_t bytes, uint32_t start, uint64_t requests, int mode,
                      int kick_fd, int wait_fd, cxr_peer_stats *st) {
    blkif_front_ring_t r;
    FRONT_RING_ATTACH(&r, (blkif_sring_t *)shared, start, bytes);
    uint64_t sent = 0, received = 0;
    memset(st, 0, sizeof *st);
    while (received < requests) {
        int produced = 0;
        while (sent < requests && !RING_FULL(&r)) {
            blkif_request_t *req = RING_GET_REQUEST(&r, r.req_prod_pvt);
            req->operation = BLKIF_OP_READ;
            req->nr_segments = 1;
            req->handle = 0;
            req->id = sent;
            req->sector_number = sent * 8;
            req->seg[0].gref = (grant_ref_t)sent;
            req->seg[0].first_sect = 0;
            req->seg[0].last_sect = 7;
            r.req_prod_pvt++;
            sent++;
            produced = 1;
        }
        if (produced) {
            int notify;
            RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&r, notify);
            if (notify && mode == CXR_MODE_EVENTFD && kick(kick_fd, st) != 0) { st->error = CXR_ERROR_IO; return; }
        }
        RING_IDX rp = r.sring->rsp_prod;
        rmb(); /* read the index before the slots */
        if (RING_RESPONSE_PROD_OVERFLOW(&r, rp)) { st->error = CXR_ERROR_OVERFLOW; return; }
        int consumed = 0;
        while (r.rsp_cons != rp) {
            blkif_response_t rsp;
            RING_COPY_RESPONSE(&r, r.rsp_cons, &rsp);
            r.rsp_cons++;
            if (rsp.id != received || rsp.operation != BLKIF_OP_READ || rsp.status != BLKIF_RSP_OKAY) st->bad_responses++;
            received++;
            consumed = 1;
        }
        if (consumed || (sent < requests && !RING_FULL(&r))) continue;
        int more;
        RING_FINAL_CHECK_FOR_RESPONSES(&r, more);
        if (!more && mode == CXR_MODE_EVENTFD) {
            int rc = wait_for_kick(wait_fd, st);
            if (rc != CXR_OK) { st->error = rc; return; }
        } else if (!more) {
            /* poll: spin read-only on the index until it moves */
            while (*(volatile RING_IDX *)&r.sring->rsp_prod == r.rsp_cons) {}
        }
    }
    st->completed = received;
}

void cxr_run_backend(void *shared, size_t bytes, uint32_t start, uint64_t requests, int mode,
                     int kick_fd, int wait_fd, cxr_peer_stats *st) {
    blkif_back_ring_t r;
    BACK_RING_ATTACH(&r, (blkif_sring_t *)shared, start, bytes);
    uint64_t answered = 0;
    memset(st, 0, sizeof *st);
    while (answered < requests) {
        RING_IDX rp = r.sring->req_prod;
        rmb(); /* read the index before the slots */
        if (RING_REQUEST_PROD_OVERFLOW(&r, rp)) { st->error = CXR_ERROR_OVERFLOW; return; }
        int consumed = 0;
        while (r.req_cons != rp && !RING_REQUEST_CONS_OVERFLOW(&r, r.req_cons)) {
            blkif_request_t req;
            RING_COPY_REQUEST(&r, r.req_cons, &req);
            r.req_cons++;
            int ok = req.operation == BLKIF_OP_READ && req.nr_segments == 1 &&
                     req.seg[0].first_sect <= req.seg[0].last_sect && req.seg[0].last_sect < 8;
            blkif_response_t *rsp = RING_GET_RESPONSE(&r, r.rsp_prod_pvt);
            memset(rsp, 0, sizeof *rsp);
            rsp->id = req.id;
            rsp->operation = req.operation;
            rsp->status = ok ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR;
            r.rsp_prod_pvt++;
            answered++;
            consumed = 1;
        }
        if (consumed) {
            int notify;
            RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&r, notify);
            if (notify && mode == CXR_MODE_EVENTFD && kick(kick_fd, st) != 0) { st->error = CXR_ERROR_IO; return; }
            continue;
        }
        int more;
        RING_FINAL_CHECK_FOR_REQUESTS(&r, more);
        if (!more && mode == CXR_MODE_EVENTFD) {
            int rc = wait_for_kick(wait_fd, st);
            if (rc != CXR_OK) { st->error = rc; return; }
        } else if (!more) {
            /* poll: spin read-only on the index until it moves */
            while (*(volatile RING_IDX *)&r.sring->req_prod == r.req_cons) {}
        }
    }
    st->completed = answered;
}

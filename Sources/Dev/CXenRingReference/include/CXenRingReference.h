// The reference peer: Xen's own io/ring.h macros over the blkif ring, built
// from Debian's libxen-dev headers. Tests drive it step by step against our
// Swift ring, run it as the other end of a shared page, and the ring
// benchmark uses its loops as the C baseline. No Xen header leaks into this
// interface, so Swift imports only these declarations.
#ifndef CXEN_RING_REFERENCE_H
#define CXEN_RING_REFERENCE_H

#include <stddef.h>
#include <stdint.h>

typedef struct cxr_front cxr_front;
typedef struct cxr_back cxr_back;

/// sizeof/offsetof facts of blkif_sring as this compiler lays it out.
unsigned cxr_blkif_ring_size(size_t bytes);
size_t cxr_blkif_entry_size(void);

/// SHARED_RING_INIT, then every index moved to `start` (events start + 1).
void cxr_shared_init(void *shared, uint32_t start);

cxr_front *cxr_front_attach(void *shared, size_t bytes, uint32_t start);
cxr_back *cxr_back_attach(void *shared, size_t bytes, uint32_t start);
void cxr_front_free(cxr_front *front);
void cxr_back_free(cxr_back *back);

uint32_t cxr_front_req_prod_pvt(const cxr_front *front);
uint32_t cxr_front_rsp_cons(const cxr_front *front);
unsigned cxr_front_free_requests(const cxr_front *front);
int cxr_front_full(const cxr_front *front);
/// RING_GET_REQUEST at req_prod_pvt++: a one-segment request.
void cxr_front_produce(cxr_front *front, uint8_t op, uint64_t id, uint64_t sector);
/// RING_PUSH_REQUESTS_AND_CHECK_NOTIFY; returns notify.
int cxr_front_push(cxr_front *front);
unsigned cxr_front_unconsumed_responses(const cxr_front *front);
/// RING_RESPONSE_PROD_OVERFLOW for a given producer value.
int cxr_front_response_prod_overflow(const cxr_front *front, uint32_t prod);
/// RING_COPY_RESPONSE at rsp_cons++ if rsp_cons != rsp_prod; returns 1 if one was taken.
int cxr_front_consume(cxr_front *front, uint64_t *id, uint8_t *op, int16_t *status);
/// RING_FINAL_CHECK_FOR_RESPONSES.
int cxr_front_final_check(cxr_front *front);

uint32_t cxr_back_req_cons(const cxr_back *back);
uint32_t cxr_back_rsp_prod_pvt(const cxr_back *back);
unsigned cxr_back_unconsumed_requests(const cxr_back *back);
int cxr_back_request_prod_overflow(const cxr_back *back, uint32_t prod);
int cxr_back_request_cons_overflow(const cxr_back *back, uint32_t cons);
/// RING_COPY_REQUEST at req_cons++ if req_cons != `prod` and no CONS_OVERFLOW.
int cxr_back_consume(cxr_back *back, uint32_t prod, uint64_t *id, uint8_t *op, uint64_t *sector);
/// RING_GET_RESPONSE at rsp_prod_pvt++.
void cxr_back_produce(cxr_back *back, uint64_t id, uint8_t op, int16_t status);
/// RING_PUSH_RESPONSES_AND_CHECK_NOTIFY; returns notify.
int cxr_back_push(cxr_back *back);
/// RING_FINAL_CHECK_FOR_REQUESTS.
int cxr_back_final_check(cxr_back *back);

/// Raw header access for scripted tests (a hostile peer moving indices).
uint32_t cxr_header_load(const void *shared, unsigned word);
void cxr_header_store(void *shared, unsigned word, uint32_t value);

/// How the two ends of a peer run wait for work.
enum {
    CXR_MODE_POLL = 0,    /// spin on the indices, no event channel
    CXR_MODE_EVENTFD = 1, /// final check, then sleep in read() on an eventfd
};

typedef struct {
    uint64_t completed;      /// requests answered (backend) or responses checked (frontend)
    uint64_t notifications;  /// eventfd writes (the other side was asked to wake)
    uint64_t sleeps;         /// times this side slept in read()
    uint64_t bad_responses;  /// frontend: responses with the wrong id, op or status
    int error;               /// 0, or what stopped the run (see cxr_error_*)
} cxr_peer_stats;

enum {
    CXR_OK = 0,
    CXR_ERROR_OVERFLOW = 1,  /// the peer published an impossible producer index
    CXR_ERROR_TIMEOUT = 2,   /// slept 10 s without an event: a lost wakeup
    CXR_ERROR_IO = 3,
};

/// The benchmark/interop frontend: issues `requests` one-segment READs
/// (id = sequence number, sector = id * 8) as fast as the ring allows and
/// checks every response (same id, READ, OKAY, in order). Attaches at
/// `start`; the header must already be initialised.
void cxr_run_frontend(void *shared, size_t bytes, uint32_t start, uint64_t requests, int mode,
                      int kick_fd, int wait_fd, cxr_peer_stats *stats);
/// The matching backend: answers each request with its id and op, OKAY if
/// it is a one-segment READ, ERROR otherwise.
void cxr_run_backend(void *shared, size_t bytes, uint32_t start, uint64_t requests, int mode,
                     int kick_fd, int wait_fd, cxr_peer_stats *stats);

#endif

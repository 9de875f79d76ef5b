import Synchronization

/// The frontend's end of a shared ring: it produces requests and consumes
/// responses (`FRONT_RING_*` and the response-side macros of io/ring.h).
///
/// Used by our frontend test drivers, benchmarks and fuzzers. A backend may
/// be hostile too (XSA-391), so responses are copied out once and a response
/// producer index beyond the outstanding requests halts the ring.
public struct FrontRing<Layout: RingLayout>: ~Copyable {
    public let memory: SharedRingMemory
    public let size: UInt32
    /// `req_prod_pvt`: requests written, published or not.
    @usableFromInline var _requestProducerPrivate: RingIndex
    public var requestProducerPrivate: RingIndex { _requestProducerPrivate }
    /// `rsp_cons`: the next response to consume.
    @usableFromInline var _responseConsumer: RingIndex
    public var responseConsumer: RingIndex { _responseConsumer }
    @usableFromInline var publishedRequests: RingIndex
    @usableFromInline var _isHalted: Bool = false
    public var isHalted: Bool { _isHalted }

    /// XEN_FRONT_RING_INIT: initialises the shared header (SHARED_RING_INIT)
    /// and attaches. `index` other than 0 starts every index there, which
    /// tests use to cross the 2^32 wrap.
    public init(initializing memory: SharedRingMemory, at index: RingIndex = RingIndex(0)) throws(RingError) {
        self.size = try Layout.checkGeometry(memory)
        memory.initializeHeader(at: index)
        self.memory = memory
        self._requestProducerPrivate = index
        self._responseConsumer = index
        self.publishedRequests = index
    }

    /// FRONT_RING_ATTACH: attaches to a header someone already initialised.
    public init(attaching memory: SharedRingMemory, at index: RingIndex) throws(RingError) {
        self.size = try Layout.checkGeometry(memory)
        self.memory = memory
        self._requestProducerPrivate = index
        self._responseConsumer = index
        self.publishedRequests = index
    }

    @inlinable
    var mask: UInt32 { size &- 1 }

    /// RING_FREE_REQUESTS.
    @inlinable
    public var freeRequests: UInt32 { size &- (_requestProducerPrivate &- _responseConsumer) }

    /// RING_FULL.
    @inlinable
    public var isFull: Bool { freeRequests == 0 }

    /// Writes a request into the slot at `req_prod_pvt` and advances it; the
    /// backend sees it after `pushRequests()`.
    @inlinable
    public mutating func produceRequest(_ request: Layout.Request) {
        precondition(!isFull, "request produced on a full ring")
        // SAFETY: the masked slot lies inside the borrowed mapping and is
        // free (not full: its response was consumed); relaxed atomic stores,
        // published by pushRequests' releasing store of req_prod.
        let slot = memory.entry(_requestProducerPrivate.rawValue & mask, entrySize: Layout.entrySize)
        Layout.writeRequest(request, to: slot)
        _requestProducerPrivate = _requestProducerPrivate &+ 1
    }

    /// RING_PUSH_REQUESTS_AND_CHECK_NOTIFY.
    @inlinable
    public mutating func pushRequests() -> Bool {
        let old = publishedRequests
        let new = _requestProducerPrivate
        // Releasing: request slots are visible before the new index (wmb).
        memory.index(at: SharedRingMemory.requestProducerOffset).pointee.store(new.rawValue, ordering: .releasing)
        publishedRequests = new
        // Full fence: the index is visible before we read req_event (mb).
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        // Relaxed: ordered after the store by the fence; req_event guards no data.
        let event = RingIndex(memory.index(at: SharedRingMemory.requestEventOffset).pointee.load(ordering: .relaxed))
        return (new &- event) < (new &- old)
    }

    /// RING_PUSH_REQUESTS: publishes without the notify check.
    @inlinable
    public mutating func pushRequestsWithoutNotifyCheck() {
        // Releasing: request slots before the index (wmb).
        memory.index(at: SharedRingMemory.requestProducerOffset).pointee.store(_requestProducerPrivate.rawValue, ordering: .releasing)
        publishedRequests = _requestProducerPrivate
    }

    /// RING_HAS_UNCONSUMED_RESPONSES, capped at the outstanding requests.
    @inlinable
    public func unconsumedResponses() -> UInt32 {
        // Acquiring: responses counted here are read after this load.
        // SAFETY: the backend may move rsp_prod at any time (and may be
        // hostile): one atomic read of the borrowed mapping, then bounded.
        let producer = memory.index(at: SharedRingMemory.responseProducerOffset).pointee.load(ordering: .acquiring)
        return min(producer &- _responseConsumer.rawValue, _requestProducerPrivate &- _responseConsumer)
    }

    /// Snapshots `rsp_prod` (acquiring: "read rsp_prod, then rmb()") and
    /// checks that it covers only outstanding requests.
    @inlinable
    public mutating func readResponseProducer() throws(RingError) -> RingIndex {
        guard !_isHalted else { throw .halted }
        // Acquiring (see above). SAFETY: one atomic read of the peer's index
        // in the borrowed mapping; only this snapshot is used and checked.
        let producer = RingIndex(memory.index(at: SharedRingMemory.responseProducerOffset).pointee.load(ordering: .acquiring))
        if (producer &- _responseConsumer) > (_requestProducerPrivate &- _responseConsumer) {
            _isHalted = true
            throw .responseProducerOverflow(producer: producer, consumer: _responseConsumer,
                                            requestsProduced: _requestProducerPrivate, size: size)
        }
        return producer
    }

    /// Copies out the response at `rsp_cons` and advances it, or nil at `producer`.
    @inlinable
    public mutating func nextResponse(before producer: RingIndex) -> Layout.Response? {
        guard !_isHalted, _responseConsumer != producer else { return nil }
        // SAFETY: a masked slot of the borrowed mapping; the backend may
        // rewrite it at any time, so it is copied out once (relaxed loads,
        // ordered by the acquiring rsp_prod load) and the copy decoded.
        let slot = memory.entry(_responseConsumer.rawValue & mask, entrySize: Layout.entrySize)
        let response = Layout.copyResponse(from: slot)
        _responseConsumer = _responseConsumer &+ 1
        return response
    }

    /// RING_FINAL_CHECK_FOR_RESPONSES.
    @inlinable
    public mutating func finalCheckForResponses() -> Bool {
        if _isHalted { return false }
        if unconsumedResponses() > 0 { return true }
        // Relaxed store, then a full fence: rsp_event is visible before we
        // re-read rsp_prod (mb), pairing with the backend's push.
        memory.index(at: SharedRingMemory.responseEventOffset).pointee.store((_responseConsumer &+ 1).rawValue, ordering: .relaxed)
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return unconsumedResponses() > 0
    }
}

import Synchronization

/// The backend's end of a shared ring: it consumes requests and produces
/// responses (`BACK_RING_*` and the request-side macros of io/ring.h).
///
/// The backend never initialises the shared header; it attaches to what the
/// frontend set up. Every index read from the page is treated as hostile: a
/// producer index no honest frontend can publish halts the ring with an error,
/// and every loop is bounded by the ring size.
///
/// Non-copyable: the private indices have exactly one owner.
public struct BackRing<Layout: RingLayout>: ~Copyable {
    public let memory: SharedRingMemory
    /// Number of slots (`RING_SIZE`), a power of two.
    public let size: UInt32
    /// `req_cons`: the next request to consume.
    @usableFromInline var _requestConsumer: RingIndex
    public var requestConsumer: RingIndex { _requestConsumer }
    /// `rsp_prod_pvt`: responses written, published or not.
    @usableFromInline var _responseProducerPrivate: RingIndex
    public var responseProducerPrivate: RingIndex { _responseProducerPrivate }
    /// The value of `rsp_prod` we last published; only we write it.
    @usableFromInline var publishedResponses: RingIndex
    /// Set once the frontend was caught lying; every later consume fails.
    @usableFromInline var _isHalted: Bool = false
    public var isHalted: Bool { _isHalted }

    /// BACK_RING_ATTACH: attaches at `index` (0 for a new ring; the old
    /// position when a backend reconnects to a live ring).
    public init(attaching memory: SharedRingMemory, at index: RingIndex = RingIndex(0)) throws(RingError) {
        self.size = try Layout.checkGeometry(memory)
        self.memory = memory
        self._requestConsumer = index
        self._responseProducerPrivate = index
        self.publishedResponses = index
    }

    /// `rsp_prod` as the page holds it: what the frontend has been told.
    /// Acquiring, like every read of an index the peer may act on.
    public static func publishedResponses(in memory: SharedRingMemory) -> RingIndex {
        // SAFETY: a header word of the borrowed mapping, read once.
        RingIndex(memory.index(at: SharedRingMemory.responseProducerOffset).pointee.load(ordering: .acquiring))
    }

    /// Attaches to a live ring a previous backend served, as it left it:
    /// `published` is the `rsp_prod` the caller read from the page (once:
    /// the guest can write it too, and the record's owed requests were
    /// judged against that one value), `inFlight` the requests consumed but
    /// not answered there. Throws if the page's indices cannot be where a
    /// ring with that many requests in flight stands (the record does not
    /// belong to this ring).
    public init(resuming memory: SharedRingMemory, published: RingIndex, inFlight: UInt32) throws(RingError) {
        let size = try Layout.checkGeometry(memory)
        // Acquiring: the frontend's requests up to req_prod are read after this.
        // SAFETY: a header word of the borrowed mapping, read once.
        let producer = RingIndex(memory.index(at: SharedRingMemory.requestProducerOffset).pointee.load(ordering: .acquiring))
        let consumer = published &+ inFlight
        // Consumed requests were published: req_prod is at least req_cons and
        // at most a ring ahead of rsp_prod.
        guard inFlight <= size, producer &- published <= size, consumer &- published <= producer &- published else {
            throw .requestProducerOverflow(producer: producer, consumer: consumer, responsesProduced: published, size: size)
        }
        self.size = size
        self.memory = memory
        self._requestConsumer = consumer
        self._responseProducerPrivate = published
        self.publishedResponses = published
    }

    @inlinable
    var mask: UInt32 { size &- 1 }

    /// Requests published and not yet consumed, capped so that consuming them
    /// cannot overrun unanswered slots (`RING_HAS_UNCONSUMED_REQUESTS`, the
    /// min() rule).
    @inlinable
    public func unconsumedRequests() -> UInt32 {
        // Acquiring: requests counted here are then read, after this load.
        // SAFETY: `memory` is borrowed from whoever mapped the ring and
        // outlives this ring value; the frontend may move req_prod at any
        // time, so it is read once, atomically, and then bounded.
        let producer = memory.index(at: SharedRingMemory.requestProducerOffset).pointee.load(ordering: .acquiring)
        let published = producer &- _requestConsumer.rawValue
        let room = size &- (_requestConsumer &- _responseProducerPrivate)
        return min(published, room)
    }

    /// Snapshots `req_prod` for one consume pass and checks it.
    ///
    /// The acquiring load is ring.h's "read req_prod, then rmb()": the request
    /// slots read after it are at least as new as the index. A producer more
    /// than `size` ahead of our responses (`RING_REQUEST_PROD_OVERFLOW`) or
    /// behind our consumer halts the ring.
    @inlinable
    public mutating func readRequestProducer() throws(RingError) -> RingIndex {
        guard !_isHalted else { throw .halted }
        // Acquiring (see above). SAFETY: one atomic read of the peer's index
        // in the borrowed mapping; only this snapshot is used and checked.
        let producer = RingIndex(memory.index(at: SharedRingMemory.requestProducerOffset).pointee.load(ordering: .acquiring))
        let ahead = producer &- _responseProducerPrivate
        if ahead > size || ahead < (_requestConsumer &- _responseProducerPrivate) {
            _isHalted = true
            throw .requestProducerOverflow(producer: producer, consumer: _requestConsumer,
                                           responsesProduced: _responseProducerPrivate, size: size)
        }
        return producer
    }

    /// Copies out the request at `req_cons` and advances it, or returns nil
    /// when `req_cons` reached `producer` or when one more request would
    /// overrun an unanswered slot (`RING_REQUEST_CONS_OVERFLOW`). The value
    /// returned is private: validate it, not the slot.
    @inlinable
    public mutating func nextRequest(before producer: RingIndex) -> Layout.Request? {
        guard !_isHalted, _requestConsumer != producer,
              (_requestConsumer &- _responseProducerPrivate) < size else { return nil }
        // SAFETY: the masked slot lies inside the borrowed mapping; the
        // frontend may rewrite it at any time, so it is copied out once
        // (relaxed atomic loads, ordered by the acquiring req_prod load that
        // produced `producer`) and only the private copy is decoded.
        let slot = memory.entry(_requestConsumer.rawValue & mask, entrySize: Layout.entrySize)
        let request = Layout.copyRequest(fromShared: slot)
        _requestConsumer = _requestConsumer &+ 1
        return request
    }

    /// Copies out the request at `req_cons` without consuming it (a rate
    /// limiter's look at the next packet's size). Only for decisions that
    /// stay safe if the frontend changes the slot before `nextRequest`
    /// copies it again: validate that later copy, never this one.
    @inlinable
    public func peekRequest(before producer: RingIndex) -> Layout.Request? {
        guard !_isHalted, _requestConsumer != producer,
              (_requestConsumer &- _responseProducerPrivate) < size else { return nil }
        // SAFETY: as in nextRequest: a masked slot of the borrowed mapping,
        // copied out once; the copy may already be stale.
        return Layout.copyRequest(fromShared: memory.entry(_requestConsumer.rawValue & mask, entrySize: Layout.entrySize))
    }

    /// Responses may still be produced: one per consumed request.
    @inlinable
    public var canProduceResponse: Bool { _responseProducerPrivate != _requestConsumer }

    /// Writes a response into the slot at `rsp_prod_pvt` (the whole slot,
    /// zero-filled past the response) and advances `rsp_prod_pvt`. The
    /// frontend sees it after `pushResponses()`.
    @inlinable
    public mutating func produceResponse(_ response: Layout.Response) {
        precondition(canProduceResponse, "more responses than consumed requests")
        // SAFETY: the masked slot lies inside the borrowed mapping and is
        // ours to write (its request was consumed, its response not yet
        // published); relaxed atomic stores, published by pushResponses'
        // releasing store of rsp_prod.
        let slot = memory.entry(_responseProducerPrivate.rawValue & mask, entrySize: Layout.entrySize)
        Layout.writeResponse(response, to: slot)
        _responseProducerPrivate = _responseProducerPrivate &+ 1
    }

    /// RING_PUSH_RESPONSES_AND_CHECK_NOTIFY: publishes `rsp_prod` and says
    /// whether the frontend asked to be notified of any response just
    /// published (its `rsp_event` falls in (old, new]).
    @inlinable
    public mutating func pushResponses() -> Bool {
        let old = publishedResponses
        let new = _responseProducerPrivate
        // Releasing: the response slots are visible before the new index (wmb).
        memory.index(at: SharedRingMemory.responseProducerOffset).pointee.store(new.rawValue, ordering: .releasing)
        publishedResponses = new
        // Full fence: the index store is visible before we read rsp_event (mb);
        // otherwise we and a frontend going to sleep could both miss the event.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        // Relaxed: the fence above already orders this load after the store;
        // rsp_event guards no data, it only decides whether to notify.
        let event = RingIndex(memory.index(at: SharedRingMemory.responseEventOffset).pointee.load(ordering: .relaxed))
        return (new &- event) < (new &- old)
    }

    /// RING_PUSH_RESPONSES: publishes without the notify check.
    @inlinable
    public mutating func pushResponsesWithoutNotifyCheck() {
        // Releasing: response slots before the index (wmb).
        memory.index(at: SharedRingMemory.responseProducerOffset).pointee.store(_responseProducerPrivate.rawValue, ordering: .releasing)
        publishedResponses = _responseProducerPrivate
    }

    /// RING_FINAL_CHECK_FOR_REQUESTS: true if work is pending; otherwise asks
    /// for an event on the next request and checks once more, so a request
    /// published in between is not slept through.
    @inlinable
    public mutating func finalCheckForRequests() -> Bool {
        if _isHalted { return false }
        if unconsumedRequests() > 0 { return true }
        // Relaxed store, then a full fence: req_event must be visible before we
        // re-read req_prod (mb), pairing with the frontend's fence between its
        // req_prod store and its req_event load.
        memory.index(at: SharedRingMemory.requestEventOffset).pointee.store((_requestConsumer &+ 1).rawValue, ordering: .relaxed)
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return unconsumedRequests() > 0
    }

    /// `req_event` as the shared page holds it now. Relaxed: only the
    /// backend writes it, so this reads back our own last store (for tests
    /// and status; a hostile frontend may have scribbled over it).
    @inlinable
    public var requestEvent: RingIndex {
        RingIndex(memory.index(at: SharedRingMemory.requestEventOffset).pointee.load(ordering: .relaxed))
    }

    /// Moves `req_event` further than the next request, to batch wakeups
    /// (ring.h's "write your own FINAL_CHECK with a larger event offset").
    @inlinable
    public mutating func requestEvent(after pending: UInt32) {
        memory.index(at: SharedRingMemory.requestEventOffset).pointee.store((_requestConsumer &+ max(pending, 1)).rawValue, ordering: .relaxed)
        // Full fence: the new req_event is visible before any later req_prod read.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
    }
}

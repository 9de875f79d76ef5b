import XenBlockProtocol
import XenPlatform
import XenRing
import XenSystem
#if canImport(Glibc)
import Glibc
import XenDisk
#endif

public enum BlockBackendError: Error, Equatable, Sendable, CustomStringConvertible {
    case ring(RingError)
    case grant(GrantError)
    case eventChannel(EventChannelError)
    case io(BlockIOError)

    public var description: String {
        switch self {
        case .ring(let e): "ring: \(e)"
        case .grant(let e): "grant: \(e)"
        case .eventChannel(let e): "event channel: \(e)"
        case .io(let e): "I/O: \(e)"
        }
    }
}

/// Serves one blkif ring: copies each request out, validates the copy,
/// moves the data with grant copies through the request's own bounce
/// buffer, hands the disk I/O to the engine (many requests in flight), and
/// answers as the I/O completes, in whatever order it completes.
///
/// One worker per ring; nothing on its data path is shared with other rings,
/// and nothing is allocated per request: slots, bounce buffers, segment
/// tables and grant-copy batches are made at init. Owned by one thread (the
/// one that calls `run` or `processRing`); only `statistics` may be read
/// from others.
public final class BlockRingWorker<Platform: XenPlatform, Layout: RingLayout>: EventPortServing, @unchecked Sendable
where Layout.Request == BlockRequest, Layout.Response == BlockResponse {
    public let frontend: DomainID
    public let geometry: DiskGeometry
    public let statistics: BlockStatistics
    public var port: EventChannelPort { binding.port }
    public var engineKind: BlockEngineKind { engine.kind }
    let platform: Platform
    let backing: FileBacking
    /// The guest's ring pages, mapped until `releaseGuestResources`.
    var ringMapping: OwnedGrantMapping<Platform.Grants>
    /// Reads and writes the shared ring in `ringMapping`.
    var ring: BackRing<Layout>
    let events: Platform.Events
    var binding: OwnedEventPort<Platform.Events>
    let engine: BlockIOEngine

    /// A request between being taken off the ring and being answered.
    struct Slot {
        enum Phase: UInt8 { case free, flushBefore, data, flushAfter, flushOnly }
        var id: UInt64 = 0
        var operation = BlockOperation.read
        var phase = Phase.free
        var write = false
        var flushAfter = false
        var sector: UInt64 = 0
        var byteCount = 0
        var segmentCount = 0
        /// Data moves straight between the disk and the guest's persistently
        /// mapped pages (the iovecs), not through the bounce buffer.
        var persistent = false
        /// The request's slot in the ring's record (-1: no record kept).
        var recordSlot: Int32 = -1
    }
    let slotCount: Int
    let maximumSegments: Int
    /// SAFETY: the tables below are owned by the worker: allocated and
    /// initialised in init, freed in deinit, touched only by the worker's
    /// thread; slot i's rows are indexed by a slot number we handed out,
    /// never by anything the guest wrote.
    let slots: UnsafeMutableBufferPointer<Slot>
    let freeSlots: UnsafeMutableBufferPointer<Int>
    var freeSlotCount: Int
    /// Slot i's data: `maximumSegments` pages at `bounce + i * slotBytes`,
    /// reserved so only pages that were used take memory.
    let bounceMemory: MappedMemory
    /// `bounceMemory.base`: valid while the worker lives.
    let bounce: UnsafeMutableRawPointer
    let slotBytes: Int
    /// Slot i's segments at `segmentTable[i * maximumSegments...]`.
    let segmentTable: UnsafeMutableBufferPointer<BlockSegment>
    /// Slot i's iovecs (persistent path) at `iovecs[i * maximumSegments...]`.
    let iovecs: UnsafeMutableBufferPointer<iovec>
    /// Persistent grants (nil when not negotiated).
    let persistentGrants: PersistentGrantTable<Platform.Grants>?
    /// Scratch for the request being started: its indirect pages and a
    /// grant-copy batch (used synchronously, never while I/O is in flight).
    /// SAFETY: owned like the tables above; the indirect pages are our own
    /// copy, made by grant copy, so the guest cannot change them under us.
    let indirect: UnsafeMutableRawPointer
    let copies: UnsafeMutableBufferPointer<GrantCopyOperation>
    /// A WRITE_BARRIER waiting for earlier I/O to finish; nothing further
    /// is taken off the ring meanwhile.
    var heldBarrier: BlockRequest?
    var heldBarrierRecordSlot = -1
    /// What survives this process: every request owed (nil: none kept).
    let record: BlockRingRecord?
    /// Record slots answered since the last push; released once `rsp_prod`
    /// covers them. SAFETY: owned here, a ring's worth, freed in deinit.
    let answeredSlots: UnsafeMutableBufferPointer<Int32>
    var answeredCount = 0
    /// Requests a previous backend owed, done again by the first pass.
    var owedAtResume: [(slot: Int, ringIndex: RingIndex, request: BlockRequest)] = []
    var inFlight = 0
    var released = false
    /// The engine holds operations it could not submit yet.
    var submissionPending = false
    /// While I/O is in flight, how long to watch the engine and the ring
    /// before sleeping (tapdisk's polling-duration): trades CPU for latency.
    let pollNanoseconds: Int
    /// The disk's I/O limit, shared with its other rings.
    let limiter: BlockIOLimiter?
    /// When the limit lets the next request go (monotonic ns); 0 when it
    /// does not hold us back.
    var limitedUntil = 0

    /// Maps the ring (`ringRefs`: 1, 2, 4, 8 or 16 pages), binds the
    /// frontend's event channel port, and prepares the slots and the engine.
    public init(platform: Platform, frontend: DomainID, ringRefs: [GrantRef], remotePort: EventChannelPort,
                backing: FileBacking, geometry: DiskGeometry? = nil, engine engineKind: BlockEngineKind = .default,
                persistentGrants: Int = 0, pollMicroseconds: Int = 0, limiter: BlockIOLimiter? = nil,
                record: BlockRingRecord? = nil, resuming: Bool = false) throws(BlockBackendError) {
        self.pollNanoseconds = pollMicroseconds * 1000
        self.limiter = limiter
        self.record = record
        self.platform = platform
        self.frontend = frontend
        self.backing = backing
        statistics = BlockStatistics()
        let geometry = geometry ?? backing.geometry
        self.geometry = geometry
        // Each step's resources are owned values: if a later step throws,
        // what the earlier ones took is released as they are dropped.
        do { ringMapping = try OwnedGrantMapping(ringRefs, of: frontend, writable: true, through: platform.grants) } catch {
            throw .grant(error)
        }
        do {
            let memory = try SharedRingMemory(base: ringMapping.base, pageCount: ringRefs.count)
            if resuming, let record {
                // A previous backend served this ring: go on where it stopped.
                // rsp_prod read once: the guest could move it between two reads.
                let published = BackRing<Layout>.publishedResponses(in: memory)
                owedAtResume = record.owed(published: published)
                ring = try BackRing(resuming: memory, published: published, inFlight: UInt32(owedAtResume.count))
            } else {
                ring = try BackRing(attaching: memory)
            }
        } catch {
            throw .ring(error)
        }
        slotCount = Int(ring.size)
        do { engine = try BlockIOEngine(kind: engineKind, depth: slotCount) } catch { throw .io(error) }
        do {
            events = try platform.openEventChannels()
            binding = try OwnedEventPort(bindingTo: remotePort, of: frontend, on: events)
        } catch {
            throw .eventChannel(error)
        }
        // Never more than 8 indirect pages' worth, whatever was configured.
        maximumSegments = max(BlockLimits.maxSegmentsPerRequest,
                              min(geometry.maximumIndirectSegments, BlockLimits.maxIndirectPagesPerRequest * BlockLimits.segmentsPerIndirectPage))
        slotBytes = maximumSegments * 4096
        // Reserved, not committed: only fails when the address space is full.
        do { bounceMemory = try MappedMemory(anonymous: slotCount * slotBytes) } catch {
            preconditionFailure("cannot reserve \(slotCount * slotBytes) bytes of bounce buffers: \(error)")
        }
        bounce = bounceMemory.base
        // Huge pages where the kernel has them: a large request's bounce buffer
        // is then physically contiguous, one segment for the disk, not 256.
        _ = madvise(bounce, slotCount * slotBytes, MADV_HUGEPAGE)
        slots = .allocate(capacity: slotCount)
        slots.initialize(repeating: Slot())
        freeSlots = .allocate(capacity: slotCount)
        // Lowest slots on top: a light load keeps reusing the same few buffers.
        for i in 0..<slotCount { freeSlots[i] = slotCount - 1 - i }
        freeSlotCount = slotCount
        segmentTable = .allocate(capacity: slotCount * maximumSegments)
        segmentTable.initialize(repeating: BlockSegment(grant: 0, firstSector: 0, lastSector: 0))
        iovecs = .allocate(capacity: slotCount * maximumSegments)
        iovecs.initialize(repeating: iovec(iov_base: nil, iov_len: 0))
        self.persistentGrants = persistentGrants > 0
            ? PersistentGrantTable(capacity: persistentGrants, grants: platform.grants, domain: frontend) : nil
        indirect = UnsafeMutableRawPointer.allocate(byteCount: BlockLimits.maxIndirectPagesPerRequest * 4096, alignment: 4096)
        copies = .allocate(capacity: maximumSegments)
        copies.initialize(repeating: GrantCopyOperation(source: .local(indirect), destination: .local(indirect), length: 0))
        answeredSlots = .allocate(capacity: slotCount)
        answeredSlots.initialize(repeating: -1)
    }

    /// Gives back what belongs to the guest: the event channel, the ring
    /// mapping and every persistent grant. Called on the worker's thread once
    /// it stopped (all I/O drained), before the device may say Closed; a
    /// reference kept elsewhere must not keep guest pages mapped (XSA-371).
    /// Safe to repeat; the worker must not be run afterwards.
    public func releaseGuestResources() {
        guard !released else { return }
        released = true
        // Anything still in flight (a worker dropped without run/drain) is
        // waited for by the engine's teardown before its pages go.
        engine.shutdown()
        binding.release()
        ringMapping.release()
        persistentGrants?.unmapAll()
    }

    deinit {
        releaseGuestResources()
        iovecs.deallocate()
        slots.deallocate()
        freeSlots.deallocate()
        segmentTable.deallocate()
        indirect.deallocate()
        copies.deallocate()
        answeredSlots.deallocate()
    }

    /// Requests taken off the ring and not yet answered.
    public var requestsInFlight: Int { inFlight + (heldBarrier == nil ? 0 : 1) + owedAtResume.count }

    // MARK: Driving the ring

    /// Takes what the ring holds (as far as slots allow), starts it, answers
    /// whatever has completed, and pushes the responses; does not wait.
    /// Returns how many requests were taken. Throws if the frontend broke
    /// the ring protocol: the ring is halted; in-flight I/O is still owed
    /// (`drain`).
    @discardableResult
    public func processRing() throws(BlockBackendError) -> Int {
        if !owedAtResume.isEmpty { replayOwed() }
        if submissionPending { submit() }
        let taken: Int
        do { taken = try takeRequests() } catch {
            if case .halted = error {} else { statistics.add(.ringsHalted) }  // counted once, when it halts
            completeAvailable()
            pushResponses()
            throw .ring(error)
        }
        completeAvailable()
        pushResponses()
        return taken
    }

    /// Waits for every request in flight (a held barrier included) and
    /// answers it. Takes nothing new off the ring.
    public func drain() {
        while requestsInFlight > 0 {
            startHeldBarrierIfIdle()
            completeAvailable()
            pushResponses()
            if requestsInFlight == 0 { break }
            if submissionPending { submit() }
            if engine.completionDescriptor >= 0 {
                // An interruption only sends us round the loop again.
                _ = Syscall.poll(engine.completionDescriptor, timeoutMilliseconds: submissionPending ? 1 : -1,
                                 retryingInterrupts: false)
            }
        }
    }

    /// Serves the ring until `stopDescriptor` becomes readable, then drains:
    /// every request taken off the ring is answered before it returns.
    /// Sleeps on the event channel and the engine's completions between
    /// kicks. With `parkAfterMilliseconds` > 0 it returns `.idle` once that
    /// long passed with nothing in flight and nothing on the ring (having
    /// asked the frontend for an event), so its thread can go; calling `run`
    /// again resumes it.
    @discardableResult
    public func run(stopDescriptor: Int32, parkAfterMilliseconds: Int = 0) throws(BlockBackendError) -> WorkerExit {
        var wakeups = WorkerPollSet(eventChannel: events.fileDescriptor, stop: stopDescriptor, others: [engine.completionDescriptor])
        var holds = EventPortHolds(for: self)
        var pending = [EventChannelPort](repeating: EventChannelPort(0), count: 16)
        // This thread's system calls, added to the statistics each turn.
        var syscallMark = Syscall.countOnThisThread + BlockIOEngine.syscallsOnThisThread
        defer { countSyscalls(since: &syscallMark) }
        while true {
            countSyscalls(since: &syscallMark)
            do { try processRing() } catch {
                drain()
                throw error
            }
            // Sleep only when the ring is empty (final check) or we cannot
            // take more until I/O completes (a completion wakes us then).
            if canTakeRequests && ring.finalCheckForRequests() { continue }
            if pollNanoseconds > 0 && inFlight > 0 && spinForWork() { continue }
            let holdEnds = holds.unmaskExpired(now: monotonicNanoseconds(), worker: self, events: events)
            let idle = requestsInFlight == 0 && !submissionPending && !ring.isHalted && holdEnds == nil && limitedUntil == 0
            // A refused submission is retried after a millisecond.
            var timeout: Int32 = submissionPending ? 1 : (idle && parkAfterMilliseconds > 0 ? Int32(clamping: parkAfterMilliseconds) : -1)
            if let holdEnds { timeout = timeout < 0 ? holdEnds : min(timeout, holdEnds) }
            if limitedUntil != 0 {
                let due = Int32(clamping: max(1, (limitedUntil - monotonicNanoseconds() + 999_999) / 1_000_000))
                timeout = timeout < 0 ? due : min(timeout, due)
            }
            switch wakeups.wait(timeoutMilliseconds: timeout) {
            case .timedOut where idle && parkAfterMilliseconds > 0:
                return .idle
            case .stop:
                drain()
                return .stopped
            case .timedOut, .ready:
                break
            }
            if wakeups.eventsPending {
                // Taken and re-enabled before the next pass looks at the
                // ring, so a kick during that pass is not lost.
                let spurious: Int
                // SAFETY: `pending` is this call's own scratch, lent for the take.
                do { spurious = try pending.withUnsafeMutableBufferPointer { (b) throws(EventChannelError) -> Int in try holds.takeEvents(from: events, into: b, worker: self) } }
                catch { drain(); throw .eventChannel(error) }
                if spurious > 0 { statistics.add(.spuriousEvents, UInt64(spurious)) }
            }
        }
    }

    /// What wakes a parked worker: its event channel device.
    public var wakeDescriptors: [Int32] { [events.fileDescriptor] }

    private func countSyscalls(since mark: inout UInt64) {
        let now = Syscall.countOnThisThread + BlockIOEngine.syscallsOnThisThread
        if now != mark { statistics.add(.syscalls, now &- mark) }
        mark = now
    }

    // MARK: Events (XSA-332)

    public enum PortRole: Int, EventPortRole { case ring }

    public func role(of port: EventChannelPort) -> PortRole? { port == self.port ? .ring : nil }
    public func port(of role: PortRole) -> EventChannelPort? { port }
    public func requestsConsumed(by role: PortRole) -> UInt32 { ring.requestConsumer.rawValue }
    /// Kicks while every slot is busy bring nothing: completions wake us.
    /// Requests the I/O limit holds back are work all the same.
    public func hasWork(for role: PortRole) -> Bool {
        freeSlotCount > 0 && heldBarrier == nil && !ring.isHalted && ring.unconsumedRequests() > 0
    }

    /// Watches for completions and new requests for up to `pollNanoseconds`;
    /// true if something turned up.
    private func spinForWork() -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let deadline = Int(now.tv_sec) * 1_000_000_000 + Int(now.tv_nsec) + pollNanoseconds
        repeat {
            if engine.hasCompletions || (canTakeRequests && ring.unconsumedRequests() > 0) { return true }
            clock_gettime(CLOCK_MONOTONIC, &now)
        } while Int(now.tv_sec) * 1_000_000_000 + Int(now.tv_nsec) < deadline
        return false
    }

    /// Requests per io_submit: small, so the disk is busy while the rest of
    /// a burst is validated (4 measured best on 4K randread QD32; 32 in one
    /// call left the disk idle for the whole burst).
    static var submitBatch: Int { 4 }

    private var canTakeRequests: Bool {
        freeSlotCount > 0 && heldBarrier == nil && !ring.isHalted && limitedUntil == 0 && (record?.hasRoom ?? true)
    }

    private func takeRequests() throws(RingError) -> Int {
        if ring.isHalted { throw .halted }
        startHeldBarrierIfIdle()
        if limitedUntil != 0 && monotonicNanoseconds() >= limitedUntil { limitedUntil = 0 }
        guard canTakeRequests else { return 0 }
        var taken = 0
        let producer = try ring.readRequestProducer()
        // Bounded by the ring size: each request takes a slot or is answered
        // at once, and the producer was checked against the ring size.
        // Looked at once a pass: an unlimited disk pays one relaxed load here.
        let limit = limiter.flatMap { $0.isActive ? $0 : nil }
        while canTakeRequests, limit.map({ admitted(by: $0, before: producer) }) ?? true,
              let request = ring.nextRequest(before: producer) {
            taken += 1
            // Recorded before anything is done about it.
            let recordSlot = record?.recordTaken(request, ringIndex: RingIndex(ring.requestConsumer.rawValue &- 1)) ?? -1
            if request.operation == .writeBarrier && inFlight > 0 {
                heldBarrier = request
                heldBarrierRecordSlot = recordSlot
                statistics.add(.barrierWaits)
                break
            }
            start(request, recordSlot: recordSlot)
            // Hand I/O to the disk in small batches, so it starts on the
            // first requests while later ones are still being prepared.
            if taken % Self.submitBatch == 0 { submit() }
        }
        if taken % Self.submitBatch != 0 { submit() }
        return taken
    }

    /// Whether the disk's I/O limit lets the next request go now; if not,
    /// it stays on the ring (not taken, so nothing is owed) until
    /// `limitedUntil`. Looks at a copy of the request, not the shared slot;
    /// the guest may change the slot before it is taken, which moves only
    /// the limit's estimate of its cost, never the I/O.
    private func admitted(by limiter: BlockIOLimiter, before producer: RingIndex) -> Bool {
        guard let next = ring.peekRequest(before: producer) else { return true }
        let now = monotonicNanoseconds()
        guard let wait = limiter.admit(bytes: BlockIOLimiter.cost(of: next), now: now) else { return true }
        limitedUntil = now + wait
        statistics.add(.limitWaits)
        return false
    }

    private func startHeldBarrierIfIdle() {
        guard inFlight == 0, let barrier = heldBarrier else { return }
        heldBarrier = nil
        start(barrier, recordSlot: heldBarrierRecordSlot)
        submit()
    }

    /// Does again what a previous backend took off this ring and never
    /// answered where the frontend could see it, in ring order; a barrier
    /// waits for what was started before it.
    private func replayOwed() {
        let owed = owedAtResume
        owedAtResume = []
        for (slot, _, request) in owed {
            if request.operation == .writeBarrier && inFlight > 0 { drain() }
            start(request, recordSlot: slot)
        }
        submit()
    }

    private func submit() {
        // A refused submission (io_uring: EAGAIN, EBUSY) leaves the operations
        // queued in the engine, and earlier ones are still in flight: nothing
        // may be failed or freed here. Try again shortly (`run`, `drain`).
        do { try engine.submit(); submissionPending = false } catch { submissionPending = true }
    }

    private func completeAvailable() {
        var more = true
        while more {
            let n = engine.reap { tag, result in self.completed(slot: Int(tag), result: result) }
            if n > 0 { submit() }
            more = n > 0
            startHeldBarrierIfIdle()
        }
    }

    private func pushResponses() {
        // The ring's push decides, per io/ring.h, whether the frontend asked
        // to be told.
        if ring.pushResponses() {
            try? events.notify(port)
            statistics.add(.notifications)
        }
        // Published now: nothing is owed for these.
        if let record {
            for i in 0..<answeredCount { record.release(Int(answeredSlots[i])) }
            answeredCount = 0
        }
    }

    // MARK: One request

    private func respond(id: UInt64, operation: BlockOperation, status: BlockStatus, recordSlot: Int) {
        if status != .okay { statistics.add(.errors) }
        if let record, recordSlot >= 0 {
            record.recordAnswered(recordSlot, responseIndex: ring.responseProducerPrivate)
            answeredSlots[answeredCount] = Int32(recordSlot)
            answeredCount += 1
        }
        ring.produceResponse(BlockResponse(id: id, operation: operation, status: status))
    }

    private func start(_ request: BlockRequest, recordSlot: Int) {
        switch BlockValidation.action(for: request, disk: geometry) {
        case .reject(let status, _):
            respond(id: request.id, operation: request.responseOperation, status: status, recordSlot: recordSlot)
        case .discard(let sector, let count, let secure):
            // Synchronous: fallocate and BLKDISCARD are metadata work.
            statistics.add(.discardRequests)
            var status = BlockStatus.okay
            do { try backing.discard(offset: sector * 512, count: count * 512, secure: secure) } catch {
                if case .io(_, let e) = error, e == EOPNOTSUPP { status = .notSupported } else { status = .error }
            }
            respond(id: request.id, operation: request.responseOperation, status: status, recordSlot: recordSlot)
        case .flush:
            statistics.add(.flushRequests)
            let slot = takeSlot()
            slots[slot] = Slot(id: request.id, operation: request.responseOperation, phase: .flushOnly, recordSlot: Int32(recordSlot))
            issue(slot: slot)
        case .transfer(let write, let sector, let count, let indirectPages, let flushBefore, let flushAfter):
            let slot = takeSlot()
            slots[slot] = Slot(id: request.id, operation: request.responseOperation, phase: flushBefore ? .flushBefore : .data,
                               write: write, flushAfter: flushAfter, sector: sector, segmentCount: count, recordSlot: Int32(recordSlot))
            guard let sectors = gatherSegments(request, slot: slot, count: count, indirectPages: indirectPages),
                  indirectPages == 0 || BlockValidation.checkRange(sector: sector, count: UInt64(sectors), disk: geometry) == nil
            else {
                return finish(slot: slot, status: .error)
            }
            slots[slot].byteCount = sectors * 512
            slots[slot].persistent = mapPersistently(slot: slot)
            if write {
                statistics.add(.writeRequests)
                statistics.add(.writeSectors, UInt64(sectors))
                if !slots[slot].persistent {
                    guard copyData(slot: slot, intoGuest: false) else { return finish(slot: slot, status: .error) }
                }
            } else {
                statistics.add(.readRequests)
                statistics.add(.readSectors, UInt64(sectors))
            }
            issue(slot: slot)
        }
    }

    private func takeSlot() -> Int {
        // takeRequests only starts a request when a slot is free.
        precondition(freeSlotCount > 0)
        freeSlotCount -= 1
        inFlight += 1
        return freeSlots[freeSlotCount]
    }

    /// Answers the slot's request and frees the slot.
    private func finish(slot: Int, status: BlockStatus) {
        if slots[slot].persistent {
            // SAFETY: slot's rows of the worker's own segment table.
            let table = segmentTable.baseAddress! + slot * maximumSegments
            for i in 0..<slots[slot].segmentCount { persistentGrants?.release(table[i].grant) }
            slots[slot].persistent = false
        }
        respond(id: slots[slot].id, operation: slots[slot].operation, status: status, recordSlot: Int(slots[slot].recordSlot))
        slots[slot].phase = .free
        freeSlots[freeSlotCount] = slot
        freeSlotCount += 1
        inFlight -= 1
    }

    /// Hands the slot's current phase to the engine.
    private func issue(slot: Int) {
        let s = slots[slot]
        let queued: Bool
        switch s.phase {
        case .flushBefore, .flushAfter, .flushOnly:
            queued = engine.prepare(.fdatasync, fd: backing.fd, buffer: nil, length: 0, offset: 0, tag: UInt64(slot))
        case .data where s.persistent:
            // SAFETY: the slot's iovecs point into guest pages the persistent
            // grant table keeps mapped until `finish` releases them, after
            // the engine has completed the operation.
            queued = engine.prepare(s.write ? .writev : .readv, fd: backing.fd,
                                    buffer: UnsafeMutableRawPointer(iovecs.baseAddress! + slot * maximumSegments),
                                    length: s.segmentCount, offset: s.sector * 512, tag: UInt64(slot))
        case .data:
            // SAFETY: the slot's part of the bounce buffer, ours until `finish`.
            queued = engine.prepare(s.write ? .write : .read, fd: backing.fd, buffer: bounce + slot * slotBytes,
                                    length: s.byteCount, offset: s.sector * 512, tag: UInt64(slot))
        case .free:
            queued = false
        }
        // The engine holds one operation per slot at most: it cannot be full.
        if !queued { finish(slot: slot, status: .error) }
    }

    /// One engine operation of `slot` finished with `result` (bytes or -errno).
    private func completed(slot: Int, result: Int64) {
        guard slot < slotCount, slots[slot].phase != .free else { return }
        switch slots[slot].phase {
        case .flushBefore:
            guard result >= 0 else { return finish(slot: slot, status: .error) }
            slots[slot].phase = .data
            issue(slot: slot)
        case .data:
            let s = slots[slot]
            if s.write {
                guard result == Int64(s.byteCount) else { return finish(slot: slot, status: .error) }
            } else {
                guard result >= 0 else { return finish(slot: slot, status: .error) }
                if result < Int64(s.byteCount) { zeroTail(slot: slot, from: Int(result)) }
                if !s.persistent {
                    guard copyData(slot: slot, intoGuest: true) else { return finish(slot: slot, status: .error) }
                }
            }
            if s.flushAfter {
                slots[slot].phase = .flushAfter
                issue(slot: slot)
            } else {
                finish(slot: slot, status: .okay)
            }
        case .flushAfter, .flushOnly:
            finish(slot: slot, status: result >= 0 ? .okay : .error)
        case .free:
            break
        }
    }

    /// Past the end of a file that shrank, a read comes back short: the
    /// rest reads as zeros.
    private func zeroTail(slot: Int, from done: Int) {
        let s = slots[slot]
        // SAFETY: `done` ≤ byteCount (the engine's result, checked by the
        // caller), so the zeroed tail stays in the slot's own bytes or in the
        // guest pages its iovecs map.
        guard s.persistent else {
            (bounce + slot * slotBytes + done).initializeMemory(as: UInt8.self, repeating: 0, count: s.byteCount - done)
            return
        }
        var skip = done
        for i in 0..<s.segmentCount {
            let v = iovecs[slot * maximumSegments + i]
            if skip >= v.iov_len { skip -= v.iov_len; continue }
            (v.iov_base! + skip).initializeMemory(as: UInt8.self, repeating: 0, count: v.iov_len - skip)
            skip = 0
        }
    }

    /// Requests of at most this many segments go straight into guest pages
    /// (Linux blkfront's indirect requests are 32 segments, 128 KiB, by
    /// default); larger ones are copied into a huge-page buffer.
    static var persistentSegmentLimit: Int { 32 }

    /// Maps every segment's page through the persistent grant table and
    /// points the slot's iovecs at them; false (nothing held) if persistent
    /// grants are off, the request is large, or any page cannot be had, and
    /// the request goes through grant copy instead.
    private func mapPersistently(slot: Int) -> Bool {
        // Large (indirect) requests go by grant copy: into a huge-page bounce
        // buffer the disk sees one segment, where 256 scattered guest pages
        // make it split the request (1 MiB reads measured 2.3x faster so).
        guard let persistentGrants, slots[slot].segmentCount <= Self.persistentSegmentLimit else { return false }
        // SAFETY: slot's rows of our own tables; each iovec points into a page
        // `acquire` mapped, at a sector range `check(segment:)` kept in the page.
        let table = segmentTable.baseAddress! + slot * maximumSegments
        let vectors = iovecs.baseAddress! + slot * maximumSegments
        let count = slots[slot].segmentCount
        let mapsBefore = persistentGrants.maps
        for i in 0..<count {
            let s = table[i]
            guard let page = persistentGrants.acquire(s.grant) else {
                for j in 0..<i { persistentGrants.release(table[j].grant) }
                // A full table is a shortage; a bad grant is the request's own fault.
                if persistentGrants.count == persistentGrants.capacity { statistics.add(.outOfResources) }
                return false
            }
            vectors[i] = iovec(iov_base: page + Int(s.firstSector) * 512, iov_len: (Int(s.lastSector) - Int(s.firstSector) + 1) * 512)
        }
        statistics.add(.persistentGrantMaps, persistentGrants.maps - mapsBefore)
        return true
    }

    /// Fills the slot's segment table (copying indirect pages out of the
    /// guest first) and checks each segment; returns the sector total, nil
    /// if a page could not be copied or a segment is invalid.
    private func gatherSegments(_ request: BlockRequest, slot: Int, count: Int, indirectPages: Int) -> Int? {
        guard count <= maximumSegments else { return nil }
        // SAFETY: slot's rows of our own segment table; at most
        // `maximumSegments` are written (checked above).
        let table = segmentTable.baseAddress! + slot * maximumSegments
        if indirectPages == 0 {
            for i in 0..<count { table[i] = request.segment(i) }
        } else {
            for p in 0..<indirectPages {
                copies[p] = GrantCopyOperation(
                    source: .grant(GrantRef(request.indirectGrant(p)), domain: frontend, offset: 0),
                    destination: .local(indirect + p * 4096), length: 4096)
            }
            let batch = UnsafeMutableBufferPointer(rebasing: copies[0..<indirectPages])
            do { try platform.grants.copy(batch) } catch { return nil }
            for p in 0..<indirectPages where !copies[p].status.isOkay { return nil }
            // The pages are a private copy now: read each segment from it once.
            // SAFETY: 8 * count ≤ indirectPages * 4096 (BlockValidation sized
            // the indirect pages from the segment count).
            for i in 0..<count { table[i] = BlockSegment(wireWord: indirect.load(fromByteOffset: 8 * i, as: UInt64.self)) }
        }
        var total = 0
        for i in 0..<count {
            switch BlockValidation.check(segment: table[i], disk: geometry) {
            case .failure: return nil
            case .success(let n): total += n
            }
        }
        return total
    }

    /// Grant-copies every segment of `slot` between the guest and the slot's
    /// bounce buffer, where the segments lie back to back.
    private func copyData(slot: Int, intoGuest: Bool) -> Bool {
        // SAFETY: our own tables and the slot's bounce bytes; the segments'
        // lengths were checked (at most a page each, byteCount in total).
        let table = segmentTable.baseAddress! + slot * maximumSegments
        let data = bounce + slot * slotBytes
        let count = slots[slot].segmentCount
        var offset = 0
        for i in 0..<count {
            let s = table[i]
            let length = (Int(s.lastSector) - Int(s.firstSector) + 1) * 512
            let guest = GrantCopyEndpoint.grant(GrantRef(s.grant), domain: frontend, offset: UInt16(Int(s.firstSector) * 512))
            let local = GrantCopyEndpoint.local(data + offset)
            copies[i] = intoGuest
                ? GrantCopyOperation(source: local, destination: guest, length: UInt16(length))
                : GrantCopyOperation(source: guest, destination: local, length: UInt16(length))
            offset += length
        }
        let batch = UnsafeMutableBufferPointer(rebasing: copies[0..<count])
        do { try platform.grants.copy(batch) } catch { return false }
        for i in 0..<count where !copies[i].status.isOkay { return false }
        return true
    }
}

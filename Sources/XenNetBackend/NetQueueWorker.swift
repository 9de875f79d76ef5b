import Synchronization
import XenNetProtocol
import XenPlatform
import XenRing
import XenSystem
#if canImport(Glibc)
import Glibc
import XenNetDevice
#endif


/// Serves one queue of a VIF: its transmit and receive rings, their event
/// channel(s), and one TAP queue. Owned by one thread (the one in `run`);
/// `statistics` may be read from any.
///
/// Guest transmit: each packet's slots are copied out once and validated
/// on the copy with Linux netback's rules, the data gathered by batched
/// grant copy into a private buffer behind a virtio-net header that
/// carries the checksum and GSO offloads, and written to the TAP.
/// Guest receive: frames read from the TAP are queued (bounded), then
/// copied into the frontend's posted buffers by batched grant copy, with
/// the response for a request in that request's own slot.
///
/// Nothing is allocated per packet: buffers, slot tables and copy batches
/// are made at init.
public final class NetQueueWorker<Platform: XenPlatform>: EventPortServing, @unchecked Sendable {
    public let statistics: NetStatistics
    let platform: Platform
    let frontend: DomainID
    let options: NetQueueOptions
    let tapDescriptor: Int32
    let multicast: MulticastFilter
    let capture: PacketCapture?
    let hashSettings: HashState
    let queueIndex: Int
    let queueCount: Int
    /// Called when this queue stalls (true) or recovers (false); the VIF
    /// turns its carrier off while any queue is stalled.
    let stallChanged: @Sendable (Bool) -> Void

    /// The guest's ring pages, mapped until `releaseGuestResources`.
    var txMapping: OwnedGrantMapping<Platform.Grants>
    var rxMapping: OwnedGrantMapping<Platform.Grants>
    /// Read and write the shared rings in those mappings.
    var txRing: BackRing<NetTxRing>
    var rxRing: BackRing<NetRxRing>
    let events: Platform.Events
    /// The transmit port; it serves receive too unless the frontend split
    /// the channels (`rxBinding`).
    var txBinding: OwnedEventPort<Platform.Events>
    var rxBinding: OwnedEventPort<Platform.Events>?
    let txPort: EventChannelPort
    let rxPort: EventChannelPort
    let control: NetControlService<Platform>?

    // Guest transmit.
    static var packetStride: Int { 69_632 }  // virtio header + 64 KiB, page multiple
    static var transmitBatch: Int { 64 }
    static var transmitBatchBytes: Int { 256 * 1024 }
    struct TxPacket {
        var firstResponse = 0
        /// Extra-info slots after the first (answered NULL).
        var extras = 0
        /// Slots taken: first, extras and fragments.
        var responseCount = 0
        var length = 0
        var flags = NetTxFlags()
        var gsoSize: UInt16 = 0
        var gsoType: UInt8 = 0
        var copyStart = 0
        var copyCount = 0
    }
    /// `transmitBatch` packet buffers of `packetStride` bytes; `txBuffers`
    /// is its base, valid while the worker lives.
    /// SAFETY: these buffers and the tables below are the worker's own
    /// (made in init, freed in deinit, touched only on its thread); guest
    /// data reaches them only by grant copy, so once copied it is ours.
    let txMemory: MappedMemory
    let txBuffers: UnsafeMutableRawPointer
    let txPackets: UnsafeMutableBufferPointer<TxPacket>
    let txResponses: UnsafeMutableBufferPointer<NetTxResponse>
    var txResponseCount = 0
    let txCopies: UnsafeMutableBufferPointer<GrantCopyOperation>
    /// The VIF's rate, shared and changed live; `rate` is this queue's copy,
    /// reloaded when the setting's generation moves.
    let rateSetting: NetRateSetting
    var rate: NetRate?
    var rateGeneration: UInt64
    var txCredit: Int
    var txCreditRefill: Int = 0  // monotonic ns of the next refill
    var txRateBlocked = false

    // Guest receive.
    static var receiveQueueCapacity: Int { 64 }
    typealias RxEntry = ReceiveEntry
    /// Frames other queues read for this one, and where this one sends
    /// frames the guest's mapping table assigns elsewhere (nil: one queue).
    let steering: ReceiveSteering?
    /// `receiveQueueCapacity` frame buffers; `rxBuffers` is its base.
    let rxMemory: MappedMemory
    let rxBuffers: UnsafeMutableRawPointer
    let rxEntries: UnsafeMutableBufferPointer<RxEntry>
    var rxHead = 0
    var rxCount = 0
    var rxQueuedBytes = 0
    struct RxPending {
        var slot: NetRxSlot
        var copyIndex: Int
    }
    let rxPending: UnsafeMutableBufferPointer<RxPending>
    var rxPendingCount = 0
    let rxCopies: UnsafeMutableBufferPointer<GrantCopyOperation>
    var rxCopyCount = 0
    var stalledSince = 0  // monotonic ns the head packet started waiting, 0 if not
    var stalled = false
    var hashCache = HashSettings()
    /// The TAP interface was deleted under us (its descriptor only errors now).
    var tapGone = false

    /// Maps both rings (one page each), binds the event channel(s): one
    /// port when `rxRemotePort` is nil, split channels otherwise.
    public init(platform: Platform, frontend: DomainID, txRingRef: GrantRef, rxRingRef: GrantRef,
                txRemotePort: EventChannelPort, rxRemotePort: EventChannelPort?, tapDescriptor: Int32,
                options: NetQueueOptions, queueIndex: Int = 0, queueCount: Int = 1,
                multicast: MulticastFilter = MulticastFilter(), capture: PacketCapture? = nil,
                control: NetControlSetup? = nil, hashSettings: HashState = HashState(), steering: ReceiveSteering? = nil,
                rateSetting: NetRateSetting? = nil, stallChanged: @escaping @Sendable (Bool) -> Void = { _ in }) throws(NetBackendError) {
        self.platform = platform
        self.frontend = frontend
        self.options = options
        self.tapDescriptor = tapDescriptor
        self.multicast = multicast
        multicast.setEnabled(options.multicastControl)
        self.capture = capture
        self.queueIndex = queueIndex
        self.queueCount = queueCount
        self.stallChanged = stallChanged
        self.hashSettings = hashSettings
        self.steering = steering
        statistics = NetStatistics()
        // Each step's resources are owned values: if a later step throws,
        // what the earlier ones took is released as they are dropped.
        do {
            txMapping = try OwnedGrantMapping([txRingRef], of: frontend, writable: true, through: platform.grants)
            rxMapping = try OwnedGrantMapping([rxRingRef], of: frontend, writable: true, through: platform.grants)
        } catch {
            throw .grant(error)
        }
        do {
            txRing = try BackRing(attaching: SharedRingMemory(base: txMapping.base, pageCount: 1))
            rxRing = try BackRing(attaching: SharedRingMemory(base: rxMapping.base, pageCount: 1))
        } catch {
            throw .ring(error)
        }
        let events: Platform.Events
        do throws(EventChannelError) {
            events = try platform.openEventChannels()
            txBinding = try OwnedEventPort(bindingTo: txRemotePort, of: frontend, on: events)
            if let rxRemotePort {
                rxBinding = try OwnedEventPort(bindingTo: rxRemotePort, of: frontend, on: events)
            } else {
                rxBinding = nil
            }
        } catch {
            throw .eventChannel(error)
        }
        self.events = events
        txPort = txBinding.port
        rxPort = rxBinding?.port ?? txPort
        if let control {
            self.control = try NetControlService(platform: platform, frontend: frontend, setup: control, events: events,
                                                 queueCount: queueCount, settings: hashSettings)
        } else {
            self.control = nil
        }
        let rateSetting = rateSetting ?? NetRateSetting(options.rate)
        self.rateSetting = rateSetting
        rateGeneration = rateSetting.generation
        rate = rateSetting.current
        txCredit = rate?.bytes ?? 0

        let txSlots = Int(txRing.size)
        let rxSlots = Int(rxRing.size)
        txMemory = reservePacketMemory(Self.transmitBatch * Self.packetStride)
        txBuffers = txMemory.base
        txPackets = .allocate(capacity: Self.transmitBatch)
        txPackets.initialize(repeating: TxPacket())
        txResponses = .allocate(capacity: txSlots)
        txResponses.initialize(repeating: NetTxResponse(id: 0, status: 0))
        txCopies = .allocate(capacity: txSlots)
        txCopies.initialize(repeating: GrantCopyOperation(source: .local(txBuffers), destination: .local(txBuffers), length: 0))
        rxMemory = reservePacketMemory(Self.receiveQueueCapacity * Self.packetStride)
        rxBuffers = rxMemory.base
        rxEntries = .allocate(capacity: Self.receiveQueueCapacity)
        rxEntries.initialize(repeating: RxEntry())
        rxPending = .allocate(capacity: rxSlots)
        rxPending.initialize(repeating: RxPending(slot: NetRxSlot(NetRxResponse(id: 0, offset: 0, flags: [], status: 0)), copyIndex: -1))
        rxCopies = .allocate(capacity: rxSlots)
        rxCopies.initialize(repeating: GrantCopyOperation(source: .local(rxBuffers), destination: .local(rxBuffers), length: 0))
    }

    /// Gives back what belongs to the guest: event channels, ring and
    /// control-ring mappings. Called on the worker's thread once it stopped,
    /// before the device may say Closed; a reference kept elsewhere must not
    /// keep guest pages mapped. Safe to repeat; no run afterwards.
    public func releaseGuestResources() {
        guard !released else { return }
        released = true
        txBinding.release()
        rxBinding?.release()
        control?.release()
        txMapping.release()
        rxMapping.release()
    }
    private var released = false

    deinit {
        releaseGuestResources()
        txPackets.deallocate()
        txResponses.deallocate()
        txCopies.deallocate()
        rxEntries.deallocate()
        rxPending.deallocate()
        rxCopies.deallocate()
    }

    /// Host packets waiting for receive buffers.
    public var queuedReceivePackets: Int { rxCount }

    // MARK: Driving the queue

    /// One pass over both rings (and the control ring): takes what the
    /// transmit ring holds (within budget and rate), delivers what the TAP
    /// has, and pushes responses. Throws when the frontend broke a rule that
    /// disables the VIF.
    public func process(now: Int = monotonicNanoseconds()) throws(NetBackendError) {
        try processTransmit(now: now)
        try processReceive(now: now)
        if let control { try control.process() }
    }

    /// After a pass: nil if there is more to do now; else how long to sleep
    /// (ms, -1 for as long as no event comes), having asked the frontend for
    /// an event on each ring we wait for (the final checks).
    public func prepareToSleep(now: Int) -> Int32? {
        var timeout: Int32 = -1
        if txRateBlocked {
            timeout = Int32(clamping: max(1, (txCreditRefill - now + 999_999) / 1_000_000))
        } else if txRing.finalCheckForRequests() {
            return nil
        }
        if rxCount > 0 {
            if receiveFinalCheck() { return nil }
            // Waiting for buffers: with rx-notify the frontend's event
            // wakes us, and only the drain and stall deadlines need a
            // timer; without it we look every 10 ms (Linux: 30 ms).
            let wait = options.rxNotify ? receiveDeadlineMilliseconds(now: now) : 10
            timeout = timeout < 0 ? wait : min(timeout, wait)
        }
        if let control, control.finalCheck() { return nil }
        return timeout
    }

    /// The receive ring's req_event as we last set it (tests).
    public var receiveRequestEvent: UInt32 {
        rxRing.requestEvent.rawValue
    }

    /// Serves the queue until `stopDescriptor` becomes readable. With
    /// `parkAfterMilliseconds` > 0 it returns `.idle` once that long passed
    /// with nothing queued, no credit wait and both rings' final checks
    /// done, so its thread can go; calling `run` again resumes it.
    @discardableResult
    public func run(stopDescriptor: Int32, parkAfterMilliseconds: Int = 0) throws(NetBackendError) -> WorkerExit {
        let inbox = steering?.inboxes[queueIndex]
        // others[0]: the TAP queue; others[1]: frames steered to us (-1: none).
        var wakeups = WorkerPollSet(eventChannel: events.fileDescriptor, stop: stopDescriptor, others: [tapDescriptor, inbox?.wake ?? -1])
        var holds = EventPortHolds(for: self)
        var pending = [EventChannelPort](repeating: EventChannelPort(0), count: 8)
        // This thread's system calls, added to the statistics each turn.
        var syscallMark = Syscall.countOnThisThread
        defer { countSyscalls(since: &syscallMark) }
        while true {
            countSyscalls(since: &syscallMark)
            let now = monotonicNanoseconds()
            try process(now: now)
            guard var timeout = prepareToSleep(now: now) else { continue }
            let holdEnds = holds.unmaskExpired(now: now, worker: self, events: events)
            // A port held masked is not idle: the hold's end must unmask it.
            let idle = timeout < 0 && parkAfterMilliseconds > 0 && holdEnds == nil
            if let holdEnds { timeout = timeout < 0 ? holdEnds : min(timeout, holdEnds) }
            if idle { timeout = Int32(clamping: parkAfterMilliseconds) }
            // Stop reading the TAP while our queue is full: the kernel's
            // queue in front of it bounds what waits there.
            wakeups.watch(other: 0, rxRoom)
            wakeups.watch(other: 1, rxRoom)
            switch wakeups.wait(timeoutMilliseconds: timeout) {
            case .timedOut where idle:
                return .idle
            case .stop:
                return .stopped
            case .timedOut, .ready:
                break
            }
            // A deleted TAP reports an error for ever: stop rather than spin.
            if wakeups.returnedEvents(other: 0) & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 { tapGone = true }
            if tapGone { throw .fatal("queue \(queueIndex): the TAP interface went away") }
            // Cleared before the next pass drains the inbox: a frame pushed
            // after that pass sets it again.
            if wakeups.returnedEvents(other: 1) != 0 { inbox?.clearWake() }
            if wakeups.eventsPending {
                let spurious: Int
                // SAFETY: `pending` is this call's own scratch, lent for the take.
                do { spurious = try pending.withUnsafeMutableBufferPointer { (b) throws(EventChannelError) -> Int in try holds.takeEvents(from: events, into: b, worker: self) } }
                catch { throw .eventChannel(error) }
                if spurious > 0 { statistics.add(.spuriousEvents, UInt64(spurious)) }
            }
        }
    }

    private func countSyscalls(since mark: inout UInt64) {
        let now = Syscall.countOnThisThread
        if now != mark { statistics.add(.syscalls, now &- mark) }
        mark = now
    }

    // MARK: Events (XSA-332)

    public enum PortRole: Int, EventPortRole { case transmit, receive, control }

    public func role(of port: EventChannelPort) -> PortRole? {
        if port == txPort { return .transmit }
        if port == rxPort { return .receive }
        if let control, port == control.port { return .control }
        return nil
    }

    public func port(of role: PortRole) -> EventChannelPort? {
        switch role {
        case .transmit: txPort
        case .receive: rxPort
        case .control: control?.port
        }
    }

    /// With one channel the transmit port serves both rings.
    public func requestsConsumed(by role: PortRole) -> UInt32 {
        switch role {
        case .transmit: txRing.requestConsumer.rawValue &+ (rxPort == txPort ? rxRing.requestConsumer.rawValue : 0)
        case .receive: rxRing.requestConsumer.rawValue
        case .control: control?.ring.requestConsumer.rawValue ?? 0
        }
    }

    /// Transmit requests we may take (not held back by the rate), frames
    /// waiting that the receive ring now has room for, control requests.
    public func hasWork(for role: PortRole) -> Bool {
        let transmit = !txRing.isHalted && !txRateBlocked && txRing.unconsumedRequests() > 0
        let receive = rxCount > 0 && !rxRing.isHalted && receiveCanProgress()
        switch role {
        case .transmit: return rxPort == txPort ? transmit || receive : transmit
        case .receive: return receive
        case .control: return control.map { !$0.ring.isHalted && $0.ring.unconsumedRequests() > 0 } ?? false
        }
    }

    /// What wakes a parked worker: its event channel device, its TAP queue
    /// and frames steered to it.
    public var wakeDescriptors: [Int32] { [events.fileDescriptor, tapDescriptor] + (steering.map { [$0.inboxes[queueIndex].wake] } ?? []) }

}

import Synchronization
import XenNetProtocol
import XenPlatform
import XenRing
#if canImport(Glibc)
import Glibc
import XenNetDevice
import XenNetChecksum
#endif

public enum NetBackendError: Error, Equatable, Sendable, CustomStringConvertible {
    case ring(RingError)
    case grant(GrantError)
    case eventChannel(EventChannelError)
    /// The frontend broke a rule Linux disables the VIF for.
    case fatal(String)

    public var description: String {
        switch self {
        case .ring(let e): "ring: \(e)"
        case .grant(let e): "grant: \(e)"
        case .eventChannel(let e): "event channel: \(e)"
        case .fatal(let why): why
        }
    }
}

/// The `rate` key: `bytes` of guest transmit credit every `microseconds`.
public struct NetRate: Sendable, Equatable {
    public var bytes: Int
    public var microseconds: Int
    public init(bytes: Int, microseconds: Int) { self.bytes = bytes; self.microseconds = microseconds }

    /// "bytes,usec" as libxl writes it.
    public init?(xenstoreValue: String) {
        let parts = xenstoreValue.split(separator: ",")
        guard parts.count == 2, let b = Int(parts[0]), let u = Int(parts[1]), b > 0, u > 0 else { return nil }
        bytes = b; microseconds = u
    }
}

/// What the frontend negotiated that a queue's data path needs.
public struct NetQueueOptions: Sendable, Equatable {
    /// The frontend notifies when it posts receive buffers (feature-rx-notify).
    public var rxNotify = true
    /// The frontend takes partial checksums (absent feature-no-csum-offload).
    public var checksumOffload = true
    public var ipv6ChecksumOffload = false
    public var gsoTCPv4 = false
    public var gsoTCPv6 = false
    /// The frontend takes packets spanning several receive slots (feature-sg).
    public var scatterGather = false
    /// The frontend filters multicast (request-multicast-control) at
    /// connect; the device follows later changes through the filter.
    public var multicastControl = false
    public var rate: NetRate?
    /// Host packets buffered per queue at most, in bytes (XSA-392).
    public var receiveQueueBytes = 512 * 1024
    /// A frontend that leaves too few receive buffers this long is stalled:
    /// carrier off until it posts again (Linux: rx_stall_timeout_msecs).
    public var receiveStallMilliseconds = 60_000
    /// Queued host packets older than this are dropped (rx_drain_timeout_msecs).
    public var receiveDrainMilliseconds = 10_000
    public init() {}
}

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
public final class NetQueueWorker<Platform: XenPlatform>: @unchecked Sendable {
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

    let txMapping: GrantMapping
    let rxMapping: GrantMapping
    var txRing: BackRing<NetTxRing>
    var rxRing: BackRing<NetRxRing>
    let events: Platform.Events
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
    let txBuffers: UnsafeMutableRawPointer
    let txPackets: UnsafeMutableBufferPointer<TxPacket>
    let txResponses: UnsafeMutableBufferPointer<NetTxResponse>
    var txResponseCount = 0
    let txCopies: UnsafeMutableBufferPointer<GrantCopyOperation>
    var txCredit: Int
    var txCreditRefill: Int = 0  // monotonic ns of the next refill
    var txRateBlocked = false

    // Guest receive.
    static var receiveQueueCapacity: Int { 64 }
    typealias RxEntry = ReceiveEntry
    /// Frames other queues read for this one, and where this one sends
    /// frames the guest's mapping table assigns elsewhere (nil: one queue).
    let steering: ReceiveSteering?
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
                stallChanged: @escaping @Sendable (Bool) -> Void = { _ in }) throws(NetBackendError) {
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
        let tx: GrantMapping
        do { tx = try platform.grants.map([txRingRef], of: frontend, writable: true) } catch { throw .grant(error) }
        let rx: GrantMapping
        do { rx = try platform.grants.map([rxRingRef], of: frontend, writable: true) } catch {
            try? platform.grants.unmap(tx)
            throw .grant(error)
        }
        do {
            txRing = try BackRing(attaching: SharedRingMemory(base: tx.base, pageCount: 1))
            rxRing = try BackRing(attaching: SharedRingMemory(base: rx.base, pageCount: 1))
        } catch {
            try? platform.grants.unmap(tx)
            try? platform.grants.unmap(rx)
            throw .ring(error)
        }
        let events: Platform.Events
        var tp = EventChannelPort(0), rp = EventChannelPort(0)
        do throws(EventChannelError) {
            events = try platform.openEventChannels()
            tp = try events.bindInterdomain(remoteDomain: frontend, remotePort: txRemotePort)
            if let rxRemotePort {
                do { rp = try events.bindInterdomain(remoteDomain: frontend, remotePort: rxRemotePort) } catch {
                    try? events.unbind(tp)
                    throw error
                }
            } else {
                rp = tp
            }
        } catch {
            try? platform.grants.unmap(tx)
            try? platform.grants.unmap(rx)
            throw .eventChannel(error)
        }
        if let control {
            do {
                self.control = try NetControlService(platform: platform, frontend: frontend, setup: control, events: events,
                                                     queueCount: queueCount, settings: self.hashSettings)
            } catch {
                try? events.unbind(tp)
                if rp != tp { try? events.unbind(rp) }
                try? platform.grants.unmap(tx)
                try? platform.grants.unmap(rx)
                throw error
            }
        } else {
            self.control = nil
        }
        self.events = events
        txPort = tp
        rxPort = rp
        txMapping = tx
        rxMapping = rx
        txCredit = options.rate?.bytes ?? 0

        let txSlots = Int(txRing.size)
        let rxSlots = Int(rxRing.size)
        txBuffers = reservePacketMemory(Self.transmitBatch * Self.packetStride)
        txPackets = .allocate(capacity: Self.transmitBatch)
        txPackets.initialize(repeating: TxPacket())
        txResponses = .allocate(capacity: txSlots)
        txResponses.initialize(repeating: NetTxResponse(id: 0, status: 0))
        txCopies = .allocate(capacity: txSlots)
        txCopies.initialize(repeating: GrantCopyOperation(source: .local(txBuffers), destination: .local(txBuffers), length: 0))
        rxBuffers = reservePacketMemory(Self.receiveQueueCapacity * Self.packetStride)
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
        try? events.unbind(txPort)
        if rxPort != txPort { try? events.unbind(rxPort) }
        control?.release()
        try? platform.grants.unmap(txMapping)
        try? platform.grants.unmap(rxMapping)
    }
    private var released = false

    deinit {
        releaseGuestResources()
        munmap(txBuffers, Self.transmitBatch * Self.packetStride)
        munmap(rxBuffers, Self.receiveQueueCapacity * Self.packetStride)
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
        rxRing.memory.base.load(fromByteOffset: 4, as: UInt32.self)
    }

    /// Serves the queue until `stopDescriptor` becomes readable. With
    /// `parkAfterMilliseconds` > 0 it returns `.idle` once that long passed
    /// with nothing queued, no credit wait and both rings' final checks
    /// done, so its thread can go; calling `run` again resumes it.
    @discardableResult
    public func run(stopDescriptor: Int32, parkAfterMilliseconds: Int = 0) throws(NetBackendError) -> WorkerExit {
        let inbox = steering?.inboxes[queueIndex]
        var fds = [pollfd(fd: events.fileDescriptor, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: tapDescriptor, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: stopDescriptor, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: inbox?.wake ?? -1, events: Int16(POLLIN), revents: 0)]
        var pending = [EventChannelPort](repeating: EventChannelPort(0), count: 8)
        // One per port: transmit (and receive when shared), receive, control.
        var throttles = [SpuriousEventThrottle](repeating: SpuriousEventThrottle(), count: 3)
        var consumedAtLastEvent = (0..<3).map { consumed(kind: $0) }
        while true {
            let now = monotonicNanoseconds()
            try process(now: now)
            guard var timeout = prepareToSleep(now: now) else { continue }
            var holding = false
            for kind in throttles.indices {
                if throttles[kind].holdExpired(now: now), let port = port(ofKind: kind) { try? events.unmask(port) }
                if let hold = throttles[kind].millisecondsUntilUnmask(now: now) {
                    holding = true
                    timeout = timeout < 0 ? hold : min(timeout, hold)
                }
            }
            // A port held masked is not idle: the hold's end must unmask it.
            let idle = timeout < 0 && parkAfterMilliseconds > 0 && !holding
            if idle { timeout = Int32(clamping: parkAfterMilliseconds) }
            // Stop reading the TAP while our queue is full: the kernel's
            // queue in front of it bounds what waits there.
            fds[1].events = rxRoom ? Int16(POLLIN) : 0
            fds[3].events = rxRoom ? Int16(POLLIN) : 0  // frames steered to us (ignored while fd is -1)
            for i in fds.indices { fds[i].revents = 0 }
            let n = poll(&fds, 4, timeout)
            if n < 0 && errno == EINTR { continue }
            if n == 0 && idle { return .idle }
            if fds[2].revents != 0 { return .stopped }
            // A deleted TAP reports an error for ever: stop rather than spin.
            if fds[1].revents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 { tapGone = true }
            if tapGone { throw .fatal("queue \(queueIndex): the TAP interface went away") }
            // Cleared before the next pass drains the inbox: a frame pushed
            // after that pass sets it again.
            if fds[3].revents != 0 { inbox?.clearWake() }
            if fds[0].revents != 0 {
                let taken: Int
                do { taken = try pending.withUnsafeMutableBufferPointer { (b) throws(EventChannelError) -> Int in try events.takePending(into: b) } }
                catch { throw .eventChannel(error) }
                let now = monotonicNanoseconds()
                for i in 0..<taken {
                    guard let kind = portKind(pending[i]) else { try? events.unmask(pending[i]); continue }
                    let foundWork = consumed(kind: kind) != consumedAtLastEvent[kind] || portHasWork(kind)
                    consumedAtLastEvent[kind] = consumed(kind: kind)
                    if !foundWork { statistics.add(statistics.spuriousEvents) }
                    if throttles[kind].recordWake(foundWork: foundWork, now: now) { try? events.unmask(pending[i]) }
                }
            }
        }
    }

    // MARK: Spurious events (XSA-332)

    private func portKind(_ port: EventChannelPort) -> Int? {
        if port == txPort { return 0 }
        if port == rxPort { return 1 }
        if let control, port == control.port { return 2 }
        return nil
    }

    private func port(ofKind kind: Int) -> EventChannelPort? {
        switch kind {
        case 0: txPort
        case 1: rxPort
        default: control?.port
        }
    }

    /// The request consumer of the rings this kind of port serves: when it
    /// moved since the port's last event, that event was not for nothing
    /// (an honest kick often arrives after a final check took its request).
    private func consumed(kind: Int) -> UInt32 {
        switch kind {
        case 0: txRing.requestConsumer.rawValue &+ (rxPort == txPort ? rxRing.requestConsumer.rawValue : 0)
        case 1: rxRing.requestConsumer.rawValue
        default: control?.ring.requestConsumer.rawValue ?? 0
        }
    }

    /// Whether an event on this kind of port brings something we can do now:
    /// transmit requests we may take (not held back by the rate), frames
    /// waiting that the receive ring now has room for, control requests.
    private func portHasWork(_ kind: Int) -> Bool {
        let transmit = !txRing.isHalted && !txRateBlocked && txRing.unconsumedRequests() > 0
        let receive = rxCount > 0 && !rxRing.isHalted && receiveCanProgress()
        switch kind {
        case 0: return rxPort == txPort ? transmit || receive : transmit
        case 1: return receive
        default: return control.map { !$0.ring.isHalted && $0.ring.unconsumedRequests() > 0 } ?? false
        }
    }

    /// What wakes a parked worker: its event channel device, its TAP queue
    /// and frames steered to it.
    public var wakeDescriptors: [Int32] { [events.fileDescriptor, tapDescriptor] + (steering.map { [$0.inboxes[queueIndex].wake] } ?? []) }

    // MARK: Guest transmit

    private func transmitFatal(_ why: String) -> NetBackendError {
        .fatal("queue \(queueIndex) transmit: \(why)")
    }

    /// Rate limiting as Linux's tx_credit_exceeded: `bytes` of credit per
    /// interval, bursts capped at max(128 KiB, bytes). Unlike Linux, a late
    /// wakeup does not lose credit: every interval that passed adds its share
    /// (still capped), and intervals stay on their grid, so a busy host keeps
    /// the configured rate instead of falling below it.
    private func creditAllows(_ size: Int, now: Int) -> Bool {
        guard let rate = options.rate else { return true }
        if size <= txCredit { return true }
        let interval = rate.microseconds * 1000
        if txCreditRefill == 0 { txCreditRefill = now + interval }
        if now >= txCreditRefill {
            let intervals = 1 + (now - txCreditRefill) / interval
            let burst = max(131_072, rate.bytes)
            txCredit = min(txCredit + rate.bytes * min(intervals, burst / rate.bytes + 1), burst)
            txCreditRefill += intervals * interval
            if size <= txCredit { return true }
        }
        return false
    }

    private func recordTx(id: UInt16, status: Int16) {
        txResponses[txResponseCount] = NetTxResponse(id: id, status: status)
        txResponseCount += 1
    }

    private func failTx(from first: Int, extras: Int, count: Int) {
        // The packet's first slot and its fragments get ERROR; extras stay NULL.
        for i in first..<(first + count) where i == first || i > first + extras {
            txResponses[i].status = NetStatus.error
        }
    }

    func processTransmit(now: Int) throws(NetBackendError) {
        txRateBlocked = false
        guard !txRing.isHalted else { return }
        var producer: RingIndex
        do { producer = try txRing.readRequestProducer() } catch { throw .ring(error) }
        var packets = 0
        var copies = 0
        var bytes = 0
        txResponseCount = 0
        var fatal: NetBackendError?
        // Bounded: at most `transmitBatch` packets, each at most the slots
        // published, which readRequestProducer checked against the ring size.
        // Large packets end a batch early: their buffers then stay in cache
        // between the copy in and the write out.
        while packets < Self.transmitBatch, bytes < Self.transmitBatchBytes, fatal == nil {
            guard let peek = txRing.peekRequest(before: producer) else {
                // Requests published since the pass began join this batch.
                if txRing.unconsumedRequests() > 0, let p = try? txRing.readRequestProducer(), p != producer {
                    producer = p
                    continue
                }
                break
            }
            if options.rate != nil {
                if !creditAllows(Int(peek.request.size), now: now) {
                    txRateBlocked = true
                    statistics.add(statistics.txCreditWaits)
                    break
                }
            }
            // Room for the worst case: every remaining slot one copy.
            if copies + NetLimits.fatalSlotsPerPacket + 2 > txCopies.count { break }
            switch takePacket(producer: producer, slot: packets, copyStart: copies) {
            case .packet(let packet):
                txPackets[packets] = packet
                packets += 1
                copies += packet.copyCount
                bytes += packet.length
                if options.rate != nil { txCredit -= packet.length }
            case .answered:
                break
            case .fatal(let why):
                fatal = transmitFatal(why)
            }
        }
        if copies > 0 {
            do { try platform.grants.copy(UnsafeMutableBufferPointer(rebasing: txCopies[0..<copies])) } catch {
                // The batch could not run at all: every packet in it fails.
                for i in 0..<copies { txCopies[i].status = .generalError }
            }
        }
        for i in 0..<packets { finishPacket(txPackets[i], buffer: txBuffers + i * Self.packetStride) }
        for i in 0..<txResponseCount { txRing.produceResponse(txResponses[i]) }
        txResponseCount = 0
        if txRing.pushResponses() { try? events.notify(txPort) }
        if let fatal { throw fatal }
    }

    enum TakeOutcome {
        case packet(TxPacket)
        /// Consumed and answered (dropped, or a multicast control request).
        case answered
        case fatal(String)
    }

    /// Consumes one packet's slots (first, extras, fragments), validating
    /// each private copy, and queues its grant copies. Linux netback's
    /// rules: more fragments than the published slots, more than 20
    /// fragments, bad extras and page-crossing slots are fatal; 19–20
    /// fragments, a fragment larger than what remains and a first slot
    /// shorter than an Ethernet header drop the packet.
    private func takePacket(producer: RingIndex, slot: Int, copyStart: Int) -> TakeOutcome {
        guard let firstSlot = txRing.nextRequest(before: producer) else { return .fatal("no request") }
        let first = firstSlot.request
        let firstResponse = txResponseCount
        recordTx(id: first.id, status: NetStatus.okay)
        var packet = TxPacket(firstResponse: firstResponse, length: Int(first.size), flags: first.flags, copyStart: copyStart)

        var extras = 0
        var multicastAdd: UInt64?
        var multicastDelete: UInt64?
        if first.flags.contains(.extraInfo) {
            var more = true
            while more {
                guard let slot = txRing.nextRequest(before: producer) else {
                    return .fatal("missing extra info after request \(first.id)")
                }
                let extra = slot.extraInfo
                extras += 1
                recordTx(id: 0, status: NetStatus.null)
                guard extra.type != .none, extra.type.rawValue < NetExtraType.limit.rawValue else {
                    return .fatal("invalid extra type \(extra.type.rawValue)")
                }
                switch extra.type {
                case .gso:
                    guard extra.gsoSize != 0 else { return .fatal("GSO size must not be zero") }
                    guard extra.gsoType == NetGSOType.tcpv4 || extra.gsoType == NetGSOType.tcpv6 else {
                        return .fatal("bad GSO type \(extra.gsoType)")
                    }
                    packet.gsoSize = extra.gsoSize
                    packet.gsoType = extra.gsoType
                case .multicastAdd:
                    multicastAdd = extra.payload
                case .multicastDelete:
                    multicastDelete = extra.payload
                default:
                    break  // HASH: the guest's own hash; nothing to do with it on TAP.
                }
                more = extra.hasMore
            }
        }
        if let address = multicastAdd {
            let ok = multicast.isEnabled && multicast.add(address)
            if !ok { txResponses[firstResponse].status = NetStatus.error }
            return .answered
        }
        if let address = multicastDelete {
            if multicast.isEnabled { multicast.remove(address) } else { txResponses[firstResponse].status = NetStatus.error }
            return .answered
        }

        var remaining = Int(first.size)
        var fragments = 0
        var dropWhy: StaticString?
        var more = first.flags.contains(.moreData)
        let buffer = txBuffers + slot * Self.packetStride + VirtioNetHeader.size
        var copies = 0
        // Fragment data follows the first slot's, which is sized at the end.
        var fragmentBytes = 0
        while more {
            if fragments >= NetLimits.fatalSlotsPerPacket { return .fatal("malicious frontend using more than \(fragments) slots") }
            if dropWhy == nil && fragments >= NetLimits.minimumSlotsPerPacket { dropWhy = "too many slots" }
            guard let slot = txRing.nextRequest(before: producer) else {
                return .fatal("packet continues past the \(fragments + 1 + extras) slots published")
            }
            let fragment = slot.request
            recordTx(id: fragment.id, status: NetStatus.okay)
            fragments += 1
            if dropWhy == nil && Int(fragment.size) > remaining { dropWhy = "fragment larger than the packet" }
            remaining = max(0, remaining - Int(fragment.size))
            if Int(fragment.offset) + Int(fragment.size) > NetLimits.pageSize {
                return .fatal("slot crosses a page: offset \(fragment.offset) size \(fragment.size)")
            }
            more = fragment.flags.contains(.moreData)
            // Zero-length fragments are answered without touching their grant (XSA-448).
            if dropWhy == nil && fragment.size > 0 {
                txCopies[copyStart + 1 + copies] = GrantCopyOperation(
                    source: .grant(GrantRef(fragment.grant), domain: frontend, offset: fragment.offset),
                    destination: .local(buffer + 0), length: fragment.size)
                // Destination fixed below once the first slot's length is known.
                copies += 1
                fragmentBytes += Int(fragment.size)
            }
        }
        if dropWhy == nil && remaining < PacketLayout.ethernetHeaderLength { dropWhy = "first slot shorter than an Ethernet header" }
        if dropWhy != nil {
            failTx(from: firstResponse, extras: extras, count: txResponseCount - firstResponse)
            statistics.add(statistics.txErrors)
            return .answered
        }
        if Int(first.offset) + remaining > NetLimits.pageSize {
            return .fatal("first slot crosses a page: offset \(first.offset) size \(remaining)")
        }
        txCopies[copyStart] = GrantCopyOperation(source: .grant(GrantRef(first.grant), domain: frontend, offset: first.offset),
                                                 destination: .local(buffer), length: UInt16(remaining))
        var at = remaining
        for i in 0..<copies {
            txCopies[copyStart + 1 + i].destination = .local(buffer + at)
            at += Int(txCopies[copyStart + 1 + i].length)
        }
        packet.copyCount = copies + 1
        packet.length = remaining + fragmentBytes
        packet.extras = extras
        packet.responseCount = txResponseCount - firstResponse
        return .packet(packet)
    }

    /// After the copies: checks them, sets the offload header, hands the
    /// frame to the TAP.
    private func finishPacket(_ packet: TxPacket, buffer: UnsafeMutableRawPointer) {
        for i in packet.copyStart..<(packet.copyStart + packet.copyCount) where !txCopies[i].status.isOkay {
            // A grant that failed (revoked, wrong domain, read-only misuse): drop, answer ERROR (XSA-367).
            failPacket(packet)
            return
        }
        let frame = UnsafeMutableRawBufferPointer(start: buffer + VirtioNetHeader.size, count: packet.length)
        var header = VirtioNetHeader()
        if packet.flags.contains(.checksumBlank) || packet.gsoSize != 0 {
            guard let layout = PacketLayout(frame: UnsafeRawBufferPointer(frame)) else {
                failPacket(packet)  // a partial checksum we cannot locate
                return
            }
            if packet.gsoSize != 0 {
                let v6 = packet.gsoType == NetGSOType.tcpv6
                guard layout.transportProtocol == 6, layout.isIPv6 == v6 else {
                    failPacket(packet)
                    return
                }
                header.gsoType = v6 ? VirtioNetHeader.gsoTCPv6 : VirtioNetHeader.gsoTCPv4
                header.gsoSize = packet.gsoSize
                header.headerLength = UInt16(layout.headerLength)
            }
            // The guest may have left anything in the field (Linux recalculates too).
            layout.preparePartialChecksum(frame: frame)
            header.flags = VirtioNetHeader.needsChecksum
            header.checksumStart = UInt16(layout.transportOffset)
            header.checksumOffset = UInt16(layout.checksumOffset)
        } else if packet.flags.contains(.dataValidated) {
            header.flags = VirtioNetHeader.dataValid
        }
        header.write(to: buffer)
        capture?.write(buffer + VirtioNetHeader.size, length: packet.length)
        let total = VirtioNetHeader.size + packet.length
        var written: Int
        repeat { written = write(tapDescriptor, buffer, total) } while written < 0 && errno == EINTR
        if written == total {
            statistics.add(statistics.txPackets)
            statistics.add(statistics.txBytes, UInt64(packet.length))
        } else {
            statistics.add(statistics.txDropped)
        }
    }

    private func failPacket(_ packet: TxPacket) {
        failTx(from: packet.firstResponse, extras: packet.extras, count: packet.responseCount)
        statistics.add(statistics.txErrors)
    }

    // MARK: Guest receive

    private var rxRoom: Bool { rxCount < Self.receiveQueueCapacity && rxQueuedBytes < options.receiveQueueBytes }

    private func rxBuffer(_ index: Int) -> UnsafeMutableRawPointer { rxBuffers + index * Self.packetStride }

    /// Reads what the TAP has into the queue, while it has room; prepares
    /// each frame (offloads, filter, hash) once, on our copy.
    private func readTap(now: Int) {
        // Frames other queues read for us first: they waited longer.
        steering?.inboxes[queueIndex].drain(while: { rxRoom }) { entry, frame in
            if stalled { statistics.add(statistics.rxDropped); return }
            let index = (rxHead + rxCount) % Self.receiveQueueCapacity
            (rxBuffer(index) + VirtioNetHeader.size).copyMemory(from: frame, byteCount: entry.length)
            var entry = entry
            entry.enqueued = now
            rxEntries[index] = entry
            rxCount += 1
            rxQueuedBytes += entry.length
        }
        while rxRoom {
            let index = (rxHead + rxCount) % Self.receiveQueueCapacity
            let buffer = rxBuffer(index)
            let n = read(tapDescriptor, buffer, Self.packetStride)
            if n < 0 {
                if errno == EINTR { continue }
                if errno != EAGAIN { tapGone = true }  // EBADFD, EIO: the interface is gone
                return
            }
            if n == 0 { return }
            if stalled {
                statistics.add(statistics.rxDropped)
                continue
            }
            guard var entry = prepare(buffer: buffer, count: n) else {
                statistics.add(statistics.rxDropped)
                continue
            }
            if let target = steeringTarget(entry), target != queueIndex {
                // The guest's mapping table wants it on another queue.
                if !steering!.inboxes[target].push(entry, frame: buffer + VirtioNetHeader.size) { statistics.add(statistics.rxDropped) }
                continue
            }
            entry.enqueued = now
            rxEntries[index] = entry
            rxCount += 1
            rxQueuedBytes += entry.length
        }
    }

    private func prepare(buffer: UnsafeMutableRawPointer, count n: Int) -> RxEntry? {
        guard n >= VirtioNetHeader.size + PacketLayout.ethernetHeaderLength else { return nil }
        let length = n - VirtioNetHeader.size
        let frame = UnsafeMutableRawBufferPointer(start: buffer + VirtioNetHeader.size, count: length)
        let header = VirtioNetHeader(from: buffer)
        var entry = RxEntry(length: length)
        // Multicast (not broadcast) frames pass only if the frontend asked for them.
        if frame[0] & 1 == 1 && multicast.isEnabled {
            let key = MulticastFilter.key(frame.baseAddress!)
            if key != 0xFFFF_FFFF_FFFF && !multicast.contains(key) { return nil }
        }
        var layout: PacketLayout?
        if header.flags & VirtioNetHeader.needsChecksum != 0 {
            layout = PacketLayout(frame: UnsafeRawBufferPointer(frame))
            let partialOK = options.checksumOffload && (layout?.isIPv6 != true || options.ipv6ChecksumOffload)
            if partialOK {
                entry.rxFlags = [.checksumBlank, .dataValidated]
            } else {
                let start = Int(header.checksumStart), offset = Int(header.checksumOffset)
                guard start + offset + 2 <= length else { return nil }
                InternetChecksum.complete(frame: frame, start: start, offset: offset, end: length)
                entry.rxFlags = [.dataValidated]
            }
        } else if header.flags & VirtioNetHeader.dataValid != 0 {
            entry.rxFlags = [.dataValidated]
        }
        switch header.gsoType & ~VirtioNetHeader.gsoECN {
        case VirtioNetHeader.gsoNone: break
        case VirtioNetHeader.gsoTCPv4 where options.gsoTCPv4:
            entry.gsoType = NetGSOType.tcpv4
            entry.gsoSize = header.gsoSize
        case VirtioNetHeader.gsoTCPv6 where options.gsoTCPv6:
            entry.gsoType = NetGSOType.tcpv6
            entry.gsoSize = header.gsoSize
        default:
            return nil  // an offload the frontend did not ask for
        }
        if hashCache.enabled {
            if layout == nil { layout = PacketLayout(frame: UnsafeRawBufferPointer(frame)) }
            if let layout, let (hash, type) = receiveHash(frame: UnsafeRawBufferPointer(frame), layout: layout) {
                entry.hash = hash
                entry.hashType = type
                entry.hasHash = true
            }
        }
        let dataSlots = (length + NetLimits.pageSize - 1) / NetLimits.pageSize
        guard dataSlots == 1 || options.scatterGather else { return nil }
        entry.slotsNeeded = dataSlots + (entry.gsoType != 0 ? 1 : 0) + (entry.hasHash ? 1 : 0)
        capture?.write(frame.baseAddress!, length: length)
        return entry
    }

    /// The queue the guest's mapping table names for a hashed frame
    /// (entries were checked against the queue count when set, XSA-270).
    private func steeringTarget(_ entry: RxEntry) -> Int? {
        guard steering != nil, entry.hasHash, hashCache.mappingSize > 0 else { return nil }
        let target = Int(hashCache.mapping[Int(entry.hash % UInt32(hashCache.mappingSize))])
        return target < queueCount ? target : nil
    }

    /// The Toeplitz hash of the flow, for the types the frontend enabled
    /// (TCP over the 4-tuple when asked, else the addresses).
    private func receiveHash(frame: UnsafeRawBufferPointer, layout: PacketLayout) -> (UInt32, UInt8)? {
        let types = hashCache.types
        let tcp = layout.transportProtocol == 6
        let addressBytes = layout.isIPv6 ? 32 : 8
        let addressStart = layout.networkOffset + (layout.isIPv6 ? 8 : 12)
        let withPorts: Bool
        let type: UInt8
        if layout.isIPv6 {
            if tcp && types.contains(.ipv6TCP) { withPorts = true; type = 3 }
            else if types.contains(.ipv6) { withPorts = false; type = 2 }
            else { return nil }
        } else {
            if tcp && types.contains(.ipv4TCP) { withPorts = true; type = 1 }
            else if types.contains(.ipv4) { withPorts = false; type = 0 }
            else { return nil }
        }
        var input = InlineArray<36, UInt8>(repeating: 0)
        for i in 0..<addressBytes { input[i] = frame[addressStart + i] }
        var count = addressBytes
        if withPorts {
            for i in 0..<4 { input[addressBytes + i] = frame[layout.transportOffset + i] }
            count += 4
        }
        let key = hashCache.key
        return withUnsafeBytes(of: key) { k in
            withUnsafeBytes(of: input) { inp in
                (ToeplitzHash.hash(key: k, input: UnsafeRawBufferPointer(rebasing: inp[0..<count])), type)
            }
        }
    }

    /// Before sleeping with packets queued: asks the frontend for an event
    /// once the head packet's buffers are posted, then looks once more (a
    /// pass may end on its budget with req_event left behind).
    private func receiveFinalCheck() -> Bool {
        guard rxCount > 0, !rxRing.isHalted else { return false }
        if receiveCanProgress() { return true }
        rxRing.requestEvent(after: UInt32(rxEntries[rxHead].slotsNeeded))
        return receiveCanProgress()
    }

    /// Until the head packet's drain or stall deadline, whichever is first.
    private func receiveDeadlineMilliseconds(now: Int) -> Int32 {
        let drain = rxEntries[rxHead].enqueued + options.receiveDrainMilliseconds * 1_000_000
        let stall = (stalledSince == 0 ? now : stalledSince) + options.receiveStallMilliseconds * 1_000_000
        return Int32(clamping: max(1, (min(drain, stall) - now + 999_999) / 1_000_000))
    }

    /// Whether the head packet could be delivered now.
    private func receiveCanProgress() -> Bool {
        guard rxCount > 0, !rxRing.isHalted else { return false }
        return Int(rxRing.unconsumedRequests()) >= rxEntries[rxHead].slotsNeeded
    }

    func processReceive(now: Int) throws(NetBackendError) {
        // Uncontended; the control ring may have changed it since the last pass.
        hashCache = hashSettings.state.withLock { $0 }
        defer { checkStall(now: now) }
        readTap(now: now)
        guard rxCount > 0, !rxRing.isHalted else { return }
        var producer: RingIndex
        do { producer = try rxRing.readRequestProducer() } catch { throw .ring(error) }
        var delivered = 0
        // Bounded: each packet is dequeued or the loop ends; at most a ring's worth.
        while rxCount > 0 && delivered < Int(rxRing.size) {
            let entry = rxEntries[rxHead]
            var available = Int(producer &- rxRing.requestConsumer)
            if available < entry.slotsNeeded {
                // Ask to be told when enough buffers are posted, then look again.
                rxRing.requestEvent(after: UInt32(entry.slotsNeeded))
                do { producer = try rxRing.readRequestProducer() } catch { throw .ring(error) }
                available = Int(producer &- rxRing.requestConsumer)
                if available < entry.slotsNeeded { break }
            }
            if rxCopyCount + entry.slotsNeeded > rxCopies.count || rxPendingCount + entry.slotsNeeded > rxPending.count {
                flushReceive()
            }
            deliver(entry, buffer: rxBuffer(rxHead) + VirtioNetHeader.size, producer: producer)
            dequeueHead()
            delivered += 1
            if rxCount == 0 { readTap(now: now) }
        }
        flushReceive()
    }

    private func dequeueHead() {
        rxQueuedBytes -= rxEntries[rxHead].length
        rxHead = (rxHead + 1) % Self.receiveQueueCapacity
        rxCount -= 1
    }

    /// Consumes the packet's requests and queues its copies; the responses
    /// go in the same slots as the requests (netfront reads them there).
    private func deliver(_ entry: RxEntry, buffer: UnsafeMutableRawPointer, producer: RingIndex) {
        var offset = 0
        var first = true
        while offset < entry.length || first {
            guard let request = rxRing.nextRequest(before: producer) else { return }
            let chunk = min(NetLimits.pageSize, entry.length - offset)
            var flags: NetRxFlags = []
            if offset + chunk < entry.length { flags.insert(.moreData) }
            if first {
                flags.formUnion(entry.rxFlags)
                if entry.gsoType != 0 || entry.hasHash { flags.insert(.extraInfo) }
            }
            rxCopies[rxCopyCount] = GrantCopyOperation(source: .local(buffer + offset),
                                                       destination: .grant(GrantRef(request.grant), domain: frontend, offset: 0),
                                                       length: UInt16(chunk))
            rxPending[rxPendingCount] = RxPending(
                slot: NetRxSlot(NetRxResponse(id: request.id, offset: 0, flags: flags, status: Int16(chunk))),
                copyIndex: rxCopyCount)
            rxCopyCount += 1
            rxPendingCount += 1
            offset += chunk
            if first {
                first = false
                // Extras follow the first slot, each in a request slot of its own.
                if entry.gsoType != 0 {
                    guard rxRing.nextRequest(before: producer) != nil else { return }
                    rxPending[rxPendingCount] = RxPending(
                        slot: NetRxSlot(NetExtraInfo.gso(size: entry.gsoSize, type: entry.gsoType, more: entry.hasHash)), copyIndex: -1)
                    rxPendingCount += 1
                }
                if entry.hasHash {
                    guard rxRing.nextRequest(before: producer) != nil else { return }
                    rxPending[rxPendingCount] = RxPending(
                        slot: NetRxSlot(NetExtraInfo.hash(type: entry.hashType, algorithm: UInt8(NetHashAlgorithm.toeplitz), value: entry.hash)),
                        copyIndex: -1)
                    rxPendingCount += 1
                }
            }
        }
        statistics.add(statistics.rxPackets)
        statistics.add(statistics.rxBytes, UInt64(entry.length))
    }

    private func flushReceive() {
        guard rxPendingCount > 0 else { return }
        if rxCopyCount > 0 {
            do { try platform.grants.copy(UnsafeMutableBufferPointer(rebasing: rxCopies[0..<rxCopyCount])) } catch {
                for i in 0..<rxCopyCount { rxCopies[i].status = .generalError }
            }
        }
        for i in 0..<rxPendingCount {
            var slot = rxPending[i].slot
            let c = rxPending[i].copyIndex
            if c >= 0 && !rxCopies[c].status.isOkay {
                var response = slot.response
                response.status = NetStatus.error
                slot = NetRxSlot(response)
                statistics.add(statistics.rxErrors)
            }
            rxRing.produceResponse(slot)
        }
        rxPendingCount = 0
        rxCopyCount = 0
        if rxRing.pushResponses() { try? events.notify(rxPort) }
    }

    /// Linux's rx stall and drain rules: a head packet waiting past the
    /// drain timeout is dropped with everything queued; a ring without
    /// enough buffers past the stall timeout turns the carrier off, and
    /// packets arriving meanwhile are dropped, until the frontend posts a
    /// buffer again.
    private func checkStall(now: Int) {
        if stalled {
            guard rxRing.unconsumedRequests() > 0 else {
                // Be told of the next buffer posted.
                rxRing.requestEvent(after: 1)
                return
            }
            stalled = false
            stalledSince = 0
            stallChanged(false)
        }
        if rxCount == 0 || receiveCanProgress() {
            stalledSince = 0
            return
        }
        if stalledSince == 0 { stalledSince = now }
        if now - stalledSince >= options.receiveStallMilliseconds * 1_000_000 {
            stalled = true
            statistics.add(statistics.rxStalls)
            stallChanged(true)
            dropQueue()
            rxRing.requestEvent(after: 1)
        } else if now - rxEntries[rxHead].enqueued >= options.receiveDrainMilliseconds * 1_000_000 {
            dropQueue()
        }
    }

    private func dropQueue() {
        statistics.add(statistics.rxDropped, UInt64(rxCount))
        while rxCount > 0 { dequeueHead() }
    }
}

/// Packet buffers reserved, not committed: only pages a packet touched take
/// memory. The caller owns them and unmaps them (munmap, same size).
func reservePacketMemory(_ bytes: Int) -> UnsafeMutableRawPointer {
    let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
    precondition(p != MAP_FAILED && p != nil, "cannot reserve \(bytes) bytes of packet buffers")
    return p!
}

import XenBus
import XenBusClient
import XenNetProtocol
import XenPlatform
import XenRing
import XenStore
#if canImport(Glibc)
import Glibc
#endif

/// How the test frontend sets itself up; each feature is used only if the
/// backend offers it, as Linux netfront does.
public struct NetFrontendOptions: Sendable, Equatable {
    public var queues: Int
    public var splitEventChannels: Bool
    public var rxNotify: Bool
    public var scatterGather: Bool
    public var gsoTCPv4: Bool
    public var gsoTCPv6: Bool
    /// false writes feature-no-csum-offload: the backend then completes checksums.
    public var checksumOffload: Bool
    public var ipv6ChecksumOffload: Bool
    public var multicastControl: Bool
    public var controlRing: Bool
    public var mtu: Int?

    public init(queues: Int = 1, splitEventChannels: Bool = true, rxNotify: Bool = true, scatterGather: Bool = true,
                gsoTCPv4: Bool = true, gsoTCPv6: Bool = true, checksumOffload: Bool = true, ipv6ChecksumOffload: Bool = true,
                multicastControl: Bool = false, controlRing: Bool = false, mtu: Int? = nil) {
        self.queues = queues; self.splitEventChannels = splitEventChannels; self.rxNotify = rxNotify
        self.scatterGather = scatterGather; self.gsoTCPv4 = gsoTCPv4; self.gsoTCPv6 = gsoTCPv6
        self.checksumOffload = checksumOffload; self.ipv6ChecksumOffload = ipv6ChecksumOffload
        self.multicastControl = multicastControl; self.controlRing = controlRing; self.mtu = mtu
    }

    /// Guest frames needed: per queue two ring pages and a page per slot of
    /// each ring; two more for the control ring and its scratch page.
    public var framesNeeded: Int { queues * (2 + 256 + 256) + (controlRing ? 2 : 0) }
}

public enum NetFrontendError: Error, Sendable, CustomStringConvertible {
    case backendRefused(String)
    case timeout(String)
    case notEnoughMemory(needed: Int, given: Int)
    case badKey(String)
    case frame(String)

    public var description: String {
        switch self {
        case .backendRefused(let why): "the backend did not connect: \(why)"
        case .timeout(let what): "timed out waiting for \(what)"
        case .notEnoughMemory(let needed, let given): "the frontend needs \(needed) guest frames, was given \(given)"
        case .badKey(let what): what
        case .frame(let why): why
        }
    }
}

/// A received frame with what the backend said about it.
public struct ReceivedFrame: Sendable, Equatable {
    public var bytes: [UInt8]
    public var flags: NetRxFlags
    public var gso: NetExtraInfo?
    public var hash: NetExtraInfo?
    /// Slots it took (data slots and extras).
    public var slots: Int
}

/// A netfront in Swift for a simulated guest: rings, grants and event
/// channels in guest memory, negotiated through xenstore like Linux's
/// xen-netfront, sending and receiving Ethernet frames per queue.
public final class NetFrontend: @unchecked Sendable {
    public let frontendPath: String
    public let backendPath: String
    public let queues: [NetFrontendQueue]
    public let options: NetFrontendOptions
    public let control: NetFrontendControl?
    let xenstore: XenStoreClient

    init(frontendPath: String, backendPath: String, queues: [NetFrontendQueue], options: NetFrontendOptions,
         control: NetFrontendControl?, xenstore: XenStoreClient) {
        self.frontendPath = frontendPath; self.backendPath = backendPath; self.queues = queues
        self.options = options; self.control = control; self.xenstore = xenstore
    }

    public static func connect(domain: any GuestDomain, xenstore: XenStoreClient, frontendPath: String, frames: Range<UInt32>,
                               options requested: NetFrontendOptions = NetFrontendOptions(),
                               openEventChannels: (() throws -> any GuestEventChannelDevice)? = nil,
                               timeout: Duration = .seconds(30)) async throws -> NetFrontend {
        // In-process guests use the hypervisor directly; a guest in another
        // process passes its SimClient's device.
        let openEvents = openEventChannels ?? { try domain.openGuestEventChannels() }
        guard let backendPath = try await xenstore.readIfPresent(frontendPath + "/backend"),
              let backendIDText = try await xenstore.readIfPresent(frontendPath + "/backend-id"),
              let backendID = UInt16(backendIDText) else {
            throw NetFrontendError.badKey("\(frontendPath)/backend and backend-id name the backend")
        }
        _ = try await awaitXenbusState(xenstore, backendPath, timeout: timeout, "backend InitWait") { $0 == .initWait }
        func backendFlag(_ key: String) async throws -> Bool { try await xenstore.readIfPresent(backendPath + "/" + key) == "1" }
        var options = requested
        let maximumQueues = try await xenstore.readIfPresent(backendPath + "/multi-queue-max-queues").flatMap { Int($0) } ?? 1
        options.queues = max(1, min(options.queues, maximumQueues))
        if options.splitEventChannels { options.splitEventChannels = try await backendFlag("feature-split-event-channels") }
        if options.scatterGather { options.scatterGather = try await backendFlag("feature-sg") }
        if options.gsoTCPv4 { options.gsoTCPv4 = try await backendFlag("feature-gso-tcpv4") }
        if options.gsoTCPv6 { options.gsoTCPv6 = try await backendFlag("feature-gso-tcpv6") }
        if options.multicastControl { options.multicastControl = try await backendFlag("feature-multicast-control") }
        if options.controlRing { options.controlRing = try await backendFlag("feature-ctrl-ring") }
        guard try await backendFlag("feature-rx-copy") else { throw NetFrontendError.backendRefused("the backend lacks feature-rx-copy") }
        guard options.framesNeeded <= frames.count else {
            throw NetFrontendError.notEnoughMemory(needed: options.framesNeeded, given: frames.count)
        }
        var next = frames.lowerBound
        func take(_ n: Int) -> [UInt32] {
            defer { next += UInt32(n) }
            return (0..<UInt32(n)).map { next + $0 }
        }
        let backend = DomainID(backendID)
        var queues: [NetFrontendQueue] = []
        for q in 0..<options.queues {
            queues.append(try NetFrontendQueue(index: q, domain: domain, backend: backend, events: try openEvents(),
                                               split: options.splitEventChannels, ringFrames: take(2),
                                               txFrames: take(256), rxFrames: take(256)))
        }
        let control = options.controlRing
            ? try NetFrontendControl(domain: domain, backend: backend, events: try openEvents(), frames: take(2)) : nil
        try await xenstore.withTransaction { t in
            func put(_ key: String, _ value: String) async throws { try await xenstore.write(frontendPath + "/" + key, value, transaction: t) }
            for (q, queue) in queues.enumerated() {
                let prefix = options.queues == 1 ? "" : "queue-\(q)/"
                try await put(prefix + "tx-ring-ref", "\(queue.txRingRef.rawValue)")
                try await put(prefix + "rx-ring-ref", "\(queue.rxRingRef.rawValue)")
                if options.splitEventChannels {
                    try await put(prefix + "event-channel-tx", "\(queue.txPort.rawValue)")
                    try await put(prefix + "event-channel-rx", "\(queue.rxPort.rawValue)")
                } else {
                    try await put(prefix + "event-channel", "\(queue.txPort.rawValue)")
                }
            }
            if options.queues > 1 { try await put("multi-queue-num-queues", "\(options.queues)") }
            if let control {
                try await put("ctrl-ring-ref", "\(control.ringRef.rawValue)")
                try await put("event-channel-ctrl", "\(control.port.rawValue)")
            }
            try await put("request-rx-copy", "1")
            try await put("feature-rx-notify", options.rxNotify ? "1" : "0")
            try await put("feature-sg", options.scatterGather ? "1" : "0")
            try await put("feature-gso-tcpv4", options.gsoTCPv4 ? "1" : "0")
            try await put("feature-gso-tcpv6", options.gsoTCPv6 ? "1" : "0")
            try await put("feature-ipv6-csum-offload", options.ipv6ChecksumOffload ? "1" : "0")
            if !options.checksumOffload { try await put("feature-no-csum-offload", "1") }
            if options.multicastControl { try await put("request-multicast-control", "1") }
            if let mtu = options.mtu { try await put("mtu", "\(mtu)") }
        }
        // Buffers posted before Connected, as netfront does.
        for queue in queues { try queue.postReceiveBuffers() }
        try await xenstore.write(frontendPath + "/state", "\(XenbusState.connected.rawValue)")
        let state = try await awaitXenbusState(xenstore, backendPath, timeout: timeout, "backend Connected") {
            $0 == .connected || $0 == .closing || $0 == .closed
        }
        guard state == .connected else {
            let why = try await xenstore.readIfPresent(backendPath + "/error") ?? "backend went to \(state)"
            throw NetFrontendError.backendRefused(why)
        }
        return NetFrontend(frontendPath: frontendPath, backendPath: backendPath, queues: queues, options: options,
                           control: control, xenstore: xenstore)
    }

    /// Turns multicast filtering on or off while connected
    /// (feature-dynamic-multicast-control).
    public func setMulticastControl(_ on: Bool) async throws {
        try await xenstore.write(frontendPath + "/request-multicast-control", on ? "1" : "0")
    }

    /// Closing, wait for the backend, Closed; then ends foreign access to
    /// every page. Returns whether every grant could be revoked.
    @discardableResult
    public func close(timeout: Duration = .seconds(30)) async throws -> Bool {
        try await xenstore.write(frontendPath + "/state", "\(XenbusState.closing.rawValue)")
        _ = try await awaitXenbusState(xenstore, backendPath, timeout: timeout, "backend Closing") { $0 == .closing || $0 == .closed }
        try await xenstore.write(frontendPath + "/state", "\(XenbusState.closed.rawValue)")
        _ = try await awaitXenbusState(xenstore, backendPath, timeout: timeout, "backend Closed") { $0 == .closed || $0 == .initWait }
        var all = queues.map { $0.revokeGrants() }.allSatisfy { $0 }
        if let control { all = control.revokeGrants() && all }
        return all
    }
}

/// One queue: a transmit and a receive ring, a granted page per slot of
/// each (receive pages stay posted), and the event channel(s). Used from
/// one thread at a time.
public final class NetFrontendQueue: @unchecked Sendable {
    public let index: Int
    let domain: any GuestDomain
    let backend: DomainID
    var txRing: FrontRing<NetTxRing>
    var rxRing: FrontRing<NetRxRing>
    public let txRingRef: GrantRef
    public let rxRingRef: GrantRef
    let events: any GuestEventChannelDevice
    public let txPort: EventChannelPort
    public let rxPort: EventChannelPort
    let txFrames: [UInt32]
    public let txGrants: [GrantRef]
    let rxFrames: [UInt32]
    let rxGrants: [GrantRef]
    /// Transmit ids (= page indices) not in flight.
    var freeTxIDs: [UInt16]
    var pendingPorts = [EventChannelPort](repeating: EventChannelPort(0), count: 8)
    /// Transmit responses seen, by status (tests read them).
    public private(set) var txResponses: [NetTxResponse] = []

    init(index: Int, domain: any GuestDomain, backend: DomainID, events: any GuestEventChannelDevice, split: Bool,
         ringFrames: [UInt32], txFrames: [UInt32], rxFrames: [UInt32]) throws {
        self.index = index
        self.domain = domain
        self.backend = backend
        // SAFETY: the domain owns these pages for its life, longer than this
        // queue; the backend writes them at any time, the rings copy out.
        txRing = try FrontRing(initializing: SharedRingMemory(base: domain.page(ringFrames[0]), pageCount: 1))
        rxRing = try FrontRing(initializing: SharedRingMemory(base: domain.page(ringFrames[1]), pageCount: 1))
        txRingRef = try domain.grantAccess(to: backend, frame: ringFrames[0], readOnly: false)
        rxRingRef = try domain.grantAccess(to: backend, frame: ringFrames[1], readOnly: false)
        self.events = events
        txPort = try events.allocateUnbound(remoteDomain: backend)
        rxPort = split ? try events.allocateUnbound(remoteDomain: backend) : txPort
        self.txFrames = txFrames
        txGrants = try txFrames.map { try domain.grantAccess(to: backend, frame: $0, readOnly: true) }
        self.rxFrames = rxFrames
        rxGrants = try rxFrames.map { try domain.grantAccess(to: backend, frame: $0, readOnly: false) }
        freeTxIDs = (0..<UInt16(txFrames.count)).reversed()
    }

    /// A queue on guest frames `firstFrame...` (514 of them) without any
    /// xenstore handshake: for rigs that wire a backend worker to it directly
    /// (worker tests, fuzzers). Split event channels.
    public static func standalone(domain: any GuestDomain, backend: DomainID, firstFrame: UInt32 = 0) throws -> NetFrontendQueue {
        let f = firstFrame
        return try NetFrontendQueue(index: 0, domain: domain, backend: backend, events: try domain.openGuestEventChannels(), split: true,
                                    ringFrames: [f, f + 1], txFrames: Array((f + 2)..<(f + 258)), rxFrames: Array((f + 258)..<(f + 514)))
    }

    /// Posts every free receive buffer; true if the backend was notified.
    @discardableResult
    public func postBuffers() throws -> Bool { try postReceiveBuffers() }

    func revokeGrants() -> Bool {
        var all = true
        for ref in [txRingRef, rxRingRef] + txGrants + rxGrants { all = domain.endForeignAccessOrDefer(ref) && all }
        try? events.unbind(txPort)
        if rxPort != txPort { try? events.unbind(rxPort) }
        return all
    }

    /// Fills every free receive slot with a request for its own page (id
    /// and page follow the slot index, as netfront keeps them).
    @discardableResult
    func postReceiveBuffers() throws -> Bool {
        while !rxRing.isFull {
            let slot = Int(rxRing.requestProducerPrivate.rawValue & (rxRing.size - 1))
            rxRing.produceRequest(NetRxRequest(id: UInt16(slot), grant: rxGrants[slot].rawValue))
        }
        guard rxRing.pushRequests() else { return false }
        try events.notify(rxPort)
        return true
    }

    // MARK: Transmit

    /// The guest page behind transmit id `id` (hostile tests fill it).
    /// SAFETY: our own page, owned by the domain for its life and granted
    /// read-only to the backend; write it only while `id` is not in flight.
    public func txPage(_ id: UInt16) -> UnsafeMutableRawPointer { domain.page(txFrames[Int(id)]) }

    /// Sends one frame: split over pages (one slot per 4 KiB), with a GSO
    /// extra when `gso` is given; waits for ids if the ring is busy.
    public func send(_ frame: [UInt8], checksumBlank: Bool = false, dataValidated: Bool = false,
                     gso: (size: UInt16, type: UInt8)? = nil) throws {
        guard !frame.isEmpty, frame.count <= NetLimits.maximumPacketSize else { throw NetFrontendError.frame("frame of \(frame.count) bytes") }
        let pages = (frame.count + 4095) / 4096
        let needed = pages + (gso == nil ? 0 : 1)
        try awaitTxRoom(needed)
        var slots: [NetTxSlot] = []
        for p in 0..<pages {
            let id = freeTxIDs.removeLast()
            let start = p * 4096, count = min(4096, frame.count - start)
            // SAFETY: `id` is free (taken from freeTxIDs), so the backend is not
            // reading its page; count <= 4096 bytes from inside the frame.
            frame.withUnsafeBytes { txPage(id).copyMemory(from: $0.baseAddress! + start, byteCount: count) }
            var flags: NetTxFlags = p + 1 < pages ? [.moreData] : []
            if p == 0 {
                if checksumBlank { flags.formUnion([.checksumBlank, .dataValidated]) }
                if dataValidated { flags.insert(.dataValidated) }
                if gso != nil { flags.insert(.extraInfo) }
            }
            slots.append(NetTxSlot(NetTxRequest(grant: txGrants[Int(id)].rawValue, offset: 0, flags: flags, id: id,
                                                size: UInt16(p == 0 ? frame.count : count))))
            if p == 0, let gso { slots.append(NetTxSlot(NetExtraInfo.gso(size: gso.size, type: gso.type))) }
        }
        try pushTx(slots)
    }

    /// Asks the backend to pass (or stop passing) a multicast address.
    public func multicast(add: Bool, address: [UInt8]) throws {
        try awaitTxRoom(2)
        let id = freeTxIDs.removeLast()
        try pushTx([NetTxSlot(NetTxRequest(grant: txGrants[Int(id)].rawValue, offset: 0, flags: [.extraInfo], id: id, size: 0)),
                    NetTxSlot(NetExtraInfo.multicast(add: add, address: address))])
    }

    /// Notifies the backend without pushing anything (hostile tests).
    public func kick() throws { try events.notify(txPort) }

    /// Pushes slots exactly as given (hostile tests); ids are the caller's.
    public func pushRaw(_ slots: [NetTxSlot]) throws {
        try pushTx(slots)
    }

    private func pushTx(_ slots: [NetTxSlot]) throws {
        for s in slots { txRing.produceRequest(s) }
        if txRing.pushRequests() { try events.notify(txPort) }
    }

    private func awaitTxRoom(_ needed: Int) throws {
        while freeTxIDs.count < needed || Int(txRing.freeRequests) < needed {
            // The final check asks for an event on the next response before sleeping.
            if try !reapTx() && !txRing.finalCheckForResponses() {
                guard events.wait(timeoutMilliseconds: 10_000) else { throw NetFrontendError.timeout("transmit responses") }
                try drainEvents()
            }
        }
    }

    /// Takes transmit responses; true if any.
    @discardableResult
    public func reapTx() throws -> Bool {
        let producer = try txRing.readResponseProducer()
        var any = false
        while let r = txRing.nextResponse(before: producer) {
            any = true
            if txResponses.count < 4096 { txResponses.append(r) }
            if r.status != NetStatus.null && Int(r.id) < txFrames.count && !freeTxIDs.contains(r.id) { freeTxIDs.append(r.id) }
        }
        return any
    }

    /// Waits until `count` transmit responses have been seen in all.
    public func awaitTxResponses(_ count: Int, timeoutMilliseconds: Int32 = 10_000) throws -> [NetTxResponse] {
        while txResponses.count < count {
            if try reapTx() { continue }
            if txRing.finalCheckForResponses() { continue }
            guard events.wait(timeoutMilliseconds: timeoutMilliseconds) else { throw NetFrontendError.timeout("\(count) transmit responses") }
            try drainEvents()
        }
        return txResponses
    }

    public func clearTxResponses() { txResponses = [] }

    /// Waits until every transmit id is back (all sent frames answered).
    public func awaitTransmitIdle(timeoutMilliseconds: Int32 = 10_000) throws {
        while freeTxIDs.count < txFrames.count {
            if try reapTx() { continue }
            if txRing.finalCheckForResponses() { continue }
            guard events.wait(timeoutMilliseconds: timeoutMilliseconds) else { throw NetFrontendError.timeout("transmit responses") }
            try drainEvents()
        }
    }

    func drainEvents() throws {
        // SAFETY: our array, borrowed for the call only.
        let n = try pendingPorts.withUnsafeMutableBufferPointer { try events.takePending(into: $0) }
        for i in 0..<n { try events.unmask(pendingPorts[i]) }
    }

    // MARK: Receive

    /// The next frame the backend delivered, or nil after `timeoutMilliseconds`
    /// without one. Reposts the buffers it used.
    public func receive(timeoutMilliseconds: Int32 = 10_000) throws -> ReceivedFrame? {
        while true {
            if let frame = try takeFrame() { return frame }
            if rxRing.finalCheckForResponses() { continue }
            try reapTx()
            guard events.wait(timeoutMilliseconds: timeoutMilliseconds) else { return nil }
            try drainEvents()
        }
    }

    private func takeFrame() throws -> ReceivedFrame? {
        let producer = try rxRing.readResponseProducer()
        guard rxRing.responseConsumer != producer else { return nil }
        let mask = rxRing.size - 1
        var bytes: [UInt8] = []
        var flags: NetRxFlags = []
        var gso: NetExtraInfo?
        var hash: NetExtraInfo?
        var slots = 0
        var first = true
        var more = true
        var extrasPending = false
        var error = false
        while more || extrasPending {
            let at = rxRing.responseConsumer.rawValue & mask
            guard let slot = rxRing.nextResponse(before: producer) else {
                throw NetFrontendError.frame("a packet continues past the responses published")
            }
            slots += 1
            if extrasPending {
                let extra = slot.extraInfo
                if extra.type == .gso { gso = extra } else if extra.type == .hash { hash = extra }
                extrasPending = extra.hasMore
                continue
            }
            let r = slot.response
            if first {
                flags = r.flags
                extrasPending = r.flags.contains(.extraInfo)
                first = false
            }
            more = r.flags.contains(.moreData)
            if r.status < 0 { error = true; continue }
            let page = domain.page(rxFrames[Int(at)])
            let n = Int(r.status), offset = Int(r.offset)
            guard offset + n <= 4096 else { throw NetFrontendError.frame("rx response offset \(offset) + \(n) crosses the page") }
            // SAFETY: offset + n <= 4096 (checked just above) inside our own
            // receive page; the backend wrote it before publishing the
            // response and may not touch it again until we repost it, but a
            // hostile one could: it is copied out once, here.
            bytes += UnsafeRawBufferPointer(start: page + offset, count: n)
        }
        try postReceiveBuffers()
        if error { return try takeFrame() }
        return ReceivedFrame(bytes: bytes, flags: flags, gso: gso, hash: hash, slots: slots)
    }
}

/// The frontend's end of the control ring, with a scratch page for keys
/// and mapping tables.
public final class NetFrontendControl: @unchecked Sendable {
    let domain: any GuestDomain
    var ring: FrontRing<NetControlRing>
    public let ringRef: GrantRef
    let events: any GuestEventChannelDevice
    public let port: EventChannelPort
    let scratchFrame: UInt32
    public let scratchGrant: GrantRef
    var nextID: UInt16 = 0
    var pendingPorts = [EventChannelPort](repeating: EventChannelPort(0), count: 4)

    init(domain: any GuestDomain, backend: DomainID, events: any GuestEventChannelDevice, frames: [UInt32]) throws {
        self.domain = domain
        // SAFETY: as for the queues' rings: the domain's page outlives us.
        ring = try FrontRing(initializing: SharedRingMemory(base: domain.page(frames[0]), pageCount: 1))
        ringRef = try domain.grantAccess(to: backend, frame: frames[0], readOnly: false)
        self.events = events
        port = try events.allocateUnbound(remoteDomain: backend)
        scratchFrame = frames[1]
        scratchGrant = try domain.grantAccess(to: backend, frame: frames[1], readOnly: true)
    }

    func revokeGrants() -> Bool {
        let a = domain.endForeignAccess(ringRef), b = domain.endForeignAccess(scratchGrant)
        try? events.unbind(port)
        return a && b
    }

    /// The page whose grant `scratchGrant` names (keys and tables go here).
    /// SAFETY: our own page, owned by the domain, granted read-only to the
    /// backend; fill it before sending the request that names it.
    public var scratch: UnsafeMutableRawPointer { domain.page(scratchFrame) }

    /// Sends one request and waits for its response: (status, data).
    public func request(_ type: NetControlType, _ data: (UInt32, UInt32, UInt32) = (0, 0, 0)) throws -> (UInt32, UInt32) {
        nextID &+= 1
        ring.produceRequest(NetControlRequest(id: nextID, type: type, data: data))
        if ring.pushRequests() { try events.notify(port) }
        while true {
            let producer = try ring.readResponseProducer()
            if let r = ring.nextResponse(before: producer) { return (r.status, r.data) }
            if ring.finalCheckForResponses() { continue }
            guard events.wait(timeoutMilliseconds: 10_000) else { throw NetFrontendError.timeout("a control response") }
            // SAFETY: our array, borrowed for the call only.
            let n = try pendingPorts.withUnsafeMutableBufferPointer { try events.takePending(into: $0) }
            for i in 0..<n { try events.unmask(pendingPorts[i]) }
        }
    }
}

// MARK: Load generation (benchmarks)

extension NetFrontendQueue {
    /// Sends `frame` over and over until `deadline` (monotonic ns), as a
    /// packet generator would: every transmit page holds the frame once,
    /// so each send is only ring work. Frames over a page go as one slot per
    /// page with a GSO extra. Returns the frames answered OKAY. Allocates
    /// nothing per frame.
    public func blast(_ frame: [UInt8], gso: (size: UInt16, type: UInt8)? = nil, checksumBlank: Bool = false,
                      until deadline: Int) throws -> Int {
        let pages = (frame.count + 4095) / 4096
        precondition(pages <= txFrames.count / 2, "frame too large to blast")
        // Earlier sends first: their pages are about to be overwritten, and
        // their answers are not the groups counted below.
        try awaitTransmitIdle()
        // Page k of every packet is transmit page k (+ pages * j): fill each once.
        for id in 0..<txFrames.count {
            let part = id % pages
            let start = part * 4096, count = min(4096, frame.count - start)
            // SAFETY: nothing is in flight (awaitTransmitIdle above), so no
            // page is being read; count <= 4096 bytes from inside the frame.
            frame.withUnsafeBytes { txPage(UInt16(id)).copyMemory(from: $0.baseAddress! + start, byteCount: count) }
        }
        let slotsPerFrame = pages + (gso == nil ? 0 : 1)
        let groups = txFrames.count / pages
        var freeGroups = [Int](0..<groups)
        freeGroups.reserveCapacity(groups)
        var outstanding = OutstandingRequests(capacity: groups)
        var answered = 0
        var inFlight = 0
        while true {
            // Take answers: a group comes back with the response to its first page.
            let producer = try txRing.readResponseProducer()
            while let r = txRing.nextResponse(before: producer) {
                guard r.status != NetStatus.null, Int(r.id) % pages == 0 else { continue }
                // XSA-391: a group not in flight means the backend lies.
                do { try outstanding.answered(UInt64(r.id) / UInt64(pages)) } catch { throw NetFrontendError.frame("\(error) (transmit)") }
                freeGroups.append(Int(r.id) / pages)
                inFlight -= 1
                if r.status == NetStatus.okay { answered += 1 }
            }
            if monotonicNanoseconds() >= deadline { break }
            var produced = false
            while let group = freeGroups.last, Int(txRing.freeRequests) >= slotsPerFrame {
                freeGroups.removeLast()
                outstanding.sent(group)
                for p in 0..<pages {
                    let id = UInt16(group * pages + p)
                    var flags: NetTxFlags = p + 1 < pages ? [.moreData] : []
                    if p == 0 {
                        if checksumBlank { flags.formUnion([.checksumBlank, .dataValidated]) }
                        if gso != nil { flags.insert(.extraInfo) }
                    }
                    let size = p == 0 ? frame.count : min(4096, frame.count - p * 4096)
                    txRing.produceRequest(NetTxSlot(NetTxRequest(grant: txGrants[Int(id)].rawValue, offset: 0, flags: flags, id: id, size: UInt16(size))))
                    if p == 0, let gso { txRing.produceRequest(NetTxSlot(NetExtraInfo.gso(size: gso.size, type: gso.type))) }
                }
                inFlight += 1
                produced = true
            }
            if produced {
                if txRing.pushRequests() { try events.notify(txPort) }
                continue
            }
            if txRing.finalCheckForResponses() { continue }
            _ = events.wait(timeoutMilliseconds: 10)
            try drainEvents()
        }
        // Let what is in flight finish, so the next user finds every id free.
        while inFlight > 0 {
            let producer = try txRing.readResponseProducer()
            while let r = txRing.nextResponse(before: producer) {
                guard r.status != NetStatus.null, Int(r.id) % pages == 0 else { continue }
                do { try outstanding.answered(UInt64(r.id) / UInt64(pages)) } catch { throw NetFrontendError.frame("\(error) (transmit)") }
                inFlight -= 1
                if r.status == NetStatus.okay { answered += 1 }
            }
            if inFlight > 0 && !txRing.finalCheckForResponses() {
                guard events.wait(timeoutMilliseconds: 10_000) else { throw NetFrontendError.timeout("transmit responses") }
                try drainEvents()
            }
        }
        return answered
    }

    /// Takes received frames until `deadline` without looking at them
    /// (a sink), reposting buffers; returns (frames, bytes).
    public func sink(until deadline: Int) throws -> (frames: Int, bytes: Int) {
        var frames = 0, bytes = 0
        while monotonicNanoseconds() < deadline {
            let producer = try rxRing.readResponseProducer()
            var any = false
            var extras = false
            while let slot = rxRing.nextResponse(before: producer) {
                any = true
                if extras { extras = slot.extraInfo.hasMore; continue }
                let r = slot.response
                if r.flags.contains(.extraInfo) { extras = true }
                if r.status > 0 { bytes += Int(r.status) }
                if !r.flags.contains(.moreData) { frames += 1 }
            }
            if any {
                try postReceiveBuffers()
                continue
            }
            if rxRing.finalCheckForResponses() { continue }
            _ = events.wait(timeoutMilliseconds: 10)
            try drainEvents()
        }
        return (frames, bytes)
    }
}

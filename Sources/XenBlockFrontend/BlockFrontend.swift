import XenBlockProtocol
import XenBus
import XenBusClient
import XenPlatform
import XenRing
import XenStore
#if canImport(Glibc)
import Glibc
#endif

/// How the test frontend sets itself up (each capped by what the backend offers).
public struct BlockFrontendOptions: Sendable, Equatable {
    public var queues: Int
    public var ringPageOrder: Int
    public var abi: BlockProtocolABI
    /// Requests in flight per queue at most (the iodepth ceiling).
    public var slotsPerQueue: Int
    /// Pages of data per request; above 11 requests go indirect.
    public var segmentsPerRequest: Int
    /// Written as the frontend's `feature-persistent` (Linux blkfront asks for it).
    public var persistentGrants: Bool

    public init(queues: Int = 1, ringPageOrder: Int = 0, abi: BlockProtocolABI = .x86_64, slotsPerQueue: Int = 32,
                segmentsPerRequest: Int = BlockLimits.maxSegmentsPerRequest, persistentGrants: Bool = true) {
        self.queues = queues
        self.ringPageOrder = ringPageOrder
        self.abi = abi
        self.slotsPerQueue = slotsPerQueue
        self.segmentsPerRequest = segmentsPerRequest
        self.persistentGrants = persistentGrants
    }

    var indirectPagesPerSlot: Int {
        segmentsPerRequest > BlockLimits.maxSegmentsPerRequest
            ? (segmentsPerRequest + BlockLimits.segmentsPerIndirectPage - 1) / BlockLimits.segmentsPerIndirectPage : 0
    }

    /// Guest frames the frontend needs (rings, data and indirect pages).
    public var framesNeeded: Int {
        queues * ((1 << ringPageOrder) + slotsPerQueue * (segmentsPerRequest + indirectPagesPerSlot))
    }

    /// Grant entries it uses: one per frame.
    public var grantsNeeded: Int { framesNeeded }
}

/// What the backend told us about the disk once Connected.
public struct BlockDiskInfo: Sendable, Equatable {
    public var sectors: UInt64
    public var sectorSize: Int
    public var physicalSectorSize: Int
    public var info: VirtualDiskInfo
    public var flush: Bool
    public var barrier: Bool
    public var discard: Bool
    public var discardGranularity: Int
    public var secureDiscard: Bool
    public var persistentGrants: Bool
    public var maximumIndirectSegments: Int
    /// What the backend offered before we connected.
    public var maximumQueues: Int
    public var maximumRingPageOrder: Int
}

public enum BlockFrontendError: Error, Sendable, CustomStringConvertible {
    case backendRefused(String)
    case timeout(String)
    case notEnoughMemory(needed: Int, given: Int)
    case badBackendKey(path: String, value: String?)
    case request(String)

    public var description: String {
        switch self {
        case .backendRefused(let why): "the backend did not connect: \(why)"
        case .timeout(let what): "timed out waiting for \(what)"
        case .notEnoughMemory(let needed, let given): "the frontend needs \(needed) guest frames, was given \(given)"
        case .badBackendKey(let path, let value): "backend key \(path) = \(value.map { "\"\($0)\"" } ?? "missing") is unusable"
        case .request(let why): why
        }
    }
}

/// A blkfront in Swift for a simulated guest: allocates its rings in guest
/// memory, grants them, negotiates through xenstore like Linux's
/// xen-blkfront (ring-page-order, multi-queue, indirect segments,
/// persistent grants, protocol) and issues requests on each queue.
public final class BlockFrontend<Layout: RingLayout>: @unchecked Sendable
where Layout.Request == BlockRequest, Layout.Response == BlockResponse {
    public let frontendPath: String
    public let backendPath: String
    /// What the backend told us at the last (re)connect.
    public private(set) var disk: BlockDiskInfo
    /// Replaced by `reconnect`.
    public private(set) var queues: [BlockFrontendQueue<Layout>]
    let xenstore: XenStoreClient
    let domain: any GuestDomain
    let frames: Range<UInt32>
    let requested: BlockFrontendOptions
    let openEvents: () throws -> any GuestEventChannelDevice
    let timeout: Duration

    init(frontendPath: String, backendPath: String, disk: BlockDiskInfo, queues: [BlockFrontendQueue<Layout>],
         xenstore: XenStoreClient, domain: any GuestDomain, frames: Range<UInt32>, requested: BlockFrontendOptions,
         openEvents: @escaping () throws -> any GuestEventChannelDevice, timeout: Duration) {
        self.frontendPath = frontendPath; self.backendPath = backendPath; self.disk = disk
        self.queues = queues; self.xenstore = xenstore; self.domain = domain
        self.frames = frames; self.requested = requested; self.openEvents = openEvents; self.timeout = timeout
    }

    /// Negotiates with the backend named in `frontendPath/backend` and
    /// returns once both sides are Connected. Uses guest frames `frames`.
    public static func connect(domain: any GuestDomain, xenstore: XenStoreClient, frontendPath: String, frames: Range<UInt32>,
                               options requested: BlockFrontendOptions = BlockFrontendOptions(),
                               openEventChannels: (() throws -> any GuestEventChannelDevice)? = nil,
                               timeout: Duration = .seconds(30)) async throws -> BlockFrontend {
        guard let backendPath = try await xenstore.readIfPresent(frontendPath + "/backend"),
              let backendIDText = try await xenstore.readIfPresent(frontendPath + "/backend-id"),
              let backendID = UInt16(backendIDText) else {
            throw BlockFrontendError.badBackendKey(path: frontendPath + "/backend", value: nil)
        }
        // In-process guests use the hypervisor directly; a guest in another
        // process passes its SimClient's device.
        let openEvents = openEventChannels ?? { try domain.openGuestEventChannels() }
        let (disk, queues) = try await setUp(domain: domain, xenstore: xenstore, frontendPath: frontendPath, backendPath: backendPath,
                                             backendID: backendID, frames: frames, requested: requested,
                                             openEvents: openEvents, timeout: timeout)
        return BlockFrontend(frontendPath: frontendPath, backendPath: backendPath, disk: disk, queues: queues,
                             xenstore: xenstore, domain: domain, frames: frames, requested: requested,
                             openEvents: openEvents, timeout: timeout)
    }

    /// After the backend went away without closing (xenbackd killed and
    /// restarted, now back in InitWait): sets up new rings on the same guest
    /// frames with new grants, renegotiates, and replaces `queues`. Requests
    /// that were in flight are the caller's to resubmit, as blkfront's
    /// recovery does. Grants the dead backend still holds busy are revoked
    /// later, when the guest runs short of refs (SimDomain.endForeignAccessOrDefer).
    public func reconnect() async throws {
        for queue in queues { _ = queue.revokeGrants() }
        try await xenstore.write(frontendPath + "/state", "\(XenbusState.initialising.rawValue)")
        let backendID = UInt16(try await xenstore.readString(frontendPath + "/backend-id")) ?? 0
        (disk, queues) = try await Self.setUp(domain: domain, xenstore: xenstore, frontendPath: frontendPath, backendPath: backendPath,
                                              backendID: backendID, frames: frames, requested: requested,
                                              openEvents: openEvents, timeout: timeout)
    }

    /// The handshake: wait for InitWait, size to the backend's limits, make
    /// the queues, write their keys, Initialised, wait for Connected, read the disk.
    static func setUp(domain: any GuestDomain, xenstore: XenStoreClient, frontendPath: String, backendPath: String, backendID: UInt16,
                      frames: Range<UInt32>, requested: BlockFrontendOptions,
                      openEvents: () throws -> any GuestEventChannelDevice,
                      timeout: Duration) async throws -> (BlockDiskInfo, [BlockFrontendQueue<Layout>]) {
        // The backend publishes its limits, then goes to InitWait.
        // (Connected here would be a dead backend's leftover: wait it out.)
        _ = try await awaitXenbusState(xenstore, backendPath, timeout: timeout, "backend InitWait") { $0 == .initWait }
        func backendNumber(_ key: String) async throws -> Int? {
            try await xenstore.readIfPresent(backendPath + "/" + key).flatMap { Int($0) }
        }
        let maximumQueues = try await backendNumber("multi-queue-max-queues") ?? 1
        let maximumOrder = try await backendNumber("max-ring-page-order") ?? 0
        var options = requested
        options.queues = max(1, min(options.queues, maximumQueues))
        options.ringPageOrder = max(0, min(options.ringPageOrder, maximumOrder))
        let maximumIndirect = try await backendNumber("feature-max-indirect-segments") ?? 0
        options.segmentsPerRequest = min(options.segmentsPerRequest, max(BlockLimits.maxSegmentsPerRequest, maximumIndirect))
        guard options.framesNeeded <= frames.count else {
            throw BlockFrontendError.notEnoughMemory(needed: options.framesNeeded, given: frames.count)
        }

        var nextFrame = frames.lowerBound
        func takeFrames(_ n: Int) -> [UInt32] {
            defer { nextFrame += UInt32(n) }
            return (0..<UInt32(n)).map { nextFrame + $0 }
        }
        let backendDomain = DomainID(backendID)
        var made: [BlockFrontendQueue<Layout>] = []
        for _ in 0..<options.queues {
            let ringFrames = takeFrames(1 << options.ringPageOrder)
            let slotFrames = (0..<options.slotsPerQueue).map { _ in takeFrames(options.segmentsPerRequest) }
            let indirectFrames = (0..<options.slotsPerQueue).map { _ in takeFrames(options.indirectPagesPerSlot) }
            made.append(try BlockFrontendQueue<Layout>(domain: domain, backend: backendDomain, events: try openEvents(), ringFrames: ringFrames,
                                                       slotFrames: slotFrames, indirectFrames: indirectFrames,
                                                       indirect: options.segmentsPerRequest > BlockLimits.maxSegmentsPerRequest))
        }
        let queues = made

        // One transaction, as blkfront's talk_to_blkback does.
        try await xenstore.withTransaction { t in
            func put(_ key: String, _ value: String) async throws {
                try await xenstore.write(frontendPath + "/" + key, value, transaction: t)
            }
            // Keys a previous connection left that would describe other rings.
            func drop(_ key: String) async throws {
                do { try await xenstore.rm(frontendPath + "/" + key, transaction: t) } catch XenStoreClientError.failed(.noEntry, _, _) {}
            }
            if options.ringPageOrder > 0 { try await put("ring-page-order", "\(options.ringPageOrder)") } else { try await drop("ring-page-order") }
            if options.queues > 1 { try await put("multi-queue-num-queues", "\(options.queues)") } else { try await drop("multi-queue-num-queues") }
            for (q, queue) in queues.enumerated() {
                let prefix = options.queues == 1 ? "" : "queue-\(q)/"
                if options.ringPageOrder == 0 {
                    try await put(prefix + "ring-ref", "\(queue.ringRefs[0].rawValue)")
                } else {
                    for (i, ref) in queue.ringRefs.enumerated() { try await put(prefix + "ring-ref\(i)", "\(ref.rawValue)") }
                }
                try await put(prefix + "event-channel", "\(queue.port.rawValue)")
            }
            try await put("protocol", options.abi.rawValue)
            try await put("feature-persistent", options.persistentGrants ? "1" : "0")
        }
        try await xenstore.write(frontendPath + "/state", "\(XenbusState.initialised.rawValue)")

        let state = try await awaitXenbusState(xenstore, backendPath, timeout: timeout, "backend Connected") {
            $0 == .connected || $0 == .closing || $0 == .closed
        }
        guard state == .connected else {
            let why = try await xenstore.readIfPresent(backendPath + "/error") ?? "backend went to \(state)"
            throw BlockFrontendError.backendRefused(why)
        }
        func flag(_ key: String) async throws -> Bool { try await backendNumber(key) == 1 }
        guard let sectors = try await xenstore.readIfPresent(backendPath + "/sectors").flatMap({ UInt64($0) }) else {
            throw BlockFrontendError.badBackendKey(path: backendPath + "/sectors", value: try await xenstore.readIfPresent(backendPath + "/sectors"))
        }
        let disk = BlockDiskInfo(
            sectors: sectors,
            sectorSize: try await backendNumber("sector-size") ?? 512,
            physicalSectorSize: try await backendNumber("physical-sector-size") ?? 512,
            info: VirtualDiskInfo(rawValue: UInt32(try await backendNumber("info") ?? 0)),
            flush: try await flag("feature-flush-cache"), barrier: try await flag("feature-barrier"),
            discard: try await flag("feature-discard"), discardGranularity: try await backendNumber("discard-granularity") ?? 0,
            secureDiscard: try await flag("discard-secure"), persistentGrants: try await flag("feature-persistent"),
            maximumIndirectSegments: maximumIndirect, maximumQueues: maximumQueues, maximumRingPageOrder: maximumOrder)
        try await xenstore.write(frontendPath + "/state", "\(XenbusState.connected.rawValue)")
        return (disk, queues)
    }

    /// Closes like blkfront: Closing, wait for the backend to close (it
    /// answers what it has in flight and unmaps), Closed; then revokes
    /// every grant. Returns whether every grant could be revoked (false
    /// means the backend still holds a page).
    @discardableResult
    public func close(timeout: Duration = .seconds(30)) async throws -> Bool {
        try await xenstore.write(frontendPath + "/state", "\(XenbusState.closing.rawValue)")
        _ = try await awaitXenbusState(xenstore, backendPath, timeout: timeout, "backend Closing") {
            $0 == .closing || $0 == .closed
        }
        try await xenstore.write(frontendPath + "/state", "\(XenbusState.closed.rawValue)")
        _ = try await awaitXenbusState(xenstore, backendPath, timeout: timeout, "backend Closed") {
            $0 == .closed || $0 == .initWait
        }
        return queues.map { $0.revokeGrants() }.allSatisfy { $0 }
    }
}

/// One queue of the frontend: its ring, event channel and request slots,
/// each slot with its own granted data pages (kept granted, the way blkfront
/// keeps persistent grants). Used from one thread at a time.
public final class BlockFrontendQueue<Layout: RingLayout>: @unchecked Sendable
where Layout.Request == BlockRequest, Layout.Response == BlockResponse {
    let domain: any GuestDomain
    let backend: DomainID
    var ring: FrontRing<Layout>
    public let ringRefs: [GrantRef]
    /// Guest frames of the ring pages (hostile tests write them directly).
    public let ringFrames: [UInt32]
    let events: any GuestEventChannelDevice
    public let port: EventChannelPort
    let slotFrames: [[UInt32]]
    let slotGrants: [[GrantRef]]
    let indirectFrames: [[UInt32]]
    let indirectGrants: [[GrantRef]]
    let indirect: Bool
    public var slotCount: Int { slotFrames.count }
    public var segmentsPerRequest: Int { slotFrames.first?.count ?? 0 }
    var pendingPorts = [EventChannelPort](repeating: EventChannelPort(0), count: 4)
    /// How long to wait for an answer before giving up (a backend that died
    /// answers nothing; a recovering frontend wants to know soon).
    public var responseTimeoutMilliseconds: Int32 = 30_000

    /// The longest this queue slept waiting for an answer (with requests
    /// outstanding) since it was last reset: a restarted backend's pause
    /// as the guest sees it.
    public var longestWait: Duration = .zero

    /// Sleeps on the event channel for an answer; false on timeout.
    func waitForAnswer(timeoutMilliseconds: Int32) -> Bool {
        let clock = ContinuousClock()
        let start = clock.now
        let answered = events.wait(timeoutMilliseconds: timeoutMilliseconds)
        longestWait = max(longestWait, clock.now - start)
        return answered
    }

    init(domain: any GuestDomain, backend: DomainID, events: any GuestEventChannelDevice, ringFrames: [UInt32], slotFrames: [[UInt32]], indirectFrames: [[UInt32]],
         indirect: Bool) throws {
        self.domain = domain
        self.backend = backend
        // The ring pages are consecutive frames, so one contiguous view of them.
        // SAFETY: the domain owns its memory for its whole life, longer than
        // this queue; GuestDomain maps consecutive frames contiguously. The
        // backend writes these pages at any time; the ring copies out.
        for (i, f) in ringFrames.enumerated() { precondition(f == ringFrames[0] + UInt32(i)) }
        ring = try FrontRing(initializing: SharedRingMemory(base: domain.page(ringFrames[0]), pageCount: ringFrames.count))
        self.ringFrames = ringFrames
        ringRefs = try ringFrames.map { try domain.grantAccess(to: backend, frame: $0, readOnly: false) }
        self.events = events
        port = try events.allocateUnbound(remoteDomain: backend)
        self.slotFrames = slotFrames
        slotGrants = try slotFrames.map { try $0.map { try domain.grantAccess(to: backend, frame: $0, readOnly: false) } }
        self.indirectFrames = indirectFrames
        indirectGrants = try indirectFrames.map { try $0.map { try domain.grantAccess(to: backend, frame: $0, readOnly: true) } }
        self.indirect = indirect
    }

    func revokeGrants() -> Bool {
        var all = true
        for ref in ringRefs + slotGrants.flatMap({ $0 }) + indirectGrants.flatMap({ $0 }) {
            all = domain.endForeignAccessOrDefer(ref) && all
        }
        try? events.unbind(port)
        return all
    }

    // MARK: Requests

    /// The request for `slot`: its data pages cover `byteCount` bytes from
    /// the start of the first page, indirect when more than 11 pages.
    func makeRequest(slot: Int, operation: BlockOperation, sector: UInt64, byteCount: Int) -> BlockRequest {
        precondition(byteCount % 512 == 0 && byteCount > 0 && byteCount <= segmentsPerRequest * 4096)
        let pages = (byteCount + 4095) / 4096
        func segment(_ i: Int) -> BlockSegment {
            let sectors = min(8, (byteCount - i * 4096) / 512)
            return BlockSegment(grant: slotGrants[slot][i].rawValue, firstSector: 0, lastSector: UInt8(sectors - 1))
        }
        if pages <= BlockLimits.maxSegmentsPerRequest {
            return BlockRequest(operation: operation, id: UInt64(slot), sectorNumber: sector, segments: (0..<pages).map(segment))
        }
        precondition(indirect, "more than 11 pages needs the backend's indirect segments")
        // SAFETY: our own guest page (the domain owns it for its life),
        // granted read-only to the backend, which only reads it; each word
        // is at 8 * (i % 512) < 4096.
        for i in 0..<pages {
            let page = domain.page(indirectFrames[slot][i / BlockLimits.segmentsPerIndirectPage])
            page.storeBytes(of: segment(i).wireWord, toByteOffset: 8 * (i % BlockLimits.segmentsPerIndirectPage), as: UInt64.self)
        }
        let used = (pages + BlockLimits.segmentsPerIndirectPage - 1) / BlockLimits.segmentsPerIndirectPage
        return BlockRequest(indirectID: UInt64(slot), operation: operation, sectorNumber: sector, segmentCount: UInt16(pages),
                            indirectGrants: indirectGrants[slot][0..<used].map(\.rawValue))
    }

    func copyIn(slot: Int, _ bytes: [UInt8]) {
        for (i, start) in stride(from: 0, to: bytes.count, by: 4096).enumerated() {
            let n = min(4096, bytes.count - start)
            // SAFETY: n <= 4096 bytes into our own data page (owned by the
            // domain), from the borrowed array; the backend does not touch
            // the page until the request is pushed.
            bytes.withUnsafeBytes { domain.page(slotFrames[slot][i]).copyMemory(from: $0.baseAddress! + start, byteCount: n) }
        }
    }

    func copyOut(slot: Int, count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        // SAFETY: each copy is at most one page out of our own data page into
        // the local array; the response was consumed, so the backend has
        // finished writing the page (a hostile one could still, and would
        // only corrupt its own test data).
        out.withUnsafeMutableBytes { b in
            for (i, start) in stride(from: 0, to: count, by: 4096).enumerated() {
                (b.baseAddress! + start).copyMemory(from: domain.page(slotFrames[slot][i]), byteCount: min(4096, count - start))
            }
        }
        return out
    }

    func push(_ request: BlockRequest) throws {
        ring.produceRequest(request)
        if ring.pushRequests() { try events.notify(port) }
    }

    /// Calls `body` for each response until `body` returns false or
    /// `timeoutMilliseconds` pass without one. Sleeps on the event channel.
    func awaitResponses(timeoutMilliseconds: Int32? = nil, _ body: (BlockResponse) throws -> Bool) throws {
        let timeoutMilliseconds = timeoutMilliseconds ?? responseTimeoutMilliseconds
        while true {
            let producer = try ring.readResponseProducer()
            while let response = ring.nextResponse(before: producer) {
                if try !body(response) { return }
            }
            if ring.finalCheckForResponses() { continue }
            guard waitForAnswer(timeoutMilliseconds: timeoutMilliseconds) else {
                throw BlockFrontendError.timeout("a block response")
            }
            // SAFETY: our array, borrowed for the call only.
            _ = try pendingPorts.withUnsafeMutableBufferPointer { try events.takePending(into: $0) }
            try events.unmask(port)
        }
    }

    /// Issues one request on slot 0 and waits for its answer.
    func one(_ request: BlockRequest) throws -> BlockResponse {
        try push(request)
        var answer: BlockResponse?
        try awaitResponses { answer = $0; return false }
        // Linux blkfront's checks: our id, and the operation the request implies.
        guard let answer, answer.id == request.id, answer.operation == request.responseOperation else {
            throw BlockFrontendError.request("response \(answer.map { "id \($0.id) operation \($0.operation.rawValue)" } ?? "missing") does not answer request id \(request.id) (operation \(request.responseOperation.rawValue) expected)")
        }
        return answer
    }

    public func write(sector: UInt64, _ bytes: [UInt8], barrier: Bool = false) throws -> BlockStatus {
        copyIn(slot: 0, bytes)
        return try one(makeRequest(slot: 0, operation: barrier ? .writeBarrier : .write, sector: sector, byteCount: bytes.count)).status
    }

    public func read(sector: UInt64, byteCount: Int) throws -> (BlockStatus, [UInt8]) {
        let status = try one(makeRequest(slot: 0, operation: .read, sector: sector, byteCount: byteCount)).status
        return (status, copyOut(slot: 0, count: byteCount))
    }

    public func flush() throws -> BlockStatus {
        try one(BlockRequest(operation: .flushDiskCache, id: 0, sectorNumber: 0, segments: [])).status
    }

    public func discard(sector: UInt64, sectorCount: UInt64, secure: Bool = false) throws -> BlockStatus {
        try one(BlockRequest(discardID: 0, sectorNumber: sector, sectorCount: sectorCount, secure: secure)).status
    }

    /// Sends `request` as it is (for hostile-frontend tests) and returns the answer.
    public func raw(_ request: BlockRequest) throws -> BlockResponse { try one(request) }

    /// The grant of data page `page` of request slot `slot`.
    public func dataGrant(slot: Int, page: Int) -> GrantRef { slotGrants[slot][page] }

    /// The guest frame of data page `page` of request slot `slot`.
    public func dataFrame(slot: Int, page: Int) -> UInt32 { slotFrames[slot][page] }

    /// Notifies the backend without pushing anything (hostile tests).
    public func kick() throws { try events.notify(port) }

    /// Produces `requests` and pushes them, then collects `count` answers
    /// (in whatever order they come) or throws after `timeoutMilliseconds`.
    public func submit(_ requests: [BlockRequest], expecting count: Int, timeoutMilliseconds: Int32 = 30_000) throws -> [BlockResponse] {
        for r in requests { ring.produceRequest(r) }
        if ring.pushRequests() { try events.notify(port) }
        var answers: [BlockResponse] = []
        if count == 0 { return answers }
        try awaitResponses(timeoutMilliseconds: timeoutMilliseconds) { answers.append($0); return answers.count < count }
        return answers
    }
}

import CXenShims
import Logging
import Synchronization
import XenBlockProtocol
import XenBus
import XenBusDriver
import XenPlatform
import XenRing
import XenStore
#if canImport(Glibc)
import Glibc
import XenDisk
#endif

/// What an operator may tune per block backend.
public struct BlockBackendConfiguration: Sendable, Equatable {
    public var engine: BlockEngineKind
    /// Advertised as `multi-queue-max-queues` (Linux: one per CPU).
    public var maximumQueues: Int
    /// Advertised as `max-ring-page-order` (0...4; Linux's default is 4).
    public var maximumRingPageOrder: Int
    /// Advertised as `feature-max-indirect-segments` (Linux: 256).
    public var maximumIndirectSegments: Int
    /// O_DIRECT where the backing allows it.
    public var directIO: Bool
    /// Persistent grants kept mapped per ring when the frontend asks for
    /// feature-persistent; 0 turns the feature off, and all data moves by
    /// grant copy. Linux's max_persistent_grants is 1056, sized before
    /// indirect segments: a 1 MiB request alone uses 256 pages, so 8 of them
    /// in flight would churn. Ours is 4096 (16 MiB of guest pages per ring).
    public var maximumPersistentGrants: Int
    /// While a ring has I/O in flight, how long its worker watches for
    /// completions and requests before sleeping (0: sleep at once).
    /// Idle rings never poll.
    public var pollMicroseconds: Int
    /// A ring idle this long gives its thread back until its next event
    /// (0: never), so idle devices hold no threads.
    public var parkAfterMilliseconds: Int
    /// Where each ring's record of what it owes is kept (a tmpfs directory,
    /// e.g. /run/xenback), so that a new backend can take over a connection
    /// this one leaves behind when it dies or is restarted. Nil: no records,
    /// and a new backend waits for the frontend to start over.
    public var stateDirectory: String?

    public init(engine: BlockEngineKind = .default, maximumQueues: Int = BlockBackendConfiguration.onlineCPUs,
                maximumRingPageOrder: Int = 4, maximumIndirectSegments: Int = 256, directIO: Bool = true,
                maximumPersistentGrants: Int = 4096, pollMicroseconds: Int = 0, parkAfterMilliseconds: Int = 1000,
                stateDirectory: String? = nil) {
        self.stateDirectory = stateDirectory
        self.parkAfterMilliseconds = parkAfterMilliseconds
        self.maximumPersistentGrants = maximumPersistentGrants
        self.pollMicroseconds = pollMicroseconds
        self.engine = engine
        self.maximumQueues = maximumQueues
        self.maximumRingPageOrder = maximumRingPageOrder
        self.maximumIndirectSegments = maximumIndirectSegments
        self.directIO = directIO
    }

    public static var onlineCPUs: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    /// Checks the values against what the protocol allows.
    public func validate() throws(BlockDeviceError) {
        guard (0...65536).contains(maximumPersistentGrants) else {
            throw .configuration("maximum persistent grants \(maximumPersistentGrants) is not in 0...65536")
        }
        guard (0...10_000).contains(pollMicroseconds) else {
            throw .configuration("poll time \(pollMicroseconds) µs is not in 0...10000")
        }
        guard (0...3_600_000).contains(parkAfterMilliseconds) else {
            throw .configuration("park-after \(parkAfterMilliseconds) ms is not in 0...3600000")
        }
        guard (1...64).contains(maximumQueues) else { throw .configuration("maximum queues \(maximumQueues) is not in 1...64") }
        guard (0...4).contains(maximumRingPageOrder) else { throw .configuration("maximum ring page order \(maximumRingPageOrder) is not in 0...4") }
        let cap = BlockLimits.maxIndirectPagesPerRequest * BlockLimits.segmentsPerIndirectPage
        guard (BlockLimits.maxSegmentsPerRequest...cap).contains(maximumIndirectSegments) else {
            throw .configuration("maximum indirect segments \(maximumIndirectSegments) is not in \(BlockLimits.maxSegmentsPerRequest)...\(cap)")
        }
    }
}

public enum BlockDeviceError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A backend or frontend key is missing or has a value we cannot use.
    case badKey(path: String, value: String?, why: String)
    case configuration(String)
    case backing(BackingError)
    case backend(BlockBackendError)

    public var description: String {
        switch self {
        case .badKey(let path, let value, let why): Self.describeBadKey(path: path, value: value, why: why)
        case .configuration(let why): "configuration: \(why)"
        case .backing(let e): "\(e)"
        case .backend(let e): "\(e)"
        }
    }
}

extension BlockDeviceError: XenbusKeyError {}
extension BlockRingWorker: ServedRing {}

/// What was negotiated with the frontend (for status displays and tests).
public struct BlockNegotiation: Sendable, Equatable {
    public var queues: Int
    public var ringPageOrder: Int
    public var abi: BlockProtocolABI
    public var engine: BlockEngineKind
    public var directIO: Bool
    public var persistentGrants: Bool

    public init(queues: Int, ringPageOrder: Int, abi: BlockProtocolABI, engine: BlockEngineKind, directIO: Bool, persistentGrants: Bool) {
        self.queues = queues; self.ringPageOrder = ringPageOrder; self.abi = abi; self.engine = engine; self.directIO = directIO
        self.persistentGrants = persistentGrants
    }
}

/// One virtual block device (a `backend/vbd/<domid>/<devid>` directory):
/// reads the toolstack's keys, opens the backing, publishes the features,
/// follows the frontend through the xenbus handshake (BackendStateMachine)
/// and serves its rings, one worker thread per ring.
public final class BlockBackendDevice<Platform: XenPlatform>: Sendable {
    public let backendPath: String
    let platform: Platform
    let xenstore: XenStoreClient
    let configuration: BlockBackendConfiguration
    let logger: Logger

    let rings = ServedRings<BlockCounter>()
    /// The current connection's ring records (deleted when it ends cleanly).
    private let records = Mutex<[BlockRingRecord]>([])
    /// The disk's I/O limit, shared by its rings and changed live.
    public let limiter = BlockIOLimiter()
    private let negotiated = Mutex<BlockNegotiation?>(nil)

    /// Whether stopping leaves this device Connected for the next backend.
    let stopPolicy: DeviceStopPolicy

    public init(platform: Platform, xenstore: XenStoreClient, backendPath: String,
                configuration: BlockBackendConfiguration = BlockBackendConfiguration(),
                stopPolicy: DeviceStopPolicy = DeviceStopPolicy(), logger: Logger) {
        self.stopPolicy = stopPolicy
        self.platform = platform
        self.xenstore = xenstore
        self.backendPath = backendPath
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "device"] = .string(backendPath)
        self.logger = logger
    }

    /// Ring workers on a thread now (idle rings are parked without one).
    public var runningWorkerThreads: Int { rings.runningThreads }

    /// The device's counters, summed over its rings (past connections included).
    public var statistics: BlockStatistics.Snapshot { rings.statistics }

    /// What the current connection negotiated; nil while not connected.
    public var negotiation: BlockNegotiation? { negotiated.withLock { $0 } }

    // MARK: Lifecycle

    /// Serves the device until the toolstack removes it (`online` = 0 and
    /// the frontend closed, or the frontend vanished) or the task is
    /// cancelled; either way in-flight I/O is answered first. Bad keys are
    /// reported in `hotplug-error` / `hotplug-status` and thrown.
    public func run() async throws {
        try configuration.validate()
        let setup: Setup
        do { setup = try await readSetup() } catch {
            await XenbusDeviceLoop(xenstore: xenstore, backendPath: backendPath, frontendPath: "", logger: logger).reportSetupError(error)
            throw error
        }
        try await publishProbeFeatures(setup)
        logger.info("backing \(setup.backing.path) opened", metadata: [
            "sectors": "\(setup.backing.geometry.sectors)", "mode": "\(setup.readOnly ? "r" : "w")",
            "direct": "\(setup.backing.isDirect)"])
        limiter.set(setup.limit)
        let limits = try await BackendKeyFollower(xenstore: xenstore, backendPath: backendPath,
                                                  keys: [BlockIOLimit.requestsKey, BlockIOLimit.bytesKey], logger: logger) { values in
            await self.limitKeysChanged(values)
        }
        let loop = XenbusDeviceLoop(xenstore: xenstore, backendPath: backendPath, frontendPath: setup.keys.frontendPath, logger: logger)
        let resume: (@Sendable () async throws -> Void)?
        let suspend: (@Sendable () async -> Bool)?
        if configuration.stateDirectory != nil {
            resume = { try await self.connect(setup, resuming: true) }
            suspend = { await self.suspend() }
        } else {
            resume = nil
            suspend = nil
        }
        do {
            try await loop.run(connect: { try await self.connect(setup) }, disconnect: { await self.disconnect() },
                               resume: resume, suspend: suspend)
        } catch {
            await limits.stop()
            throw error
        }
        await limits.stop()
    }

    // MARK: I/O limit

    /// The limit the keys ask for; a value that is not a whole number in
    /// 0...2^40 is refused, naming the key.
    static func limit(requests: String?, bytes: String?, backendPath: String) throws(BlockDeviceError) -> BlockIOLimit {
        guard let r = BlockIOLimit.parse(requests) else {
            throw .badKey(path: backendPath + "/" + BlockIOLimit.requestsKey, value: requests, why: "expected requests per second, a whole number (0: no limit)")
        }
        guard let b = BlockIOLimit.parse(bytes) else {
            throw .badKey(path: backendPath + "/" + BlockIOLimit.bytesKey, value: bytes, why: "expected bytes per second, a whole number (0: no limit)")
        }
        return BlockIOLimit(requestsPerSecond: r, bytesPerSecond: b)
    }

    /// An operator changed a limit key: applied at once to every ring, and
    /// `limit-status` says what is in force. A bad value leaves the limit as
    /// it was and is reported there, in the log and in the `error` key.
    private func limitKeysChanged(_ values: [String: String?]) async {
        let requests = values[BlockIOLimit.requestsKey] ?? nil, bytes = values[BlockIOLimit.bytesKey] ?? nil
        let status: String
        do {
            let limit = try Self.limit(requests: requests, bytes: bytes, backendPath: backendPath)
            if limit != limiter.limit {
                limiter.set(limit)
                logger.info("I/O limit \(limit)")
            }
            status = "\(limit)"
        } catch {
            logger.error("I/O limit refused, still \(limiter.limit): \(error)")
            try? await xenstore.writeIfDevicePresent(backendPath, "error", "\(error)")
            status = "refused (still \(limiter.limit)): \(error)"
        }
        try? await xenstore.writeIfDevicePresent(backendPath, Self.limitStatusKey, status)
    }

    /// Where the device says which I/O limit is in force.
    public static var limitStatusKey: String { "limit-status" }

    // MARK: Setup (toolstack keys)

    struct Setup: Sendable {
        var keys: DeviceKeys<BlockDeviceError>
        var backing: FileBacking
        var readOnly: Bool
        var info: VirtualDiskInfo
        var limit: BlockIOLimit
    }

    private func readSetup() async throws -> Setup {
        let keys = try await DeviceKeys<BlockDeviceError>(xenstore: xenstore, backendPath: backendPath)
        func key(_ name: String) async throws -> String? { try await keys.backend(name) }
        // libxl writes the target in `params`; a hotplug script may resolve
        // it to `physical-device-path`.
        let path: String
        if let resolved = try await key("physical-device-path"), !resolved.isEmpty {
            path = resolved
        } else if let params = try await key("params"), !params.isEmpty {
            // "aio:/path" and similar prefixes name a format; the path follows the last ':'.
            path = params.hasPrefix("/") ? params : String(params.split(separator: ":").last ?? "")
        } else {
            throw BlockDeviceError.badKey(path: backendPath + "/params", value: nil, why: "no disk path (params or physical-device-path)")
        }
        let limit = try Self.limit(requests: try await key(BlockIOLimit.requestsKey), bytes: try await key(BlockIOLimit.bytesKey),
                                   backendPath: backendPath)
        let modeText = try await key("mode") ?? "w"
        let readOnly: Bool
        switch modeText.first {
        case "r": readOnly = true
        case "w": readOnly = false
        default: throw BlockDeviceError.badKey(path: backendPath + "/mode", value: modeText, why: "mode must start with r or w")
        }
        let backing: FileBacking
        do { backing = try FileBacking(path: path, readOnly: readOnly, direct: configuration.directIO) } catch {
            throw BlockDeviceError.backing(error)
        }
        var info: VirtualDiskInfo = readOnly ? .readOnly : []
        // blkback takes cdrom from the frontend's device-type, as libxl writes it there.
        if try await keys.frontend("device-type") == "cdrom" { info.insert(.cdrom) }
        if try await key("removable") == "1" { info.insert(.removable) }
        return Setup(keys: keys, backing: backing, readOnly: readOnly, info: info, limit: limit)
    }

    /// What blkfront reads before it sets up its rings (Linux writes these at probe).
    private func publishProbeFeatures(_ setup: Setup) async throws {
        try await xenstore.withTransaction { t in
            try await self.xenstore.write(self.backendPath + "/feature-max-indirect-segments", "\(self.configuration.maximumIndirectSegments)", transaction: t)
            try await self.xenstore.write(self.backendPath + "/max-ring-page-order", "\(self.configuration.maximumRingPageOrder)", transaction: t)
            try await self.xenstore.write(self.backendPath + "/multi-queue-max-queues", "\(self.configuration.maximumQueues)", transaction: t)
        }
    }

    // MARK: Connect / disconnect

    /// Reads the frontend's ring keys, maps the rings, binds the channels,
    /// starts one worker per ring and writes the connection details in one
    /// transaction.
    /// With `resuming`, takes over the rings a previous backend left
    /// connected: each ring's record must exist and match, or this throws
    /// (nothing is left mapped) and the device waits for the frontend.
    private func connect(_ setup: Setup, resuming: Bool = false) async throws {
        let protocolText = try await setup.keys.frontend("protocol")
        let abi: BlockProtocolABI
        do { abi = try BlockProtocolABI.parse(xenstoreValue: protocolText) } catch {
            throw BlockDeviceError.badKey(path: setup.keys.frontendPath + "/protocol", value: protocolText, why: "\(error)")
        }
        let queues = Int(try await setup.keys.frontendNumber("multi-queue-num-queues") ?? 1)
        guard (1...configuration.maximumQueues).contains(queues) else {
            throw BlockDeviceError.badKey(path: setup.keys.frontendPath + "/multi-queue-num-queues", value: "\(queues)",
                                          why: "must be 1...\(configuration.maximumQueues)")
        }
        let orderKey = try await setup.keys.frontendNumber("ring-page-order")
        let order = Int(orderKey ?? 0)
        guard order <= configuration.maximumRingPageOrder else {
            throw BlockDeviceError.badKey(path: setup.keys.frontendPath + "/ring-page-order", value: "\(order)",
                                          why: "exceeds max-ring-page-order \(configuration.maximumRingPageOrder)")
        }
        // Persistent only if both sides want it (blkif.h's handshake).
        let frontendPersistent = try await setup.keys.frontendNumber("feature-persistent") ?? 0
        let persistent = configuration.maximumPersistentGrants > 0 && frontendPersistent == 1
        var geometry = setup.backing.geometry
        geometry.readOnly = setup.readOnly
        geometry.maximumIndirectSegments = configuration.maximumIndirectSegments

        var started: [any ServedRing<BlockCounter>] = []
        var ringRecords: [BlockRingRecord] = []
        let devid = backendPath.split(separator: "/").last.map(String.init) ?? "0"
        var ports: [EventChannelPort] = []
        for q in 0..<queues {
            // With one queue the keys sit in the frontend directory itself.
            let prefix = queues == 1 ? "" : "queue-\(q)/"
            var refs: [GrantRef] = []
            if orderKey == nil {
                guard let ref = try await setup.keys.frontendNumber(prefix + "ring-ref") else {
                    throw BlockDeviceError.badKey(path: setup.keys.frontendPath + "/" + prefix + "ring-ref", value: nil, why: "the frontend grants its ring here")
                }
                refs = [GrantRef(ref)]
            } else {
                for i in 0..<(1 << order) {
                    guard let ref = try await setup.keys.frontendNumber(prefix + "ring-ref\(i)") else {
                        throw BlockDeviceError.badKey(path: setup.keys.frontendPath + "/" + prefix + "ring-ref\(i)", value: nil,
                                                      why: "ring-page-order \(order) needs \(1 << order) ring-refN keys")
                    }
                    refs.append(GrantRef(ref))
                }
            }
            guard let port = try await setup.keys.frontendNumber(prefix + "event-channel") else {
                throw BlockDeviceError.badKey(path: setup.keys.frontendPath + "/" + prefix + "event-channel", value: nil, why: "the frontend's event channel port")
            }
            var record: BlockRingRecord?
            if let directory = configuration.stateDirectory {
                let entry = abi == .x86_64 ? BlockRingX86_64.entrySize : BlockRingX86_32.entrySize
                let slots = Int(SharedRingMemory.ringSize(byteCount: refs.count * SharedRingMemory.pageSize, entrySize: entry))
                let identity = BlockRingRecord.identity(frontend: setup.keys.frontendID.rawValue, abi: abi,
                                                        ringRefs: refs.map(\.rawValue), remotePort: port)
                let path = "\(directory)/vbd-\(setup.keys.frontendID.rawValue)-\(devid)-q\(q).ring"
                record = resuming ? try BlockRingRecord(resumingAt: path, slotCount: slots, identity: identity)
                                  : try BlockRingRecord(creatingAt: path, slotCount: slots, identity: identity)
                ringRecords.append(record!)
            }
            func worker<L: RingLayout>(_: L.Type) throws(BlockBackendError) -> any ServedRing<BlockCounter>
            where L.Request == BlockRequest, L.Response == BlockResponse {
                try BlockRingWorker<Platform, L>(
                    platform: platform, frontend: setup.keys.frontendID, ringRefs: refs, remotePort: EventChannelPort(port),
                    backing: setup.backing, geometry: geometry, engine: configuration.engine,
                    persistentGrants: persistent ? configuration.maximumPersistentGrants : 0,
                    pollMicroseconds: configuration.pollMicroseconds, limiter: limiter, record: record, resuming: resuming)
            }
            do {
                // The workers made so far unmap and unbind as they go if this throws.
                started.append(abi == .x86_64 ? try worker(BlockRingX86_64.self) : try worker(BlockRingX86_32.self))
            } catch {
                throw BlockDeviceError.backend(error)
            }
            ports.append(EventChannelPort(port))
        }

        let g = setup.backing.geometry
        let discard = g.discard && !setup.readOnly
        try await xenstore.withTransaction { t in
            func put(_ name: String, _ value: String) async throws {
                try await self.xenstore.write(self.backendPath + "/" + name, value, transaction: t)
            }
            try await put("feature-flush-cache", "1")
            try await put("feature-barrier", "1")
            try await put("feature-discard", discard ? "1" : "0")
            if discard {
                try await put("discard-granularity", "\(max(g.discardGranularity, g.logicalSectorSize))")
                try await put("discard-alignment", "0")
                try await put("discard-secure", g.secureDiscard ? "1" : "0")
            }
            // The negotiated value, as newer Linux writes it.
            try await put("feature-persistent", persistent ? "1" : "0")
            try await put("sectors", "\(g.sectors)")
            try await put("info", "\(setup.info.rawValue)")
            try await put("sector-size", "\(g.logicalSectorSize)")
            try await put("physical-sector-size", "\(g.physicalSectorSize)")
        }

        let logger = self.logger
        do {
            try rings.start(started, parkAfterMilliseconds: configuration.parkAfterMilliseconds,
                            onStart: BlockBackendInstrumentation.workerThreadStart) { q, error in
                // A broken ring stops that ring only (as Linux halts it).
                logger.error("ring \(q) stopped: \(error)")
            }
        } catch {
            throw BlockDeviceError.backend(.eventChannel(error))
        }
        records.withLock { $0 = ringRecords }
        negotiated.withLock {
            $0 = BlockNegotiation(queues: queues, ringPageOrder: order, abi: abi, engine: configuration.engine,
                                  directIO: setup.backing.isDirect, persistentGrants: persistent)
        }
        logger.info("connected", metadata: ["queues": "\(queues)", "ring-page-order": "\(order)", "protocol": "\(abi)",
                                            "engine": "\(configuration.engine)", "persistent": "\(persistent)"])
    }

    /// Stops the workers (each answers what it has in flight), unmaps the
    /// rings and unbinds the channels. Safe to repeat.
    /// The daemon is stopping: drains every ring (all it took is answered,
    /// so the records owe nothing) and leaves the device Connected, its
    /// records in place, for the next backend to take over. False (nothing
    /// done) when the policy says stopping closes devices.
    private func suspend() async -> Bool {
        guard !stopPolicy.closesDevices else { return false }
        // A device the toolstack removed is not kept for anyone (if xenstored
        // cannot say, keep what resuming needs).
        do {
            if try await xenstore.readIfPresent(backendPath + "/frontend") == nil { return false }
        } catch {}
        guard await rings.stop() else { return false }
        records.withLock { $0 = [] }
        negotiated.withLock { $0 = nil }
        return true
    }

    func disconnect() async {
        guard await rings.stop() else { return }
        // Every ring drained and answered: nothing is owed, nothing to resume.
        for record in records.withLock({ r in defer { r = [] }; return r }) { record.remove() }
        negotiated.withLock { $0 = nil }
        logger.info("disconnected")
    }
}

/// Hooks for benchmarks and tests; not for the data path.
public enum BlockBackendInstrumentation {
    static let workerThreadStart = WorkerStartHook()

    /// Runs at the start of every ring worker thread started afterwards
    /// (the block benchmark enables per-thread malloc counting with it).
    public static func setWorkerThreadStartHook(_ hook: (@Sendable () -> Void)?) { workerThreadStart.set(hook) }
}


#if canImport(Glibc)
import Glibc
#endif
import Logging
import ServiceLifecycle
import Synchronization
import XenBlockBackend
import XenBusDriver
import XenNetBackend
import XenPlatform
import XenStore
import XenStoreProtocol
import XenBus

/// The dom0 (or driver-domain) service: watches this domain's
/// `backend/vbd` and `backend/vif` trees as the toolstack lays them out and
/// runs a `BlockBackendDevice` or `NetBackendDevice` for every device
/// directory, the job `xl devd` does.
/// Devices come and go with their directories; on graceful shutdown
/// (SIGTERM) every device drains its rings and goes Closing → Closed.
public final class BackendDaemon<Platform: XenPlatform>: Service, @unchecked Sendable {
    let platform: Platform
    let xenstore: XenStoreClient
    private let block: Mutex<BlockBackendConfiguration>
    private let net: Mutex<NetBackendConfiguration>
    let logger: Logger
    /// `backend/vbd`: block devices.
    public let backendRoot: String
    /// `backend/vif`: network interfaces.
    public let netRoot: String

    enum Device {
        case block(BlockBackendDevice<Platform>)
        case net(NetBackendDevice<Platform>)
    }

    /// A device directory we serve, by "vbd/domid/devid" or "vif/domid/handle".
    struct Served {
        var device: Device
        var task: Task<Void, Never>
        var metrics: any DeviceMetrics
        var finished = false
    }
    private let served = Mutex<[String: Served]>([:])
    /// Devices whose directory went and that are still tearing down: a
    /// device made anew under the same key waits for them (XSA-350: a new
    /// connection must not overlap the old one's teardown).
    private let stopping = Mutex<[String: Task<Void, Never>]>([:])

    /// How often device counters reach swift-metrics.
    public let metricsInterval: Duration
    /// Runs after each metrics update (xenbackd writes its textfile there).
    let onMetricsUpdated: (@Sendable () -> Void)?
    /// Runs once the daemon watches its tree (xenbackd prints "ready" there).
    public var onReady: (@Sendable () -> Void)?

    /// Whether stopping leaves block devices Connected for the next daemon
    /// (the default) or closes every device.
    public let stopPolicy = DeviceStopPolicy()

    public init(platform: Platform, xenstore: XenStoreClient, block: BlockBackendConfiguration = BlockBackendConfiguration(),
                net: NetBackendConfiguration = NetBackendConfiguration(),
                metricsInterval: Duration = .seconds(1), onMetricsUpdated: (@Sendable () -> Void)? = nil, logger: Logger) {
        self.net = Mutex(net)
        self.metricsInterval = metricsInterval
        self.onMetricsUpdated = onMetricsUpdated
        self.platform = platform
        self.xenstore = xenstore
        self.block = Mutex(block)
        self.logger = logger
        backendRoot = "/local/domain/\(platform.backendDomain.rawValue)/backend/vbd"
        netRoot = "/local/domain/\(platform.backendDomain.rawValue)/backend/vif"
    }

    func root(_ kind: Substring) -> String { kind == "vif" ? netRoot : backendRoot }

    /// New settings for devices added from now on (SIGHUP); devices already
    /// connected keep what they negotiated.
    public func reconfigure(block configuration: BlockBackendConfiguration) {
        block.withLock { $0 = configuration }
        logger.info("configuration reloaded", metadata: ["engine": "\(configuration.engine)", "max-queues": "\(configuration.maximumQueues)",
                                                         "persistent-grants": "\(configuration.maximumPersistentGrants)"])
    }

    /// New network settings for interfaces added from now on.
    public func reconfigure(net configuration: NetBackendConfiguration) {
        net.withLock { $0 = configuration }
        logger.info("network configuration reloaded", metadata: ["max-queues": "\(configuration.maximumQueues)"])
    }

    public var blockConfiguration: BlockBackendConfiguration { block.withLock { $0 } }
    public var netConfiguration: NetBackendConfiguration { net.withLock { $0 } }

    /// The block devices being served, by "domid/devid".
    public var blockDevices: [String: BlockBackendDevice<Platform>] {
        served.withLock { s in
            var out: [String: BlockBackendDevice<Platform>] = [:]
            for (key, d) in s where !d.finished { if case .block(let b) = d.device { out[String(key.dropFirst(4))] = b } }
            return out
        }
    }

    /// The network interfaces being served, by "domid/handle".
    public var netDevices: [String: NetBackendDevice<Platform>] {
        served.withLock { s in
            var out: [String: NetBackendDevice<Platform>] = [:]
            for (key, d) in s where !d.finished { if case .net(let n) = d.device { out[String(key.dropFirst(4))] = n } }
            return out
        }
    }

    /// Brings every device's metrics up to date (the daemon calls it each
    /// `metricsInterval`; tests may call it directly).
    public func updateMetrics() {
        served.withLock { s in
            for (_, d) in s {
                switch d.device {
                case .block(let b): (d.metrics as? BlockDeviceMetrics)?.update(b.statistics, connected: b.negotiation != nil)
                case .net(let n): (d.metrics as? NetDeviceMetrics)?.update(n.statistics, connected: n.negotiation != nil)
                }
            }
        }
    }

    public func run() async throws {
        await removeOrphanedRecords()
        let metricsTask = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: metricsInterval)  // a period, not synchronisation
                updateMetrics()
                onMetricsUpdated?()
            }
        }
        defer { metricsTask.cancel() }
        let blockWatch = try await xenstore.watch(backendRoot)
        let netWatch = try await xenstore.watch(netRoot)
        let (events, feed) = AsyncStream.makeStream(of: String.self)
        let forwarders = [blockWatch.events, netWatch.events].map { stream in
            Task { for await event in stream { feed.yield(event.path) } }
        }
        defer { for f in forwarders { f.cancel() } }
        logger.info("serving \(backendRoot) and \(netRoot)")
        onReady?()
        await withGracefulShutdownHandler {
            // The watches cover whole subtrees, so every key a device writes
            // fires them: only paths that can add or remove a device (a
            // domain or device directory, a `frontend` key) make us look
            // again, else 64 devices connecting would cost 64² reads.
            for await path in events {
                if Task.isCancelled { break }
                guard Self.mayChangeDevices(path, root: backendRoot) && Self.mayChangeDevices(path, root: netRoot) else { continue }
                do { try await reconcile() } catch {
                    logger.error("cannot read the backend directories: \(error)")
                }
            }
        } onGracefulShutdown: {
            feed.finish()
        }
        feed.finish()
        // In a task cancelled from the start: a reconnecting client still
        // answers these while connected, but gives up if xenstored is away
        // (the device tasks stopAll cancels behave the same way).
        let unwatching = Task { [xenstore, backendRoot, netRoot] in
            try? await xenstore.unwatch(backendRoot, token: blockWatch.token)
            try? await xenstore.unwatch(netRoot, token: netWatch.token)
        }
        unwatching.cancel()
        await unwatching.value
        await stopAll()
        logger.info("stopped")
    }

    /// Ring records of block devices the toolstack removed while no daemon
    /// ran: nothing will resume them.
    func removeOrphanedRecords() async {
        guard let directory = block.withLock({ $0.stateDirectory }), let dir = opendir(directory) else { return }
        var names: [String] = []
        while let entry = readdir(dir) {
            names.append(withUnsafePointer(to: entry.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } })
        }
        closedir(dir)
        for name in names where name.hasPrefix("vbd-") && name.hasSuffix(".ring") {
            // vbd-<domid>-<devid>-q<N>.ring
            let parts = name.dropFirst(4).dropLast(5).split(separator: "-")
            guard parts.count == 3 else { continue }
            let present: Bool
            do { present = try await xenstore.readIfPresent("\(backendRoot)/\(parts[0])/\(parts[1])/frontend") != nil } catch { continue }
            if !present {
                unlink(directory + "/" + name)
                logger.info("removed the ring record of a device that is gone", metadata: ["record": "\(name)"])
            }
        }
    }

    static func mayChangeDevices(_ path: String, root: String) -> Bool {
        guard path.hasPrefix(root + "/") else { return true }  // the initial event, root itself, or another tree
        let below = path.dropFirst(root.count).split(separator: "/")
        return below.count <= 2 || (below.count == 3 && below[2] == "frontend")
    }

    /// Starts a device for every directory without one; stops devices whose
    /// directory is gone.
    func reconcile() async throws {
        var present: Set<String> = []
        let finished = served.withLock { s in Set(s.filter(\.value.finished).keys) }
        var madeAnew: Set<String> = []
        for kind in ["vbd", "vif"] {
            let root = self.root(kind[...])
            for domain in (try? await xenstore.directory(root)) ?? [] {
                for devid in (try? await xenstore.directory(root + "/" + domain)) ?? [] {
                    // A directory the toolstack is still filling has no frontend key yet.
                    let key = "\(kind)/\(domain)/\(devid)", path = "\(root)/\(domain)/\(devid)"
                    if try await xenstore.readIfPresent(path + "/frontend") != nil {
                        present.insert(key)
                        // A finished device's directory back in Initialising was
                        // removed and written anew (detach, attach) between two
                        // looks of ours: serve the new one.
                        if finished.contains(key),
                           try await xenstore.readIfPresent(path + "/state") == "\(XenbusState.initialising.rawValue)" {
                            madeAnew.insert(key)
                        }
                    }
                }
            }
        }
        let (toStart, toStop) = served.withLock { s -> ([String], [String: Task<Void, Never>]) in
            for key in madeAnew where s[key]?.finished == true {
                s[key]?.metrics.destroy()
                s[key] = nil
            }
            let start = present.filter { s[$0] == nil }.sorted()
            let gone = s.filter { !present.contains($0.key) }
            for (key, gone) in gone {
                gone.metrics.destroy()
                s[key] = nil
            }
            return (start, gone.mapValues(\.task))
        }
        for (key, task) in toStop {
            task.cancel()
            stopping.withLock { $0[key] = task }
            Task { await task.value; stopping.withLock { if $0[key] == task { $0[key] = nil } } }
        }
        for key in toStart { start(key) }
    }

    /// Waits until the device "vbd/DOMID/DEVID" or "vif/DOMID/HANDLE" has
    /// stopped: removed by its frontend and toolstack, or its directory gone
    /// and its teardown done. Returns at once for a device never served.
    public func awaitStopped(_ key: String) async {
        let tasks = [served.withLock { $0[key]?.task }, stopping.withLock { $0[key] }]
        for task in tasks { await task?.value }
    }

    private func start(_ key: String) {
        var deviceLogger = logger
        let parts = key.split(separator: "/")
        let (kind, domid, devid) = (parts[0], String(parts[1]), String(parts[2]))
        deviceLogger[metadataKey: "domid"] = .string(domid)
        deviceLogger[metadataKey: kind == "vif" ? "handle" : "devid"] = .string(devid)
        let path = root(kind) + "/" + domid + "/" + devid
        let device: Device
        let metrics: any DeviceMetrics
        let run: @Sendable () async throws -> Void
        if kind == "vif" {
            let nic = NetBackendDevice(platform: platform, xenstore: xenstore, backendPath: path,
                                       configuration: net.withLock { $0 }, logger: deviceLogger)
            device = .net(nic)
            metrics = NetDeviceMetrics(domid: domid, handle: devid)
            run = { try await nic.run() }
        } else {
            let disk = BlockBackendDevice(platform: platform, xenstore: xenstore, backendPath: path,
                                          configuration: block.withLock { $0 }, stopPolicy: stopPolicy, logger: deviceLogger)
            device = .block(disk)
            metrics = BlockDeviceMetrics(domid: domid, devid: devid)
            run = { try await disk.run() }
        }
        let predecessor = stopping.withLock { $0[key] }
        let task = Task { [logger = deviceLogger] in
            if let predecessor {
                logger.info("waiting for the previous device at this path to finish its teardown")
                await predecessor.value
            }
            do {
                try await run()
                logger.info("device finished")
            } catch {
                // Already reported in hotplug-error / error by the device.
                logger.warning("device stopped: \(error)")
            }
            // Stays in the table until its directory goes, so a broken
            // device is not restarted in a loop.
            self.served.withLock { $0[key]?.finished = true }
        }
        served.withLock { $0[key] = Served(device: device, task: task, metrics: metrics) }
        logger.info("device added", metadata: ["kind": "\(kind)", "domid": "\(domid)", "devid": "\(devid)"])
    }

    /// Cancels every device (each drains and closes) and waits for them.
    func stopAll() async {
        let tasks = served.withLock { s -> [Task<Void, Never>] in
            defer { s = [:] }
            return s.values.map(\.task)
        }
        for t in tasks { t.cancel() }
        for t in tasks { await t.value }
    }
}

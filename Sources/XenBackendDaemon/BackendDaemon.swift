import Logging
import ServiceLifecycle
import Synchronization
import XenBlockBackend
import XenPlatform
import XenStore

/// The dom0 (or driver-domain) service: watches this domain's
/// `backend/vbd` tree as the toolstack lays it out and runs a
/// `BlockBackendDevice` for every device directory, the job `xl devd` does.
/// Devices come and go with their directories; on graceful shutdown
/// (SIGTERM) every device drains its rings and goes Closing → Closed.
public final class BackendDaemon<Platform: XenPlatform>: Service, @unchecked Sendable {
    let platform: Platform
    let xenstore: XenStoreClient
    private let block: Mutex<BlockBackendConfiguration>
    let logger: Logger
    public let backendRoot: String

    /// A device directory we serve, by "domid/devid".
    struct Served {
        var device: BlockBackendDevice<Platform>
        var task: Task<Void, Never>
        var metrics: BlockDeviceMetrics
        var finished = false
    }
    private let served = Mutex<[String: Served]>([:])

    /// How often device counters reach swift-metrics.
    public let metricsInterval: Duration
    /// Runs after each metrics update (xenbackd writes its textfile there).
    let onMetricsUpdated: (@Sendable () -> Void)?
    /// Runs once the daemon watches its tree (xenbackd prints "ready" there).
    public var onReady: (@Sendable () -> Void)?

    public init(platform: Platform, xenstore: XenStoreClient, block: BlockBackendConfiguration = BlockBackendConfiguration(),
                metricsInterval: Duration = .seconds(1), onMetricsUpdated: (@Sendable () -> Void)? = nil, logger: Logger) {
        self.metricsInterval = metricsInterval
        self.onMetricsUpdated = onMetricsUpdated
        self.platform = platform
        self.xenstore = xenstore
        self.block = Mutex(block)
        self.logger = logger
        backendRoot = "/local/domain/\(platform.backendDomain.rawValue)/backend/vbd"
    }

    /// New settings for devices added from now on (SIGHUP); devices already
    /// connected keep what they negotiated.
    public func reconfigure(block configuration: BlockBackendConfiguration) {
        block.withLock { $0 = configuration }
        logger.info("configuration reloaded", metadata: ["engine": "\(configuration.engine)", "max-queues": "\(configuration.maximumQueues)",
                                                         "persistent-grants": "\(configuration.maximumPersistentGrants)"])
    }

    public var blockConfiguration: BlockBackendConfiguration { block.withLock { $0 } }

    /// The block devices being served, by "domid/devid".
    public var blockDevices: [String: BlockBackendDevice<Platform>] {
        served.withLock { $0.filter { !$0.value.finished }.mapValues(\.device) }
    }

    /// Brings every device's metrics up to date (the daemon calls it each
    /// `metricsInterval`; tests may call it directly).
    public func updateMetrics() {
        served.withLock { s in
            for (_, d) in s { d.metrics.update(d.device.statistics, connected: d.device.negotiation != nil) }
        }
    }

    public func run() async throws {
        let metricsTask = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: metricsInterval)  // a period, not synchronisation
                updateMetrics()
                onMetricsUpdated?()
            }
        }
        defer { metricsTask.cancel() }
        let watch = try await xenstore.watch(backendRoot)
        logger.info("serving \(backendRoot)")
        onReady?()
        await withGracefulShutdownHandler {
            // The watch covers the whole subtree, so every key a device
            // writes fires it: only paths that can add or remove a device
            // (a domain or device directory, a `frontend` key) make us look
            // again, else 64 devices connecting would cost 64² reads.
            for await event in watch.events {
                if Task.isCancelled { break }
                guard Self.mayChangeDevices(event.path, root: backendRoot) else { continue }
                do { try await reconcile() } catch {
                    logger.error("cannot read \(backendRoot): \(error)")
                }
            }
        } onGracefulShutdown: {
            Task { try? await self.xenstore.unwatch(self.backendRoot, token: watch.token) }
        }
        try? await xenstore.unwatch(backendRoot, token: watch.token)
        await stopAll()
        logger.info("stopped")
    }

    static func mayChangeDevices(_ path: String, root: String) -> Bool {
        guard path.hasPrefix(root) else { return true }  // the initial event, or root itself
        let below = path.dropFirst(root.count).split(separator: "/")
        return below.count <= 2 || (below.count == 3 && below[2] == "frontend")
    }

    /// Starts a device for every directory without one; stops devices whose
    /// directory is gone.
    func reconcile() async throws {
        var present: Set<String> = []
        for domain in (try? await xenstore.directory(backendRoot)) ?? [] {
            for devid in (try? await xenstore.directory(backendRoot + "/" + domain)) ?? [] {
                // A directory the toolstack is still filling has no frontend key yet.
                if try await xenstore.readIfPresent("\(backendRoot)/\(domain)/\(devid)/frontend") != nil {
                    present.insert("\(domain)/\(devid)")
                }
            }
        }
        let (toStart, toStop) = served.withLock { s -> ([String], [Task<Void, Never>]) in
            let start = present.filter { s[$0] == nil }.sorted()
            let gone = s.filter { !present.contains($0.key) }
            for (key, gone) in gone {
                gone.metrics.destroy()
                s[key] = nil
            }
            return (start, gone.values.map(\.task))
        }
        for task in toStop { task.cancel() }
        for key in toStart { start(key) }
    }

    private func start(_ key: String) {
        var deviceLogger = logger
        let parts = key.split(separator: "/")
        deviceLogger[metadataKey: "domid"] = .string(String(parts[0]))
        deviceLogger[metadataKey: "devid"] = .string(String(parts[1]))
        let device = BlockBackendDevice(platform: platform, xenstore: xenstore, backendPath: backendRoot + "/" + key,
                                        configuration: block.withLock { $0 }, logger: deviceLogger)
        let task = Task { [logger = deviceLogger] in
            do {
                try await device.run()
                logger.info("device finished")
            } catch {
                // Already reported in hotplug-error / error by the device.
                logger.warning("device stopped: \(error)")
            }
            // Stays in the table until its directory goes, so a broken
            // device is not restarted in a loop.
            self.served.withLock { $0[key]?.finished = true }
        }
        let metrics = BlockDeviceMetrics(domid: String(parts[0]), devid: String(parts[1]))
        served.withLock { $0[key] = Served(device: device, task: task, metrics: metrics) }
        logger.info("device added", metadata: ["domid": "\(parts[0])", "devid": "\(parts[1])"])
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

import ArgumentParser
import CoreMetrics
import Prometheus
import Logging
import ServiceLifecycle
import UnixSignals
import XenBackendDaemon
import XenBlockBackend
import XenNetBackend
import XenHost
import XenPlatform
import XenProcess
import XenSim
import XenStore
import XenSystem
#if canImport(Glibc)
import Glibc
import XenDisk
#endif

extension PlatformKind: ExpressibleByArgument {}
extension BlockEngineKind: ExpressibleByArgument {}
extension Logger.Level: @retroactive ExpressibleByArgument {}

@main
struct XenbackdCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "xenbackd",
        abstract: "The xenback dom0 service: serves the block devices and network interfaces the toolstack lays out in xenstore.",
        discussion: """
        Watches /local/domain/<domain>/backend/vbd and backend/vif and serves every device \
        directory there (a disk; a VIF as a TAP named vif<domid>.<handle> on the bridge its \
        `bridge` key names), as \
        `xl devd` does in a driver domain. SIGTERM or SIGINT: every ring drains, every device \
        goes Closing then Closed, exit 0. On real Xen (--platform host, or auto with /dev/xen \
        present) it uses /dev/xen/gntdev, /dev/xen/evtchn and xenstored; with --platform sim it \
        is a backend domain of a running `xenback sim serve`.
        """,
        version: BuildVersion.text)

    @Option(help: "auto, host (real Xen) or sim (the software hypervisor).")
    var platform: PlatformKind = .auto

    @Option(help: "The sim's control socket (with --platform sim).")
    var simSocket: String?

    @Option(help: "The backend domain this daemon runs in.")
    var domain: UInt16 = 0

    @Option(help: "Configuration file (JSON; see docs/xenbackd.md). Default: /etc/xenback/xenbackd.json if it exists. SIGHUP re-reads it.")
    var config: String?

    @Option(help: "Block I/O engine: libaio, io_uring or sync (default libaio).")
    var engine: BlockEngineKind?

    @Option(help: "multi-queue-max-queues to offer (default: online CPUs).")
    var maxQueues: Int?

    @Option(help: "max-ring-page-order to offer (0...4, default 4).")
    var maxRingPageOrder: Int?

    @Option(help: "Persistent grants kept mapped per ring (0 turns the feature off; default 4096).")
    var persistentGrants: Int?

    @Option(help: "multi-queue-max-queues to offer network frontends (default: online CPUs, at most 8).")
    var netMaxQueues: Int?

    @Option(help: "Capture every VIF's frames to <directory>/<vif name>.pcap.")
    var captureDirectory: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (default info).")
    var logLevel: Logger.Level?

    @Option(help: "Serve Prometheus metrics at http://ADDRESS:PORT/metrics (for example 127.0.0.1:9512; port 0 picks a free one, printed on the ready line).")
    var metricsListen: String?

    @Option(help: "Write Prometheus metrics (per-device requests, bytes, errors) to this file every second, replacing it atomically (node_exporter's textfile collector reads it).")
    var metricsFile: String?

    @Option(help: "Where each ring's record of what it owes is kept (tmpfs), so that a restarted xenbackd takes over the connections it left instead of leaving guests waiting. Default /run/xenback (with --platform sim: <sim socket>.state); none turns records off.")
    var stateDir: String?

    static let defaultConfigPath = "/etc/xenback/xenbackd.json"

    /// The records' directory, or nil when turned off.
    var stateDirectory: String? {
        if stateDir == "none" { return nil }
        if let stateDir { return stateDir }
        return platform.resolved() == .sim ? simSocket.map { $0 + ".state" } : "/run/xenback"
    }

    /// The file's settings, or none if no file is given and the default is absent.
    func loadFile() throws(ConfigurationError) -> DaemonConfiguration {
        if let config { return try DaemonConfiguration.load(path: config) }
        if access(Self.defaultConfigPath, F_OK) == 0 { return try DaemonConfiguration.load(path: Self.defaultConfigPath) }
        return DaemonConfiguration()
    }

    /// Built-in defaults, then the file, then the flags.
    func blockConfiguration(_ file: DaemonConfiguration) throws(ConfigurationError) -> BlockBackendConfiguration {
        var c = try file.blockConfiguration(source: config ?? Self.defaultConfigPath)
        if let engine { c.engine = engine }
        if let maxQueues { c.maximumQueues = maxQueues }
        if let maxRingPageOrder { c.maximumRingPageOrder = maxRingPageOrder }
        if let persistentGrants { c.maximumPersistentGrants = persistentGrants }
        c.stateDirectory = stateDirectory
        do { try c.validate() } catch { throw .badValue(source: "command line", key: "block", reason: "\(error)") }
        return c
    }

    /// Built-in defaults, then the file, then the flags.
    func netConfiguration(_ file: DaemonConfiguration) throws(ConfigurationError) -> NetBackendConfiguration {
        var c = try file.netConfiguration(source: config ?? Self.defaultConfigPath)
        if let netMaxQueues { c.maximumQueues = netMaxQueues }
        if let captureDirectory {
            guard access(captureDirectory, W_OK) == 0 else {
                throw .badValue(source: "command line", key: "--capture-directory", reason: "\(captureDirectory) is not a writable directory")
            }
            c.captureDirectory = captureDirectory
        }
        do { try c.validate() } catch { throw .badValue(source: "command line", key: "net", reason: "\(error)") }
        return c
    }

    static func main() async {
        ParentLifeline.honour()
        await main(nil)
    }

    func validate() throws {
        do {
            let file = try loadFile()
            _ = try blockConfiguration(file)
            _ = try netConfiguration(file)
        } catch { throw ValidationError("\(error)") }
        if let metricsListen, Self.parseListen(metricsListen) == nil {
            throw ValidationError("--metrics-listen must be ADDRESS:PORT (a port in 0...65535), got \(metricsListen)")
        }
        if platform.resolved() == .sim && simSocket == nil {
            throw ValidationError("--platform sim needs --sim-socket (the control socket of `xenback sim serve`)")
        }
    }

    func run() async throws {
        let file = try loadFile()
        let level = logLevel ?? file.log?.level.flatMap { Logger.Level(rawValue: $0) } ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let blockConfiguration = try blockConfiguration(file)
        let netConfiguration = try netConfiguration(file)

        let metricsFile = self.metricsFile ?? file.metrics?.file
        let logger = Logger(label: "xenbackd")
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        var exporter: (@Sendable () -> Void)?
        if let path = metricsFile {
            exporter = { @Sendable in Self.writeMetrics(registry, to: path) }
        }
        var endpoint: MetricsEndpoint?
        if let listen = metricsListen.flatMap(Self.parseListen) {
            do {
                endpoint = try await MetricsEndpoint.start(host: listen.host, port: listen.port, registry: registry)
            } catch {
                throw ValidationError("--metrics-listen \(listen.host):\(listen.port): cannot listen there: \(error)")
            }
        }
        do {
            try await serve(exporter: exporter, endpoint: endpoint,
                            block: blockConfiguration, net: netConfiguration, logger: logger)
        } catch {
            await endpoint?.stop()
            throw error
        }
        await endpoint?.stop()
    }

    private func serve(exporter: (@Sendable () -> Void)?, endpoint: MetricsEndpoint?,
                       block: BlockBackendConfiguration, net: NetBackendConfiguration, logger: Logger) async throws {
        let backend = DomainID(domain)
        let readyLine = "ready pid=\(getpid())" + (endpoint.map { " metrics=\($0.url)" } ?? "")
        switch platform.resolved() {
        case .sim, .auto:
            let client = try SimClient(socketPath: simSocket!)
            let xenstore = try await client.xenstore(as: backend, reconnectingWith: logger)
            try await serve(BackendDaemon(platform: client.platform(backend: backend), xenstore: xenstore,
                                          block: block, net: net, onMetricsUpdated: exporter, logger: logger),
                            readyLine: readyLine, logger: logger)
        case .host:
            let xenstore = try await XenStoreClient.connect(reconnecting: XenStoreReconnection(XenStoreClient.systemEndpoint, logger: logger))
            try await serve(BackendDaemon(platform: try HostPlatform(backendDomain: backend), xenstore: xenstore,
                                          block: block, net: net, onMetricsUpdated: exporter, logger: logger),
                            readyLine: readyLine, logger: logger)
        }
    }

    static func parseListen(_ text: String) -> (host: String, port: Int)? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else { return nil }
        var host = text[..<colon]
        // [::1]:9512 names an IPv6 address; the brackets are not part of it.
        if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        return host.isEmpty ? nil : (String(host), port)
    }

    /// The registry in Prometheus' text format, written to a temporary file
    /// and renamed over `path`, so readers never see half a file.
    static func writeMetrics(_ registry: PrometheusCollectorRegistry, to path: String) {
        var bytes: [UInt8] = []
        registry.emit(into: &bytes)
        let temporary = path + ".tmp"
        let fd = open(temporary, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return }
        // SAFETY: a view of the local array for the write only.
        let written = bytes.withUnsafeBytes { b -> Int in
            guard let base = b.baseAddress else { return 0 }
            return (try? Syscall.write(fd, base, count: b.count).get()) ?? -1
        }
        Syscall.close(fd)
        if written == bytes.count { rename(temporary, path) } else { unlink(temporary) }
    }

    func serve<P: XenPlatform>(_ daemon: BackendDaemon<P>, readyLine: String, logger: Logger) async throws {
        // Made once the platform answered (a daemon that cannot reach it
        // leaves nothing behind).
        if let directory = stateDirectory, mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw ValidationError("--state-dir \(directory): cannot create it: \(String(cString: strerror(errno)))")
        }
        let group = ServiceGroup(configuration: .init(services: [.init(service: daemon)],
                                                      gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        // SIGHUP: read the file again; a bad file is logged and the old settings stay.
        // Trapped before "ready" is printed: a SIGHUP right after must not kill us.
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        let reload = Task {
            for await _ in hangups {
                do {
                    let file = try loadFile()
                    let (block, net) = (try blockConfiguration(file), try netConfiguration(file))
                    daemon.reconfigure(block: block)
                    daemon.reconfigure(net: net)
                } catch {
                    logger.error("configuration not reloaded: \(error)")
                }
            }
        }
        defer { reload.cancel() }
        // SIGUSR2: close every device, then stop (a host going down with
        // guests still running); SIGTERM alone leaves block devices Connected
        // for the next xenbackd.
        let closeAll = await UnixSignalsSequence(trapping: .sigusr2)
        let closer = Task {
            for await _ in closeAll {
                logger.notice("SIGUSR2: closing every device, then stopping")
                daemon.stopPolicy.closeDevicesOnStop()
                kill(getpid(), SIGTERM)
            }
        }
        defer { closer.cancel() }
        // "ready" once the tree is watched, inside the group (signals trapped).
        daemon.onReady = {
            print(readyLine)
            fflush(nil)
        }
        try await group.run()
    }
}

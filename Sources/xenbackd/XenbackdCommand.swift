import ArgumentParser
import CoreMetrics
import Prometheus
import Logging
import ServiceLifecycle
import XenBackendDaemon
import XenBlockBackend
import XenHost
import XenPlatform
import XenSim
import XenStore
#if canImport(Glibc)
import Glibc
#endif

extension PlatformKind: ExpressibleByArgument {}
extension BlockEngineKind: ExpressibleByArgument {}
extension Logger.Level: ExpressibleByArgument {}

@main
struct XenbackdCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "xenbackd",
        abstract: "The xenback dom0 service: serves the block devices the toolstack lays out in xenstore.",
        discussion: """
        Watches /local/domain/<domain>/backend/vbd and serves every device directory there, as \
        `xl devd` does in a driver domain. SIGTERM or SIGINT: every ring drains, every device \
        goes Closing then Closed, exit 0. On real Xen (--platform host, or auto with /dev/xen \
        present) it uses /dev/xen/gntdev, /dev/xen/evtchn and xenstored; with --platform sim it \
        is a backend domain of a running `xenback sim serve`.
        """)

    @Option(help: "auto, host (real Xen) or sim (the software hypervisor).")
    var platform: PlatformKind = .auto

    @Option(help: "The sim's control socket (with --platform sim).")
    var simSocket: String?

    @Option(help: "The backend domain this daemon runs in.")
    var domain: UInt16 = 0

    @Option(help: "Block I/O engine: libaio, io_uring or sync.")
    var engine: BlockEngineKind = .default

    @Option(help: "multi-queue-max-queues to offer (default: online CPUs).")
    var maxQueues: Int = BlockBackendConfiguration.onlineCPUs

    @Option(help: "max-ring-page-order to offer (0...4).")
    var maxRingPageOrder: Int = 4

    @Option(help: "Persistent grants kept mapped per ring (0 turns the feature off).")
    var persistentGrants: Int = 4096

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    @Option(help: "Write Prometheus metrics (per-device requests, bytes, errors) to this file every second, replacing it atomically (node_exporter's textfile collector reads it).")
    var metricsFile: String?

    var blockConfiguration: BlockBackendConfiguration {
        BlockBackendConfiguration(engine: engine, maximumQueues: maxQueues, maximumRingPageOrder: maxRingPageOrder,
                                  maximumPersistentGrants: persistentGrants)
    }

    func validate() throws {
        do { try blockConfiguration.validate() } catch { throw ValidationError("\(error)") }
        if platform.resolved() == .sim && simSocket == nil {
            throw ValidationError("--platform sim needs --sim-socket (the control socket of `xenback sim serve`)")
        }
    }

    func run() async throws {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = logLevel
            return handler
        }
        let logger = Logger(label: "xenbackd")
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        var exporter: (@Sendable () -> Void)?
        if let path = metricsFile {
            exporter = { @Sendable in Self.writeMetrics(registry, to: path) }
        }
        let backend = DomainID(domain)
        switch platform.resolved() {
        case .sim, .auto:
            let client = try SimClient(socketPath: simSocket!)
            let xenstore = try await client.xenstore(as: backend)
            try await serve(BackendDaemon(platform: client.platform(backend: backend), xenstore: xenstore,
                                          block: blockConfiguration, onMetricsUpdated: exporter, logger: logger), logger: logger)
        case .host:
            let xenstore = try await XenStoreClient.connectToSystem()
            try await serve(BackendDaemon(platform: try HostPlatform(backendDomain: backend), xenstore: xenstore,
                                          block: blockConfiguration, onMetricsUpdated: exporter, logger: logger), logger: logger)
        }
    }

    /// The registry in Prometheus' text format, written to a temporary file
    /// and renamed over `path`, so readers never see half a file.
    static func writeMetrics(_ registry: PrometheusCollectorRegistry, to path: String) {
        var bytes: [UInt8] = []
        registry.emit(into: &bytes)
        let temporary = path + ".tmp"
        let fd = open(temporary, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return }
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        if written == bytes.count { rename(temporary, path) } else { unlink(temporary) }
    }

    func serve<P: XenPlatform>(_ daemon: BackendDaemon<P>, logger: Logger) async throws {
        let group = ServiceGroup(configuration: .init(services: [.init(service: daemon)],
                                                      gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        print("ready pid=\(getpid())")
        fflush(nil)
        try await group.run()
    }
}

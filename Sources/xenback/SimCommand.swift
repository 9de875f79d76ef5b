import ArgumentParser
import Logging
import ServiceLifecycle
import UnixSignals
import XenSim
import XenStore
#if canImport(Glibc)
import Glibc
#endif

struct SimCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sim",
        abstract: "The software hypervisor, for running backends and frontends without Xen.",
        subcommands: [SimServeCommand.self])
}

struct SimServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve a software hypervisor and its xenstored to other processes (foreground; SIGTERM stops it).",
        discussion: """
            Prints 'ready pid=PID' on standard output once both sockets accept connections. \
            SIGUSR1 restarts xenstored: every xenstore connection drops and the socket is bound anew; \
            the store's contents stay.
            """)

    @Option(help: "Control socket for sim clients (guest memory, grants, event channels).")
    var socket: String

    @Option(help: "xenstored socket (dom0 clients, Xen's xenstore-* tools via XENSTORED_PATH).")
    var xenstoreSocket: String

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func validate() throws {
        for (name, path) in [("--socket", socket), ("--xenstore-socket", xenstoreSocket)] {
            guard !path.isEmpty, path.utf8.count < 108 else { throw ValidationError("\(name) must be a path under 108 bytes") }
        }
        guard socket != xenstoreSocket else { throw ValidationError("--socket and --xenstore-socket must differ") }
    }

    func run() async throws {
        bootstrapLogging(level: logLevel)
        let logger = Logger(label: "xenback.sim")
        let service = SimService(socket: socket, xenstoreSocket: xenstoreSocket, logger: logger)
        let group = ServiceGroup(configuration: .init(services: [.init(service: service)],
                                                      gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}

/// The sim server and its xenstored, up until graceful shutdown.
struct SimService: Service {
    let socket: String
    let xenstoreSocket: String
    let logger: Logger

    func run() async throws {
        let xenstore = XenStoreServer(socketPath: xenstoreSocket, logger: logger)
        try await xenstore.start()
        let sim = try SimServer(socketPath: socket, xenstore: xenstore, logger: logger)
        sim.start()
        // Trapped before "ready": a SIGUSR1 right after must not kill us.
        let restarts = await UnixSignalsSequence(trapping: .sigusr1)
        let restarter = Task {
            for await _ in restarts {
                do { try await xenstore.restart() } catch { logger.error("xenstored did not restart: \(error)") }
            }
        }
        defer { restarter.cancel() }
        print("ready pid=\(getpid())")
        fflush(nil)  // all streams: the parent waits for this line
        try? await gracefulShutdown()
        sim.stop()
        try await xenstore.stop()
        logger.info("sim stopped")
    }
}

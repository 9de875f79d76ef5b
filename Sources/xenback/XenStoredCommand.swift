import ArgumentParser
import Logging
import ServiceLifecycle
import XenStore

struct XenStoredCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "xenstored",
        abstract: "Run the embedded xenstored on a UNIX socket (foreground; SIGTERM or SIGINT stops it).",
        discussion: "Xen's own tools work against it: XENSTORED_PATH=PATH xenstore-ls /")

    @Option(help: "Path of the UNIX socket to listen on (an existing socket file there is replaced).")
    var socket: String

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func validate() throws {
        guard !socket.isEmpty else { throw ValidationError("--socket needs a path") }
        guard socket.utf8.count < 108 else { throw ValidationError("--socket path is \(socket.utf8.count) bytes; UNIX socket paths must be under 108") }
    }

    func run() async throws {
        bootstrapLogging(level: logLevel)
        let logger = Logger(label: "xenback.xenstored")
        let server = XenStoreServer(socketPath: socket, logger: logger)
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: server)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        try await group.run()
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// Logs to standard error at `level`; only executables bootstrap logging.
func bootstrapLogging(level: Logger.Level) {
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = level
        return handler
    }
}

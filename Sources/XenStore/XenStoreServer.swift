import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import XenStoreProtocol

/// The embedded xenstored: serves a `XenStoreEngine` on a UNIX socket with
/// the real xenstore wire protocol, so Xen's own libxenstore and
/// xenstore-* tools (`XENSTORED_PATH`) and our client work against it.
/// Socket clients are dom0, as with xenstored. All connections share one
/// event loop, which alone touches the engine.
public final class XenStoreServer: Service, @unchecked Sendable {
    public let socketPath: String
    let engine: XenStoreEngine
    let logger: Logger
    let group: MultiThreadedEventLoopGroup
    let loop: EventLoop
    // Touched only on `loop`.
    var channels: [XenStoreEngine.ConnectionID: Channel] = [:]
    var listener: Channel?

    public init(socketPath: String, engine: XenStoreEngine = XenStoreEngine(),
                logger: Logger = Logger(label: "xenback.xenstored")) {
        self.socketPath = socketPath
        self.engine = engine
        self.logger = logger
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        loop = group.next()
    }

    /// Binds the socket (replacing a stale socket file) and starts serving.
    public func start() async throws {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(XenStoreFrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(ConnectionHandler(server: self))
                }
            }
        listener = try await bootstrap.bind(unixDomainSocketPath: socketPath, cleanupExistingSocketFile: true).get()
        logger.info("xenstored listening", metadata: ["socket": "\(socketPath)"])
    }

    /// Closes the socket and every connection.
    public func stop() async throws {
        try? await listener?.close()
        let open = try await loop.submit { [self] in Array(channels.values) }.get()
        for channel in open { try? await channel.close() }
        try await group.shutdownGracefully()
    }

    /// What a xenstored restart looks like to its clients: every connection
    /// (socket and adopted) drops with its watches and transactions, and the
    /// socket is bound anew. The store itself survives, as a xenstored
    /// reloading its database does.
    public func restart() async throws {
        try? await listener?.close()
        let open = try await loop.submit { [self] in Array(channels.values) }.get()
        for channel in open { try? await channel.close() }
        try await start()
        logger.notice("xenstored restarted", metadata: ["dropped-connections": "\(open.count)"])
    }

    /// Service: serve until graceful shutdown (SIGTERM), then stop cleanly.
    public func run() async throws {
        try await start()
        try? await gracefulShutdown()
        try await stop()
        logger.info("xenstored stopped")
    }

    /// Serves an already connected stream socket as a client acting as
    /// `domain` (the sim hands guests such a socket instead of a ring page).
    /// Takes ownership of `socket`.
    public func adopt(socket: Int32, domain: UInt32) async throws {
        _ = try await ClientBootstrap(group: group)
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(XenStoreFrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(ConnectionHandler(server: self, domain: domain))
                }
            }
            .withConnectedSocket(socket).get()
    }


    final class ConnectionHandler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = XenStoreMessage
        let server: XenStoreServer
        let domain: UInt32
        var id: XenStoreEngine.ConnectionID?

        init(server: XenStoreServer, domain: UInt32 = 0) {
            self.server = server
            self.domain = domain
        }

        func channelActive(context: ChannelHandlerContext) {
            let id = server.engine.connect(domain: domain)
            self.id = id
            server.channels[id] = context.channel
            context.fireChannelActive()
        }

        func channelInactive(context: ChannelHandlerContext) {
            if let id {
                server.engine.disconnect(id)
                server.channels[id] = nil
            }
            context.fireChannelInactive()
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard let id else { return }
            let message = unwrapInboundIn(data)
            var touched: [Channel] = []
            for out in server.engine.handle(message, from: id) {
                guard let channel = server.channels[out.connection] else { continue }
                var buffer = channel.allocator.buffer(capacity: XenStoreLimits.headerSize + out.message.payload.count)
                buffer.writeXenStoreMessage(out.message)
                channel.write(buffer, promise: nil)
                if !touched.contains(where: { $0 === channel }) { touched.append(channel) }
            }
            for channel in touched { channel.flush() }
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            server.logger.info("closing xenstore connection", metadata: ["error": "\(error)"])
            context.close(promise: nil)
        }
    }
}

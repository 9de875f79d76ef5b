#if canImport(Glibc)
import Glibc
#endif
import NIOCore
import NIOPosix
import XenStoreProtocol

/// Why a xenstore call failed.
public enum XenStoreClientError: Error, Equatable, Sendable, CustomStringConvertible {
    /// xenstored answered with an error.
    case failed(XenStoreErrorCode, operation: XenStoreMessageType, path: String)
    /// xenstored answered with an error name we do not know.
    case unknownError(String, operation: XenStoreMessageType, path: String)
    /// A reply of the wrong type or shape.
    case unexpectedReply(String)
    /// The connection closed before the reply came.
    case connectionClosed
    /// A transaction kept conflicting.
    case transactionRetriesExhausted(Int)
    /// No xenstore to connect to at this path.
    case unavailable(path: String, errno: Int32)

    public var code: XenStoreErrorCode? {
        if case .failed(let c, _, _) = self { return c }
        return nil
    }

    public var description: String {
        switch self {
        case .failed(let code, let op, let path): "xenstore \(op) \(path): \(code.rawValue)"
        case .unknownError(let name, let op, let path): "xenstore \(op) \(path): \(name)"
        case .unexpectedReply(let s): "unexpected xenstore reply: \(s)"
        case .connectionClosed: "xenstore connection closed"
        case .transactionRetriesExhausted(let n): "xenstore transaction still conflicting after \(n) attempts"
        case .unavailable(let path, let e): "cannot open xenstore at \(path): errno \(e)"
        }
    }
}

/// A watch firing: the path that changed (or the watched path, for the
/// initial event every new watch gets).
public struct XenStoreWatchEvent: Sendable, Equatable {
    public var path: String
    public var token: String
}

/// A xenstore client over xenstored's UNIX socket: every operation the
/// drivers and the toolstack use, watch events as an async sequence, and
/// transactions retried on EAGAIN.
public final class XenStoreClient: Sendable {
    let channel: Channel
    let handler: ClientHandler

    init(channel: Channel, handler: ClientHandler) {
        self.channel = channel
        self.handler = handler
    }

    /// Framing, then request/reply matching, on a new channel.
    private static func install(_ handler: ClientHandler, on channel: Channel) -> EventLoopFuture<Void> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(XenStoreFrameDecoder()))
            try channel.pipeline.syncOperations.addHandler(handler)
        }
    }

    /// Connects to xenstored's socket (`XENSTORED_PATH`, by default
    /// /var/run/xenstored/socket).
    public static func connect(socketPath: String,
                               group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> XenStoreClient {
        let handler = ClientHandler()
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in install(handler, on: channel) }
            .connect(unixDomainSocketPath: socketPath).get()
        return XenStoreClient(channel: channel, handler: handler)
    }

    /// Speaks xenstore over an already connected stream socket (a sim
    /// guest's connection); takes ownership of `fd`.
    public static func connect(fileDescriptor fd: Int32,
                               group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> XenStoreClient {
        let handler = ClientHandler()
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in install(handler, on: channel) }
            .withConnectedSocket(fd).get()
        return XenStoreClient(channel: channel, handler: handler)
    }

    /// Speaks xenstore through a character device or pipe-like descriptor
    /// (/dev/xen/xenbus in a guest or driver domain without xenstored's
    /// socket); takes ownership of `fd`.
    public static func connect(pipeDescriptor fd: Int32,
                               group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> XenStoreClient {
        let handler = ClientHandler()
        let channel = try await NIOPipeBootstrap(group: group)
            .channelInitializer { channel in install(handler, on: channel) }
            .takingOwnershipOfDescriptor(inputOutput: fd).get()
        return XenStoreClient(channel: channel, handler: handler)
    }

    /// Opens /dev/xen/xenbus (or another xenbus device path).
    public static func connect(xenbusDevice path: String = "/dev/xen/xenbus") async throws -> XenStoreClient {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw XenStoreClientError.unavailable(path: path, errno: errno) }
        return try await connect(pipeDescriptor: fd)
    }

    /// xenstored the way Xen's libxenstore finds it: the socket named by
    /// XENSTORED_PATH or the default socket if it exists, else /dev/xen/xenbus.
    public static func connectToSystem() async throws -> XenStoreClient {
        let socket = defaultSocketPath
        if getenv("XENSTORED_PATH") != nil || access(socket, F_OK) == 0 {
            return try await connect(socketPath: socket)
        }
        return try await connect(xenbusDevice: "/dev/xen/xenbus")
    }

    public static var defaultSocketPath: String {
        if let p = getenv("XENSTORED_PATH") { return String(cString: p) }
        return "/var/run/xenstored/socket"
    }

    public func close() async { try? await channel.close() }

    /// Sends a request and waits for its reply; an XS_ERROR reply throws.
    public func request(_ type: XenStoreMessageType, payload: [UInt8], transaction: UInt32 = 0,
                        path: String = "") async throws -> XenStoreMessage {
        let promise = channel.eventLoop.makePromise(of: XenStoreMessage.self)
        let message = XenStoreMessage(type: type, requestID: 0, transactionID: transaction, payload: payload)
        channel.eventLoop.execute { [handler, channel] in handler.send(message, on: channel, promise: promise) }
        let reply = try await promise.futureResult.get()
        if reply.type == .error {
            let name = reply.strings.first ?? ""
            if let code = XenStoreErrorCode(rawValue: name) { throw XenStoreClientError.failed(code, operation: type, path: path) }
            throw XenStoreClientError.unknownError(name, operation: type, path: path)
        }
        guard reply.type == type else { throw XenStoreClientError.unexpectedReply("\(reply.type) for \(type)") }
        return reply
    }

    private func call(_ type: XenStoreMessageType, _ strings: [String], transaction: UInt32) async throws -> XenStoreMessage {
        try await request(type, payload: strings.flatMap { Array($0.utf8) + [0] }, transaction: transaction,
                          path: strings.first ?? "")
    }

    // MARK: Operations

    public func read(_ path: String, transaction: UInt32 = 0) async throws -> [UInt8] {
        try await call(.read, [path], transaction: transaction).payload
    }

    public func readString(_ path: String, transaction: UInt32 = 0) async throws -> String {
        String(decoding: try await read(path, transaction: transaction), as: UTF8.self)
    }

    /// The value, or nil if the node does not exist.
    public func readIfPresent(_ path: String, transaction: UInt32 = 0) async throws -> String? {
        do { return try await readString(path, transaction: transaction) } catch XenStoreClientError.failed(.noEntry, _, _) { return nil }
    }

    public func write(_ path: String, _ value: [UInt8], transaction: UInt32 = 0) async throws {
        _ = try await request(.write, payload: Array(path.utf8) + [0] + value, transaction: transaction, path: path)
    }

    public func write(_ path: String, _ value: String, transaction: UInt32 = 0) async throws {
        try await write(path, Array(value.utf8), transaction: transaction)
    }

    public func mkdir(_ path: String, transaction: UInt32 = 0) async throws {
        _ = try await call(.mkdir, [path], transaction: transaction)
    }

    public func rm(_ path: String, transaction: UInt32 = 0) async throws {
        _ = try await call(.rm, [path], transaction: transaction)
    }

    public func directory(_ path: String, transaction: UInt32 = 0) async throws -> [String] {
        try await call(.directory, [path], transaction: transaction).strings
    }

    public func permissions(_ path: String, transaction: UInt32 = 0) async throws -> XenStorePermissions {
        let strings = try await call(.getPermissions, [path], transaction: transaction).strings
        do { return try XenStorePermissions(parsing: strings) } catch { throw XenStoreClientError.unexpectedReply("permissions \(strings)") }
    }

    public func setPermissions(_ path: String, _ permissions: XenStorePermissions, transaction: UInt32 = 0) async throws {
        _ = try await call(.setPermissions, [path] + permissions.strings, transaction: transaction)
    }

    public func domainPath(_ domain: UInt32) async throws -> String {
        try await call(.getDomainPath, [String(domain)], transaction: 0).strings.first ?? ""
    }

    public func introduceDomain(_ domain: UInt32, frame: UInt64, eventChannel: UInt32) async throws {
        _ = try await call(.introduce, [String(domain), String(frame), String(eventChannel)], transaction: 0)
    }

    public func releaseDomain(_ domain: UInt32) async throws {
        _ = try await call(.release, [String(domain)], transaction: 0)
    }

    // MARK: Watches

    /// Watches `path` (and everything below it). The sequence starts with
    /// the initial event xenstored sends; it ends when `unwatch` is called or
    /// the connection closes. Events may coalesce: re-read what you watch.
    public func watch(_ path: String) async throws -> (token: String, events: AsyncStream<XenStoreWatchEvent>) {
        let (stream, continuation) = AsyncStream.makeStream(of: XenStoreWatchEvent.self, bufferingPolicy: .bufferingNewest(4096))
        let token = try await channel.eventLoop.submit { [handler] in handler.register(continuation) }.get()
        do {
            _ = try await call(.watch, [path, token], transaction: 0)
        } catch {
            _ = try? await channel.eventLoop.submit { [handler] in handler.unregister(token) }.get()
            throw error
        }
        return (token, stream)
    }

    public func unwatch(_ path: String, token: String) async throws {
        _ = try await call(.unwatch, [path, token], transaction: 0)
        try await channel.eventLoop.submit { [handler] in handler.unregister(token) }.get()
    }

    // MARK: Transactions

    public func startTransaction() async throws -> UInt32 {
        let reply = try await request(.transactionStart, payload: [0])
        guard let id = reply.strings.first.flatMap({ UInt32($0) }), id != 0 else {
            throw XenStoreClientError.unexpectedReply("transaction id \(reply.strings)")
        }
        return id
    }

    /// Ends a transaction; committing throws `.failed(.tryAgain, ...)` on conflict.
    public func endTransaction(_ id: UInt32, commit: Bool) async throws {
        _ = try await request(.transactionEnd, payload: Array((commit ? "T" : "F").utf8) + [0], transaction: id)
    }

    /// Runs `body` in a transaction and commits it, starting over when
    /// xenstored reports a conflict (EAGAIN); aborts if `body` throws.
    /// Between attempts it backs off for a random, growing time (up to
    /// about 16 ms), so a client that keeps losing to a faster one is not
    /// starved.
    public func withTransaction<R: Sendable>(maximumAttempts: Int = 128,
                                             _ body: (UInt32) async throws -> R) async throws -> R {
        for attempt in 0..<maximumAttempts {
            let id = try await startTransaction()
            let result: R
            do { result = try await body(id) } catch {
                try? await endTransaction(id, commit: false)
                throw error
            }
            do {
                try await endTransaction(id, commit: true)
                return result
            } catch XenStoreClientError.failed(.tryAgain, _, _) {
                let ceiling = 1 << min(attempt, 14)  // microseconds
                try await Task.sleep(for: .microseconds(Int.random(in: 0...ceiling)))
                continue
            }
        }
        throw XenStoreClientError.transactionRetriesExhausted(maximumAttempts)
    }
}

/// Matches replies to requests and routes watch events; runs on the
/// channel's event loop only.
final class ClientHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = XenStoreMessage

    private var nextRequestID: UInt32 = 1
    private var pending: [UInt32: EventLoopPromise<XenStoreMessage>] = [:]
    private var watchers: [String: AsyncStream<XenStoreWatchEvent>.Continuation] = [:]
    private var nextToken = 1
    private var closed = false

    func send(_ message: XenStoreMessage, on channel: Channel, promise: EventLoopPromise<XenStoreMessage>) {
        guard !closed else { return promise.fail(XenStoreClientError.connectionClosed) }
        var m = message
        m.requestID = nextRequestID
        nextRequestID = nextRequestID == UInt32.max ? 1 : nextRequestID + 1
        pending[m.requestID] = promise
        var buffer = channel.allocator.buffer(capacity: XenStoreLimits.headerSize + m.payload.count)
        buffer.writeXenStoreMessage(m)
        channel.writeAndFlush(buffer, promise: nil)
    }

    func register(_ continuation: AsyncStream<XenStoreWatchEvent>.Continuation) -> String {
        let token = "xenback-\(nextToken)"
        nextToken += 1
        watchers[token] = continuation
        return token
    }

    func unregister(_ token: String) {
        watchers.removeValue(forKey: token)?.finish()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let message = unwrapInboundIn(data)
        if message.type == .watchEvent {
            let parts = message.strings
            guard parts.count >= 2, let watcher = watchers[parts[1]] else { return }
            watcher.yield(XenStoreWatchEvent(path: parts[0], token: parts[1]))
            return
        }
        pending.removeValue(forKey: message.requestID)?.succeed(message)
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        for promise in pending.values { promise.fail(XenStoreClientError.connectionClosed) }
        pending.removeAll()
        for watcher in watchers.values { watcher.finish() }
        watchers.removeAll()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore
import NIOPosix
import Synchronization
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

/// Where a client reaches xenstored again after its connection drops.
public struct XenStoreReconnection: Sendable {
    /// Makes a new connection: a connected stream socket or a xenbus device
    /// descriptor, owned by the caller from then on.
    public enum Endpoint: Sendable {
        case socket(path: String)
        case xenbusDevice(path: String)
        /// A descriptor from elsewhere (the sim passes xenstore sockets over its control socket).
        case connectedSocket(@Sendable () async throws -> Int32)
    }
    public var endpoint: Endpoint
    public var logger: Logger
    /// The longest pause between attempts (they start at 10 ms and double).
    public var maximumDelay: Duration

    public init(_ endpoint: Endpoint, logger: Logger = Logger(label: "xenback.xenstore"), maximumDelay: Duration = .seconds(1)) {
        self.endpoint = endpoint
        self.logger = logger
        self.maximumDelay = maximumDelay
    }
}

/// A xenstore client over xenstored's UNIX socket: every operation the
/// drivers and the toolstack use, watch events as an async sequence, and
/// transactions retried on EAGAIN.
///
/// A client made with a `XenStoreReconnection` outlives its connection
/// (xenstored restarted): it connects again, registers every watch anew
/// (each fires its initial event, so watchers re-read what they watch) and
/// sends again what was unanswered; requests made meanwhile wait. Requests
/// inside a transaction fail with EAGAIN instead, as the transaction died
/// with the connection, so `withTransaction` starts over. A request may thus
/// reach xenstored twice: ours are idempotent but for `rm`, which may then
/// report ENOENT.
public final class XenStoreClient: Sendable {
    let core: ClientCore

    init(core: ClientCore) { self.core = core }

    /// The current connection (tests reach below the protocol with it).
    var channel: Channel { core.state.withLock { $0.channel }! }

    /// Framing, then request/reply matching, on a new channel.
    static func install(_ handler: ClientHandler, on channel: Channel) -> EventLoopFuture<Void> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(XenStoreFrameDecoder()))
            try channel.pipeline.syncOperations.addHandler(handler)
        }
    }

    static func open(_ endpoint: XenStoreReconnection.Endpoint, core: ClientCore, group: EventLoopGroup) async throws -> Channel {
        let handler = ClientHandler(core: core)
        switch endpoint {
        case .socket(let path):
            return try await ClientBootstrap(group: group)
                .channelInitializer { channel in install(handler, on: channel) }
                .connect(unixDomainSocketPath: path).get()
        case .xenbusDevice(let path):
            let fd = Glibc.open(path, O_RDWR | O_CLOEXEC)
            guard fd >= 0 else { throw XenStoreClientError.unavailable(path: path, errno: errno) }
            return try await NIOPipeBootstrap(group: group)
                .channelInitializer { channel in install(handler, on: channel) }
                .takingOwnershipOfDescriptor(inputOutput: fd).get()
        case .connectedSocket(let make):
            let fd = try await make()
            return try await ClientBootstrap(group: group)
                .channelInitializer { channel in install(handler, on: channel) }
                .withConnectedSocket(fd).get()
        }
    }

    /// Connects to `endpoint`, and again whenever the connection drops.
    public static func connect(reconnecting reconnection: XenStoreReconnection,
                               group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> XenStoreClient {
        let core = ClientCore(loop: group.next(), reconnection: reconnection, group: group)
        core.adopt(try await open(reconnection.endpoint, core: core, group: group))
        return XenStoreClient(core: core)
    }

    private static func connectOnce(_ endpoint: XenStoreReconnection.Endpoint, group: EventLoopGroup) async throws -> XenStoreClient {
        let core = ClientCore(loop: group.next(), reconnection: nil, group: group)
        core.adopt(try await open(endpoint, core: core, group: group))
        return XenStoreClient(core: core)
    }

    /// Connects to xenstored's socket (`XENSTORED_PATH`, by default
    /// /var/run/xenstored/socket).
    public static func connect(socketPath: String,
                               group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> XenStoreClient {
        try await connectOnce(.socket(path: socketPath), group: group)
    }

    /// Speaks xenstore over an already connected stream socket (a sim
    /// guest's connection); takes ownership of `fd`.
    public static func connect(fileDescriptor fd: Int32,
                               group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> XenStoreClient {
        try await connectOnce(.connectedSocket({ fd }), group: group)
    }

    /// Speaks xenstore through a character device or pipe-like descriptor
    /// (/dev/xen/xenbus in a guest or driver domain without xenstored's
    /// socket); takes ownership of `fd`.
    public static func connect(pipeDescriptor fd: Int32,
                               group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> XenStoreClient {
        let core = ClientCore(loop: group.next(), reconnection: nil, group: group)
        let handler = ClientHandler(core: core)
        core.adopt(try await NIOPipeBootstrap(group: group)
            .channelInitializer { channel in install(handler, on: channel) }
            .takingOwnershipOfDescriptor(inputOutput: fd).get())
        return XenStoreClient(core: core)
    }

    /// Opens /dev/xen/xenbus (or another xenbus device path).
    public static func connect(xenbusDevice path: String = "/dev/xen/xenbus") async throws -> XenStoreClient {
        try await connectOnce(.xenbusDevice(path: path), group: MultiThreadedEventLoopGroup.singleton)
    }

    /// Where xenstored is, the way Xen's libxenstore finds it: the socket
    /// named by XENSTORED_PATH or the default socket if it exists, else
    /// /dev/xen/xenbus.
    public static var systemEndpoint: XenStoreReconnection.Endpoint {
        let socket = defaultSocketPath
        if getenv("XENSTORED_PATH") != nil || access(socket, F_OK) == 0 { return .socket(path: socket) }
        return .xenbusDevice(path: "/dev/xen/xenbus")
    }

    /// xenstored as libxenstore finds it (`systemEndpoint`).
    public static func connectToSystem() async throws -> XenStoreClient {
        try await connectOnce(systemEndpoint, group: MultiThreadedEventLoopGroup.singleton)
    }

    public static var defaultSocketPath: String {
        if let p = getenv("XENSTORED_PATH") { return String(cString: p) }
        return "/var/run/xenstored/socket"
    }

    /// Closes the connection for good: what is unanswered fails, watches end.
    public func close() async {
        let channel = core.state.withLock { s -> Channel? in
            s.closedForGood = true
            return s.channel
        }
        if let channel { try? await channel.close() }
        core.lost(channel)
    }

    /// Sends a request and waits for its reply; an XS_ERROR reply throws.
    public func request(_ type: XenStoreMessageType, payload: [UInt8], transaction: UInt32 = 0,
                        path: String = "") async throws -> XenStoreMessage {
        let promise = core.loop.makePromise(of: XenStoreMessage.self)
        let id = core.send(XenStoreMessage(type: type, requestID: 0, transactionID: transaction, payload: payload), promise: promise)
        // Cancelled while xenstored is away (SIGTERM during an outage), a
        // request gives up instead of waiting for a connection that may never
        // come; while connected it still waits for its answer, so a device's
        // last writes on the way down are made.
        let reply = try await withTaskCancellationHandler {
            try await promise.futureResult.get()
        } onCancel: { [core] in
            if let id { core.cancelled(id) }
        }
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
        String(decoding: try await self.read(path, transaction: transaction), as: UTF8.self)
    }

    /// The value, or nil if the node does not exist.
    public func readIfPresent(_ path: String, transaction: UInt32 = 0) async throws -> String? {
        do { return try await readString(path, transaction: transaction) } catch XenStoreClientError.failed(.noEntry, _, _) { return nil }
    }

    public func write(_ path: String, _ value: [UInt8], transaction: UInt32 = 0) async throws {
        _ = try await request(.write, payload: Array(path.utf8) + [0] + value, transaction: transaction, path: path)
    }

    public func write(_ path: String, _ value: String, transaction: UInt32 = 0) async throws {
        try await self.write(path, Array(value.utf8), transaction: transaction)
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

    /// Events a watch holds for a reader that does not keep up; past it the
    /// oldest are dropped (XSA-349: a guest writing below a watched node
    /// must not grow our memory), and an event naming the watched path
    /// itself is queued in their place, as xenstored's initial event is:
    /// "something below changed, re-read it all". So a watcher that filters
    /// on paths never misses a change, only some of its names.
    public static let maximumBufferedWatchEvents = 4096

    /// Watches `path` (and everything below it). The sequence starts with
    /// the initial event xenstored sends; it ends when `unwatch` is called or
    /// the connection closes. Events may coalesce: re-read what you watch.
    public func watch(_ path: String) async throws -> (token: String, events: AsyncStream<XenStoreWatchEvent>) {
        let (stream, continuation) = AsyncStream.makeStream(of: XenStoreWatchEvent.self, bufferingPolicy: .bufferingNewest(Self.maximumBufferedWatchEvents))
        let token = try core.register(path, continuation)
        do {
            _ = try await call(.watch, [path, token], transaction: 0)
        } catch {
            core.unregister(token)
            throw error
        }
        return (token, stream)
    }

    public func unwatch(_ path: String, token: String) async throws {
        // Disconnected, there is no watch on xenstored's side to remove, and
        // once unregistered it will not be registered again.
        if core.reconnection != nil && core.state.withLock({ $0.channel == nil }) {
            core.unregister(token)
            return
        }
        _ = try await call(.unwatch, [path, token], transaction: 0)
        core.unregister(token)
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
        func backOff(_ attempt: Int) async throws {
            let ceiling = 1 << min(attempt, 14)  // microseconds
            try await Task.sleep(for: .microseconds(Int.random(in: 0...ceiling)))
        }
        for attempt in 0..<maximumAttempts {
            let id = try await startTransaction()
            let result: R
            do { result = try await body(id) } catch {
                try? await endTransaction(id, commit: false)
                // EAGAIN inside the body: the transaction died with a dropped connection.
                guard case XenStoreClientError.failed(.tryAgain, _, _) = error else { throw error }
                try await backOff(attempt)
                continue
            }
            do {
                try await endTransaction(id, commit: true)
                return result
            } catch XenStoreClientError.failed(.tryAgain, _, _) {
                try await backOff(attempt)
            }
        }
        throw XenStoreClientError.transactionRetriesExhausted(maximumAttempts)
    }
}

/// The client's state, shared by every connection it makes in turn:
/// unanswered requests (kept to send again), watches (to register again).
final class ClientCore: @unchecked Sendable {
    struct Pending {
        var message: XenStoreMessage
        var promise: EventLoopPromise<XenStoreMessage>?
        /// Its task was cancelled while connected: not sent again after a drop.
        var cancelled = false
    }
    struct State {
        var channel: Channel?
        var closedForGood = false
        var nextRequestID: UInt32 = 1
        var pending: [UInt32: Pending] = [:]
        var watchers: [String: (path: String, events: AsyncStream<XenStoreWatchEvent>.Continuation)] = [:]
        var nextToken = 1
        /// Transactions started on the current connection: one from an
        /// earlier connection died with it (xenstored would say ENOENT).
        var liveTransactions: Set<UInt32> = []

        mutating func takeRequestID() -> UInt32 {
            defer { nextRequestID = nextRequestID == UInt32.max ? 1 : nextRequestID + 1 }
            return nextRequestID
        }
    }
    let state = Mutex(State())
    /// Where promises complete (any loop of the group would do).
    let loop: EventLoop
    let reconnection: XenStoreReconnection?
    let group: EventLoopGroup

    init(loop: EventLoop, reconnection: XenStoreReconnection?, group: EventLoopGroup) {
        self.loop = loop
        self.reconnection = reconnection
        self.group = group
    }

    func adopt(_ channel: Channel) { state.withLock { $0.channel = channel } }

    static func write(_ message: XenStoreMessage, on channel: Channel) {
        var buffer = channel.allocator.buffer(capacity: XenStoreLimits.headerSize + message.payload.count)
        buffer.writeXenStoreMessage(message)
        channel.writeAndFlush(buffer, promise: nil)
    }

    /// Sends now, or once connected again; fails only once closed for good
    /// (or at once when cancelled while disconnected). Returns the request
    /// id while it is pending.
    @discardableResult
    func send(_ message: XenStoreMessage, promise: EventLoopPromise<XenStoreMessage>) -> UInt32? {
        let cancelled = Task.isCancelled
        let target = state.withLock { s -> Result<(Channel?, XenStoreMessage), any Error> in
            guard !s.closedForGood else { return .failure(XenStoreClientError.connectionClosed) }
            if cancelled && s.channel == nil { return .failure(CancellationError()) }
            // A transaction of an earlier connection died with it (a plain client
            // has one connection and leaves the answer to xenstored).
            if reconnection != nil && message.transactionID != 0 && !s.liveTransactions.contains(message.transactionID) {
                return .failure(XenStoreClientError.failed(.tryAgain, operation: message.type, path: ""))
            }
            var m = message
            m.requestID = s.takeRequestID()
            s.pending[m.requestID] = Pending(message: m, promise: promise)
            return .success((s.channel, m))
        }
        switch target {
        case .failure(let error):
            promise.fail(error)
            return nil
        case .success(let (channel, m)):
            if let channel { Self.write(m, on: channel) }
            return m.requestID
        }
    }

    /// The task waiting for request `id` was cancelled: give up now if
    /// disconnected, else mark it so that a drop does not send it again.
    func cancelled(_ id: UInt32) {
        let abandoned = state.withLock { s -> Pending? in
            if s.channel == nil { return s.pending.removeValue(forKey: id) }
            s.pending[id]?.cancelled = true
            return nil
        }
        abandoned?.promise?.fail(CancellationError())
    }

    func register(_ path: String, _ events: AsyncStream<XenStoreWatchEvent>.Continuation) throws -> String {
        try state.withLock { s in
            guard !s.closedForGood else { throw XenStoreClientError.connectionClosed }
            let token = "xenback-\(s.nextToken)"
            s.nextToken += 1
            s.watchers[token] = (path, events)
            return token
        }
    }

    func unregister(_ token: String) {
        state.withLock { $0.watchers.removeValue(forKey: token) }?.events.finish()
    }

    func received(_ message: XenStoreMessage) {
        if message.type == .watchEvent {
            let parts = message.strings
            guard parts.count >= 2, let watcher = state.withLock({ $0.watchers[parts[1]] }) else { return }
            if case .dropped = watcher.events.yield(XenStoreWatchEvent(path: parts[0], token: parts[1])) {
                watcher.events.yield(XenStoreWatchEvent(path: watcher.path, token: parts[1]))
            }
            return
        }
        let asked = state.withLock { s -> Pending? in
            guard let asked = s.pending.removeValue(forKey: message.requestID) else { return nil }
            if message.type == .transactionStart, let id = message.strings.first.flatMap({ UInt32($0) }) {
                s.liveTransactions.insert(id)
            } else if asked.message.type == .transactionEnd {
                s.liveTransactions.remove(asked.message.transactionID)
            }
            return asked
        }
        asked?.promise?.succeed(message)
    }

    /// `channel` closed (or nil: the client was closed before connecting):
    /// reconnect, or fail everything if this client does not or was closed.
    func lost(_ channel: Channel?) {
        enum Next { case ignore, reconnect([Pending]), end([Pending], [AsyncStream<XenStoreWatchEvent>.Continuation]) }
        let next = state.withLock { s -> Next in
            guard s.channel === channel else { return .ignore }
            s.channel = nil
            s.liveTransactions = []
            if s.closedForGood || reconnection == nil {
                s.closedForGood = true
                defer { s.pending = [:]; s.watchers = [:] }
                return .end(Array(s.pending.values), s.watchers.values.map(\.events))
            }
            // What belonged to a transaction died with the connection; what
            // its caller gave up on is not asked again.
            let doomed = s.pending.filter {
                $0.value.message.transactionID != 0 || $0.value.message.type == .transactionEnd || $0.value.cancelled
            }
            for id in doomed.keys { s.pending[id] = nil }
            return .reconnect(Array(doomed.values))
        }
        switch next {
        case .ignore: return
        case .end(let pending, let watchers):
            for p in pending { p.promise?.fail(XenStoreClientError.connectionClosed) }
            for w in watchers { w.finish() }
        case .reconnect(let doomed):
            for p in doomed {
                p.promise?.fail(p.cancelled ? CancellationError() : XenStoreClientError.failed(.tryAgain, operation: p.message.type, path: ""))
            }
            reconnection?.logger.warning("xenstore connection lost; reconnecting")
            Task { await reconnect() }
        }
    }

    private func reconnect() async {
        guard let reconnection else { return }
        var delay = Duration.milliseconds(10)
        var attempts = 0
        while !state.withLock({ $0.closedForGood }) {
            attempts += 1
            do {
                let channel = try await XenStoreClient.open(reconnection.endpoint, core: self, group: group)
                // Watches first (a pending WATCH is itself a registration),
                // then everything unanswered, in the order it was asked.
                let resend = state.withLock { s -> [XenStoreMessage]? in
                    guard !s.closedForGood else { return nil }
                    s.channel = channel
                    let pendingWatchTokens = Set(s.pending.values.compactMap { p -> String? in
                        p.message.type == .watch ? p.message.strings.dropFirst().first : nil
                    })
                    var out: [XenStoreMessage] = []
                    for (token, watcher) in s.watchers.sorted(by: { $0.key < $1.key }) where !pendingWatchTokens.contains(token) {
                        let m = XenStoreMessage(type: .watch, requestID: s.takeRequestID(), transactionID: 0,
                                                payload: Array(watcher.path.utf8) + [0] + Array(token.utf8) + [0])
                        s.pending[m.requestID] = Pending(message: m, promise: nil)
                        out.append(m)
                    }
                    return out + s.pending.values.map(\.message).filter { m in !out.contains { $0.requestID == m.requestID } }
                        .sorted { $0.requestID < $1.requestID }
                }
                guard let resend else { try? await channel.close().get(); return }
                for m in resend { Self.write(m, on: channel) }
                if !channel.isActive { lost(channel); return }
                reconnection.logger.notice("xenstore connection restored", metadata: ["attempts": "\(attempts)", "resent": "\(resend.count)"])
                return
            } catch {
                if attempts == 1 || attempts % 50 == 0 {
                    reconnection.logger.warning("cannot reach xenstored yet: \(error)", metadata: ["attempts": "\(attempts)"])
                }
                // A retry period, not synchronisation: xenstored is not back yet.
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, reconnection.maximumDelay)
            }
        }
    }
}

/// One connection's pipeline end: hands replies and events to the client's core.
final class ClientHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = XenStoreMessage
    let core: ClientCore

    init(core: ClientCore) { self.core = core }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        core.received(unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        core.lost(context.channel)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

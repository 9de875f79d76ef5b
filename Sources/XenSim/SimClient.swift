import CXenShims
import Logging
import Synchronization
import XenPlatform
import XenStore
import XenSystem
#if canImport(Glibc)
import Glibc
#endif

/// A process's connection to a `SimServer`: it maps the guests' memory and
/// grant tables from the memfds the server passes, binds event channels
/// through it, and gets xenstore connections acting as any domain. A
/// frontend process uses the guest side, a backend process `platform(backend:)`.
public final class SimClient: @unchecked Sendable {
    /// The control connection, owned by this client.
    private let connection: OwnedDescriptor
    var socket: Int32 { connection.raw }
    let lock = Mutex(())
    /// This process's view of the domains it attached.
    let local = SimHypervisor()

    public init(socketPath: String) throws(SimError) {
        let fd: OwnedDescriptor
        do { fd = try OwnedDescriptor(socket: AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue)) } catch {
            throw .system("socket", error.code)
        }
        let raw = fd.raw  // (a closure capturing `fd` itself fails to compile in Swift 6.3: "copy of noncopyable typed value")
        let connected = try SimWire.withAddress(socketPath) { connect(raw, $0, $1) }
        guard connected == 0 else { throw .system("connect \(socketPath)", errno) }
        connection = fd
    }

    /// One request and its reply (without the status word); the reply's
    /// fds are the caller's, closed with the reply unless taken.
    func call(_ op: SimOp, _ args: [UInt32], fds: [Int32] = []) throws(SimError) -> SimMessage {
        let result: Result<SimMessage, SimError> = lock.withLock { _ in
            guard SimWire.send(socket, [op.rawValue] + args + [UInt32](repeating: 0, count: max(0, 4 - args.count)), fds: fds) else {
                return .failure(.system("send to sim server", errno))
            }
            guard var reply = SimWire.receive(socket), let status = reply.words.first else {
                return .failure(.remote(operation: "\(op)", errno: EPIPE))
            }
            let code = Int32(bitPattern: status)
            if code != 0 { return .failure(.remote(operation: "\(op)", errno: -code)) }
            reply.words.removeFirst()
            return .success(reply)
        }
        return try result.get()
    }

    /// Each of the reply's memfds is owned until a mapping adopts it: a
    /// bad reply or a failed mapping closes the rest.
    private func adopt(_ id: DomainID, _ reply: consuming SimMessage) throws(SimError) -> SimDomain {
        guard reply.words.count >= 2, reply.fds.count == 3 else { throw .remote(operation: "domain reply", errno: EPROTO) }
        let entries = Int(reply.words[1])
        let memory = try SharedPages(adopting: reply.fds.removeFirst(), pageCount: Int(reply.words[0]))
        let table = try SharedPages(adopting: reply.fds.removeFirst(), pageCount: (entries * GrantFlags.entrySize + 4095) / 4096)
        let ledger = try SharedPages(adopting: reply.fds.removeFirst(), pageCount: SimServer.pinLedgerPages(entries: entries))
        return local.attach(SimDomain(id: id, memory: memory, grantTable: table, grantEntries: reply.words[1],
                                      pinLedger: ledger, hypervisor: local))
    }

    /// Creates a guest on the server and maps it here.
    public func createDomain(_ id: DomainID, pages: Int, grantEntries: UInt32 = 1024) throws(SimError) -> SimDomain {
        try adopt(id, try call(.createDomain, [UInt32(id.rawValue), UInt32(pages), grantEntries]))
    }

    /// Maps an existing guest here (a backend needs its grant table and memory).
    public func attachDomain(_ id: DomainID) throws(SimError) -> SimDomain {
        if let d = local.domain(id) { return d }
        return try adopt(id, try call(.attachDomain, [UInt32(id.rawValue)]))
    }

    public func destroyDomain(_ id: DomainID) throws(SimError) {
        _ = try call(.destroyDomain, [UInt32(id.rawValue)])
        local.destroyDomain(id)
    }

    /// A xenstore connection acting as `domain` (dom0 is privileged).
    public func xenstore(as domain: DomainID) async throws -> XenStoreClient {
        try await XenStoreClient.connect(fileDescriptor: xenstoreSocket(as: domain))
    }

    /// A xenstore connection acting as `domain` that outlives a xenstored
    /// restart: each reconnection asks the server for a new socket.
    public func xenstore(as domain: DomainID, reconnectingWith logger: Logger) async throws -> XenStoreClient {
        let endpoint = XenStoreReconnection.Endpoint.connectedSocket { [self] in try xenstoreSocket(as: domain) }
        return try await XenStoreClient.connect(reconnecting: XenStoreReconnection(endpoint, logger: logger))
    }

    /// A new socket to the server's xenstored, already introduced as `domain`;
    /// the caller owns it.
    private func xenstoreSocket(as domain: DomainID) throws -> Int32 {
        var reply = try call(.xenstoreConnect, [UInt32(domain.rawValue)])
        guard reply.fds.count == 1 else { throw SimError.remote(operation: "xenstore connect", errno: EPROTO) }
        return reply.fds.removeFirst().take()  // swift-nio owns it from here
    }

    /// An event channel device for `domain`, served by the server's hypervisor.
    public func openEventChannels(domain: DomainID) throws(EventChannelError) -> RemoteEventChannelDevice {
        try RemoteEventChannelDevice(client: self, domain: domain)
    }

    /// The platform of a backend in `backend` whose guests live on the server.
    public func platform(backend: DomainID) -> RemoteSimPlatform {
        RemoteSimPlatform(client: self, backendDomain: backend)
    }
}

/// Event channels of a domain, through the sim server; the eventfd the
/// server signals is local, so waiting is an ordinary poll.
public final class RemoteEventChannelDevice: EventChannelDevice, @unchecked Sendable {
    public let domain: DomainID
    /// The eventfd, owned by this device.
    private let descriptor: OwnedDescriptor
    public var fileDescriptor: Int32 { descriptor.raw }
    let client: SimClient
    let device: UInt32

    init(client: SimClient, domain: DomainID) throws(EventChannelError) {
        let fd: OwnedDescriptor
        do { fd = try OwnedDescriptor(eventfd: Int32(EFD_CLOEXEC | EFD_NONBLOCK)) } catch {
            throw .system(operation: "eventfd", errno: error.code)
        }
        do {
            // The server gets its own reference to the same eventfd.
            device = try client.call(.eventsOpen, [UInt32(domain.rawValue)], fds: [fd.raw]).words.first ?? 0
        } catch {
            throw .system(operation: "open sim event channels", errno: Self.code(of: error))
        }
        self.client = client
        self.domain = domain
        descriptor = fd
    }

    /// The eventfd closes after this, with the object.
    deinit { _ = try? client.call(.eventsClose, [device]) }

    static func code(of error: SimError) -> Int32 {
        switch error {
        case .remote(_, let e), .system(_, let e): e
        default: EIO
        }
    }

    private func port(_ op: SimOp, _ args: [UInt32], _ subject: EventChannelPort) throws(EventChannelError) -> UInt32 {
        do {
            return try client.call(op, [device] + args).words.first ?? 0
        } catch {
            let e = Self.code(of: error)
            if e == ENOTCONN { throw .notBound(subject) }
            throw .system(operation: "\(op)", errno: e)
        }
    }

    /// EVTCHNOP_alloc_unbound, for a guest offering a port to `remote`.
    public func allocateUnbound(remoteDomain remote: DomainID) throws(EventChannelError) -> EventChannelPort {
        EventChannelPort(try port(.allocUnbound, [UInt32(remote.rawValue)], EventChannelPort(0)))
    }

    public func bindInterdomain(remoteDomain: DomainID, remotePort: EventChannelPort) throws(EventChannelError) -> EventChannelPort {
        do {
            return EventChannelPort(try client.call(.bind, [device, UInt32(remoteDomain.rawValue), remotePort.rawValue]).words.first ?? 0)
        } catch {
            throw .cannotBind(remoteDomain: remoteDomain, remotePort: remotePort, reason: "\(error)")
        }
    }

    public func notify(_ port: EventChannelPort) throws(EventChannelError) { _ = try self.port(.notify, [port.rawValue], port) }
    public func unmask(_ port: EventChannelPort) throws(EventChannelError) { _ = try self.port(.unmask, [port.rawValue], port) }
    public func unbind(_ port: EventChannelPort) throws(EventChannelError) { _ = try self.port(.unbind, [port.rawValue], port) }

    public func takePending(into ports: UnsafeMutableBufferPointer<EventChannelPort>) throws(EventChannelError) -> Int {
        let reply: [UInt32]
        do { reply = try client.call(.pending, [device, UInt32(min(ports.count, SimWire.maximumWords - 2))]).words }
        catch { throw .system(operation: "pending", errno: Self.code(of: error)) }
        let n = min(Int(reply.first ?? 0), reply.count - 1, ports.count)
        // SAFETY: n <= ports.count; the caller's buffer, valid for the call.
        for i in 0..<n { ports[i] = EventChannelPort(reply[1 + i]) }
        return n
    }

}

/// A backend's platform when the guests live in a `SimServer`.
public struct RemoteSimPlatform: XenPlatform {
    public let client: SimClient
    public let backendDomain: DomainID
    public let grants: RemoteSimGrants

    init(client: SimClient, backendDomain: DomainID) {
        self.client = client
        self.backendDomain = backendDomain
        grants = RemoteSimGrants(client: client, inner: SimGrants(hypervisor: client.local, backend: backendDomain))
    }

    public func openEventChannels() throws(EventChannelError) -> RemoteEventChannelDevice {
        try client.openEventChannels(domain: backendDomain)
    }
}

/// Grant operations on guests of a `SimServer`: the guest's memory and grant
/// table are mapped here on first use; the checks and busy bits are the
/// sim's, in the shared grant table the guest process sees too.
public final class RemoteSimGrants: GrantOperations {
    let client: SimClient
    let inner: SimGrants

    init(client: SimClient, inner: SimGrants) {
        self.client = client
        self.inner = inner
    }

    private func attach(_ domain: DomainID) { _ = try? client.attachDomain(domain) }

    public func map(_ refs: UnsafeBufferPointer<GrantRef>, of domain: DomainID, writable: Bool) throws(GrantError) -> GrantMapping {
        attach(domain)
        return try inner.map(refs, of: domain, writable: writable)
    }

    public func unmap(_ mapping: GrantMapping) throws(GrantError) { try inner.unmap(mapping) }

    /// Clearing works across processes (the memfd is shared); the event is
    /// sent only if the port is known to this process's hypervisor view.
    public func setUnmapNotify(_ mapping: GrantMapping, clearingByteAt offset: Int?, notifying port: EventChannelPort?) throws(GrantError) {
        try inner.setUnmapNotify(mapping, clearingByteAt: offset, notifying: port)
    }

    public func copy(_ operations: UnsafeMutableBufferPointer<GrantCopyOperation>) throws(GrantError) {
        for op in operations {
            for end in [op.source, op.destination] { if case .grant(_, let d, _) = end { attach(d) } }
        }
        try inner.copy(operations)
    }
}

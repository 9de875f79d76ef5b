import CXenShims
import Logging
import Synchronization
import XenPlatform
import XenStore
import XenSystem
#if canImport(Glibc)
import Glibc
#endif

/// Shares one software hypervisor and its xenstored with other processes:
/// a backend daemon in one, frontend drivers in others. Guest memory and
/// grant tables travel as memfds, event channels as eventfds, xenstore
/// connections as sockets bound to a domain (protocols/sim.md).
public final class SimServer: @unchecked Sendable {
    public let socketPath: String
    public let hypervisor: SimHypervisor
    public let xenstore: XenStoreServer
    let logger: Logger
    /// Owned until `stop` closes it (nil afterwards, so a second stop does nothing).
    private let listener: Mutex<OwnedDescriptor?>
    private let accepting = Mutex<JoinableThreadBox?>(nil)
    /// Each live connection's pin ledgers, per domain it attached: the
    /// grants its process has mapped or is copying (SimDomain.recordPins).
    private let pinLedgers = Mutex<(next: UInt64, byConnection: [UInt64: [UInt16: SharedPages]])>((1, [:]))

    /// Called after a connection's resources are released (tests wait on it).
    let connectionClosed = Mutex<(@Sendable () -> Void)?>(nil)

    /// A ledger holds a u32 per grant entry.
    static func pinLedgerPages(entries: Int) -> Int { (entries * 4 + 4095) / 4096 }

    final class JoinableThreadBox: @unchecked Sendable {
        var thread: JoinableThread?
        init(_ t: consuming JoinableThread) { thread = consume t }
    }

    /// Binds `socketPath` (replacing a stale socket) and serves until `stop()`.
    public init(socketPath: String, hypervisor: SimHypervisor = SimHypervisor(), xenstore: XenStoreServer,
                logger: Logger = Logger(label: "xenback.sim")) throws(SimError) {
        self.socketPath = socketPath
        self.hypervisor = hypervisor
        self.xenstore = xenstore
        self.logger = logger
        let fd: OwnedDescriptor
        do { fd = try OwnedDescriptor(socket: AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue)) } catch {
            throw .system("socket", error.code)
        }
        unlink(socketPath)
        let raw = fd.raw  // (a closure capturing `fd` itself fails to compile in Swift 6.3: "copy of noncopyable typed value")
        let bound = try SimWire.withAddress(socketPath) { bind(raw, $0, $1) }
        guard bound == 0, listen(fd.raw, 16) == 0 else { throw .system("bind/listen \(socketPath)", errno) }
        listener = Mutex(fd)
    }

    /// Starts accepting clients, a thread each (clients are few and long-lived).
    public func start() {
        guard let listening = listener.withLock({ $0?.raw }) else { return }  // stopped
        let thread = JoinableThread { [self] in
            while true {
                let client = accept(listening, nil, nil)
                if client < 0 {
                    if errno == EINTR { continue }
                    return  // shut down
                }
                _ = fcntl(client, F_SETFD, FD_CLOEXEC)
                JoinableThread { [self] in serve(client) }.detach()
            }
        }
        let box = JoinableThreadBox(thread)
        accepting.withLock { $0 = box }
    }

    /// Stops accepting; connected clients are served until they close.
    public func stop() {
        if let fd = listener.withLock({ $0.take() }) {
            // Wakes the accept thread (close alone would not), then closes.
            shutdown(fd.raw, Int32(SHUT_RDWR))
            fd.close()
        }
        unlink(socketPath)
        if let box = accepting.withLock({ b -> JoinableThreadBox? in defer { b = nil }; return b }) {
            box.thread.take()?.join()
        }
    }

    /// One client: requests in order until it hangs up; its event channel
    /// devices die with the connection. Owns `clientDescriptor`.
    func serve(_ clientDescriptor: Int32) {
        let client = OwnedDescriptor(adopting: clientDescriptor)
        var devices: [UInt32: SimEventChannelDevice] = [:]
        var nextDevice: UInt32 = 1
        let connection = pinLedgers.withLock { l -> UInt64 in
            defer { l.next += 1 }
            l.byConnection[l.next] = [:]
            return l.next
        }
        while var message = SimWire.receive(client.raw) {
            let request = message.words + [UInt32](repeating: 0, count: max(0, 5 - message.words.count))
            let reply = handle(request, &message.fds, connection, &devices, &nextDevice)
            _ = SimWire.send(client.raw, reply.words, fds: reply.fds.raw)
            // The reply's fds close here (the receiver has its own references
            // now), and so do the request's that no device adopted.
        }
        for device in devices.values { device.closeAll() }
        releasePins(of: connection)
        client.close()
        connectionClosed.withLock { $0 }?()
    }

    /// The ledger `connection` records its pins of `domain` in, made on first use.
    private func ledger(for connection: UInt64, of domain: SimDomain) throws(SimError) -> SharedPages {
        if let existing = pinLedgers.withLock({ $0.byConnection[connection]?[domain.id.rawValue] }) { return existing }
        let made = try SharedPages(name: "xenback-dom\(domain.id.rawValue)-pins",
                                   pageCount: Self.pinLedgerPages(entries: Int(domain.grantEntryCount)))
        pinLedgers.withLock { $0.byConnection[connection]?[domain.id.rawValue] = made }
        return made
    }

    /// A connection closed (its process may have died holding grants): drops
    /// its pins and clears the busy bits no one else holds, as Xen does when a
    /// dead process's gntdev file closes, so the guest can revoke its grants.
    /// A pin another client takes on the same ref at this very moment could
    /// see its bit cleared; backends share no refs in the sim.
    func releasePins(of connection: UInt64) {
        let (mine, others) = pinLedgers.withLock { l in
            let mine = l.byConnection.removeValue(forKey: connection) ?? [:]
            return (mine, l.byConnection.values.map { $0 })
        }
        for (domid, ledger) in mine {
            guard let domain = hypervisor.domain(DomainID(domid)) else { continue }
            let otherLedgers = others.compactMap { $0[domid] }
            // SAFETY: each ledger maps a u32 per entry of this domain and lives
            // while referenced here; its writer is gone or writes other refs.
            // Acquiring: pairs with the writer's releasing store in recordPins.
            func pins(_ l: SharedPages, _ ref: UInt32) -> UInt32 {
                (l.base + Int(ref) * 4).assumingMemoryBound(to: Atomic<UInt32>.self).pointee.load(ordering: .acquiring)
            }
            var released = 0
            for ref in 0..<domain.grantEntryCount {
                let held = pins(ledger, ref)
                guard held != 0 else { continue }
                released += 1
                let elsewhere = otherLedgers.reduce(UInt32(0)) { $0 | pins($1, ref) }
                let here = hypervisor.holds(ref, of: domid)
                var clear: UInt16 = 0
                if held & 0xFFFF != 0 && elsewhere & 0xFFFF == 0 && !here.writing { clear |= GrantFlags.writing }
                if held >> 16 != 0 && elsewhere >> 16 == 0 && !here.reading { clear |= GrantFlags.reading }
                // Acquire-release, as in unpin: the closed client's pins end
                // before the guest sees the entry free.
                if clear != 0 { domain.flags(ref).pointee.bitwiseAnd(~clear, ordering: .acquiringAndReleasing) }
            }
            if released > 0 {
                logger.info("released the grants a closed connection held",
                            metadata: ["domid": "\(domid)", "grants": "\(released)"])
            }
        }
    }

    /// The request's fds are the caller's: `handle` takes those it keeps.
    private func handle(_ r: [UInt32], _ fds: inout OwnedDescriptors, _ connection: UInt64, _ devices: inout [UInt32: SimEventChannelDevice],
                        _ nextDevice: inout UInt32) -> SimMessage {
        func failure(_ e: Int32) -> SimMessage { SimMessage([UInt32(bitPattern: -e)]) }
        guard let op = SimOp(rawValue: r[0]) else { return failure(EINVAL) }
        let domain = DomainID(UInt16(truncatingIfNeeded: r[1]))
        switch op {
        case .createDomain, .attachDomain:
            let d: SimDomain
            if op == .createDomain {
                guard r[2] > 0, r[2] <= 1 << 20, r[3] > GrantFlags.reservedEntries, r[3] <= 1 << 20 else { return failure(EINVAL) }
                do { d = try hypervisor.createDomain(domain, pages: Int(r[2]), grantEntries: r[3]) } catch { return failure(EEXIST) }
                logger.info("domain created", metadata: ["domid": "\(domain.rawValue)", "pages": "\(r[2])"])
            } else {
                guard let existing = hypervisor.domain(domain) else { return failure(ENOENT) }
                d = existing
            }
            let pins: SharedPages
            do { pins = try ledger(for: connection, of: d) } catch { return failure(ENOMEM) }
            // Dups, closed after sending: the receiver gets its own references.
            var dups = OwnedDescriptors()
            do throws(Errno) {
                for fd in [d.memory.fd, d.grantTable.fd, pins.fd] { dups.append(try OwnedDescriptor(duplicating: fd)) }
            } catch { return failure(error.code) }
            return SimMessage([0, UInt32(d.pageCount), d.grantEntryCount], fds: dups)
        case .destroyDomain:
            guard hypervisor.domain(domain) != nil else { return failure(ENOENT) }
            hypervisor.destroyDomain(domain)
            return SimMessage([0])
        case .xenstoreConnect:
            var pair: [Int32] = [-1, -1]
            guard CXenShims_stream_socketpair(&pair) == 0 else { return failure(errno) }
            let ours = pair[0]
            let xs = xenstore
            Task {
                do { try await xs.adopt(socket: ours, domain: UInt32(domain.rawValue)) } catch {
                    // swift-nio owns the socket once its channel exists and closes it itself
                    // if setting the channel up fails, so this close may find it gone (EBADF).
                    Glibc.close(ours)  // raw: maybe closed by swift-nio already
                }
            }
            // The adoption registers the connection before the client talks;
            // requests sent meanwhile wait in the socket.
            return SimMessage([0], fds: OwnedDescriptors(adopting: [pair[1]]))
        case .eventsOpen:
            guard fds.count == 1 else { return failure(EINVAL) }
            let id = nextDevice
            nextDevice += 1
            devices[id] = SimEventChannelDevice(hypervisor: hypervisor, domain: domain, eventFD: fds.removeFirst())
            return SimMessage([0, id])
        default:
            guard let device = devices[r[1]] else { return failure(EBADF) }
            do throws(EventChannelError) {
                switch op {
                case .allocUnbound:
                    return SimMessage([0, device.allocateUnbound(remoteDomain: DomainID(UInt16(truncatingIfNeeded: r[2]))).rawValue])
                case .bind:
                    let port = try device.bindInterdomain(remoteDomain: DomainID(UInt16(truncatingIfNeeded: r[2])), remotePort: EventChannelPort(r[3]))
                    return SimMessage([0, port.rawValue])
                case .notify: try device.notify(EventChannelPort(r[2])); return SimMessage([0])
                case .unmask: try device.unmask(EventChannelPort(r[2])); return SimMessage([0])
                case .unbind: try device.unbind(EventChannelPort(r[2])); return SimMessage([0])
                case .pending:
                    let limit = Int(min(r[2], UInt32(SimWire.maximumWords - 2)))
                    var ports = [EventChannelPort](repeating: EventChannelPort(0), count: limit)
                    // SAFETY: `ports` is a local array, borrowed for the call only.
                    let n = try ports.withUnsafeMutableBufferPointer { (b) throws(EventChannelError) -> Int in try device.takePending(into: b) }
                    return SimMessage([0, UInt32(n)] + ports.prefix(n).map(\.rawValue))
                case .eventsClose:
                    device.closeAll()
                    devices[r[1]] = nil
                    return SimMessage([0])
                default:
                    return failure(EINVAL)
                }
            } catch {
                switch error {
                case .cannotBind: return failure(EBUSY)
                case .notBound: return failure(ENOTCONN)
                case .system(_, let e): return failure(e)
                }
            }
        }
    }
}

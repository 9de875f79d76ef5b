import CXenShims
import Synchronization
import XenPlatform
import XenSystem
#if canImport(Glibc)
import Glibc
#endif

/// An event channel device of the software hypervisor, with the semantics
/// of an fd of /dev/xen/evtchn: an event on a bound port queues the port
/// and masks it; the fd (an eventfd) is readable while ports are queued;
/// an event arriving while masked is remembered and delivered on unmask.
public final class SimEventChannelDevice: EventChannelDevice, @unchecked Sendable {
    public let domain: DomainID
    /// The eventfd, owned by this device.
    private let descriptor: OwnedDescriptor
    public var fileDescriptor: Int32 { descriptor.raw }
    let hypervisor: SimHypervisor

    struct Queue {
        var pending: [UInt32] = []
        var masked: Set<UInt32> = []
        var raisedWhileMasked: Set<UInt32> = []
        var bound: Set<UInt32> = []
    }
    let queue = Mutex(Queue())

    init(hypervisor: SimHypervisor, domain: DomainID) throws(EventChannelError) {
        do { descriptor = try OwnedDescriptor(eventfd: Int32(EFD_CLOEXEC | EFD_NONBLOCK)) } catch {
            throw .system(operation: "eventfd", errno: error.code)
        }
        self.hypervisor = hypervisor
        self.domain = domain
    }

    /// A device whose eventfd came from another process (`SimServer`): the
    /// device takes ownership of `eventFD` and signals the client through it.
    init(hypervisor: SimHypervisor, domain: DomainID, eventFD: consuming OwnedDescriptor) {
        descriptor = eventFD
        self.hypervisor = hypervisor
        self.domain = domain
    }

    /// The eventfd closes after this, with the object.
    deinit { closeAll() }

    /// Unbinds every port (the device closes, or its client went away).
    func closeAll() {
        for port in queue.withLock({ $0.bound }) { try? unbind(EventChannelPort(port)) }
    }

    /// EVTCHNOP_alloc_unbound (guest side): a port `remote` may bind to.
    public func allocateUnbound(remoteDomain remote: DomainID) -> EventChannelPort {
        let port = hypervisor.withState { s -> UInt32 in
            let port = s.nextPort[domain.rawValue, default: 1]
            s.nextPort[domain.rawValue] = port + 1
            s.ports[.init(domain: domain.rawValue, port: port)] = .init(state: .unbound(remote: remote.rawValue), device: self)
            return port
        }
        queue.withLock { _ = $0.bound.insert(port) }
        return EventChannelPort(port)
    }

    public func bindInterdomain(remoteDomain: DomainID, remotePort: EventChannelPort) throws(EventChannelError) -> EventChannelPort {
        let result: Result<UInt32, EventChannelError> = hypervisor.withState { s in
            let remoteKey = SimHypervisor.PortKey(domain: remoteDomain.rawValue, port: remotePort.rawValue)
            guard let remote = s.ports[remoteKey] else {
                return .failure(.cannotBind(remoteDomain: remoteDomain, remotePort: remotePort, reason: "no such port"))
            }
            guard case .unbound(let allowed) = remote.state, allowed == domain.rawValue else {
                return .failure(.cannotBind(remoteDomain: remoteDomain, remotePort: remotePort, reason: "not offered to \(domain) or already bound"))
            }
            let port = s.nextPort[domain.rawValue, default: 1]
            s.nextPort[domain.rawValue] = port + 1
            let localKey = SimHypervisor.PortKey(domain: domain.rawValue, port: port)
            s.ports[localKey] = .init(state: .interdomain(remote: remoteKey), device: self)
            s.ports[remoteKey]!.state = .interdomain(remote: localKey)
            return .success(port)
        }
        let port = try result.get()
        queue.withLock { _ = $0.bound.insert(port) }
        return EventChannelPort(port)
    }

    public func notify(_ port: EventChannelPort) throws(EventChannelError) {
        let peer: (SimEventChannelDevice, UInt32)? = hypervisor.withState { s in
            guard let local = s.ports[.init(domain: domain.rawValue, port: port.rawValue)], local.device === self,
                  case .interdomain(let remote) = local.state, let device = s.ports[remote]?.device else { return nil }
            return (device, remote.port)
        }
        guard let (device, remotePort) = peer else {
            // Unbound locally is our error; a peer that went away just misses the event.
            let mine = queue.withLock { $0.bound.contains(port.rawValue) }
            if !mine { throw .notBound(port) }
            return
        }
        device.raise(remotePort)
    }

    /// An event arrives on one of our ports.
    func raise(_ port: UInt32) {
        let signal = queue.withLock { q -> Bool in
            guard q.bound.contains(port) else { return false }
            if q.masked.contains(port) {
                q.raisedWhileMasked.insert(port)
                return false
            }
            q.masked.insert(port)
            q.pending.append(port)
            return true
        }
        // Outside the lock: the other side's takePending reads the eventfd
        // before it looks at the queue, so a late write at worst wakes it
        // once for nothing.
        if signal { Syscall.signalEventFD(fileDescriptor) }
    }

    public func unmask(_ port: EventChannelPort) throws(EventChannelError) {
        let redeliver = try queue.withLock { q throws(EventChannelError) -> Bool in
            guard q.bound.contains(port.rawValue) else { throw .notBound(port) }
            q.masked.remove(port.rawValue)
            return q.raisedWhileMasked.remove(port.rawValue) != nil
        }
        if redeliver { raise(port.rawValue) }
    }

    public func unbind(_ port: EventChannelPort) throws(EventChannelError) {
        let wasBound = queue.withLock { q -> Bool in
            q.masked.remove(port.rawValue)
            q.raisedWhileMasked.remove(port.rawValue)
            q.pending.removeAll { $0 == port.rawValue }
            return q.bound.remove(port.rawValue) != nil
        }
        guard wasBound else { throw .notBound(port) }
        hypervisor.withState { s in
            let key = SimHypervisor.PortKey(domain: domain.rawValue, port: port.rawValue)
            if case .interdomain(let remote)? = s.ports[key]?.state {
                // The peer's port reverts to unbound, offered to us again.
                s.ports[remote]?.state = .unbound(remote: domain.rawValue)
            }
            s.ports[key] = nil
        }
    }

    public func takePending(into ports: UnsafeMutableBufferPointer<EventChannelPort>) throws(EventChannelError) -> Int {
        // Clear readability first, then take: a port queued after the read
        // writes the eventfd again, so nothing is missed (no syscall under the lock).
        Syscall.clearEventFD(fileDescriptor)  // nonblocking
        let (n, more) = queue.withLock { q -> (Int, Bool) in
            let n = min(ports.count, q.pending.count)
            // SAFETY: n <= ports.count; the caller's buffer, valid for the call.
            for i in 0..<n { ports[i] = EventChannelPort(q.pending[i]) }
            q.pending.removeFirst(n)
            return (n, !q.pending.isEmpty)
        }
        if more { Syscall.signalEventFD(fileDescriptor) }
        return n
    }
}

extension SimEventChannelDevice: GuestEventChannelDevice {}
extension RemoteEventChannelDevice: GuestEventChannelDevice {}

#if canImport(Glibc)
import XenSystem
import Glibc
#endif

/// Why an event channel operation failed.
public enum EventChannelError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The remote port does not exist, is not offered to us, or is taken.
    case cannotBind(remoteDomain: DomainID, remotePort: EventChannelPort, reason: String)
    /// The port is not bound on this device.
    case notBound(EventChannelPort)
    case system(operation: String, errno: Int32)

    public var description: String {
        switch self {
        case .cannotBind(let d, let p, let why): "cannot bind to \(d) \(p): \(why)"
        case .notBound(let p): "\(p) is not bound here"
        case .system(let op, let e): "\(op) failed with errno \(e)"
        }
    }
}

/// An open event channel device, like an fd of /dev/xen/evtchn: ports bound
/// through it deliver their events to it. An event masks its port until
/// `unmask`; meanwhile further events on that port are not queued again.
public protocol EventChannelDevice: AnyObject, Sendable {
    /// Binds a new local port to `remotePort` of `remoteDomain`, which that
    /// domain allocated for us (EVTCHNOP_alloc_unbound) and published.
    func bindInterdomain(remoteDomain: DomainID, remotePort: EventChannelPort) throws(EventChannelError) -> EventChannelPort
    /// Signals the peer of a local port.
    func notify(_ port: EventChannelPort) throws(EventChannelError)
    /// Re-enables a port after its event was handled.
    func unmask(_ port: EventChannelPort) throws(EventChannelError)
    func unbind(_ port: EventChannelPort) throws(EventChannelError)
    /// Readable (poll/epoll) while events are pending.
    var fileDescriptor: Int32 { get }
    /// Takes pending ports, without blocking; returns how many were stored.
    /// `ports` is the caller's, written only during the call.
    func takePending(into ports: UnsafeMutableBufferPointer<EventChannelPort>) throws(EventChannelError) -> Int
}

extension EventChannelDevice {
    /// Blocks until events are pending or `timeoutMilliseconds` pass (-1:
    /// forever); true if events are pending.
    public func wait(timeoutMilliseconds: Int32) -> Bool {
        if case .success(let n) = Syscall.poll(fileDescriptor, timeoutMilliseconds: timeoutMilliseconds) { return n > 0 }
        return false
    }
}

/// One implementation of Xen for backends: real Xen (host) or the software
/// hypervisor (sim). Backends are generic over it, so the data path calls
/// concrete types.
public protocol XenPlatform: Sendable {
    associatedtype Grants: GrantOperations
    associatedtype Events: EventChannelDevice
    /// The domain the backend runs in.
    var backendDomain: DomainID { get }
    var grants: Grants { get }
    /// A new event channel device (one per ring worker, like an evtchn fd).
    func openEventChannels() throws(EventChannelError) -> Events
}

/// Which Xen a program runs on: real Xen (host), the software hypervisor
/// (sim), or whichever is there (auto: host when /dev/xen has the grant and
/// event channel devices).
public enum PlatformKind: String, Sendable, CaseIterable {
    case auto, host, sim

    /// `auto` decided: host if the Xen devices exist, sim otherwise.
    public func resolved(xenDevicesPresent: Bool = PlatformKind.xenDevicesPresent) -> PlatformKind {
        self == .auto ? (xenDevicesPresent ? .host : .sim) : self
    }

    public static var xenDevicesPresent: Bool {
        access("/dev/xen/gntdev", F_OK) == 0 && access("/dev/xen/evtchn", F_OK) == 0
    }
}

import Synchronization
import CXenNet
import XenPlatform
import XenSystem
#if canImport(Glibc)
import Glibc
#endif

/// Why a host network operation failed.
public struct NetworkSetupError: Error, Equatable, Sendable, CustomStringConvertible {
    public var operation: String
    public var errno: Int32
    public init(_ operation: String, errno: Int32) { self.operation = operation; self.errno = errno }
    public var description: String { "\(operation): \(String(cString: strerror(errno)))" }
}

/// Where a VIF's host side lives: this process's network namespace, or a
/// named one (a driver-domain-like setup, or a test's private network).
/// Interface and bridge calls for it run on a short-lived thread that
/// entered the namespace; the file descriptors they return work anywhere.
public struct NetworkNamespace: Sendable, Equatable {
    /// nil: the caller's own namespace.
    public var path: String?
    public init(path: String? = nil) { self.path = path }
    public static var current: NetworkNamespace { NetworkNamespace() }
    /// `ip netns add NAME` creates /var/run/netns/NAME.
    public static func named(_ name: String) -> NetworkNamespace { NetworkNamespace(path: "/var/run/netns/" + name) }

    /// Runs `body` inside the namespace. `T` may be non-copyable (the
    /// descriptors a TAP device opens there, owned all the way out).
    public func run<T: ~Copyable & Sendable>(_ body: @escaping @Sendable () throws(NetworkSetupError) -> T) throws(NetworkSetupError) -> T {
        guard let path else { return try body() }
        let result = Mutex<Result<T, NetworkSetupError>?>(nil)
        let thread = JoinableThread {
            let r = CXenNet_enter_namespace(path)
            if r < 0 {
                result.withLock { $0 = .failure(NetworkSetupError("entering network namespace \(path)", errno: -r)) }
                return
            }
            var outcome = Optional(Result { () throws(NetworkSetupError) -> T in try body() })
            result.withLock { $0 = outcome.take() }
        }
        thread.join()
        return try result.withLock { $0.take()! }.get()
    }
}

/// A VIF's host side: a TAP interface with a virtio-net header on each
/// frame, one file descriptor per queue (IFF_MULTI_QUEUE when it may have
/// more than one). Non-persistent: the interface goes away with the last
/// descriptor.
public final class TapDevice: Sendable {
    public let name: String
    public let namespace: NetworkNamespace
    public let multiQueue: Bool
    /// Owned: closing the last one removes the interface.
    private let descriptors: Mutex<OwnedDescriptors>

    /// The open queues' descriptors (queue i reads and writes through [i]).
    public var queueDescriptors: [Int32] { descriptors.withLock { $0.raw } }

    /// Creates the interface `name` with `queues` queues.
    public init(name: String, queues: Int = 1, multiQueue: Bool = false, namespace: NetworkNamespace = .current) throws(NetworkSetupError) {
        guard !name.isEmpty, name.utf8.count < 16, !name.contains("/"), !name.contains(" ") else {
            throw NetworkSetupError("interface name \"\(name)\" (1 to 15 characters, no / or space)", errno: EINVAL)
        }
        self.name = name
        self.namespace = namespace
        self.multiQueue = multiQueue || queues > 1
        descriptors = Mutex(OwnedDescriptors())
        try setQueueCount(queues)
    }

    /// Opens or closes queues until there are `count` (the kernel spreads
    /// flows over every open queue, so none may be left unread).
    public func setQueueCount(_ count: Int) throws(NetworkSetupError) {
        let current = descriptors.withLock { $0.count }
        if count < current {
            // Closed here, outside the lock.
            descriptors.withLock { $0.removeLast(max(0, $0.count - count)) }.close()
            return
        }
        guard count > current else { return }
        guard multiQueue || count == 1 else { throw NetworkSetupError("\(name) was made single-queue; asked for \(count) queues", errno: EINVAL) }
        let name = self.name, multi = multiQueue
        // Owned from the open: a queue that fails closes those opened before it.
        var added = Optional(try namespace.run { () throws(NetworkSetupError) -> OwnedDescriptors in
            var fds = OwnedDescriptors()
            for _ in current..<count {
                do throws(Errno) { fds.append(try InterfaceControl.openTap(name, multiQueue: multi, vnetHeaderSize: Int32(VirtioNetHeader.size))) } catch {
                    throw NetworkSetupError("creating TAP \(name)", errno: error.code)
                }
            }
            return fds
        })
        descriptors.withLock { $0.append(contentsOf: added.take()!) }
    }

    /// Whether the interface is still there (someone may `ip link del` it).
    public var exists: Bool {
        let name = self.name
        return (try? namespace.run { () throws(NetworkSetupError) -> Bool in
            if case .success = InterfaceControl.index(of: name) { return true } else { return false }
        }) ?? false
    }

    /// What the kernel may hand us on reads (TUN_F_*): only what the
    /// frontend said it can take.
    public func setOffloads(checksum: Bool, tcpv4: Bool, tcpv6: Bool) throws(NetworkSetupError) {
        var flags: UInt32 = 0
        if checksum { flags |= CXenNet_TUN_F_CSUM }
        // Segmentation offload needs checksum offload.
        if checksum && tcpv4 { flags |= CXenNet_TUN_F_TSO4 }
        if checksum && tcpv6 { flags |= CXenNet_TUN_F_TSO6 }
        for fd in queueDescriptors {
            if case .failure(let e) = InterfaceControl.setOffload(fd, flags) {
                throw NetworkSetupError("TUNSETOFFLOAD on \(name)", errno: e.code)
            }
        }
    }

    /// Link carrier (the backend's view of whether the frontend is there).
    /// Older kernels lack TUNSETCARRIER: then the link state alone tells.
    public func setCarrier(_ on: Bool) {
        _ = InterfaceControl.setCarrier(queueDescriptors[0], on)
    }

    public func configure(mtu: Int?, mac: [UInt8]?, up: Bool, bridge: String?) throws(NetworkSetupError) {
        let name = self.name
        try namespace.run { () throws(NetworkSetupError) in
            if let mac {
                if case .failure(let e) = InterfaceControl.setMAC(name, mac) {
                    throw NetworkSetupError("setting the MAC address of \(name)", errno: e.code)
                }
            }
            if let mtu {
                if case .failure(let e) = InterfaceControl.setMTU(name, Int32(mtu)) {
                    throw NetworkSetupError("setting MTU \(mtu) on \(name)", errno: e.code)
                }
            }
            if let bridge {
                // Already a port of it (EBUSY): fine (a reconnect).
                if case .failure(let e) = InterfaceControl.bridge(bridge, add: true, name), e.code != EBUSY {
                    throw NetworkSetupError("adding \(name) to bridge \(bridge)", errno: e.code)
                }
            }
            if case .failure(let e) = InterfaceControl.setUp(name, up) {
                throw NetworkSetupError("setting \(name) \(up ? "up" : "down")", errno: e.code)
            }
        }
    }
}

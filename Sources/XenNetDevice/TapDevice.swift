import Synchronization
import CXenNet
import XenPlatform
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

    /// Runs `body` inside the namespace.
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws(NetworkSetupError) -> T) throws(NetworkSetupError) -> T {
        guard let path else { return try body() }
        let result = Mutex<Result<T, NetworkSetupError>?>(nil)
        let thread = JoinableThread {
            let r = CXenNet_enter_namespace(path)
            if r < 0 {
                result.withLock { $0 = .failure(NetworkSetupError("entering network namespace \(path)", errno: -r)) }
                return
            }
            let outcome = Result { () throws(NetworkSetupError) in try body() }
            result.withLock { $0 = outcome }
        }
        thread.join()
        return try result.withLock { $0! }.get()
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
    private let descriptors: Mutex<[Int32]>

    /// The open queues' descriptors (queue i reads and writes through [i]).
    public var queueDescriptors: [Int32] { descriptors.withLock { $0 } }

    /// Creates the interface `name` with `queues` queues.
    public init(name: String, queues: Int = 1, multiQueue: Bool = false, namespace: NetworkNamespace = .current) throws(NetworkSetupError) {
        guard !name.isEmpty, name.utf8.count < 16, !name.contains("/"), !name.contains(" ") else {
            throw NetworkSetupError("interface name \"\(name)\" (1 to 15 characters, no / or space)", errno: EINVAL)
        }
        self.name = name
        self.namespace = namespace
        self.multiQueue = multiQueue || queues > 1
        descriptors = Mutex([])
        try setQueueCount(queues)
    }

    deinit { for fd in queueDescriptors { close(fd) } }

    /// Opens or closes queues until there are `count` (the kernel spreads
    /// flows over every open queue, so none may be left unread).
    public func setQueueCount(_ count: Int) throws(NetworkSetupError) {
        let current = queueDescriptors
        if count < current.count {
            for fd in current[count...] { close(fd) }
            descriptors.withLock { $0 = Array(current[..<count]) }
            return
        }
        guard count > current.count else { return }
        guard multiQueue || count == 1 else { throw NetworkSetupError("\(name) was made single-queue; asked for \(count) queues", errno: EINVAL) }
        let name = self.name, multi = multiQueue ? Int32(1) : 0
        let added = try namespace.run { () throws(NetworkSetupError) -> [Int32] in
            var fds: [Int32] = []
            for _ in current.count..<count {
                let fd = CXenNet_tap_open(name, multi, Int32(VirtioNetHeader.size))
                if fd < 0 {
                    for f in fds { close(f) }
                    throw NetworkSetupError("creating TAP \(name)", errno: -fd)
                }
                fds.append(fd)
            }
            return fds
        }
        descriptors.withLock { $0 += added }
    }

    /// Whether the interface is still there (someone may `ip link del` it).
    public var exists: Bool {
        let name = self.name
        return (try? namespace.run { () throws(NetworkSetupError) -> Bool in CXenNet_link_index(name) >= 0 }) ?? false
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
            let r = CXenNet_tap_set_offload(fd, flags)
            if r < 0 { throw NetworkSetupError("TUNSETOFFLOAD on \(name)", errno: -r) }
        }
    }

    /// Link carrier (the backend's view of whether the frontend is there).
    /// Older kernels lack TUNSETCARRIER: then the link state alone tells.
    public func setCarrier(_ on: Bool) {
        _ = CXenNet_tap_set_carrier(queueDescriptors[0], on ? 1 : 0)
    }

    public func configure(mtu: Int?, mac: [UInt8]?, up: Bool, bridge: String?) throws(NetworkSetupError) {
        let name = self.name
        try namespace.run { () throws(NetworkSetupError) in
            if let mac {
                let r = mac.withUnsafeBufferPointer { CXenNet_link_set_mac(name, $0.baseAddress!) }
                if r < 0 { throw NetworkSetupError("setting the MAC address of \(name)", errno: -r) }
            }
            if let mtu {
                let r = CXenNet_link_set_mtu(name, Int32(mtu))
                if r < 0 { throw NetworkSetupError("setting MTU \(mtu) on \(name)", errno: -r) }
            }
            if let bridge {
                let r = CXenNet_bridge_add(bridge, name)
                // Already a port of it: fine (a reconnect).
                if r < 0 && r != -EBUSY { throw NetworkSetupError("adding \(name) to bridge \(bridge)", errno: -r) }
            }
            let r = CXenNet_link_set_up(name, up ? 1 : 0)
            if r < 0 { throw NetworkSetupError("setting \(name) \(up ? "up" : "down")", errno: -r) }
        }
    }
}

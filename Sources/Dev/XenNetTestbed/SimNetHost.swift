import Logging
import XenNetBackend
import XenNetFrontend
import XenProcess
import XenPlatform
import XenSim
import XenStore
import XenSystem
#if canImport(Glibc)
import Glibc
import XenToolstack
import XenNetDevice
#endif

/// The simulated host (`SimGuestHost`) with network-device helpers:
/// tests, `bench net` and `front net` build on it.
public final class SimNetHost: SimGuestHost, @unchecked Sendable {
    var nextFrame: UInt32 = 0

    public init(guestID: DomainID = DomainID(7), guestPages: Int = 4096, logger: Logger? = nil) async throws {
        try await super.init(guestID: guestID, guestPages: guestPages, grantEntries: UInt32(guestPages + 64), logger: logger)
    }

    public func attachNIC(handle: Int = 0, mac: [UInt8] = [0x00, 0x16, 0x3E, 0x12, 0x34, 0x56], bridge: String?,
                          extraBackendKeys: [String: String] = [:], extraFrontendKeys: [String: String] = [:]) async throws -> ToolstackNIC {
        try await ToolstackNIC.create(xenstore: backendStore, frontend: guest.id, handle: handle, mac: mac, bridge: bridge,
                                      extraBackendKeys: extraBackendKeys, extraFrontendKeys: extraFrontendKeys)
    }

    public func startBackend(_ nic: ToolstackNIC, configuration: NetBackendConfiguration = NetBackendConfiguration())
        -> (NetBackendDevice<SimPlatform>, Task<Void, Error>) {
        let device = NetBackendDevice(platform: hypervisor.platform(for: .dom0), xenstore: backendStore,
                                      backendPath: nic.backendPath, configuration: configuration, logger: logger)
        return (device, Task { try await device.run() })
    }

    /// Connects a frontend on fresh guest frames (each NIC its own).
    public func connect(_ nic: ToolstackNIC, options: NetFrontendOptions = NetFrontendOptions()) async throws -> NetFrontend {
        let first = nextFrame
        nextFrame += UInt32(options.framesNeeded)
        return try await NetFrontend.connect(domain: guest, xenstore: frontendStore, frontendPath: nic.frontendPath,
                                             frames: first..<nextFrame, options: options)
    }
}

/// A private network made with iproute2 for one test or benchmark: a
/// namespace holding a bridge (where VIFs go) and one end of a veth pair;
/// the other end sits in a peer namespace with an address. Removed by
/// `destroy` (and by the kernel with the namespaces).
public final class NetworkLab: Sendable {
    public let hostNamespace: String
    public let peerNamespace: String
    public let bridge = "xbr0"
    public let hostVeth = "xveth0"
    public let peerVeth = "xveth1"
    public let peerIP: [UInt8]
    public let guestIP: [UInt8]

    public var namespace: NetworkNamespace { .named(hostNamespace) }

    /// `softwareOffloads`: the veth on the bridge segments and checksums in
    /// software, so the peer sees real wire frames.
    public init(subnet: UInt8 = 77, softwareOffloads: Bool = true) throws {
        NetworkLab.removeLabsOfDeadProcesses()
        // The creator's pid in the name lets a later lab tell a leftover
        // (its creator was killed before `destroy`) from one in use.
        let tag = "\(getpid())-" + String(UInt32.random(in: 0...UInt32.max), radix: 36)
        hostNamespace = "xbh-" + tag
        peerNamespace = "xbp-" + tag
        peerIP = [10, subnet, 0, 1]
        guestIP = [10, subnet, 0, 2]
        let peer = peerIP.map(String.init).joined(separator: ".")
        var script = """
        set -e
        ip netns add \(hostNamespace)
        ip netns add \(peerNamespace)
        ip -n \(hostNamespace) link set lo up
        ip -n \(peerNamespace) link set lo up
        ip -n \(hostNamespace) link add \(bridge) type bridge
        ip -n \(hostNamespace) link set \(bridge) type bridge forward_delay 0 stp_state 0
        ip -n \(hostNamespace) link set \(bridge) up
        ip -n \(hostNamespace) link add \(hostVeth) type veth peer name \(peerVeth) netns \(peerNamespace)
        ip -n \(hostNamespace) link set \(hostVeth) master \(bridge) up
        ip -n \(peerNamespace) addr add \(peer)/24 dev \(peerVeth)
        ip -n \(peerNamespace) link set \(peerVeth) up

        """
        if softwareOffloads {
            script += "ip netns exec \(hostNamespace) ethtool -K \(hostVeth) tx off tso off gso off sg off >/dev/null\n"
        }
        let (status, output) = NetworkLab.sh(script)
        guard status == 0 else {
            _ = NetworkLab.sh("ip netns del \(hostNamespace) 2>/dev/null; ip netns del \(peerNamespace) 2>/dev/null")
            throw NetworkSetupError("setting up namespaces: \(output)", errno: EIO)
        }
    }

    /// Deletes the namespaces of labs whose creating process is gone.
    static func removeLabsOfDeadProcesses() {
        guard let directory = opendir("/var/run/netns") else { return }
        defer { closedir(directory) }
        var stale: [String] = []
        while let entry = readdir(directory) {
            // SAFETY: readdir's entry is valid until the next readdir on this
            // stream; d_name is copied out at once.
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name.hasPrefix("xbh-") || name.hasPrefix("xbp-") else { continue }
            let fields = name.dropFirst(4).split(separator: "-")
            guard fields.count == 2, let pid = pid_t(fields[0]), pid > 0 else { continue }
            if kill(pid, 0) != 0 && errno == ESRCH { stale.append(name) }
        }
        if !stale.isEmpty { _ = sh(stale.map { "ip netns del \($0) 2>/dev/null" }.joined(separator: "; ")) }
    }

    public func destroy() {
        _ = NetworkLab.sh("ip netns del \(hostNamespace) 2>/dev/null; ip netns del \(peerNamespace) 2>/dev/null")
    }

    /// Runs a shell command in the peer namespace.
    public func inPeer(_ command: String) -> (Int32, String) {
        NetworkLab.sh("ip netns exec \(peerNamespace) sh -c '\(command)' 2>&1")
    }

    /// Runs a shell command in the host namespace.
    public func inHost(_ command: String) -> (Int32, String) {
        NetworkLab.sh("ip netns exec \(hostNamespace) sh -c '\(command)' 2>&1")
    }

    /// `command` with its standard error folded into the output.
    public static func sh(_ command: String) -> (Int32, String) { runShell("{ \(command)\n} 2>&1") }
}

extension NetworkLab {
    /// A plain TAP on the bridge that tests and the benchmark write frames
    /// into (virtio-net header first) and read frames from: the host side
    /// of the network without any rings.
    public func injector(name: String = "xinj0") throws -> TapDevice {
        let tap = try TapDevice(name: name, namespace: namespace)
        try tap.setOffloads(checksum: true, tcpv4: true, tcpv6: true)
        try tap.configure(mtu: nil, mac: nil, up: true, bridge: bridge)
        return tap
    }
}

extension TapDevice {
    /// Writes one frame with a virtio-net header.
    public func inject(_ frame: [UInt8], header: VirtioNetHeader = VirtioNetHeader(), queue: Int = 0) -> Bool {
        var bytes = [UInt8](repeating: 0, count: VirtioNetHeader.size) + frame
        // SAFETY: the local array, header size + frame bytes, for the closure only.
        bytes.withUnsafeMutableBytes { header.write(to: $0.baseAddress!) }
        // SAFETY: a view of the local array for the write only.
        let written = bytes.withUnsafeBytes { Syscall.write(queueDescriptors[queue], $0.baseAddress!, count: $0.count) }
        return written == .success(bytes.count)
    }
}

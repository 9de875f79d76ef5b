import CXenNet
import XenSystem
#if canImport(Glibc)
import Glibc
#endif

/// The TAP and interface ioctls, on Glibc's `struct ifreq`, through the
/// syscall funnel. CXenNet supplies only the request numbers and TUN flags
/// Swift cannot import. Each call runs in the calling thread's network
/// namespace (TapDevice enters the right one first).
enum InterfaceControl {
    /// A zeroed ifreq naming `name`: at most IFNAMSIZ - 1 bytes of it, so
    /// the name stays NUL-terminated (TapDevice refuses longer names).
    static func request(naming name: String) -> ifreq {
        var request = ifreq()
        // SAFETY: ifrn_name is the IFNAMSIZ-byte array inside `request`, a
        // local we own; the buffer does not outlive the closure.
        withUnsafeMutableBytes(of: &request.ifr_ifrn.ifrn_name) { bytes in
            for (i, byte) in name.utf8.prefix(while: { $0 != 0 }).prefix(bytes.count - 1).enumerated() { bytes[i] = byte }
        }
        return request
    }

    /// ioctl(2) of `request` on `fd` with `ifr` as the argument.
    static func control(_ fd: Int32, _ request: UInt, _ ifr: inout ifreq) -> Result<Int32, Errno> {
        // SAFETY: `ifr` is exclusively borrowed for the call, which is all
        // the kernel reads and writes it for.
        withUnsafeMutableBytes(of: &ifr) { Syscall.ioctl(fd, request, $0.baseAddress, size: $0.count) }
    }

    /// An interface ioctl on a throwaway datagram socket, `ifr` naming
    /// `name` (any other fields set by the caller).
    static func onSocket(_ name: String, _ request: UInt, _ ifr: inout ifreq) -> Result<Void, Errno> {
        let s: OwnedDescriptor
        do { s = try OwnedDescriptor(socket: AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)) } catch {
            return .failure(error)
        }
        ifr.ifr_ifrn = Self.request(naming: name).ifr_ifrn
        return control(s.raw, request, &ifr).map { _ in }
    }

    /// SIOCGIFINDEX: the interface's index (ENODEV: there is none).
    static func index(of name: String) -> Result<Int32, Errno> {
        var ifr = ifreq()
        return onSocket(name, UInt(SIOCGIFINDEX), &ifr).map { ifr.ifr_ifru.ifru_ivalue }
    }

    static func setMTU(_ name: String, _ mtu: Int32) -> Result<Void, Errno> {
        var ifr = ifreq()
        ifr.ifr_ifru.ifru_mtu = mtu
        return onSocket(name, UInt(SIOCSIFMTU), &ifr)
    }

    /// SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP set or cleared.
    static func setUp(_ name: String, _ up: Bool) -> Result<Void, Errno> {
        var ifr = ifreq()
        if case .failure(let e) = onSocket(name, UInt(SIOCGIFFLAGS), &ifr) { return .failure(e) }
        if up { ifr.ifr_ifru.ifru_flags |= Int16(IFF_UP) } else { ifr.ifr_ifru.ifru_flags &= ~Int16(IFF_UP) }
        return onSocket(name, UInt(SIOCSIFFLAGS), &ifr)
    }

    /// SIOCSIFHWADDR with an Ethernet (ARPHRD_ETHER, 1) address.
    static func setMAC(_ name: String, _ mac: [UInt8]) -> Result<Void, Errno> {
        precondition(mac.count == 6, "an Ethernet address has 6 bytes")
        var ifr = ifreq()
        ifr.ifr_ifru.ifru_hwaddr.sa_family = 1
        // SAFETY: sa_data is the 14-byte array inside `ifr`, a local we own;
        // we write its first 6 bytes.
        withUnsafeMutableBytes(of: &ifr.ifr_ifru.ifru_hwaddr.sa_data) { data in
            for i in 0..<6 { data[i] = mac[i] }
        }
        return onSocket(name, UInt(SIOCSIFHWADDR), &ifr)
    }

    /// SIOCBRADDIF / SIOCBRDELIF: attaches `name` to (detaches it from) `bridge`.
    static func bridge(_ bridge: String, add: Bool, _ name: String) -> Result<Void, Errno> {
        let index: Int32
        switch Self.index(of: name) {
        case .success(let i): index = i
        case .failure(let e): return .failure(e)
        }
        var ifr = ifreq()
        ifr.ifr_ifru.ifru_ivalue = index
        return onSocket(bridge, add ? CXenNet_SIOCBRADDIF : CXenNet_SIOCBRDELIF, &ifr)
    }

    /// Opens /dev/net/tun as the TAP `name` (IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR, plus IFF_MULTI_QUEUE if asked), non-blocking and
    /// close-on-exec, with a `vnetHeaderSize`-byte virtio-net header. A
    /// refused ioctl closes the descriptor (it is owned from the open).
    static func openTap(_ name: String, multiQueue: Bool, vnetHeaderSize: Int32) throws(Errno) -> OwnedDescriptor {
        let fd = try OwnedDescriptor(opening: "/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC)
        var ifr = request(naming: name)
        ifr.ifr_ifru.ifru_flags = CXenNet_IFF_TAP | CXenNet_IFF_NO_PI | CXenNet_IFF_VNET_HDR | (multiQueue ? CXenNet_IFF_MULTI_QUEUE : 0)
        _ = try control(fd.raw, CXenNet_TUNSETIFF, &ifr).get()
        var headerSize = vnetHeaderSize
        // SAFETY: TUNSETVNETHDRSZ reads the int at the pointer, a local
        // exclusively borrowed for the call.
        _ = try withUnsafeMutableBytes(of: &headerSize) {
            Syscall.ioctl(fd.raw, CXenNet_TUNSETVNETHDRSZ, $0.baseAddress, size: $0.count)
        }.get()
        return fd
    }

    /// TUNSETOFFLOAD: what the kernel may hand us (TUN_F_* bits, passed as
    /// the argument itself).
    static func setOffload(_ fd: Int32, _ flags: UInt32) -> Result<Void, Errno> {
        Syscall.ioctl(fd, CXenNet_TUNSETOFFLOAD, value: UInt(flags)).map { _ in }
    }

    /// TUNSETCARRIER (Linux 5.0+); ENOTTY when built without it.
    static func setCarrier(_ fd: Int32, _ on: Bool) -> Result<Void, Errno> {
        guard CXenNet_TUNSETCARRIER != 0 else { return .failure(Errno(ENOTTY)) }
        var value: Int32 = on ? 1 : 0
        // SAFETY: the kernel reads the int at the pointer, a local
        // exclusively borrowed for the call.
        return withUnsafeMutableBytes(of: &value) {
            Syscall.ioctl(fd, CXenNet_TUNSETCARRIER, $0.baseAddress, size: $0.count)
        }.map { _ in }
    }
}

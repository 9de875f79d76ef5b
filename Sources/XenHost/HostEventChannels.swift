import CXenUAPI
import XenPlatform
#if canImport(Glibc)
import Glibc
import XenSystem
#endif

/// An fd of the kernel's /dev/xen/evtchn: bind/unbind/notify by ioctl,
/// pending ports by read(), unmask by write() of the port number.
public final class HostEventChannelDevice: EventChannelDevice, @unchecked Sendable {
    public let devicePath: String
    private let device: OwnedDescriptor
    public var fileDescriptor: Int32 { device.raw }

    public init(devicePath: String = "/dev/xen/evtchn") throws(EventChannelError) {
        self.devicePath = devicePath
        do { device = try OwnedDescriptor(opening: devicePath, O_RDWR | O_CLOEXEC | O_NONBLOCK) } catch {
            throw .system(operation: "open \(devicePath)", errno: error.code)
        }
    }

    public func bindInterdomain(remoteDomain: DomainID, remotePort: EventChannelPort) throws(EventChannelError) -> EventChannelPort {
        // struct ioctl_evtchn_bind_interdomain: remote_domain, remote_port; returns the local port.
        var arg: (UInt32, UInt32) = (UInt32(remoteDomain.rawValue), remotePort.rawValue)
        // SAFETY: a local tuple of two u32 (8 bytes, the struct's layout),
        // borrowed for the ioctl only.
        let result = withUnsafeMutableBytes(of: &arg) {
            Syscall.ioctl(fileDescriptor, CXenUAPI_IOCTL_EVTCHN_BIND_INTERDOMAIN, $0.baseAddress, size: 8)
        }
        switch result {
        case .success(let port): return EventChannelPort(UInt32(port))
        case .failure(let failure):
            throw .cannotBind(remoteDomain: remoteDomain, remotePort: remotePort, reason: "IOCTL_EVTCHN_BIND_INTERDOMAIN: \(String(cString: strerror(failure.code)))")
        }
    }

    private func portIoctl(_ request: UInt, _ name: String, _ port: EventChannelPort) throws(EventChannelError) {
        var arg = port.rawValue
        // SAFETY: a local u32, borrowed for the ioctl only.
        let result = withUnsafeMutableBytes(of: &arg) { Syscall.ioctl(fileDescriptor, request, $0.baseAddress, size: 4) }
        if case .failure(let failure) = result {
            if failure.code == ENOTCONN || failure.code == EINVAL { throw .notBound(port) }
            throw .system(operation: name, errno: failure.code)
        }
    }

    public func notify(_ port: EventChannelPort) throws(EventChannelError) {
        try portIoctl(CXenUAPI_IOCTL_EVTCHN_NOTIFY, "IOCTL_EVTCHN_NOTIFY", port)
    }

    public func unbind(_ port: EventChannelPort) throws(EventChannelError) {
        try portIoctl(CXenUAPI_IOCTL_EVTCHN_UNBIND, "IOCTL_EVTCHN_UNBIND", port)
    }

    public func unmask(_ port: EventChannelPort) throws(EventChannelError) {
        var value = port.rawValue
        // SAFETY: a local u32, borrowed for the write only.
        let result = withUnsafeBytes(of: &value) { Syscall.write(fileDescriptor, $0.baseAddress!, count: 4) }
        switch result {
        case .success(4): return
        case .success(let n): throw .system(operation: "write(evtchn) wrote \(n) of 4 bytes", errno: EIO)
        case .failure(let failure): throw failure.code == EINVAL ? .notBound(port) : .system(operation: "write(evtchn)", errno: failure.code)
        }
    }

    public func takePending(into ports: UnsafeMutableBufferPointer<EventChannelPort>) throws(EventChannelError) -> Int {
        guard let base = ports.baseAddress, !ports.isEmpty else { return 0 }
        // SAFETY: EventChannelPort is a UInt32 wrapper; the kernel writes u32
        // ports, at most ports.count of them, into the caller's buffer, which
        // is valid for this call.
        switch Syscall.read(fileDescriptor, UnsafeMutableRawPointer(base), count: ports.count * 4) {
        case .success(let bytes): return bytes / 4
        case .failure(let failure) where failure.code == EAGAIN: return 0
        case .failure(let failure): throw .system(operation: "read(evtchn)", errno: failure.code)
        }
    }
}

/// Real Xen: a dom0 or driver domain with /dev/xen.
public struct HostPlatform: XenPlatform {
    public let backendDomain: DomainID
    public let grants: HostGrants
    public let eventChannelPath: String

    public init(backendDomain: DomainID = .dom0, grantDevice: String = "/dev/xen/gntdev",
                eventChannelDevice: String = "/dev/xen/evtchn") throws(GrantError) {
        self.backendDomain = backendDomain
        grants = try HostGrants(devicePath: grantDevice)
        eventChannelPath = eventChannelDevice
    }

    public func openEventChannels() throws(EventChannelError) -> HostEventChannelDevice {
        try HostEventChannelDevice(devicePath: eventChannelPath)
    }

    /// Real Xen is there when the kernel's Xen devices are.
    public static var isAvailable: Bool { PlatformKind.xenDevicesPresent }
}

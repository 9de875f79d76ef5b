import XenNetBackend
import XenNetFrontend
import XenNetTestbed
import XenPlatform
import XenSim

#if canImport(Glibc)
import Glibc
#endif

/// TAPs, bridges and namespaces need root, /dev/net/tun and iproute2.
public var networkAvailable: Bool { getuid() == 0 && access("/dev/net/tun", F_OK) == 0 && access("/usr/sbin/ip", X_OK) == 0 }

/// The test guest's MAC address on its VIF.
public let guestMAC: [UInt8] = [0x00, 0x16, 0x3E, 0x12, 0x34, 0x56]

/// A sim host, a private network, a VIF on its bridge and a connected
/// frontend; torn down in order after `body`.
public func withVIF(options: NetFrontendOptions = NetFrontendOptions(), configuration: NetBackendConfiguration? = nil,
                    backendKeys: [String: String] = [:], frontendKeys: [String: String] = [:],
                    _ body: @escaping @Sendable (SimNetHost, NetworkLab, NetBackendDevice<SimPlatform>, NetFrontend) async throws -> Void) async throws {
    let lab = try NetworkLab()
    defer { lab.destroy() }
    let host = try await SimNetHost()
    var configuration = configuration ?? NetBackendConfiguration(maximumQueues: 4)
    configuration.namespace = lab.namespace
    let nic = try await host.attachNIC(mac: guestMAC, bridge: lab.bridge, extraBackendKeys: backendKeys, extraFrontendKeys: frontendKeys)
    let (device, task) = host.startBackend(nic, configuration: configuration)
    do {
        let front = try await host.connect(nic, options: options)
        try await body(host, lab, device, front)
        guard try await front.close() else { throw GrantsStillHeld(frontendPath: front.frontendPath) }
    } catch {
        task.cancel()
        _ = try? await task.value
        await host.shutdown()
        throw error
    }
    try await nic.setOffline(xenstore: host.backendStore)
    try await task.value
    await host.shutdown()
}

/// A frontend closed, but the backend still held some of its grants.
public struct GrantsStillHeld: Error, CustomStringConvertible {
    public var frontendPath: String
    public var description: String { "\(frontendPath): not every grant was revocable after close" }
}

import XenBus
import XenPlatform
import XenStore
import XenStoreProtocol

/// The xenstore directories a toolstack writes for a virtual NIC, laid out
/// as libxl does (frontend under the guest's device/vif, backend under the
/// backend domain's backend/vif), in one transaction: the sim's stand-in
/// for `xl network-attach`.
public struct ToolstackNIC: Sendable, Equatable {
    public let frontendPath: String
    public let backendPath: String
    public let frontend: DomainID
    public let handle: Int
    public let mac: [UInt8]

    /// A NIC whose directories exist already (found in xenstore).
    public init(frontendPath: String, backendPath: String, frontend: DomainID, handle: Int, mac: [UInt8]) {
        self.frontendPath = frontendPath; self.backendPath = backendPath; self.frontend = frontend; self.handle = handle; self.mac = mac
    }

    public static func create(xenstore: XenStoreClient, frontend: DomainID, backend: DomainID = .dom0, handle: Int = 0,
                              mac: [UInt8], bridge: String?, extraBackendKeys: [String: String] = [:],
                              extraFrontendKeys: [String: String] = [:]) async throws -> ToolstackNIC {
        let frontendPath = "/local/domain/\(frontend.rawValue)/device/vif/\(handle)"
        let backendPath = "/local/domain/\(backend.rawValue)/backend/vif/\(frontend.rawValue)/\(handle)"
        let initialising = "\(XenbusState.initialising.rawValue)"
        let macText = mac.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined(separator: ":")
        var backendKeys: [String: String] = [
            "frontend": frontendPath, "frontend-id": "\(frontend.rawValue)", "online": "1", "state": initialising,
            "mac": macText, "handle": "\(handle)", "type": "vif",
        ]
        if let bridge { backendKeys["bridge"] = bridge }
        backendKeys.merge(extraBackendKeys) { _, new in new }
        var frontendKeys: [String: String] = [
            "backend": backendPath, "backend-id": "\(backend.rawValue)", "state": initialising, "handle": "\(handle)", "mac": macText,
        ]
        frontendKeys.merge(extraFrontendKeys) { _, new in new }
        try await ToolstackDirectories.create(xenstore: xenstore, frontend: frontend, backend: backend, frontendPath: frontendPath,
                                              backendPath: backendPath, frontendKeys: frontendKeys, backendKeys: backendKeys)
        return ToolstackNIC(frontendPath: frontendPath, backendPath: backendPath, frontend: frontend, handle: handle, mac: mac)
    }

    public func setOffline(xenstore: XenStoreClient) async throws {
        try await xenstore.write(backendPath + "/online", "0")
    }

    /// Removes both directories (after the backend reached Closed).
    public func remove(xenstore: XenStoreClient) async throws {
        try await ToolstackDirectories.remove(xenstore: xenstore, frontendPath: frontendPath, backendPath: backendPath)
    }
}

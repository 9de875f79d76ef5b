import XenBus
import XenPlatform
import XenStore
import XenStoreProtocol

/// The xenstore directories a toolstack writes for a virtual disk, laid out
/// the way libxl does for a `phy`/file disk (frontend under the guest's
/// device/vbd, backend under the backend domain's backend/vbd), in one
/// transaction. The sim's stand-in for `xl block-attach`.
public struct ToolstackDisk: Sendable, Equatable {
    public let frontendPath: String
    public let backendPath: String
    public let frontend: DomainID
    public let devid: Int

    /// A disk whose directories exist already (found in xenstore).
    public init(frontendPath: String, backendPath: String, frontend: DomainID, devid: Int) {
        self.frontendPath = frontendPath; self.backendPath = backendPath; self.frontend = frontend; self.devid = devid
    }

    /// xvda's device number (202 << 8): what libxl writes as `virtual-device`.
    public static let firstXenDisk = 51712

    public static func create(xenstore: XenStoreClient, frontend: DomainID, backend: DomainID = .dom0,
                              devid: Int = firstXenDisk, target: String, readOnly: Bool = false, cdrom: Bool = false,
                              extraBackendKeys: [String: String] = [:]) async throws -> ToolstackDisk {
        let frontendPath = "/local/domain/\(frontend.rawValue)/device/vbd/\(devid)"
        let backendPath = "/local/domain/\(backend.rawValue)/backend/vbd/\(frontend.rawValue)/\(devid)"
        let initialising = "\(XenbusState.initialising.rawValue)"
        var backendKeys: [String: String] = [
            "frontend": frontendPath, "frontend-id": "\(frontend.rawValue)", "params": target, "type": "phy",
            "mode": readOnly ? "r" : "w", "online": "1", "state": initialising, "removable": "0", "bootable": "1",
            "device-type": cdrom ? "cdrom" : "disk", "discard-enable": "1", "dev": "xvd\(Character(UnicodeScalar(UInt8(97 + (devid - firstXenDisk) / 16 % 26))))",
        ]
        backendKeys.merge(extraBackendKeys) { _, new in new }
        let frontendKeys: [String: String] = [
            "backend": backendPath, "backend-id": "\(backend.rawValue)", "state": initialising,
            "virtual-device": "\(devid)", "device-type": cdrom ? "cdrom" : "disk",
        ]
        try await ToolstackDirectories.create(xenstore: xenstore, frontend: frontend, backend: backend, frontendPath: frontendPath,
                                              backendPath: backendPath, frontendKeys: frontendKeys, backendKeys: backendKeys)
        return ToolstackDisk(frontendPath: frontendPath, backendPath: backendPath, frontend: frontend, devid: devid)
    }

    /// `xl block-detach`'s first step: the backend may go once the frontend closed.
    public func setOffline(xenstore: XenStoreClient) async throws {
        try await xenstore.write(backendPath + "/online", "0")
    }

    /// Removes both directories (after the backend reached Closed).
    public func remove(xenstore: XenStoreClient) async throws {
        try await ToolstackDirectories.remove(xenstore: xenstore, frontendPath: frontendPath, backendPath: backendPath)
    }
}

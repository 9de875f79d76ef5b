import XenBus
import XenPlatform
import XenStore

/// A device's pair of directories as a toolstack writes them (libxl's
/// layout): the backend's under the backend domain, the frontend's under
/// the guest, each owned by its side and readable by the other, all keys in
/// one transaction. Disks and NICs differ only in their keys.
public enum ToolstackDirectories {
    public static func create(xenstore: XenStoreClient, frontend: DomainID, backend: DomainID, frontendPath: String, backendPath: String,
                              frontendKeys: [String: String], backendKeys: [String: String]) async throws {
        try await xenstore.withTransaction { t in
            try await xenstore.mkdir(backendPath, transaction: t)
            try await xenstore.setPermissions(backendPath, XenStorePermissions(
                owner: UInt32(backend.rawValue), grants: [.init(domain: UInt32(frontend.rawValue), access: .read)]), transaction: t)
            try await xenstore.mkdir(frontendPath, transaction: t)
            try await xenstore.setPermissions(frontendPath, XenStorePermissions(
                owner: UInt32(frontend.rawValue), grants: [.init(domain: UInt32(backend.rawValue), access: .read)]), transaction: t)
            for (k, v) in backendKeys.sorted(by: { $0.key < $1.key }) { try await xenstore.write(backendPath + "/" + k, v, transaction: t) }
            for (k, v) in frontendKeys.sorted(by: { $0.key < $1.key }) { try await xenstore.write(frontendPath + "/" + k, v, transaction: t) }
        }
    }

    /// Removes both (after the backend reached Closed).
    public static func remove(xenstore: XenStoreClient, frontendPath: String, backendPath: String) async throws {
        try await xenstore.withTransaction { t in
            try await xenstore.rm(backendPath, transaction: t)
            try await xenstore.rm(frontendPath, transaction: t)
        }
    }
}

import XenStore

/// Every key under `path` with its value, those of subdirectories one level
/// down as "dir/key": a device directory as the other side reads it.
public func xenstoreKeys(_ store: XenStoreClient, _ path: String) async throws -> [String: String] {
    var keys: [String: String] = [:]
    for key in try await store.directory(path) where !key.isEmpty {
        // (A node without children lists as [""].)
        let children = try await store.directory(path + "/" + key).filter { !$0.isEmpty }
        if children.isEmpty {
            keys[key] = try await store.readString(path + "/" + key)
        } else {
            for child in children { keys[key + "/" + child] = try await store.readString(path + "/" + key + "/" + child) }
        }
    }
    return keys
}

import XenBus
import XenStore

/// Waiting for a xenbus state is timed out after this long.
public struct XenbusWaitTimeout: Error, Equatable, Sendable, CustomStringConvertible {
    public var what: String
    public init(what: String) { self.what = what }
    public var description: String { "timed out waiting for \(what)" }
}

/// Waits (on a xenstore watch, not by polling) until `path/state`
/// satisfies `done`; returns that state. Throws `XenbusWaitTimeout` after
/// `timeout`.
public func awaitXenbusState(_ xenstore: XenStoreClient, _ path: String, timeout: Duration = .seconds(30), _ what: String,
                             _ done: @escaping @Sendable (XenbusState) -> Bool) async throws -> XenbusState {
    let watch = try await xenstore.watch(path + "/state")
    defer { Task { try? await xenstore.unwatch(path + "/state", token: watch.token) } }
    return try await withThrowingTaskGroup(of: XenbusState?.self) { group in
        group.addTask {
            for await _ in watch.events {
                let text = try await xenstore.readIfPresent(path + "/state")
                if let state = text.flatMap({ UInt32($0) }).flatMap({ XenbusState(rawValue: $0) }), done(state) { return state }
            }
            return nil
        }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let state = first else { throw XenbusWaitTimeout(what: what) }
        return state
    }
}

import XenBus
import XenStore

/// Waiting for a xenstore value or xenbus state is timed out after this long.
public struct XenbusWaitTimeout: Error, Equatable, Sendable, CustomStringConvertible {
    public var what: String
    public init(what: String) { self.what = what }
    public var description: String { "timed out waiting for \(what)" }
}

/// Waits (on a xenstore watch, not by polling) until the value at `path`
/// (nil: absent) satisfies `done`; returns that value. Throws
/// `XenbusWaitTimeout` after `timeout`.
public func awaitXenstoreValue(_ xenstore: XenStoreClient, _ path: String, timeout: Duration = .seconds(30), _ what: String,
                               _ done: @escaping @Sendable (String?) -> Bool) async throws -> String? {
    let watch = try await xenstore.watch(path)
    defer { Task { try? await xenstore.unwatch(path, token: watch.token) } }
    return try await withThrowingTaskGroup(of: String??.self) { group in
        group.addTask {
            // A watch fires once when set, so a value already there is seen.
            for await _ in watch.events {
                let value = try await xenstore.readIfPresent(path)
                if done(value) { return .some(value) }
            }
            return nil
        }
        group.addTask {
            try await Task.sleep(for: timeout)  // a deadline, not synchronisation
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else { throw XenbusWaitTimeout(what: what) }
        return value
    }
}

/// Waits until `path/state` satisfies `done`; returns that state. Throws
/// `XenbusWaitTimeout` after `timeout`.
public func awaitXenbusState(_ xenstore: XenStoreClient, _ path: String, timeout: Duration = .seconds(30), _ what: String,
                             _ done: @escaping @Sendable (XenbusState) -> Bool) async throws -> XenbusState {
    @Sendable func state(_ text: String?) -> XenbusState? { text.flatMap { UInt32($0) }.flatMap { XenbusState(rawValue: $0) } }
    let text = try await awaitXenstoreValue(xenstore, path + "/state", timeout: timeout, what) { state($0).map(done) ?? false }
    guard let reached = state(text) else { throw XenbusWaitTimeout(what: what) }
    return reached
}

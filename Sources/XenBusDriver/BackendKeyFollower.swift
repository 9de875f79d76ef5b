import Logging
import XenStore

/// Follows some of a device's backend keys while it runs (settings an
/// operator may change live, such as an I/O limit): `changed` gets their
/// values (nil: absent) once the watches are set and again after every
/// change. Watches coalesce, so the keys are read afresh each time and only
/// the latest values count.
public final class BackendKeyFollower: Sendable {
    private let xenstore: XenStoreClient
    private let watches: [(path: String, token: String)]
    private let task: Task<Void, Never>

    public init(xenstore: XenStoreClient, backendPath: String, keys: [String], logger: Logger,
                changed: @escaping @Sendable (_ values: [String: String?]) async -> Void) async throws {
        self.xenstore = xenstore
        let (events, feed) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        var watches: [(path: String, token: String)] = []
        var forwarders: [Task<Void, Never>] = []
        do {
            for key in keys {
                let path = backendPath + "/" + key
                let watch = try await xenstore.watch(path)
                watches.append((path, watch.token))
                forwarders.append(Task { for await _ in watch.events { feed.yield() } })
            }
        } catch {
            for f in forwarders { f.cancel() }
            for w in watches { try? await xenstore.unwatch(w.path, token: w.token) }
            throw error
        }
        self.watches = watches
        let forwarding = forwarders
        feed.yield()  // the values as they are now, whether or not a watch fired yet
        task = Task {
            await withTaskCancellationHandler {
                for await _ in events {
                    var values: [String: String?] = [:]
                    do {
                        for key in keys { values[key] = try await xenstore.readIfPresent(backendPath + "/" + key) }
                    } catch {
                        logger.warning("cannot read \(keys.joined(separator: ", ")): \(error)")
                        continue
                    }
                    await changed(values)
                }
            } onCancel: {
                for f in forwarding { f.cancel() }
                feed.finish()
            }
        }
    }

    /// Stops following and removes the watches.
    public func stop() async {
        task.cancel()
        await task.value
        for w in watches { try? await xenstore.unwatch(w.path, token: w.token) }
    }
}

extension XenStoreClient {
    /// Writes `value` under a device's backend directory only while the
    /// directory is there: once the toolstack removed it, a plain write would
    /// bring it back. One transaction, so a removal cannot slip in between.
    public func writeIfDevicePresent(_ backendPath: String, _ key: String, _ value: String) async throws {
        try await withTransaction { t in
            guard try await self.readIfPresent(backendPath + "/frontend", transaction: t) != nil else { return }
            try await self.write(backendPath + "/" + key, value, transaction: t)
        }
    }
}

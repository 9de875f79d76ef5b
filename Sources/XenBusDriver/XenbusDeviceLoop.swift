import Logging
import XenBus
import XenStore

/// The part of a backend driver every device kind shares: it follows one
/// device's frontend through the xenbus handshake (`BackendStateMachine`),
/// watching the frontend's `state` and the toolstack's `online` key, and
/// calls the device's own connect and disconnect. Block and network
/// devices differ only in those two.
public struct XenbusDeviceLoop: Sendable {
    public let xenstore: XenStoreClient
    public let backendPath: String
    public let frontendPath: String
    public let logger: Logger

    public init(xenstore: XenStoreClient, backendPath: String, frontendPath: String, logger: Logger) {
        self.xenstore = xenstore; self.backendPath = backendPath; self.frontendPath = frontendPath; self.logger = logger
    }

    private func state(_ path: String) async throws -> XenbusState? {
        try await xenstore.readIfPresent(path).flatMap { UInt32($0) }.flatMap { XenbusState(rawValue: $0) }
    }

    /// Runs the handshake until the toolstack removes the device (`online`
    /// = 0 and the frontend closed, or the frontend vanished) or the task is
    /// cancelled; either way `disconnect` has run when it returns. The
    /// device's features must be published before this is called: it
    /// switches to InitWait first.
    /// With `resume`, a device a previous backend left Connected to a
    /// connected frontend is taken over where it stood (`resume` maps the
    /// rings again and does what the old backend owed) instead of waiting for
    /// the frontend to start over, which Linux's frontends never do on their
    /// own. If `resume` throws, the device waits for the frontend as before.
    ///
    /// When the task is cancelled (the daemon stops), a Connected device
    /// whose `suspend` returns true is left Connected for the next backend
    /// to take over; `suspend` drains its rings and keeps what resuming
    /// needs. Every other device is closed.
    public func run(connect: @escaping @Sendable () async throws -> Void, disconnect: @escaping @Sendable () async -> Void,
                    resume: (@Sendable () async throws -> Void)? = nil, suspend: (@Sendable () async -> Bool)? = nil) async throws {
        var machine = BackendStateMachine()
        // A backend state of Connected left in xenstore means a previous
        // backend served this device and died without closing it. Its rings
        // cannot be resumed (answers overwrite request slots out of order, so
        // the ring no longer says what is owed): wait for the frontend to set
        // up new rings, as blkfront and netfront do when they recover,
        // instead of mapping the stale ones.
        let previous = try await state(backendPath + "/state")
        let frontNow = try await state(frontendPath + "/state")
        // InitWait is withheld until the frontend shows it has left the old
        // rings: a recovering frontend writes Initialising and then waits for
        // InitWait, so it cannot reach Initialised again before we have seen
        // it start over (had we written InitWait first, its Initialising and
        // Initialised could coalesce into one watch event that looks stale).
        var staleConnection = previous == .connected && (frontNow == .connected || frontNow == .initialised)
        if staleConnection, let resume {
            do {
                try await resume()
                _ = machine.handle(.resumed)
                staleConnection = false
                logger.info("resumed the connection a previous backend left")
            } catch {
                await disconnect()
                logger.warning("cannot resume the previous backend's connection: \(error)")
            }
        }
        if staleConnection {
            logger.warning("the frontend is connected to a previous backend; waiting for it to reconnect")
        } else if machine.state != .connected {
            try await perform(machine.handle(.probed), machine: &machine, connect: connect, disconnect: disconnect)
        }

        let (events, feed) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let stateWatch = try await xenstore.watch(frontendPath + "/state")
        let onlineWatch = try await xenstore.watch(backendPath + "/online")
        let forwarders = [stateWatch.events, onlineWatch.events].map { stream in
            Task { for await _ in stream { feed.yield() }; feed.yield() }
        }
        defer {
            for f in forwarders { f.cancel() }
            feed.finish()
        }
        func unwatch() async {
            try? await xenstore.unwatch(frontendPath + "/state", token: stateWatch.token)
            try? await xenstore.unwatch(backendPath + "/online", token: onlineWatch.token)
        }
        var lastOnline: Bool?
        var cancelled = false
        do {
            for await _ in events {
                try Task.checkCancellation()
                // Watches coalesce: re-read both keys every time.
                let online = try await xenstore.readIfPresent(backendPath + "/online").map { $0 != "0" } ?? true
                let event: BackendEvent = try await state(frontendPath + "/state").map { .frontendState($0) } ?? .frontendVanished
                if staleConnection {
                    // Ignore the old connection until the frontend starts over
                    // (or the toolstack takes the device away).
                    if online && (event == .frontendState(.connected) || event == .frontendState(.initialised)) { continue }
                    staleConnection = false
                    try await perform(machine.handle(.probed), machine: &machine, connect: connect, disconnect: disconnect)
                }
                if online != lastOnline {
                    lastOnline = online
                    try await perform(machine.handle(.online(online)), machine: &machine, connect: connect, disconnect: disconnect)
                }
                if event != .frontendState(machine.frontendState) || event == .frontendVanished {
                    try await perform(machine.handle(event), machine: &machine, connect: connect, disconnect: disconnect)
                }
                if machine.isRemoved { break }
            }
            // The stream ends only when the task is cancelled.
            cancelled = !machine.isRemoved
        } catch is CancellationError {
            cancelled = true
        } catch {
            await disconnect()
            await closeIfStillThere(machine)
            await unwatch()
            throw error
        }
        if cancelled {
            // The daemon is stopping, not the toolstack detaching: a device
            // that can be taken over by the next backend is left Connected
            // (its rings drained, its records kept); any other is closed.
            if machine.state == .connected, let suspend, await suspend() {
                logger.info("left connected for the next backend")
            } else {
                await disconnect()
                await closeIfStillThere(machine)
            }
            await unwatch()
            return
        }
        await disconnect()
        await unwatch()
        logger.info("device removed")
    }

    /// Tells the frontend we are gone, unless the toolstack already removed
    /// the directory (writing would bring it back).
    private func closeIfStillThere(_ machine: BackendStateMachine) async {
        let stillThere = (try? await xenstore.readIfPresent(backendPath + "/frontend")) != nil
        if machine.state != .closed && stillThere {
            try? await xenstore.write(backendPath + "/state", "\(XenbusState.closing.rawValue)")
            try? await xenstore.write(backendPath + "/state", "\(XenbusState.closed.rawValue)")
        }
    }

    private func perform(_ actions: [BackendAction], machine: inout BackendStateMachine,
                         connect: @Sendable () async throws -> Void, disconnect: @Sendable () async -> Void) async throws {
        var queue = actions[...]
        while let action = queue.popFirst() {
            switch action {
            case .switchState(let state):
                try await xenstore.write(backendPath + "/state", "\(state.rawValue)")
                logger.info("state \(state)", metadata: ["frontend": "\(machine.frontendState)"])
            case .connect:
                do {
                    try await connect()
                    queue.append(contentsOf: machine.handle(.connectSucceeded))
                } catch {
                    logger.error("cannot connect: \(error)")
                    queue.append(contentsOf: machine.handle(.connectFailed("\(error)")))
                }
            case .disconnect:
                await disconnect()
            case .reportError(let why):
                logger.error("\(why)")
                try? await xenstore.write(backendPath + "/error", why)
            case .removeDevice:
                break
            }
        }
    }

    /// Reports a device the driver cannot serve where libxl looks
    /// (`hotplug-error`, `hotplug-status` = error).
    public func reportSetupError(_ error: any Error) async {
        logger.error("cannot set up the device: \(error)")
        try? await xenstore.write(backendPath + "/hotplug-error", "\(error)")
        try? await xenstore.write(backendPath + "/hotplug-status", "error")
    }
}

@_exported import XenStoreProtocol

/// What happened to a backend device, as its driver sees it.
public enum BackendEvent: Equatable, Sendable {
    /// The backend directory exists and the features are published.
    case probed
    /// The frontend's `state` key changed (or its watch fired) and now reads this.
    /// Several changes may arrive as one: only the latest value is seen.
    case frontendState(XenbusState)
    /// The frontend's directory or `state` key is gone.
    case frontendVanished
    /// The toolstack's `online` key changed.
    case online(Bool)
    /// The `.connect` action finished: rings mapped, channels bound, features written.
    case connectSucceeded
    /// The `.connect` action failed; the reason goes to the device's `error` key.
    case connectFailed(String)
    /// A previous backend left the device Connected, with a connected
    /// frontend, and this one took its rings over from its record: the
    /// `state` key already says Connected.
    case resumed
}

/// What the driver must do, in order.
public enum BackendAction: Equatable, Sendable {
    /// Write this state to the backend's `state` key.
    case switchState(XenbusState)
    /// Read the frontend's keys, map the ring(s), bind the event channel(s),
    /// write the connection details in one transaction; then report
    /// `.connectSucceeded` or `.connectFailed`.
    case connect
    /// Drain in-flight I/O, answer it, unmap and unbind. Idempotent.
    case disconnect
    /// Record a fatal error for the toolstack (the `error` key, a log line).
    case reportError(String)
    /// The toolstack is done with the device: remove the backend.
    case removeDevice
}

/// The backend half of the xenbus handshake as a pure table: (backend
/// state, event) → actions, following what Linux's blkback/netback
/// `frontend_changed` do, plus the lessons of other implementations:
/// never skip Closing (Windows frontends wait for it), go back to InitWait
/// when a closed frontend starts over, tolerate skipped and coalesced
/// frontend states, and make disconnect safe to repeat.
public struct BackendStateMachine: Sendable, Equatable {
    /// The state we last wrote to our `state` key.
    public private(set) var state: XenbusState = .initialising
    /// The frontend state we last saw.
    public private(set) var frontendState: XenbusState = .unknown
    /// Rings mapped and channels bound (a `.disconnect` is owed).
    public private(set) var isAttached = false
    /// The toolstack wants the device; `false` after `online` = 0.
    public private(set) var isOnline = true
    /// `.removeDevice` was emitted; nothing more happens.
    public private(set) var isRemoved = false

    public init() {}

    public mutating func handle(_ event: BackendEvent) -> [BackendAction] {
        guard !isRemoved else { return [] }
        switch event {
        case .probed:
            return state == .initialising ? switchTo(.initWait) : []

        case .frontendState(let front):
            frontendState = front
            return frontendChanged(front)

        case .frontendVanished:
            frontendState = .unknown
            return closeAndRemove()

        case .online(let online):
            isOnline = online
            guard !online else { return [] }
            switch frontendState {
            case .closed, .unknown:
                return closeAndRemove()
            default:
                // Ask the frontend to close; removal follows its Closed.
                return state == .closing || state == .closed ? [] : switchTo(.closing)
            }

        case .connectSucceeded:
            isAttached = true
            guard frontendState == .initialised || frontendState == .connected else { return [] }
            return switchTo(.connected)

        case .connectFailed(let reason):
            // Partly set up: the disconnect cleans up whatever was done.
            isAttached = false
            return [.reportError(reason), .disconnect] + switchTo(.closing)

        case .resumed:
            state = .connected
            frontendState = .connected
            isAttached = true
            return []
        }
    }

    private mutating func frontendChanged(_ front: XenbusState) -> [BackendAction] {
        switch front {
        case .initialising:
            // A frontend starting over after Closed: prepare for reconnect.
            if state == .closed { return switchTo(.initWait) }
            return []
        case .initWait:
            return []
        case .initialised, .connected:
            // Both mean "my rings are ready"; they may arrive coalesced.
            if state == .connected { return [] }
            guard isOnline else { return [] }
            var actions: [BackendAction] = []
            if isAttached {
                // Enforce a clean slate before mapping again.
                actions.append(.disconnect)
                isAttached = false
            }
            actions.append(.connect)
            return actions
        case .closing:
            return state == .closing ? [] : switchTo(.closing)
        case .closed:
            var actions: [BackendAction] = []
            // Never jump from InitWait/Connected straight to Closed: some
            // frontends wait to see Closing first.
            if state != .closing && state != .closed { actions += switchTo(.closing) }
            actions += detach()
            actions += switchTo(.closed)
            if !isOnline { actions += remove() }
            return actions
        case .unknown:
            return closeAndRemove()
        case .reconfiguring, .reconfigured:
            return [.reportError("frontend is in state \(front), which block and network devices do not use")]
        }
    }

    private mutating func closeAndRemove() -> [BackendAction] {
        var actions: [BackendAction] = []
        if state != .closing && state != .closed { actions += switchTo(.closing) }
        actions += detach()
        actions += switchTo(.closed)
        return actions + remove()
    }

    private mutating func detach() -> [BackendAction] {
        guard isAttached else { return [] }
        isAttached = false
        return [.disconnect]
    }

    private mutating func remove() -> [BackendAction] {
        isRemoved = true
        return [.removeDevice]
    }

    private mutating func switchTo(_ new: XenbusState) -> [BackendAction] {
        guard state != new else { return [] }
        state = new
        return [.switchState(new)]
    }
}

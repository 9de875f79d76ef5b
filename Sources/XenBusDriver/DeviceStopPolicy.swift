import Synchronization

/// What stopping the daemon does to devices the next backend could take
/// over: leave them Connected, rings drained and records kept (the
/// default: a restart or upgrade the guest does not notice), or close them
/// (an operator's "close everything", e.g. a host going down with guests
/// still running, or a backend that will not come back).
public final class DeviceStopPolicy: Sendable {
    /// Relaxed: read by each device once, when it stops; set before the
    /// stop is asked for.
    private let closes: Atomic<Bool>

    public init(closeDevices: Bool = false) { closes = Atomic(closeDevices) }

    public var closesDevices: Bool { closes.load(ordering: .relaxed) }

    /// From now on, stopping closes every device.
    public func closeDevicesOnStop() { closes.store(true, ordering: .relaxed) }
}

/// Which of a worker's event channel ports an event came on: transmit,
/// receive and control for a network queue, the one ring port for a block
/// ring. Raw values number the roles from 0.
public protocol EventPortRole: RawRepresentable, CaseIterable, Sendable where RawValue == Int {}

/// What a worker tells `EventPortHolds` about its ports and the rings
/// behind them.
public protocol EventPortServing {
    associatedtype Role: EventPortRole
    /// The role of one of our bound ports; nil for a port we do not know.
    func role(of port: EventChannelPort) -> Role?
    /// The port serving `role` (nil when the role is not in use).
    func port(of role: Role) -> EventChannelPort?
    /// A count that moves whenever requests are taken off the rings this
    /// role's port serves (their request consumers, summed).
    func requestsConsumed(by role: Role) -> UInt32
    /// Whether an event on this role's port brings something the worker can
    /// do now.
    func hasWork(for role: Role) -> Bool
}

/// The XSA-332 holds of one worker's ports, one `SpuriousEventThrottle`
/// per role: an event that found nothing to do is spurious, and from the
/// second in a row its port stays masked for a while. An event found work
/// if requests were taken since the port's last event (an honest kick often
/// arrives after a final check took its request) or work is waiting now.
/// Made once per `run`; nothing here allocates afterwards.
public struct EventPortHolds<Role: EventPortRole> {
    private var throttles: [SpuriousEventThrottle]
    private var consumedAtLastEvent: [UInt32]

    public init<Worker: EventPortServing>(for worker: Worker) where Worker.Role == Role {
        throttles = Array(repeating: SpuriousEventThrottle(), count: Role.allCases.count)
        consumedAtLastEvent = Role.allCases.map { worker.requestsConsumed(by: $0) }
    }

    /// Whether any port is held masked: such a worker is not idle, as the
    /// hold's end must unmask it.
    public var isHolding: Bool { throttles.contains { $0.unmaskAt != nil } }

    /// Unmasks the ports whose hold is over; returns the milliseconds until
    /// the next hold ends (a cap for the sleep), nil if none is held.
    public mutating func unmaskExpired<Worker: EventPortServing, Events: EventChannelDevice>(
        now: Int, worker: Worker, events: Events) -> Int32? where Worker.Role == Role {
        var nearest: Int32?
        // By index, not Role.allCases: that builds an array on every call.
        for i in throttles.indices {
            if throttles[i].holdExpired(now: now), let role = Role(rawValue: i), let port = worker.port(of: role) { try? events.unmask(port) }
            if let hold = throttles[i].millisecondsUntilUnmask(now: now) { nearest = min(nearest ?? hold, hold) }
        }
        return nearest
    }

    /// Takes the events pending on `events` (through `pending`, scratch the
    /// caller owns) and judges each: a port whose event found work, or the
    /// first spurious one, is unmasked at once; else it stays masked until
    /// its hold ends. Returns how many events were spurious.
    public mutating func takeEvents<Worker: EventPortServing, Events: EventChannelDevice>(
        from events: Events, into pending: UnsafeMutableBufferPointer<EventChannelPort>, worker: Worker
    ) throws(EventChannelError) -> Int where Worker.Role == Role {
        let taken = try events.takePending(into: pending)
        let now = monotonicNanoseconds()
        var spurious = 0
        for port in pending[0..<taken] {
            guard let role = worker.role(of: port) else {
                try? events.unmask(port)
                continue
            }
            let i = role.rawValue
            let consumed = worker.requestsConsumed(by: role)
            let foundWork = consumed != consumedAtLastEvent[i] || worker.hasWork(for: role)
            consumedAtLastEvent[i] = consumed
            if !foundWork { spurious += 1 }
            if throttles[i].recordWake(foundWork: foundWork, now: now) { try? events.unmask(port) }
        }
        return spurious
    }
}

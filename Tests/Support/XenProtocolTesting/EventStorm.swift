/// A frontend notifying without pause (XSA-332), and what the backend's
/// spurious-event hold lets that cost: the block, net and daemon storm tests
/// share both so they hold the backend to one bound.
public struct EventStorm: Sendable {
    public var kicks: Int
    public var seconds: Double

    /// The most spurious wakes a storm this long may cost. From the second
    /// spurious wake in a row a port stays masked 1 ms doubling to 1 s:
    /// 1 + 2 + ... + 512 ms of holds reach a second after 11 wakes, then
    /// about one wake a second follows; twice that leaves room for a slow host.
    public var spuriousWakeBound: UInt64 { UInt64(14 + 2 * seconds.rounded(.up)) }

    /// Kicks for `duration` on a thread of its own, in batches of 100.
    public static func run(for duration: Duration, kick: @escaping @Sendable () throws -> Void) async throws -> EventStorm {
        try await offThePool {
            let clock = ContinuousClock(), start = clock.now, end = start + duration
            var kicks = 0
            while clock.now < end {
                for _ in 0..<100 { try kick() }
                kicks += 100
            }
            return EventStorm(kicks: kicks, seconds: (clock.now - start) / .seconds(1))
        }
    }

    /// Kicks `count` times on a thread of its own.
    public static func run(kicks count: Int, kick: @escaping @Sendable () throws -> Void) async throws -> EventStorm {
        try await offThePool {
            let clock = ContinuousClock(), start = clock.now
            for _ in 0..<count { try kick() }
            return EventStorm(kicks: count, seconds: (clock.now - start) / .seconds(1))
        }
    }
}

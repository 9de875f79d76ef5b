#if canImport(Glibc)
import Glibc
#endif

/// XSA-332: a guest can notify without pause, and a backend that wakes for
/// every event spends a CPU on nothing. Each wake that finds no work is
/// spurious; from the second spurious wake in a row the port stays masked
/// a while before it is unmasked, 1 ms doubling up to 1 s, so a storm
/// costs a few wakes a second. Events raised meanwhile are not lost: a
/// masked port remembers them and fires on unmask. Any wake that finds work
/// starts over. (Linux's late-EOI accounting does the same in jiffies.)
///
/// An honest frontend almost never sends two spurious events in a row:
/// one is the race where the backend took the requests before the event
/// arrived, and the next event then comes with new requests.
public struct SpuriousEventThrottle: Sendable {
    /// Spurious wakes in a row.
    public private(set) var consecutive = 0
    /// When the masked port is to be unmasked (CLOCK_MONOTONIC ns); nil when
    /// it is not held masked.
    public private(set) var unmaskAt: Int?

    public static let longestHoldMilliseconds = 1000

    public init() {}

    /// Records a wake by the event channel; returns true if the port may be
    /// unmasked now, false if it is to stay masked until `unmaskAt`.
    public mutating func recordWake(foundWork: Bool, now: Int) -> Bool {
        guard !foundWork else {
            consecutive = 0
            return true
        }
        consecutive += 1
        guard consecutive >= 2 else { return true }
        let hold = min(1 << min(consecutive - 2, 10), Self.longestHoldMilliseconds)
        unmaskAt = now + hold * 1_000_000
        return false
    }

    /// Milliseconds until the held port is due (rounded up), or nil if no
    /// port is held; a poll timeout is capped by it.
    public func millisecondsUntilUnmask(now: Int) -> Int32? {
        unmaskAt.map { Int32(clamping: max(0, ($0 - now + 999_999) / 1_000_000)) }
    }

    /// True once the hold is over (and forgets it): unmask the port now.
    public mutating func holdExpired(now: Int) -> Bool {
        guard let at = unmaskAt, now >= at else { return false }
        unmaskAt = nil
        return true
    }

    /// Ends any hold (the port is being unmasked for another reason).
    public mutating func release() { unmaskAt = nil }
}

/// CLOCK_MONOTONIC in nanoseconds.
public func monotonicNanoseconds() -> Int {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Int(now.tv_sec) * 1_000_000_000 + Int(now.tv_nsec)
}

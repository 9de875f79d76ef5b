import Synchronization
import XenBlockProtocol

/// A disk's I/O limit: requests per second and bytes per second, either
/// or both (nil: unlimited). Set per device with the backend keys
/// `limit-iops` and `limit-bytes-per-second` (0 or absent: no limit), at
/// attach time or live.
public struct BlockIOLimit: Sendable, Equatable, CustomStringConvertible {
    public var requestsPerSecond: Int?
    public var bytesPerSecond: Int?

    public init(requestsPerSecond: Int? = nil, bytesPerSecond: Int? = nil) {
        self.requestsPerSecond = requestsPerSecond
        self.bytesPerSecond = bytesPerSecond
    }

    public static let unlimited = BlockIOLimit()
    public var isUnlimited: Bool { requestsPerSecond == nil && bytesPerSecond == nil }

    /// The backend keys that set the limit.
    public static let requestsKey = "limit-iops"
    public static let bytesKey = "limit-bytes-per-second"

    /// A key's value: absent, empty or "0" is no limit; else a whole number
    /// in 1...2^40. Nil for anything else (the caller names the key).
    public static func parse(_ text: String?) -> Int?? {
        guard let text, !text.isEmpty, text != "0" else { return .some(nil) }
        guard let value = Int(text), (1...(1 << 40)).contains(value) else { return nil }
        return .some(value)
    }

    public var description: String {
        isUnlimited ? "unlimited"
            : [requestsPerSecond.map { "\($0) requests/s" }, bytesPerSecond.map { "\($0) bytes/s" }].compactMap { $0 }.joined(separator: ", ")
    }
}

/// One disk's token buckets, shared by its ring workers: a request is
/// admitted when the request bucket holds a whole request and the byte
/// bucket a positive balance, and takes its cost from each; the byte
/// balance may go negative (a 1 MiB request under a 64 KiB/s limit is
/// admitted, then the disk waits its time out). Buckets hold a
/// tenth of a second's worth (at least one request), so a pause does not
/// bank a burst.
///
/// Unlimited disks pay one relaxed load per pass for this; a limited one a
/// short uncontended lock per request, rings of the same disk contending.
public final class BlockIOLimiter: Sendable {
    private struct Buckets {
        var limit = BlockIOLimit.unlimited
        var requests = 0.0
        var bytes = 0.0
        var refilledAt = 0
    }
    private let buckets = Mutex(Buckets())
    /// Relaxed: a flag the workers sample; a request either side of a change
    /// may see either limit.
    private let active = Atomic<Bool>(false)

    public init(_ limit: BlockIOLimit = .unlimited) { set(limit) }

    public var limit: BlockIOLimit { buckets.withLock { $0.limit } }
    public var isActive: Bool { active.load(ordering: .relaxed) }

    /// Replaces the limit; the buckets start full.
    public func set(_ limit: BlockIOLimit) {
        buckets.withLock { b in
            b = Buckets(limit: limit)
            b.requests = Self.capacity(limit.requestsPerSecond)
            b.bytes = Self.capacity(limit.bytesPerSecond)
            b.refilledAt = 0
        }
        active.store(!limit.isUnlimited, ordering: .relaxed)
    }

    /// Admits one request of `bytes` at `now` (monotonic ns): nil if it may
    /// go now (its cost is taken), else the nanoseconds until it may.
    public func admit(bytes: Int, now: Int) -> Int? {
        buckets.withLock { b -> Int? in
            if b.refilledAt == 0 { b.refilledAt = now }
            let elapsed = Double(max(0, now - b.refilledAt)) / 1e9
            b.refilledAt = now
            var wait = 0.0
            // Until the balances suffice again (a microsecond's slack for rounding).
            if let rate = b.limit.requestsPerSecond {
                b.requests = min(b.requests + elapsed * Double(rate), Self.capacity(rate))
                if b.requests < 1 { wait = max(wait, (1 - b.requests) / Double(rate) + 1e-6) }
            }
            if let rate = b.limit.bytesPerSecond {
                b.bytes = min(b.bytes + elapsed * Double(rate), Self.capacity(rate))
                if b.bytes <= 0 { wait = max(wait, -b.bytes / Double(rate) + 1e-6) }
            }
            guard wait == 0 else { return max(1, Int(wait * 1e9)) }
            if b.limit.requestsPerSecond != nil { b.requests -= 1 }
            if b.limit.bytesPerSecond != nil { b.bytes -= Double(bytes) }
            return nil
        }
    }

    private static func capacity(_ rate: Int?) -> Double { max(1, Double(rate ?? 0) / 10) }

    /// What a request costs in bytes before it is taken off the ring: its
    /// segments' sectors; for an indirect request, a full page per segment
    /// (its segments are in guest pages not yet copied); none for flushes
    /// and discards (metadata).
    public static func cost(of request: BlockRequest) -> Int {
        switch request.operation {
        case .read, .write, .writeBarrier:
            var total = 0
            for i in 0..<min(Int(request.segmentCount), BlockLimits.maxSegmentsPerRequest) {
                let s = request.segment(i)
                total += max(0, Int(s.lastSector) - Int(s.firstSector) + 1) * 512
            }
            return total
        case .indirect:
            return Int(request.indirectSegmentCount) * 4096
        default:
            return 0
        }
    }
}

import Synchronization

/// Per-device counters (Linux blkback's statistics/ directory and more),
/// written by the ring worker and read by anyone.
public final class BlockStatistics: Sendable {
    public let readRequests = Atomic<UInt64>(0)
    public let writeRequests = Atomic<UInt64>(0)
    public let flushRequests = Atomic<UInt64>(0)
    public let discardRequests = Atomic<UInt64>(0)
    /// 512-byte sectors read and written.
    public let readSectors = Atomic<UInt64>(0)
    public let writeSectors = Atomic<UInt64>(0)
    /// Requests answered with an error or EOPNOTSUPP.
    public let errors = Atomic<UInt64>(0)

    public init() {}

    @inlinable
    func add(_ counter: borrowing Atomic<UInt64>, _ n: UInt64 = 1) {
        // Relaxed: counters, read for display only.
        counter.add(n, ordering: .relaxed)
    }

    public struct Snapshot: Sendable, Equatable {
        public var readRequests, writeRequests, flushRequests, discardRequests, readSectors, writeSectors, errors: UInt64
    }

    public var snapshot: Snapshot {
        Snapshot(readRequests: readRequests.load(ordering: .relaxed), writeRequests: writeRequests.load(ordering: .relaxed),
                 flushRequests: flushRequests.load(ordering: .relaxed), discardRequests: discardRequests.load(ordering: .relaxed),
                 readSectors: readSectors.load(ordering: .relaxed), writeSectors: writeSectors.load(ordering: .relaxed),
                 errors: errors.load(ordering: .relaxed))
    }
}

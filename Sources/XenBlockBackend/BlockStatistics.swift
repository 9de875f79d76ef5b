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
    /// WRITE_BARRIERs that had to wait for earlier I/O (Linux's oo_req
    /// counts its own resource shortages; a barrier drain is ours).
    public let barrierWaits = Atomic<UInt64>(0)
    /// Grants mapped into the persistent grant table (once each, ideally).
    public let persistentGrantMaps = Atomic<UInt64>(0)

    public init() {}

    @inlinable
    func add(_ counter: borrowing Atomic<UInt64>, _ n: UInt64 = 1) {
        // Relaxed: counters, read for display only.
        counter.add(n, ordering: .relaxed)
    }

    public struct Snapshot: Sendable, Equatable {
        public var readRequests, writeRequests, flushRequests, discardRequests, readSectors, writeSectors, errors, barrierWaits, persistentGrantMaps: UInt64

        public static let zero = Snapshot(readRequests: 0, writeRequests: 0, flushRequests: 0, discardRequests: 0,
                                          readSectors: 0, writeSectors: 0, errors: 0, barrierWaits: 0, persistentGrantMaps: 0)

        /// Sums per-ring counters into the device's.
        public static func + (a: Snapshot, b: Snapshot) -> Snapshot {
            Snapshot(readRequests: a.readRequests + b.readRequests, writeRequests: a.writeRequests + b.writeRequests,
                     flushRequests: a.flushRequests + b.flushRequests, discardRequests: a.discardRequests + b.discardRequests,
                     readSectors: a.readSectors + b.readSectors, writeSectors: a.writeSectors + b.writeSectors,
                     errors: a.errors + b.errors, barrierWaits: a.barrierWaits + b.barrierWaits,
                     persistentGrantMaps: a.persistentGrantMaps + b.persistentGrantMaps)
        }
    }

    public var snapshot: Snapshot {
        Snapshot(readRequests: readRequests.load(ordering: .relaxed), writeRequests: writeRequests.load(ordering: .relaxed),
                 flushRequests: flushRequests.load(ordering: .relaxed), discardRequests: discardRequests.load(ordering: .relaxed),
                 readSectors: readSectors.load(ordering: .relaxed), writeSectors: writeSectors.load(ordering: .relaxed),
                 errors: errors.load(ordering: .relaxed), barrierWaits: barrierWaits.load(ordering: .relaxed),
                 persistentGrantMaps: persistentGrantMaps.load(ordering: .relaxed))
    }
}

import Synchronization

/// Per-ring counters (Linux blkback's statistics/ directory and more),
/// written by the ring's worker and read by anyone; a device sums its rings.
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
    /// Linux's oo_req: requests that found a resource short. Here: a
    /// persistent grant table full of pages in use (the request then went
    /// by grant copy).
    public let outOfResources = Atomic<UInt64>(0)
    /// WRITE_BARRIERs that had to wait for earlier I/O to drain.
    public let barrierWaits = Atomic<UInt64>(0)
    /// Grants mapped into the persistent grant table (once each, ideally).
    public let persistentGrantMaps = Atomic<UInt64>(0)
    /// Rings stopped for good because the frontend broke the ring protocol
    /// (an impossible producer index): a stalled ring an operator should see.
    public let ringsHalted = Atomic<UInt64>(0)
    /// Event-channel wakes that found nothing to do (XSA-332); from the
    /// second in a row the port is held masked for a while.
    public let spuriousEvents = Atomic<UInt64>(0)

    public init() {}

    @inlinable
    func add(_ counter: borrowing Atomic<UInt64>, _ n: UInt64 = 1) {
        // Relaxed: counters, read for display only.
        counter.add(n, ordering: .relaxed)
    }

    public struct Snapshot: Sendable, Equatable, CustomStringConvertible {
        public var readRequests: UInt64 = 0, writeRequests: UInt64 = 0, flushRequests: UInt64 = 0, discardRequests: UInt64 = 0
        public var readSectors: UInt64 = 0, writeSectors: UInt64 = 0, errors: UInt64 = 0, outOfResources: UInt64 = 0
        public var barrierWaits: UInt64 = 0, persistentGrantMaps: UInt64 = 0, ringsHalted: UInt64 = 0, spuriousEvents: UInt64 = 0

        public static let zero = Snapshot()

        /// Sums per-ring counters into the device's.
        public static func + (a: Snapshot, b: Snapshot) -> Snapshot {
            Snapshot(readRequests: a.readRequests + b.readRequests, writeRequests: a.writeRequests + b.writeRequests,
                     flushRequests: a.flushRequests + b.flushRequests, discardRequests: a.discardRequests + b.discardRequests,
                     readSectors: a.readSectors + b.readSectors, writeSectors: a.writeSectors + b.writeSectors,
                     errors: a.errors + b.errors, outOfResources: a.outOfResources + b.outOfResources,
                     barrierWaits: a.barrierWaits + b.barrierWaits, persistentGrantMaps: a.persistentGrantMaps + b.persistentGrantMaps,
                     ringsHalted: a.ringsHalted + b.ringsHalted, spuriousEvents: a.spuriousEvents + b.spuriousEvents)
        }

        /// Linux's sysfs names where there is one.
        public var description: String {
            "rd_req \(readRequests) wr_req \(writeRequests) f_req \(flushRequests) ds_req \(discardRequests) "
                + "rd_sect \(readSectors) wr_sect \(writeSectors) oo_req \(outOfResources) errors \(errors) "
                + "barrier_waits \(barrierWaits) persistent_maps \(persistentGrantMaps) rings_halted \(ringsHalted) "
                + "spurious_events \(spuriousEvents)"
        }
    }

    public var snapshot: Snapshot {
        Snapshot(readRequests: readRequests.load(ordering: .relaxed), writeRequests: writeRequests.load(ordering: .relaxed),
                 flushRequests: flushRequests.load(ordering: .relaxed), discardRequests: discardRequests.load(ordering: .relaxed),
                 readSectors: readSectors.load(ordering: .relaxed), writeSectors: writeSectors.load(ordering: .relaxed),
                 errors: errors.load(ordering: .relaxed), outOfResources: outOfResources.load(ordering: .relaxed),
                 barrierWaits: barrierWaits.load(ordering: .relaxed), persistentGrantMaps: persistentGrantMaps.load(ordering: .relaxed),
                 ringsHalted: ringsHalted.load(ordering: .relaxed), spuriousEvents: spuriousEvents.load(ordering: .relaxed))
    }
}

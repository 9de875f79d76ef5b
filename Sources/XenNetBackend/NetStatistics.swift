import Synchronization

/// Per-queue counters, written by the queue's worker and read by anyone; a
/// VIF sums its queues. "tx" is the guest's transmit direction (guest to
/// host, Linux netback's naming), "rx" the guest's receive direction.
public final class NetStatistics: Sendable {
    public let txPackets = Atomic<UInt64>(0)
    public let txBytes = Atomic<UInt64>(0)
    /// Guest packets answered with an error (bad slots, failed grants, headers we cannot offload).
    public let txErrors = Atomic<UInt64>(0)
    /// Guest packets the host refused (the TAP's write failed).
    public let txDropped = Atomic<UInt64>(0)
    /// Passes that stopped because the `rate` credit ran out.
    public let txCreditWaits = Atomic<UInt64>(0)
    public let rxPackets = Atomic<UInt64>(0)
    public let rxBytes = Atomic<UInt64>(0)
    /// Host packets not delivered: queue full, stalled or timed-out frontend,
    /// multicast filter, or something the frontend cannot take.
    public let rxDropped = Atomic<UInt64>(0)
    /// Slots whose grant copy failed.
    public let rxErrors = Atomic<UInt64>(0)
    /// Times the frontend left the receive ring without buffers past the stall timeout.
    public let rxStalls = Atomic<UInt64>(0)
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
        public var txPackets: UInt64 = 0, txBytes: UInt64 = 0, txErrors: UInt64 = 0, txDropped: UInt64 = 0, txCreditWaits: UInt64 = 0
        public var rxPackets: UInt64 = 0, rxBytes: UInt64 = 0, rxDropped: UInt64 = 0, rxErrors: UInt64 = 0, rxStalls: UInt64 = 0
        public var spuriousEvents: UInt64 = 0

        public static let zero = Snapshot()

        public static func + (a: Snapshot, b: Snapshot) -> Snapshot {
            Snapshot(txPackets: a.txPackets + b.txPackets, txBytes: a.txBytes + b.txBytes, txErrors: a.txErrors + b.txErrors,
                     txDropped: a.txDropped + b.txDropped, txCreditWaits: a.txCreditWaits + b.txCreditWaits,
                     rxPackets: a.rxPackets + b.rxPackets, rxBytes: a.rxBytes + b.rxBytes, rxDropped: a.rxDropped + b.rxDropped,
                     rxErrors: a.rxErrors + b.rxErrors, rxStalls: a.rxStalls + b.rxStalls, spuriousEvents: a.spuriousEvents + b.spuriousEvents)
        }

        public var description: String {
            "tx_packets \(txPackets) tx_bytes \(txBytes) tx_errors \(txErrors) tx_dropped \(txDropped) tx_credit_waits \(txCreditWaits) "
                + "rx_packets \(rxPackets) rx_bytes \(rxBytes) rx_dropped \(rxDropped) rx_errors \(rxErrors) rx_stalls \(rxStalls) "
                + "spurious_events \(spuriousEvents)"
        }
    }

    public var snapshot: Snapshot {
        Snapshot(txPackets: txPackets.load(ordering: .relaxed), txBytes: txBytes.load(ordering: .relaxed),
                 txErrors: txErrors.load(ordering: .relaxed), txDropped: txDropped.load(ordering: .relaxed),
                 txCreditWaits: txCreditWaits.load(ordering: .relaxed),
                 rxPackets: rxPackets.load(ordering: .relaxed), rxBytes: rxBytes.load(ordering: .relaxed),
                 rxDropped: rxDropped.load(ordering: .relaxed), rxErrors: rxErrors.load(ordering: .relaxed),
                 rxStalls: rxStalls.load(ordering: .relaxed), spuriousEvents: spuriousEvents.load(ordering: .relaxed))
    }
}

import XenPlatform

/// Per-queue counters, written by the queue's worker and read by anyone; a
/// VIF sums its queues. "tx" is the guest's transmit direction (guest to
/// host, Linux netback's naming), "rx" the guest's receive direction.
public typealias NetStatistics = WorkerCounters<NetCounter>

public enum NetCounter: Int, WorkerCounter {
    case txPackets, txBytes
    /// Guest packets answered with an error (bad slots, failed grants, headers we cannot offload).
    case txErrors
    /// Guest packets the host refused (the TAP's write failed).
    case txDropped
    /// Passes that stopped because the `rate` credit ran out.
    case txCreditWaits
    case rxPackets, rxBytes
    /// Host packets not delivered: queue full, stalled or timed-out frontend,
    /// multicast filter, or something the frontend cannot take.
    case rxDropped
    /// Slots whose grant copy failed.
    case rxErrors
    /// Times the frontend left the receive ring without buffers past the stall timeout.
    case rxStalls
    /// Event-channel wakes that found nothing to do (XSA-332); from the
    /// second in a row the port is held masked for a while.
    case spuriousEvents
    /// System calls the queue's worker made (through the funnel).
    case syscalls
    /// Events sent to the frontend (transmit and receive rings).
    case notifications

    public var displayName: String {
        switch self {
        case .txPackets: "tx_packets"
        case .txBytes: "tx_bytes"
        case .txErrors: "tx_errors"
        case .txDropped: "tx_dropped"
        case .txCreditWaits: "tx_credit_waits"
        case .rxPackets: "rx_packets"
        case .rxBytes: "rx_bytes"
        case .rxDropped: "rx_dropped"
        case .rxErrors: "rx_errors"
        case .rxStalls: "rx_stalls"
        case .spuriousEvents: "spurious_events"
        case .syscalls: "syscalls"
        case .notifications: "notifications"
        }
    }
}

import XenPlatform

/// Per-ring counters (Linux blkback's statistics/ directory and more),
/// written by the ring's worker and read by anyone; a device sums its rings.
public typealias BlockStatistics = WorkerCounters<BlockCounter>

public enum BlockCounter: Int, WorkerCounter {
    case readRequests, writeRequests, flushRequests, discardRequests
    /// 512-byte sectors read and written.
    case readSectors, writeSectors
    /// Linux's oo_req: requests that found a resource short. Here: a
    /// persistent grant table full of pages in use (the request then went
    /// by grant copy).
    case outOfResources
    /// Requests answered with an error or EOPNOTSUPP.
    case errors
    /// WRITE_BARRIERs that had to wait for earlier I/O to drain.
    case barrierWaits
    /// Grants mapped into the persistent grant table (once each, ideally).
    case persistentGrantMaps
    /// Rings stopped for good because the frontend broke the ring protocol
    /// (an impossible producer index): a stalled ring an operator should see.
    case ringsHalted
    /// Event-channel wakes that found nothing to do (XSA-332); from the
    /// second in a row the port is held masked for a while.
    case spuriousEvents
    /// Times the disk's I/O limit (`limit-iops`, `limit-bytes-per-second`)
    /// held a request back.
    case limitWaits
    /// System calls the ring's worker made (through the funnel and the I/O
    /// engines): with the requests counted, the figure benchmarks compare.
    case syscalls
    /// Events sent to the frontend.
    case notifications

    public var displayName: String {
        switch self {
        case .readRequests: "rd_req"
        case .writeRequests: "wr_req"
        case .flushRequests: "f_req"
        case .discardRequests: "ds_req"
        case .readSectors: "rd_sect"
        case .writeSectors: "wr_sect"
        case .outOfResources: "oo_req"
        case .errors: "errors"
        case .barrierWaits: "barrier_waits"
        case .persistentGrantMaps: "persistent_maps"
        case .ringsHalted: "rings_halted"
        case .spuriousEvents: "spurious_events"
        case .limitWaits: "limit_waits"
        case .syscalls: "syscalls"
        case .notifications: "notifications"
        }
    }
}

import CoreMetrics
import XenBlockBackend
import XenNetBackend
import XenPlatform

/// A device's counters as swift-metrics metrics.
protocol DeviceMetrics: AnyObject, Sendable {
    func destroy()
}

/// One worker counter exported as a swift-metrics counter: its label, the
/// dimensions that tell it from its siblings, and a unit scale (sectors
/// are exported as bytes).
struct ExportedCounter<Counter: WorkerCounter> {
    var counter: Counter
    var label: String
    var dimensions: [(String, String)] = []
    var scale: UInt64 = 1
}

/// A device's counters as swift-metrics counters (the daemon's process
/// bootstraps the backend, e.g. Prometheus) plus a `connected` gauge: each
/// `update` adds what changed since the last one.
final class WorkerCounterMetrics<Counter: WorkerCounter>: DeviceMetrics, @unchecked Sendable {  // used only under the daemon's device-table lock
    private let exported: [(ExportedCounter<Counter>, CoreMetrics.Counter)]
    private let connected: Gauge
    private var last = WorkerCounters<Counter>.Snapshot.zero

    init(_ table: [ExportedCounter<Counter>], connectedLabel: String, dimensions: [(String, String)]) {
        exported = table.map { ($0, CoreMetrics.Counter(label: $0.label, dimensions: dimensions + $0.dimensions)) }
        connected = Gauge(label: connectedLabel, dimensions: dimensions)
    }

    func update(_ now: WorkerCounters<Counter>.Snapshot, connected isConnected: Bool) {
        for (e, metric) in exported where now[e.counter] > last[e.counter] {
            metric.increment(by: Int64((now[e.counter] - last[e.counter]) * e.scale))
        }
        connected.record(isConnected ? 1 : 0)
        last = now
    }

    func destroy() {
        for (_, metric) in exported { metric.destroy() }
        connected.destroy()
    }
}

typealias BlockDeviceMetrics = WorkerCounterMetrics<BlockCounter>
typealias NetDeviceMetrics = WorkerCounterMetrics<NetCounter>

extension WorkerCounterMetrics where Counter == BlockCounter {
    /// Labelled with domid and devid.
    convenience init(domid: String, devid: String) {
        func requests(_ c: BlockCounter, _ op: String) -> ExportedCounter<BlockCounter> {
            ExportedCounter(counter: c, label: "xenback_block_requests_total", dimensions: [("op", op)])
        }
        self.init([
            requests(.readRequests, "read"), requests(.writeRequests, "write"),
            requests(.flushRequests, "flush"), requests(.discardRequests, "discard"),
            ExportedCounter(counter: .readSectors, label: "xenback_block_bytes_total", dimensions: [("op", "read")], scale: 512),
            ExportedCounter(counter: .writeSectors, label: "xenback_block_bytes_total", dimensions: [("op", "write")], scale: 512),
            ExportedCounter(counter: .errors, label: "xenback_block_errors_total"),
            ExportedCounter(counter: .outOfResources, label: "xenback_block_out_of_resources_total"),
            ExportedCounter(counter: .ringsHalted, label: "xenback_block_rings_halted_total"),
            ExportedCounter(counter: .spuriousEvents, label: "xenback_block_spurious_events_total"),
        ], connectedLabel: "xenback_block_connected", dimensions: [("domid", domid), ("devid", devid)])
    }
}

extension WorkerCounterMetrics where Counter == NetCounter {
    /// Labelled with domid and handle. "tx" is the guest's transmit
    /// direction, as in netback.
    convenience init(domid: String, handle: String) {
        func pair(_ label: String, _ tx: NetCounter, _ rx: NetCounter) -> [ExportedCounter<NetCounter>] {
            [ExportedCounter(counter: tx, label: label, dimensions: [("direction", "tx")]),
             ExportedCounter(counter: rx, label: label, dimensions: [("direction", "rx")])]
        }
        self.init(pair("xenback_net_packets_total", .txPackets, .rxPackets)
                  + pair("xenback_net_bytes_total", .txBytes, .rxBytes)
                  + pair("xenback_net_dropped_total", .txDropped, .rxDropped)
                  + pair("xenback_net_errors_total", .txErrors, .rxErrors)
                  + [ExportedCounter(counter: .rxStalls, label: "xenback_net_rx_stalls_total"),
                     ExportedCounter(counter: .spuriousEvents, label: "xenback_net_spurious_events_total")],
                  connectedLabel: "xenback_net_connected", dimensions: [("domid", domid), ("handle", handle)])
    }
}

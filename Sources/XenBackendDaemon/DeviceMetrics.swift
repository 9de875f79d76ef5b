import CoreMetrics
import XenBlockBackend

/// A block device's counters as swift-metrics counters (the daemon's
/// process bootstraps the backend, e.g. Prometheus): each `update` adds
/// what changed since the last one. Labelled with domid and devid.
final class BlockDeviceMetrics: @unchecked Sendable {  // used only under the daemon's device-table lock
    private let readRequests, writeRequests, flushRequests, discardRequests: Counter
    private let readBytes, writeBytes, errors, outOfResources: Counter
    private let connected: Gauge
    private var last = BlockStatistics.Snapshot.zero

    init(domid: String, devid: String) {
        let d = [("domid", domid), ("devid", devid)]
        func requests(_ op: String) -> Counter { Counter(label: "xenback_block_requests_total", dimensions: d + [("op", op)]) }
        readRequests = requests("read"); writeRequests = requests("write")
        flushRequests = requests("flush"); discardRequests = requests("discard")
        readBytes = Counter(label: "xenback_block_bytes_total", dimensions: d + [("op", "read")])
        writeBytes = Counter(label: "xenback_block_bytes_total", dimensions: d + [("op", "write")])
        errors = Counter(label: "xenback_block_errors_total", dimensions: d)
        outOfResources = Counter(label: "xenback_block_out_of_resources_total", dimensions: d)
        connected = Gauge(label: "xenback_block_connected", dimensions: d)
    }

    func update(_ s: BlockStatistics.Snapshot, connected isConnected: Bool) {
        func add(_ counter: Counter, _ now: UInt64, _ before: UInt64) {
            if now > before { counter.increment(by: Int64(now - before)) }
        }
        add(readRequests, s.readRequests, last.readRequests)
        add(writeRequests, s.writeRequests, last.writeRequests)
        add(flushRequests, s.flushRequests, last.flushRequests)
        add(discardRequests, s.discardRequests, last.discardRequests)
        add(readBytes, s.readSectors * 512, last.readSectors * 512)
        add(writeBytes, s.writeSectors * 512, last.writeSectors * 512)
        add(errors, s.errors, last.errors)
        add(outOfResources, s.outOfResources, last.outOfResources)
        connected.record(isConnected ? 1 : 0)
        last = s
    }

    func destroy() {
        for c in [readRequests, writeRequests, flushRequests, discardRequests, readBytes, writeBytes, errors, outOfResources] { c.destroy() }
        connected.destroy()
    }
}

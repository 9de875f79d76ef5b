import CoreMetrics
import XenBlockBackend
import XenNetBackend

/// A device's counters as swift-metrics metrics.
protocol DeviceMetrics: AnyObject, Sendable {
    func destroy()
}

/// A block device's counters as swift-metrics counters (the daemon's
/// process bootstraps the backend, e.g. Prometheus): each `update` adds
/// what changed since the last one. Labelled with domid and devid.
final class BlockDeviceMetrics: DeviceMetrics, @unchecked Sendable {  // used only under the daemon's device-table lock
    private let readRequests, writeRequests, flushRequests, discardRequests: Counter
    private let readBytes, writeBytes, errors, outOfResources, ringsHalted, spuriousEvents: Counter
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
        ringsHalted = Counter(label: "xenback_block_rings_halted_total", dimensions: d)
        spuriousEvents = Counter(label: "xenback_block_spurious_events_total", dimensions: d)
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
        add(ringsHalted, s.ringsHalted, last.ringsHalted)
        add(spuriousEvents, s.spuriousEvents, last.spuriousEvents)
        connected.record(isConnected ? 1 : 0)
        last = s
    }

    func destroy() {
        for c in [readRequests, writeRequests, flushRequests, discardRequests, readBytes, writeBytes, errors, outOfResources, ringsHalted, spuriousEvents] { c.destroy() }
        connected.destroy()
    }
}

/// A network interface's counters, labelled with domid and handle. "tx" is
/// the guest's transmit direction, as in netback.
final class NetDeviceMetrics: DeviceMetrics, @unchecked Sendable {  // used only under the daemon's device-table lock
    private let packets: [Counter]  // tx, rx
    private let bytes: [Counter]
    private let dropped: [Counter]
    private let errors: [Counter]
    private let stalls, spuriousEvents: Counter
    private let connected: Gauge
    private var last = NetStatistics.Snapshot.zero

    init(domid: String, handle: String) {
        let d = [("domid", domid), ("handle", handle)]
        func pair(_ label: String) -> [Counter] {
            ["tx", "rx"].map { Counter(label: label, dimensions: d + [("direction", $0)]) }
        }
        packets = pair("xenback_net_packets_total")
        bytes = pair("xenback_net_bytes_total")
        dropped = pair("xenback_net_dropped_total")
        errors = pair("xenback_net_errors_total")
        stalls = Counter(label: "xenback_net_rx_stalls_total", dimensions: d)
        spuriousEvents = Counter(label: "xenback_net_spurious_events_total", dimensions: d)
        connected = Gauge(label: "xenback_net_connected", dimensions: d)
    }

    func update(_ s: NetStatistics.Snapshot, connected isConnected: Bool) {
        func add(_ counter: Counter, _ now: UInt64, _ before: UInt64) {
            if now > before { counter.increment(by: Int64(now - before)) }
        }
        add(packets[0], s.txPackets, last.txPackets); add(packets[1], s.rxPackets, last.rxPackets)
        add(bytes[0], s.txBytes, last.txBytes); add(bytes[1], s.rxBytes, last.rxBytes)
        add(dropped[0], s.txDropped, last.txDropped); add(dropped[1], s.rxDropped, last.rxDropped)
        add(errors[0], s.txErrors, last.txErrors); add(errors[1], s.rxErrors, last.rxErrors)
        add(stalls, s.rxStalls, last.rxStalls)
        add(spuriousEvents, s.spuriousEvents, last.spuriousEvents)
        connected.record(isConnected ? 1 : 0)
        last = s
    }

    func destroy() {
        for c in packets + bytes + dropped + errors + [stalls, spuriousEvents] { c.destroy() }
        connected.destroy()
    }
}

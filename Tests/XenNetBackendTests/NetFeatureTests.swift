#if canImport(Glibc)
import Glibc
#endif
import Testing
import XenNetBackend
import XenNetFrontend
import XenNetProtocol
import XenNetTestbed
import XenBusClient
import XenPlatform
import XenProtocolTesting
import XenSim

/// A UDP frame from the host side to `destinationMAC` (port tells frames apart).
func hostFrame(_ lab: NetworkLab, to destinationMAC: [UInt8] = guestMAC, sourcePort: Int, size: Int = 200) -> [UInt8] {
    Frames.udp(sourceMAC: [0x02, 0, 0, 0, 0, 9], destinationMAC: destinationMAC, sourceIP: lab.peerIP, destinationIP: lab.guestIP,
               sourcePort: sourcePort, destinationPort: 4000, payload: randomBytes(max(0, size - 42), seed: UInt64(sourcePort)))
}

func sourcePort(_ frame: [UInt8]) -> Int? {
    guard frame.count >= 42, frame[12] == 8, frame[13] == 0, frame[23] == 17 else { return nil }
    return Int(frame[34]) << 8 | Int(frame[35])
}

/// Receives until a frame from `marker` arrives; returns the source ports seen before it.
func portsUntil(_ queue: NetFrontendQueue, marker: Int) async throws -> [Int] {
    try await offThePool {
        var seen: [Int] = []
        while let f = try queue.receive(timeoutMilliseconds: 5000) {
            guard let p = sourcePort(f.bytes) else { continue }
            if p == marker { return seen }
            seen.append(p)
        }
        Issue.record("marker \(marker) never arrived")
        return seen
    }
}

/// Waits (bounded) until the host interface's carrier reads `on`.
func awaitCarrier(_ lab: NetworkLab, _ name: String, _ on: Bool) async throws -> Bool {
    try await offThePool {
        for _ in 0..<300 {
            if lab.inHost("cat /sys/class/net/\(name)/carrier").1.hasPrefix(on ? "1" : "0") { return true }
            usleep(20_000)
        }
        return false
    }
}

@Suite(.serialized) struct NetFeatureTests {
    /// XSA-392: a frontend that stops taking packets costs a bounded queue;
    /// past the stall timeout the carrier goes off and packets are dropped;
    /// once it posts buffers again the carrier comes back and packets flow.
    @Test func stalledFrontendIsBounded() async throws {
        let configuration = NetBackendConfiguration(maximumQueues: 1, receiveQueueBytes: 65536, receiveStallMilliseconds: 300,
                                                    receiveDrainMilliseconds: 10_000)
        try await withVIF(configuration: configuration) { _, lab, device, front in
            let injector = try lab.injector()
            #expect(try await awaitCarrier(lab, "vif7.0", true))
            for i in 0..<600 { _ = injector.inject(hostFrame(lab, sourcePort: 10_000 + i, size: 1000)) }
            #expect(try await awaitCarrier(lab, "vif7.0", false), "carrier off after the stall timeout")
            let stats = device.statistics
            #expect(stats[.rxPackets] == 256, "one per posted buffer, then nothing")
            #expect(stats[.rxStalls] == 1 && stats[.rxDropped] > 0)
            // The guest takes what it was given (reposting buffers).
            let queue = front.queues[0]
            let taken = try await offThePool { () throws -> Int in
                var n = 0
                while n < 256, try queue.receive(timeoutMilliseconds: 2000) != nil { n += 1 }
                return n
            }
            #expect(taken == 256)
            #expect(try await awaitCarrier(lab, "vif7.0", true), "carrier back once buffers are posted")
            _ = injector.inject(hostFrame(lab, sourcePort: 999))
            let ports = try await portsUntil(queue, marker: 999)
            #expect(ports.isEmpty, "nothing stale delivered after the stall")
        }
    }

    /// A backend that filled every posted buffer with packets still queued
    /// asks to be told when buffers come back (req_event just past its
    /// consumer), so the guest's repost wakes it and every packet arrives.
    /// (NetWorkerTests checks the same after a pass that ends on its budget.)
    @Test func fullRingAsksForTheNextBuffer() async throws {
        try await withVIF { host, lab, device, front in
            let injector = try lab.injector()
            for i in 0..<300 { _ = injector.inject(hostFrame(lab, sourcePort: 30_000 + i)) }
            let delivered = try await offThePool { () -> UInt64 in
                for _ in 0..<500 where device.statistics[.rxPackets] < 256 { usleep(10_000) }
                return device.statistics[.rxPackets]
            }
            #expect(delivered == 256)
            // Queue 0's receive ring is the frontend's second guest frame.
            let requestEvent = try await offThePool { () -> UInt32 in
                let ring = host.guest.page(1)
                for _ in 0..<500 {
                    let event = ring.load(fromByteOffset: 4, as: UInt32.self)
                    if event == 257 { return event }
                    usleep(10_000)
                }
                return ring.load(fromByteOffset: 4, as: UInt32.self)
            }
            #expect(requestEvent == 257, "req_event is the next buffer's index")
            let queue = front.queues[0]
            let taken = try await offThePool { () throws -> Int in
                var n = 0
                while let f = try queue.receive(timeoutMilliseconds: 10_000) {  // generous: the host may be loaded
                    if let p = sourcePort(f.bytes), (30_000..<30_300).contains(p) { n += 1 }
                    if n == 300 { break }
                }
                return n
            }
            #expect(taken == 300)
        }
    }

    /// Multicast control: multicast frames reach the guest only for the
    /// addresses it added, until it deletes them; broadcast always does.
    @Test func multicastFiltering() async throws {
        try await withVIF(options: NetFrontendOptions(multicastControl: true)) { _, lab, device, front in
            #expect(device.negotiation?.options.multicastControl == true)
            let injector = try lab.injector()
            let queue = front.queues[0]
            let group: [UInt8] = [0x01, 0x00, 0x5E, 0x01, 0x02, 0x03]
            let other: [UInt8] = [0x01, 0x00, 0x5E, 0x07, 0x07, 0x07]
            func round(_ marker: Int) async throws -> [Int] {
                _ = injector.inject(hostFrame(lab, to: group, sourcePort: 1))
                _ = injector.inject(hostFrame(lab, to: other, sourcePort: 2))
                _ = injector.inject(hostFrame(lab, to: Frames.broadcast, sourcePort: 3))
                _ = injector.inject(hostFrame(lab, to: guestMAC, sourcePort: marker))
                return try await portsUntil(queue, marker: marker)
            }
            #expect(try await round(100) == [3])
            try await offThePool { try queue.multicast(add: true, address: group); _ = try queue.awaitTxResponses(2) }
            #expect(queue.txResponses.first?.status == NetStatus.okay)
            #expect(device.multicast.addresses == [group])
            #expect(try await round(101) == [1, 3])
            try await offThePool { queue.clearTxResponses(); try queue.multicast(add: false, address: group); _ = try queue.awaitTxResponses(2) }
            #expect(try await round(102) == [3])
            // Dynamic: the frontend turns filtering off, and every group passes
            // once the backend has seen the key (bounded wait for the watch).
            try await front.setMulticastControl(false)
            var marker = 200
            var seen: [Int] = []
            while marker < 250 {
                seen = try await round(marker)
                if seen == [1, 2, 3] { break }
                marker += 1
            }
            #expect(seen == [1, 2, 3], "filtering off: every multicast frame passes")
        }
    }

    /// The `rate` key limits what the guest sends to within 10 %.
    @Test func rateLimit() async throws {
        let bytesPerSecond = 2_500_000.0
        try await withVIF(backendKeys: ["rate": "25000,10000"]) { _, lab, device, front in
            let queue = front.queues[0]
            let frame = hostFrame(lab, to: Frames.broadcast, sourcePort: 5, size: 1000)
            let measured = try await offThePool { () throws -> Double in
                let start = monotonicNanoseconds()
                var sent = 0
                while monotonicNanoseconds() - start < 1_500_000_000 {
                    try queue.send(frame)
                    sent += 1
                    if sent % 64 == 0 { queue.clearTxResponses() }
                }
                try queue.awaitTransmitIdle()
                let elapsed = Double(monotonicNanoseconds() - start) / 1e9
                return Double(sent * frame.count) / elapsed
            }
            #expect(abs(measured - bytesPerSecond) / bytesPerSecond < 0.10, "measured \(Int(measured)) B/s, configured \(Int(bytesPerSecond))")
            #expect(device.statistics[.txCreditWaits] > 0)
        }
    }

    /// Two queues: flows from the host spread over both, and both transmit.
    @Test func multiQueueSpreadsFlows() async throws {
        try await withVIF(options: NetFrontendOptions(queues: 2)) { _, lab, device, front in
            #expect(device.negotiation?.queues == 2 && front.queues.count == 2)
            let injector = try lab.injector()
            for i in 0..<64 { _ = injector.inject(hostFrame(lab, sourcePort: 20_000 + i)) }
            let counts = try await withThrowingTaskGroup(of: Int.self) { group in
                for queue in front.queues {
                    group.addTask {
                        try await offThePool { () throws -> Int in
                            var n = 0
                            // Only ours: the host's own IPv6 chatter reaches the VIF too.
                            while let f = try queue.receive(timeoutMilliseconds: 500) {
                                if let p = sourcePort(f.bytes), (20_000..<20_064).contains(p) { n += 1 }
                            }
                            return n
                        }
                    }
                }
                var all: [Int] = []
                for try await c in group { all.append(c) }
                return all
            }
            #expect(counts.reduce(0, +) == 64)
            #expect(counts.allSatisfy { $0 > 0 }, "both queues received: \(counts)")
            for queue in front.queues {
                try await offThePool { try queue.send(hostFrame(lab, to: Frames.broadcast, sourcePort: 7)); _ = try queue.awaitTxResponses(1) }
            }
            #expect(device.statistics[.txPackets] == 2)
        }
    }

    /// Every frame of a VIF is captured to a pcap file tcpdump reads back.
    @Test func captureToPcap() async throws {
        let directory = "/tmp/xenback-pcap-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(directory, 0o755)
        defer { _ = NetworkLab.sh("rm -rf \(directory)") }
        try await withVIF(configuration: NetBackendConfiguration(maximumQueues: 1, captureDirectory: directory)) { _, lab, _, front in
            let queue = front.queues[0]
            let replies = try await offThePool { try queue.ping(from: guestMAC, ip: lab.guestIP, to: lab.peerIP, count: 2) }
            #expect(replies == 2)
        }
        let (status, text) = NetworkLab.sh("tcpdump -nn -r \(directory)/vif7.0.pcap 2>/dev/null")
        #expect(status == 0)
        #expect(text.contains("ARP, Request who-has 10.77.0.1"), "\(text)")
        #expect(text.components("ICMP echo request") == 2 && text.components("ICMP echo reply") == 2, "\(text)")
    }
}

extension String {
    func components(_ needle: String) -> Int {
        ranges(of: needle).count
    }
}

/// The `rate` key changed while the VIF runs: every queue takes the new
/// rate; a bad value is refused and the rate stays as it was.
@Suite(.serialized) struct NetLiveRateTests {
    /// Sends 400 KB of frames as fast as the ring takes them (three times
    /// the largest credit burst), then waits until all are answered.
    func burst(_ queue: NetFrontendQueue, _ frame: [UInt8]) async throws {
        try await offThePool {
            for i in 0..<400 {
                try queue.send(frame)
                if i % 64 == 63 { queue.clearTxResponses() }
            }
            try queue.awaitTransmitIdle()
        }
    }

    @Test func rateChangesLiveAndBadValuesAreRefused() async throws {
        try await withVIF { host, lab, device, front in
            let status = device.backendPath + "/" + NetBackendDevice<SimPlatform>.rateStatusKey
            let frame = hostFrame(lab, to: Frames.broadcast, sourcePort: 5, size: 1000)
            _ = try await awaitXenstoreValue(host.backendStore, status, "unlimited") { $0 == "unlimited" }
            try await burst(front.queues[0], frame)
            #expect(device.statistics[.txCreditWaits] == 0, "no rate: nothing waits")

            try await host.backendStore.write(device.backendPath + "/rate", "25000,10000")
            _ = try await awaitXenstoreValue(host.backendStore, status, "the new rate") { $0 == "25000 bytes every 10000 µs" }
            try await burst(front.queues[0], frame)
            #expect(device.statistics[.txCreditWaits] > 0, "2.5 MB/s holds a 400 KB burst back")
            #expect(device.rateSetting.current == NetRate(bytes: 25000, microseconds: 10000))

            try await host.backendStore.write(device.backendPath + "/rate", "fast")
            let refused = try await awaitXenstoreValue(host.backendStore, status, "the refusal") { $0?.hasPrefix("refused") == true } ?? ""
            #expect(refused.contains("/rate") && refused.contains("fast"), "\(refused)")
            #expect(device.rateSetting.current == NetRate(bytes: 25000, microseconds: 10000), "a refused value changes nothing")

            try await host.backendStore.write(device.backendPath + "/rate", "")
            _ = try await awaitXenstoreValue(host.backendStore, status, "no rate") { $0 == "unlimited" }
            let waits = device.statistics[.txCreditWaits]
            try await burst(front.queues[0], frame)
            #expect(device.statistics[.txCreditWaits] == waits, "back to no rate: nothing waits")
        }
    }
}

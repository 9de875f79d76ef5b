import ArgumentParser
import CXenShims
import Logging
import XenNetBackend
import XenNetFrontend
import XenNetProtocol
import XenNetTestbed
import XenPlatform
import XenRingBenchmark
import XenSystem
#if canImport(Glibc)
import Glibc
import XenNetDevice
#endif

struct NetBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "net",
        abstract: "Network backend vs a raw TAP on the same bridge: frames through our frontend → rings → netback → TAP → bridge → veth, against the same frames written to (or read from) a plain TAP.",
        discussion: """
        A private network is made for the run (a namespace with a bridge, a veth pair to a peer \
        namespace). tx: the guest sends and the peer's veth counts what arrives; the baseline \
        writes the same frames into a TAP on the bridge. rx: a TAP on the bridge writes frames \
        to the guest, which takes them; the baseline reads them from a second TAP. Rounds \
        alternate baseline and ours; medians are reported; the last line is JSON. Needs root.
        """)

    enum Direction: String, ExpressibleByArgument, CaseIterable { case tx, rx }

    @Option(help: "tx (guest to host) or rx (host to guest).")
    var direction: Direction = .tx

    @Option(help: "Frame: 64, 1500 (bytes on the wire, without FCS) or gso (64 KiB TCP, segmented by the host).")
    var frame: String = "1500"

    @Option(help: "Seconds per run.")
    var seconds: Int = 5

    @Option(help: "Rounds (baseline then ours each time); the median is reported.")
    var rounds: Int = 3

    var frameBytes: Int? { frame == "gso" ? 65_000 : Int(frame).flatMap { [64, 1500].contains($0) ? $0 : nil } }

    func validate() throws {
        guard frameBytes != nil else { throw ValidationError("--frame must be 64, 1500 or gso, got \(frame)") }
        guard seconds > 0, rounds > 0 else { throw ValidationError("--seconds and --rounds must be positive") }
        guard getuid() == 0 else { throw ValidationError("the network benchmark makes namespaces, bridges and TAPs: run it as root") }
    }

    func run() async throws {
        var logger = Logger(label: "xenback.bench.net")
        logger.logLevel = .warning
        let gso = frame == "gso"
        let lab = try NetworkLab()
        defer { lab.destroy() }
        let host = try await SimNetHost(logger: logger)
        let pinned = direction == .rx && CXenShims_available_cpus() >= 2
        NetBackendInstrumentation.setWorkerThreadStartHook {
            if AllocationCounter.isActive { AllocationCounter.measureThisThread() }
            if pinned { pinReceiver() }
        }
        defer { NetBackendInstrumentation.setWorkerThreadStartHook(nil) }
        let nic = try await host.attachNIC(mac: benchGuestMAC, bridge: lab.bridge)
        let (device, task) = host.startBackend(nic, configuration: NetBackendConfiguration(maximumQueues: 1, namespace: lab.namespace))
        let front = try await host.connect(nic)
        let queue = front.queues[0]
        let peerMAC = try readPeerMAC(lab)
        print("net benchmark: \(direction) frame \(frame), \(seconds) s x \(rounds) round(s); backend queue worker, frontend and the baseline each on their own thread")
        print("round  raw pps      raw Gb/s   ours pps     ours Gb/s  ratio")
        var raw: [(pps: Double, gbps: Double)] = []
        var ours: [(pps: Double, gbps: Double)] = []
        var allocations: Int?
        var countedPackets = 1
        let nanos = seconds * 1_000_000_000
        if direction == .tx {
            let bytes = benchFrame(lab, to: peerMAC, size: frameBytes!, gso: gso)
            let injector = try lab.injector(name: "xraw0")
            var header = VirtioNetHeader()
            if gso { header = gsoHeader() }
            for round in 1...rounds {
                let before = try peerCounters(lab)
                let deadline = monotonicNanoseconds() + nanos
                let written = injector.blast(bytes, header: header, until: deadline)
                _ = written
                let after = try peerCounters(lab)
                raw.append(rate(before, after))
                let counted = round == rounds
                let beforeOurs = try peerCounters(lab)
                let sent = device.statistics[.txPackets]
                let outcome = OneResult<Int>()
                let group = ThreadGroup()
                if counted { AllocationCounter.start() }
                group.spawn {
                    outcome.value = Result {
                        try queue.blast(bytes, gso: gso ? (size: 1448, type: NetGSOType.tcpv4) : nil, checksumBlank: gso,
                                        until: monotonicNanoseconds() + nanos)
                    }
                }
                group.joinAll()
                if counted {
                    allocations = AllocationCounter.stop()
                    countedPackets = Int(device.statistics[.txPackets] - sent)
                }
                _ = try outcome.value!.get()
                let afterOurs = try peerCounters(lab)
                ours.append(rate(beforeOurs, afterOurs))
                report(round, raw.last!, ours.last!)
            }
        } else {
            let sinkMAC: [UInt8] = [0x02, 0x5E, 0x11, 0, 0, 1]
            let generator = try lab.injector(name: "xgen0")
            let sinkTap = try lab.injector(name: "xsink0")
            // sinkMAC is the address of a host behind the sink TAP, not the
            // TAP's own (frames to a port's own address go to the bridge itself).
            // Each receiver announces its MAC, so the bridge sends to it alone.
            _ = sinkTap.inject(Frames.arpRequest(senderMAC: sinkMAC, senderIP: [10, 77, 0, 9], targetIP: lab.peerIP))
            _ = try await onOwnThread { try queue.send(Frames.arpRequest(senderMAC: benchGuestMAC, senderIP: lab.guestIP, targetIP: lab.peerIP)) }
            var header = VirtioNetHeader()
            if gso { header = gsoHeader() }
            let toSink = benchFrame(lab, to: sinkMAC, size: frameBytes!, gso: gso)
            let toGuest = benchFrame(lab, to: benchGuestMAC, size: frameBytes!, gso: gso)
            for round in 1...rounds {
                let deadline = monotonicNanoseconds() + nanos
                let sunk = OneResult<(frames: Int, bytes: Int)>()
                let group = ThreadGroup()
                group.spawn {
                    pinReceiver()
                    sunk.value = .success(sinkTap.sink(until: deadline + 200_000_000))
                }
                group.spawn {
                    pinGenerator()
                    _ = generator.blast(toSink, header: header, until: deadline)
                }
                group.joinAll()
                let s = try sunk.value!.get()
                raw.append((Double(s.frames) / Double(seconds), Double(s.bytes) * 8 / Double(seconds) / 1e9))

                let counted = round == rounds
                let received = device.statistics[.rxPackets]
                let taken = OneResult<(frames: Int, bytes: Int)>()
                let ourDeadline = monotonicNanoseconds() + nanos
                if counted { AllocationCounter.start() }
                group.spawn {
                    pinReceiver()
                    taken.value = Result { try queue.sink(until: ourDeadline + 200_000_000) }
                }
                group.spawn {
                    pinGenerator()
                    _ = generator.blast(toGuest, header: header, until: ourDeadline)
                }
                group.joinAll()
                if counted {
                    allocations = AllocationCounter.stop()
                    countedPackets = Int(device.statistics[.rxPackets] - received)
                }
                let t = try taken.value!.get()
                ours.append((Double(t.frames) / Double(seconds), Double(t.bytes) * 8 / Double(seconds) / 1e9))
                report(round, raw.last!, ours.last!)
            }
        }
        let backend = device.statistics
        print("backend: \(backend)")
        // Counted, not timed: the queue thread's system calls and events per packet.
        let packets = Double(max(1, backend[.txPackets] + backend[.rxPackets]))
        let syscallsPerPacket = Double(backend[.syscalls]) / packets
        let notificationsPerPacket = Double(backend[.notifications]) / packets
        expect(device.statistics[.txErrors] == 0 && device.statistics[.rxErrors] == 0, "errors: \(device.statistics)")
        _ = try? await front.close()
        try? await nic.setOffline(xenstore: host.backendStore)
        _ = try? await task.value
        await host.shutdown()

        let rawPPS = median(raw.map(\.pps)), ourPPS = median(ours.map(\.pps))
        let rawGbps = median(raw.map(\.gbps)), ourGbps = median(ours.map(\.gbps))
        let ratio = median(zip(ours, raw).map { gso ? $0.gbps / $1.gbps : $0.pps / $1.pps })
        let allocs = allocations.map { fmt(Double($0) / Double(max(countedPackets, 1)), 6) } ?? "null"
        print("median: raw \(fmt(rawPPS, 0)) pps \(fmt(rawGbps, 3)) Gb/s; ours \(fmt(ourPPS, 0)) pps \(fmt(ourGbps, 3)) Gb/s; ratio \(fmt(ratio, 3)); allocations/packet \(allocs); backend system calls/packet \(fmt(syscallsPerPacket, 3)), notifications/packet \(fmt(notificationsPerPacket, 3))")
        let frameJSON = gso ? "\"gso\"" : frame
        print("{\"bench\":\"net\",\"direction\":\"\(direction)\",\"frame\":\(frameJSON),\"seconds\":\(seconds),\"rounds\":\(rounds),\"backend_pps\":\(fmt(ourPPS, 0)),\"raw_pps\":\(fmt(rawPPS, 0)),\"ratio\":\(fmt(ratio, 3)),\"backend_gbps\":\(fmt(ourGbps, 3)),\"raw_gbps\":\(fmt(rawGbps, 3)),\"allocs_per_packet\":\(allocs),\"syscalls_per_packet\":\(fmt(syscallsPerPacket, 3)),\"notifications_per_packet\":\(fmt(notificationsPerPacket, 3))}")
    }

    private func report(_ round: Int, _ raw: (pps: Double, gbps: Double), _ ours: (pps: Double, gbps: Double)) {
        let ratio = frame == "gso" ? ours.gbps / raw.gbps : ours.pps / raw.pps
        print("\(round)".padding(7) + fmt(raw.pps, 0).padding(13) + fmt(raw.gbps, 3).padding(11)
              + fmt(ours.pps, 0).padding(13) + fmt(ours.gbps, 3).padding(11) + fmt(ratio, 3))
    }

    private func rate(_ a: (packets: Int, bytes: Int), _ b: (packets: Int, bytes: Int)) -> (pps: Double, gbps: Double) {
        (Double(b.packets - a.packets) / Double(seconds), Double(b.bytes - a.bytes) * 8 / Double(seconds) / 1e9)
    }

    private func gsoHeader() -> VirtioNetHeader {
        var h = VirtioNetHeader()
        h.flags = VirtioNetHeader.needsChecksum
        h.gsoType = VirtioNetHeader.gsoTCPv4
        h.gsoSize = 1448
        h.headerLength = 54
        h.checksumStart = 34
        h.checksumOffset = 16
        return h
    }

    /// UDP (or, for gso, TCP with a partial checksum) to an address the peer
    /// does not own, so its stack drops the frames at once.
    private func benchFrame(_ lab: NetworkLab, to mac: [UInt8], size: Int, gso: Bool) -> [UInt8] {
        let destination: [UInt8] = [10, 77, 0, 99]
        // From the guest when it sends; from another host when it receives
        // (a bridge drops frames back to the port their source was learned on).
        let source = direction == .tx ? benchGuestMAC : [0x02, 0x5E, 0x11, 0, 0, 2]
        if gso {
            return Frames.tcpPartial(sourceMAC: source, destinationMAC: mac, sourceIP: lab.guestIP, destinationIP: destination,
                                     sourcePort: 5001, destinationPort: 5002, sequence: 1, payload: [UInt8](repeating: 0x5A, count: size - 54))
        }
        return Frames.udp(sourceMAC: source, destinationMAC: mac, sourceIP: lab.guestIP, destinationIP: destination,
                          sourcePort: 5001, destinationPort: 9, payload: [UInt8](repeating: 0x5A, count: size - 42))
    }

    private func readPeerMAC(_ lab: NetworkLab) throws -> [UInt8] {
        let (_, out) = lab.inPeer("cat /sys/class/net/\(lab.peerVeth)/address")
        let mac = out.filter { !$0.isWhitespace }.split(separator: ":").compactMap { UInt8($0, radix: 16) }
        guard mac.count == 6 else { throw ValidationError("cannot read the peer's MAC address: \(out)") }
        return mac
    }

    /// The peer veth's received packets and bytes.
    private func peerCounters(_ lab: NetworkLab) throws -> (packets: Int, bytes: Int) {
        let (_, out) = lab.inPeer("cat /sys/class/net/\(lab.peerVeth)/statistics/rx_packets /sys/class/net/\(lab.peerVeth)/statistics/rx_bytes")
        let numbers = out.split(whereSeparator: \.isWhitespace).compactMap { Int($0) }
        guard numbers.count == 2 else { throw ValidationError("cannot read the peer's counters: \(out)") }
        return (numbers[0], numbers[1])
    }

    private func expect(_ ok: Bool, _ message: String) {
        if !ok { print("warning: \(message)") }
    }
}

/// rx: the generator has CPU 0 to itself; the receiving side (the raw
/// sink, or our backend and frontend together) shares CPU 1, so both sides
/// of the comparison get one core to receive with.
private func pinGenerator() { if CXenShims_available_cpus() >= 2 { _ = CXenShims_pin_current_thread(0) } }
private func pinReceiver() { if CXenShims_available_cpus() >= 2 { _ = CXenShims_pin_current_thread(1) } }

private let benchGuestMAC: [UInt8] = [0x00, 0x16, 0x3E, 0x62, 0x65, 0x6E]

extension TapDevice {
    /// Writes `frame` (with `header`) as fast as it can until `deadline`;
    /// returns frames written. The raw-TAP baseline.
    func blast(_ frame: [UInt8], header: VirtioNetHeader, until deadline: Int) -> Int {
        var bytes = [UInt8](repeating: 0, count: VirtioNetHeader.size) + frame
        // SAFETY: views of the local array (header size + frame bytes), used
        // only within each closure.
        bytes.withUnsafeMutableBytes { header.write(to: $0.baseAddress!) }
        let fd = queueDescriptors[0]
        var written = 0
        bytes.withUnsafeBytes { b in
            var n = 0
            while true {
                // The clock every 64 frames: cheap, and close enough to the deadline.
                if n & 63 == 0 && monotonicNanoseconds() >= deadline { break }
                if case .success(b.count) = Syscall.write(fd, b.baseAddress!, count: b.count) { written += 1 }
                n += 1
            }
        }
        return written
    }

    /// Reads frames until `deadline`; returns (frames, bytes of frames). The raw-TAP sink.
    func sink(until deadline: Int) -> (frames: Int, bytes: Int) {
        let fd = queueDescriptors[0]
        var buffer = [UInt8](repeating: 0, count: 70_000)
        var frames = 0, bytes = 0
        while monotonicNanoseconds() < deadline {
            // SAFETY: a view of the local buffer for the read only.
            let n = buffer.withUnsafeMutableBytes { (try? Syscall.read(fd, $0.baseAddress!, count: $0.count).get()) ?? -1 }
            if n > VirtioNetHeader.size {
                frames += 1
                bytes += n - VirtioNetHeader.size
                continue
            }
            _ = Syscall.poll(fd, timeoutMilliseconds: 10, retryingInterrupts: false)
        }
        return (frames, bytes)
    }
}

#if canImport(Glibc)
import Glibc
#endif
import CXenNet
import Testing
import XenNetDevice
import XenNetTestbed
import XenProtocolTesting

/// `ip -o link show NAME` in the lab's host namespace (nil if there is no such link).
func link(_ lab: NetworkLab, _ name: String) -> String? {
    let (status, output) = lab.inHost("ip -o link show \(name)")
    return status == 0 ? output : nil
}

@Suite struct TapNameTests {
    /// Names the kernel would refuse or truncate are refused before any
    /// system call.
    @Test(arguments: ["", "sixteen-chars-xx", "a/b", "has space"])
    func badNamesAreRefused(name: String) {
        do {
            _ = try TapDevice(name: name)
            Issue.record("\(name) was accepted")
        } catch {
            #expect(error.errno == EINVAL && error.operation.contains("interface name"), "\(error)")
        }
    }
}

@Suite(.serialized, .enabled(if: networkAvailable, "needs root, /dev/net/tun and iproute2"))
struct TapDeviceTests {
    /// A TAP lives while its descriptors are open: one queue unless made
    /// multi-queue, queues opened and closed to a count, gone with the object.
    @Test func queuesAndLifetime() throws {
        let lab = try NetworkLab()
        defer { lab.destroy() }
        do {
            let single = try TapDevice(name: "xtap0", namespace: lab.namespace)
            #expect(single.exists && link(lab, "xtap0") != nil)
            #expect(single.queueDescriptors.count == 1 && !single.multiQueue)
            #expect(throws: NetworkSetupError.self) { try single.setQueueCount(2) }
            let multi = try TapDevice(name: "xtap1", queues: 3, namespace: lab.namespace)
            #expect(multi.multiQueue && multi.queueDescriptors.count == 3 && Set(multi.queueDescriptors).count == 3)
            try multi.setQueueCount(1)
            #expect(multi.queueDescriptors.count == 1 && multi.exists)
            try multi.setQueueCount(2)
            #expect(multi.queueDescriptors.count == 2)
            #expect(!TapDevice.nameExistsInCurrentNamespace("xtap1"), "made in the lab's namespace, not ours")
        }
        #expect(link(lab, "xtap0") == nil && link(lab, "xtap1") == nil, "non-persistent: gone with the last descriptor")
    }

    /// MTU, MAC, up and the bridge port, as ip(8) sees them; the carrier
    /// follows setCarrier; offloads follow what the frontend can take
    /// (segmentation only with checksum offload).
    @Test func configurationCarrierAndOffloads() throws {
        let lab = try NetworkLab()
        defer { lab.destroy() }
        let tap = try TapDevice(name: "xtap2", namespace: lab.namespace)
        try tap.configure(mtu: 1400, mac: [0x02, 0, 0, 0xAA, 0xBB, 0xCC], up: true, bridge: lab.bridge)
        let shown = link(lab, "xtap2") ?? ""
        #expect(shown.contains("mtu 1400") && shown.contains("master \(lab.bridge)") && shown.contains("link/ether 02:00:00:aa:bb:cc"), "\(shown)")
        #expect(shown.contains(",UP") || shown.contains("<UP"), "\(shown)")
        try tap.configure(mtu: nil, mac: nil, up: true, bridge: lab.bridge)  // a reconnect: already a port, fine
        tap.setCarrier(false)
        #expect(link(lab, "xtap2")?.contains("NO-CARRIER") == true)
        tap.setCarrier(true)
        #expect(link(lab, "xtap2")?.contains("NO-CARRIER") == false)
        #expect(throws: NetworkSetupError.self) { try tap.configure(mtu: nil, mac: nil, up: true, bridge: "nosuchbr0") }

        func features() -> String { lab.inHost("ethtool -k xtap2").1 }
        try tap.setOffloads(checksum: true, tcpv4: true, tcpv6: false)
        #expect(features().contains("tx-tcp-segmentation: on") && features().contains("tx-tcp6-segmentation: off"), "\(features())")
        try tap.setOffloads(checksum: false, tcpv4: true, tcpv6: true)
        #expect(features().contains("tx-tcp-segmentation: off") && features().contains("tx-tcp6-segmentation: off"), "\(features())")
    }

    /// Frames go both ways with a virtio-net header in front: an ARP
    /// request written to the TAP crosses the bridge to the lab's peer,
    /// whose kernel answers; the answer is read from the TAP.
    @Test func framesBothWaysWithAVirtioHeader() throws {
        let lab = try NetworkLab()
        defer { lab.destroy() }
        let tap = try TapDevice(name: "xtap3", namespace: lab.namespace)
        let mac: [UInt8] = [0x02, 0, 0, 0x12, 0x34, 0x56], ip: [UInt8] = [10, 77, 0, 9]
        try tap.configure(mtu: nil, mac: nil, up: true, bridge: lab.bridge)
        let request = [UInt8](repeating: 0xFF, count: 6) + mac + [0x08, 0x06] + [0, 1, 8, 0, 6, 4, 0, 1] + mac + ip
            + [UInt8](repeating: 0, count: 6) + lab.peerIP
        var bytes = [UInt8](repeating: 0, count: VirtioNetHeader.size) + request
        bytes.withUnsafeMutableBytes { VirtioNetHeader().write(to: $0.baseAddress!) }
        let fd = tap.queueDescriptors[0]
        #expect(write(fd, bytes, bytes.count) == bytes.count)
        var reply: [UInt8]?
        var buffer = [UInt8](repeating: 0, count: 2048)
        let deadline = ContinuousClock.now + .seconds(10)
        while reply == nil && ContinuousClock.now < deadline {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 1000) == 1 else { continue }
            let n = read(fd, &buffer, buffer.count)
            guard n >= VirtioNetHeader.size + 42 else { continue }
            let frame = Array(buffer[VirtioNetHeader.size..<n])
            // Other frames (IPv6 router solicitations, say) may come first.
            if frame[12] == 0x08 && frame[13] == 0x06 && frame[21] == 2 { reply = frame }
        }
        let arp = try #require(reply, "no ARP reply from the peer")
        #expect(Array(arp[0..<6]) == mac, "sent to us")
        #expect(Array(arp[28..<32]) == lab.peerIP && Array(arp[32..<38]) == mac && Array(arp[38..<42]) == ip)
        #expect(buffer.withUnsafeBytes { VirtioNetHeader(from: $0.baseAddress!) }.gsoType == VirtioNetHeader.gsoNone)
    }

    /// Work in a named namespace runs on a thread inside it; a namespace
    /// that does not exist is an error naming it.
    @Test func namespaces() throws {
        let lab = try NetworkLab()
        defer { lab.destroy() }
        let bridge = lab.bridge
        #expect(try lab.namespace.run { Int(if_nametoindex(bridge)) } > 0)
        #expect(try NetworkNamespace.current.run { Int(if_nametoindex("lo")) } > 0)
        let missing = NetworkNamespace.named("xenback-none-\(getpid())")
        #expect(missing.path == "/var/run/netns/xenback-none-\(getpid())")
        do {
            _ = try missing.run { 1 }
            Issue.record("entered a namespace that does not exist")
        } catch {
            #expect(error.errno == ENOENT && error.operation.contains(missing.path!), "\(error)")
        }
    }
}

extension TapDevice {
    /// Whether `name` is a link in this process's own namespace.
    static func nameExistsInCurrentNamespace(_ name: String) -> Bool { if_nametoindex(name) != 0 }
}

@Suite struct PacketCaptureTests {
    /// A pcap file (Ethernet link type) with every frame written whole, as
    /// tcpdump reads it back; writes after close are dropped.
    @Test func framesAreWrittenAsPcap() throws {
        let path = "/tmp/xenback-capture-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).pcap"
        defer { unlink(path) }
        let capture = try PacketCapture(path: path)
        let frames = [ethernet(0x0800) + ipv4(17, udp(body)), ethernet(0x86DD) + ipv6(6, tcp(pattern(1400, seed: 5)))]
        for frame in frames { frame.withUnsafeBytes { capture.write($0.baseAddress!, length: $0.count) } }
        capture.close()
        ethernet(0x0800).withUnsafeBytes { capture.write($0.baseAddress!, length: $0.count) }
        capture.close()

        let fd = open(path, O_RDONLY)
        try #require(fd >= 0)
        var file = [UInt8](repeating: 0, count: 8192)
        let n = read(fd, &file, file.count)
        close(fd)
        func le32(_ at: Int) -> Int { Int(file[at]) | Int(file[at + 1]) << 8 | Int(file[at + 2]) << 16 | Int(file[at + 3]) << 24 }
        #expect(le32(0) == 0xA1B2_C3D4 && le32(16) == 65535 && le32(20) == 1, "pcap, snapshot 65535, LINKTYPE_ETHERNET")
        var at = 24
        for frame in frames {
            #expect(le32(at + 8) == frame.count && le32(at + 12) == frame.count, "captured whole")
            #expect(Array(file[(at + 16)..<(at + 16 + frame.count)]) == frame)
            at += 16 + frame.count
        }
        #expect(n == at, "nothing after close")
        let (status, output) = runShell("tcpdump -r \(path) -nn 2>/dev/null")
        #expect(status == 0 && output.split(separator: "\n").count == 2, "\(output)")
    }

    @Test func aPathThatCannotBeOpened() {
        do {
            _ = try PacketCapture(path: "/nonexistent/xenback.pcap")
            Issue.record("opened")
        } catch {
            #expect(error.operation.contains("/nonexistent/xenback.pcap"), "\(error)")
        }
    }
}

import Testing
import XenNetBackend
import XenNetFrontend
import XenNetProtocol
import XenNetTestbed
import XenProtocolTesting
import XenNetDevice
import XenNetChecksum

func randomBytes(_ n: Int, seed: UInt64) -> [UInt8] {
    var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    return (0..<n).map { _ in
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return UInt8(truncatingIfNeeded: state)
    }
}

func peerMAC(_ lab: NetworkLab) -> [UInt8] {
    let (_, out) = lab.inPeer("cat /sys/class/net/\(lab.peerVeth)/address")
    return out.filter { !$0.isWhitespace }.split(separator: ":").map { UInt8($0, radix: 16)! }
}

/// TCP segments of `frames` from source port `port`: (sequence, payload), each checked.
func tcpSegments(_ frames: [[UInt8]], port: Int) -> [(UInt32, [UInt8])] {
    var out: [(UInt32, [UInt8])] = []
    for f in frames {
        let ok = f.withUnsafeBytes { raw -> (UInt32, [UInt8])? in
            guard let layout = PacketLayout(frame: raw), layout.transportProtocol == 6 else { return nil }
            let t = layout.transportOffset
            guard Int(f[t]) << 8 | Int(f[t + 1]) == port else { return nil }
            #expect(layout.transportChecksumIsValid(frame: raw), "segment with a valid TCP checksum")
            if !layout.isIPv6 {
                let ihl = Int(f[14] & 0xF) * 4
                let header = UnsafeRawBufferPointer(rebasing: raw[14..<(14 + ihl)])
                #expect(InternetChecksum.fold(InternetChecksum.add(header, to: 0)) == 0xFFFF, "valid IPv4 header checksum")
            }
            #expect(f.count <= 14 + 1500, "segmented to the MTU")
            let seq = UInt32(f[t + 4]) << 24 | UInt32(f[t + 5]) << 16 | UInt32(f[t + 6]) << 8 | UInt32(f[t + 7])
            return (seq, Array(f[layout.headerLength..<(t + layout.transportLength)]))
        }
        if let ok { out.append(ok) }
    }
    return out.sorted { $0.0 < $1.0 }
}

@Suite(.serialized) struct NetOffloadTests {
    /// A TCP GSO packet from the guest (partial checksum, GSO extra) leaves
    /// the bridge as MTU-sized segments with valid checksums carrying the
    /// same bytes.
    @Test(arguments: [false, true])
    func guestGSOArrivesSegmented(ipv6: Bool) async throws {
        try await withVIF { _, lab, device, front in
            let capture = try PeerCapture(lab)
            let payload = randomBytes(7000, seed: ipv6 ? 6 : 4)
            let source: [UInt8] = ipv6 ? [0xFD] + [UInt8](repeating: 0, count: 14) + [2] : lab.guestIP
            let destination: [UInt8] = ipv6 ? [0xFD] + [UInt8](repeating: 0, count: 14) + [1] : lab.peerIP
            let frame = Frames.tcpPartial(sourceMAC: guestMAC, destinationMAC: peerMAC(lab), sourceIP: source, destinationIP: destination,
                                          sourcePort: 4242, destinationPort: 80, sequence: 1000, payload: payload)
            let queue = front.queues[0]
            try await offThePool {
                try queue.send(frame, checksumBlank: true, gso: (size: 1400, type: ipv6 ? NetGSOType.tcpv6 : NetGSOType.tcpv4))
                _ = try queue.awaitTxResponses(3)
            }
            #expect(queue.txResponses.allSatisfy { $0.status == NetStatus.okay || $0.status == NetStatus.null })
            let frames = capture.frames { got in tcpSegments(got, port: 4242).reduce(0) { $0 + $1.1.count } >= payload.count }
            let segments = tcpSegments(frames, port: 4242)
            #expect(segments.count == 5, "7000 bytes in 1400-byte segments")
            #expect(segments.flatMap { $0.1 } == payload)
            #expect(device.statistics[.txPackets] == 1 && device.statistics[.txErrors] == 0)
        }
    }

    /// A UDP datagram whose checksum the guest left to the backend arrives
    /// with a correct one; the bytes around it are the guest's.
    @Test func guestChecksumIsCompleted() async throws {
        try await withVIF { _, lab, _, front in
            let capture = try PeerCapture(lab)
            let payload = randomBytes(999, seed: 9)
            let frame = Frames.udp(sourceMAC: guestMAC, destinationMAC: peerMAC(lab), sourceIP: lab.guestIP, destinationIP: lab.peerIP,
                                   sourcePort: 5353, destinationPort: 9999, payload: payload, partialChecksum: true)
            let queue = front.queues[0]
            try await offThePool {
                try queue.send(frame, checksumBlank: true)
                _ = try queue.awaitTxResponses(1)
            }
            let got = capture.frames { $0.contains { $0.count == frame.count && $0[36] == 0x27 && $0[37] == 0x0F } }
                .filter { $0.count == frame.count && $0[36] == 0x27 && $0[37] == 0x0F }
            let arrived = try #require(got.first)
            arrived.withUnsafeBytes { raw in
                let layout = PacketLayout(frame: raw)!
                #expect(layout.transportChecksumIsValid(frame: raw))
            }
            #expect(Array(arrived[42...]) == payload)
        }
    }

    /// The host hands the VIF a 9000-byte TCP GSO frame with a partial
    /// checksum. A frontend with GSO gets it whole (a GSO extra, several
    /// slots, csum_blank); one without checksum offload gets MTU segments
    /// the kernel checksummed.
    @Test(arguments: [true, false])
    func hostGSOReachesTheGuest(offloads: Bool) async throws {
        let options = NetFrontendOptions(gsoTCPv4: offloads, gsoTCPv6: offloads, checksumOffload: offloads)
        try await withVIF(options: options) { _, lab, device, front in
            let injector = try lab.injector()
            let payload = randomBytes(9000, seed: 12)
            let frame = Frames.tcpPartial(sourceMAC: [0x02, 0, 0, 0, 0, 9], destinationMAC: guestMAC, sourceIP: lab.peerIP,
                                          destinationIP: lab.guestIP, sourcePort: 8080, destinationPort: 4000, sequence: 77, payload: payload)
            var header = VirtioNetHeader()
            header.flags = VirtioNetHeader.needsChecksum
            header.gsoType = VirtioNetHeader.gsoTCPv4
            header.gsoSize = 1448
            header.headerLength = 54
            header.checksumStart = 34
            header.checksumOffset = 16
            #expect(injector.inject(frame, header: header))
            let queue = front.queues[0]
            let received = try await offThePool { () throws -> [ReceivedFrame] in
                var frames: [ReceivedFrame] = []
                var bytes = 0
                while bytes < payload.count, let f = try queue.receive(timeoutMilliseconds: 5000) {
                    guard f.bytes.count > 54, f.bytes[34] == 0x1F, f.bytes[35] == 0x90 else { continue }
                    frames.append(f)
                    bytes += f.bytes.count - 54
                }
                return frames
            }
            if offloads {
                let f = try #require(received.first)
                #expect(received.count == 1)
                #expect(f.bytes == frame, "the frame as the host sent it, partial checksum included")
                #expect(f.gso?.gsoSize == 1448 && f.gso?.gsoType == NetGSOType.tcpv4)
                #expect(f.flags.contains(.checksumBlank) && f.flags.contains(.dataValidated) && f.flags.contains(.extraInfo))
                #expect(f.slots == 4, "three pages of data and the GSO extra")
            } else {
                let segments = tcpSegments(received.map(\.bytes), port: 8080)
                #expect(segments.count == 7)
                #expect(segments.flatMap { $0.1 } == payload)
                #expect(received.allSatisfy { $0.gso == nil && !$0.flags.contains(.checksumBlank) })
            }
            #expect(device.statistics[.rxErrors] == 0)
        }
    }
}

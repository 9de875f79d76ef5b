#if canImport(Glibc)
import Glibc
#endif
import Testing
import XenNetChecksum
import XenNetDevice
import XenProtocolTesting

// Frames built byte by byte from the RFCs, independently of the code under test.

func be16(_ v: Int) -> [UInt8] { [UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }

let macs: [UInt8] = [0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]
let ipv4Source: [UInt8] = [10, 1, 2, 3], ipv4Destination: [UInt8] = [192, 168, 7, 9]
let ipv6Source: [UInt8] = [0xFD, 0] + [UInt8](repeating: 0, count: 13) + [1]
let ipv6Destination: [UInt8] = [0xFD, 0] + [UInt8](repeating: 0, count: 13) + [2]

func ethernet(_ type: Int, tags: [Int] = []) -> [UInt8] {
    macs + tags.flatMap { be16($0) + be16(0x0005) } + be16(type)
}

/// `options` bytes of IP options (a multiple of 4); `fragment` is the flags
/// and offset word.
func ipv4(_ proto: UInt8, _ payload: [UInt8], options: Int = 0, fragment: Int = 0x4000) -> [UInt8] {
    let headerLength = 20 + options
    return [UInt8(0x40 | headerLength / 4), 0] + be16(headerLength + payload.count) + be16(0x1234) + be16(fragment)
        + [64, proto, 0, 0] + ipv4Source + ipv4Destination + [UInt8](repeating: 1, count: options) + payload
}

/// `extensions`: (next header, bytes) of each extension header in order.
func ipv6(_ proto: UInt8, _ payload: [UInt8], extensions: [(UInt8, Int)] = []) -> [UInt8] {
    var chain: [UInt8] = []
    let kinds = extensions.map(\.0) + [proto]
    for (i, (_, length)) in extensions.enumerated() {
        chain += [kinds[i + 1], UInt8(length / 8 - 1)] + [UInt8](repeating: 0, count: length - 2)
    }
    let first = extensions.first?.0 ?? proto
    return [0x60, 0, 0, 0] + be16(chain.count + payload.count) + [first, 64] + ipv6Source + ipv6Destination + chain + payload
}

func tcp(_ payload: [UInt8], options: Int = 0) -> [UInt8] {
    be16(40000) + be16(80) + [0, 0, 0, 1, 0, 0, 0, 0, UInt8((20 + options) / 4) << 4, 0x18] + be16(65535) + [0, 0, 0, 0]
        + [UInt8](repeating: 1, count: options) + payload
}

func udp(_ payload: [UInt8]) -> [UInt8] { be16(5353) + be16(53) + be16(8 + payload.count) + [0, 0] + payload }

func layout(_ frame: [UInt8]) -> PacketLayout? { frame.withUnsafeBytes { PacketLayout(frame: $0) } }

let body = (0..<100).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }

@Suite struct PacketLayoutTests {
    /// IPv4 with IP options, TCP with TCP options, and Ethernet padding
    /// after the packet, which is not transport data.
    @Test func ipv4TCPWithOptionsAndPadding() throws {
        let frame = ethernet(0x0800) + ipv4(6, tcp(body, options: 12), options: 4) + [0, 0, 0, 0, 0, 0]
        let l = try #require(layout(frame))
        #expect(l.networkOffset == 14 && !l.isIPv6 && l.transportProtocol == 6)
        #expect(l.transportOffset == 14 + 24 && l.transportHeaderLength == 32 && l.transportLength == 32 + 100)
        #expect(l.checksumOffset == 16 && l.headerLength == 14 + 24 + 32)
    }

    /// One VLAN tag (802.1Q or 802.1ad) moves the IP header by four bytes.
    @Test(arguments: [0x8100, 0x88A8])
    func oneVLANTag(tpid: Int) throws {
        let l = try #require(layout(ethernet(0x0800, tags: [tpid]) + ipv4(17, udp(body))))
        #expect(l.networkOffset == 18 && l.transportOffset == 38 && l.transportProtocol == 17)
        #expect(l.transportHeaderLength == 8 && l.transportLength == 108 && l.checksumOffset == 6)
        #expect(layout(ethernet(0x0800, tags: [tpid, 0x8100]) + ipv4(17, udp(body))) == nil, "two tags: not parsed")
    }

    /// IPv6 extension headers (hop-by-hop, routing, destination options)
    /// are skipped, up to eight of them.
    @Test func ipv6ExtensionHeadersAreSkipped() throws {
        let l = try #require(layout(ethernet(0x86DD) + ipv6(17, udp(body), extensions: [(0, 8), (43, 24), (60, 16)])))
        #expect(l.isIPv6 && l.networkOffset == 14 && l.transportOffset == 14 + 40 + 48)
        #expect(l.transportProtocol == 17 && l.transportLength == 108)
        let plain = try #require(layout(ethernet(0x86DD) + ipv6(6, tcp(body))))
        #expect(plain.transportOffset == 54 && plain.transportHeaderLength == 20 && plain.transportLength == 120)
        #expect(layout(ethernet(0x86DD) + ipv6(17, udp(body), extensions: Array(repeating: (60, 8), count: 8))) != nil)
        #expect(layout(ethernet(0x86DD) + ipv6(17, udp(body), extensions: Array(repeating: (60, 8), count: 9))) == nil, "a chain of nine")
    }

    /// What offloads cannot use is not parsed: other protocols, fragments,
    /// and every length that does not fit the frame.
    @Test func whatIsNotParsed() {
        let good = ethernet(0x0800) + ipv4(6, tcp(body))
        #expect(layout(good) != nil)
        #expect(layout(ethernet(0x0806) + [UInt8](repeating: 0, count: 28)) == nil, "ARP")
        #expect(layout(ethernet(0x0800) + ipv4(1, [8, 0, 0, 0] + body)) == nil, "ICMP")
        #expect(layout(ethernet(0x0800) + ipv4(6, tcp(body), fragment: 0x2000)) == nil, "first fragment (more fragments)")
        #expect(layout(ethernet(0x0800) + ipv4(6, tcp(body), fragment: 0x0010)) == nil, "a later fragment")
        #expect(layout(Array(good.dropLast())) == nil, "IP total length past the frame")
        #expect(layout(Array(good[..<13])) == nil, "shorter than an Ethernet header")
        var badIHL = good; badIHL[14] = 0x44
        #expect(layout(badIHL) == nil, "IHL below 5 words")
        var wrongVersion = good; wrongVersion[14] = 0x65
        #expect(layout(wrongVersion) == nil, "version 6 in an IPv4 frame")
        var shortTCP = good; shortTCP[34 + 12] = 0x40
        #expect(layout(shortTCP) == nil, "TCP data offset below 5 words")
        var longTCP = ethernet(0x0800) + ipv4(6, tcp([1, 2, 3])); longTCP[34 + 12] = 0xF0
        #expect(layout(longTCP) == nil, "TCP header longer than the segment")
        let udpv6 = ethernet(0x86DD) + ipv6(17, udp(body), extensions: [(0, 8)])
        var runaway = udpv6; runaway[54 + 1] = 200
        #expect(layout(runaway) == nil, "an extension header running past the payload")
    }
}

@Suite struct PacketChecksumTests {
    /// The pseudo-header sum is RFC 768/793's (addresses, protocol, length)
    /// for IPv4 and RFC 8200's for IPv6; a partial checksum completed over
    /// the transport data verifies, and any flipped byte is caught.
    @Test(arguments: ["tcp4", "udp4", "tcp6", "udp6"])
    func partialChecksumsCompleteAndVerify(kind: String) throws {
        let v6 = kind.hasSuffix("6"), isTCP = kind.hasPrefix("tcp")
        let transport = isTCP ? tcp(body) : udp(body)
        var frame = v6 ? ethernet(0x86DD) + ipv6(isTCP ? 6 : 17, transport) : ethernet(0x0800) + ipv4(isTCP ? 6 : 17, transport)
        let l = try #require(layout(frame))
        let pseudo = v6
            ? ipv6Source + ipv6Destination + [0, 0] + be16(transport.count) + [0, 0, 0, isTCP ? 6 : 17]
            : ipv4Source + ipv4Destination + [0, isTCP ? 6 : 17] + be16(transport.count)
        #expect(frame.withUnsafeBytes { l.pseudoHeaderSum(frame: $0) } == onesComplementSum(pseudo))
        frame.withUnsafeMutableBytes { l.preparePartialChecksum(frame: $0) }
        let field = l.transportOffset + l.checksumOffset
        #expect(UInt16(frame[field]) << 8 | UInt16(frame[field + 1]) == onesComplementSum(pseudo), "the field holds the seed")
        #expect(!frame.withUnsafeBytes { l.transportChecksumIsValid(frame: $0) }, "a partial checksum is not a valid one")
        frame.withUnsafeMutableBytes {
            InternetChecksum.complete(frame: $0, start: l.transportOffset, offset: l.checksumOffset, end: l.transportOffset + l.transportLength)
        }
        #expect(onesComplementSum(pseudo + Array(frame[l.transportOffset...])) == 0xFFFF, "verifies by the RFC's rule")
        #expect(frame.withUnsafeBytes { l.transportChecksumIsValid(frame: $0) })
        for offset in [l.transportOffset + 1, frame.count - 1] {
            var damaged = frame
            damaged[offset] ^= 0x40
            #expect(!damaged.withUnsafeBytes { l.transportChecksumIsValid(frame: $0) }, "byte \(offset) flipped")
        }
    }

    /// A UDP checksum of 0 means "none" over IPv4 and is accepted; IPv6
    /// requires one (RFC 8200 8.1).
    @Test func udpWithoutAChecksum() throws {
        let v4 = ethernet(0x0800) + ipv4(17, udp(body)), v6 = ethernet(0x86DD) + ipv6(17, udp(body))
        let l4 = try #require(layout(v4)), l6 = try #require(layout(v6))
        #expect(v4.withUnsafeBytes { l4.transportChecksumIsValid(frame: $0) })
        #expect(!v6.withUnsafeBytes { l6.transportChecksumIsValid(frame: $0) })
    }
}

@Suite struct VirtioNetHeaderTests {
    /// Linux's struct virtio_net_hdr as gcc lays it out (compiled from the
    /// kernel's uapi header): size, field offsets and flag values; our
    /// encoding puts each field there, little-endian.
    @Test func matchesTheKernelsHeader() throws {
        let source = "/tmp/xenback-vnet-probe-\(getpid()).c", binary = "/tmp/xenback-vnet-probe-\(getpid())"
        defer { unlink(source); unlink(binary) }
        let program = """
            #include <stdio.h>
            #include <stddef.h>
            #include <linux/virtio_net.h>
            #define OFF(f) printf(#f " %zu\\n", offsetof(struct virtio_net_hdr, f))
            int main(void) {
                printf("size %zu\\n", sizeof(struct virtio_net_hdr));
                OFF(flags); OFF(gso_type); OFF(hdr_len); OFF(gso_size); OFF(csum_start); OFF(csum_offset);
                printf("needs_csum %d\\ndata_valid %d\\ngso_none %d\\ngso_tcpv4 %d\\ngso_udp %d\\ngso_tcpv6 %d\\ngso_ecn %d\\n",
                       VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
                       VIRTIO_NET_HDR_GSO_UDP, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_ECN);
                return 0;
            }
            """
        let fd = open(source, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        try #require(fd >= 0)
        _ = program.utf8CString.withUnsafeBytes { write(fd, $0.baseAddress!, $0.count - 1) }
        close(fd)
        let (status, output) = runShell("gcc -o \(binary) \(source) 2>&1 && \(binary)")
        try #require(status == 0, "compiling the probe (gcc, linux-libc-dev): \(output)")
        var facts: [String: Int] = [:]
        for line in output.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, let v = Int(parts[1]) { facts[String(parts[0])] = v }
        }
        try #require(facts.count == 14, "\(output)")
        #expect(facts["size"] == VirtioNetHeader.size)
        #expect(facts["needs_csum"] == Int(VirtioNetHeader.needsChecksum) && facts["data_valid"] == Int(VirtioNetHeader.dataValid))
        #expect(facts["gso_none"] == Int(VirtioNetHeader.gsoNone) && facts["gso_tcpv4"] == Int(VirtioNetHeader.gsoTCPv4))
        #expect(facts["gso_udp"] == Int(VirtioNetHeader.gsoUDP) && facts["gso_tcpv6"] == Int(VirtioNetHeader.gsoTCPv6))
        #expect(facts["gso_ecn"] == Int(VirtioNetHeader.gsoECN))

        var header = VirtioNetHeader()
        header.flags = 0xA1; header.gsoType = 0xB2
        header.headerLength = 0x0C03; header.gsoSize = 0x0D04; header.checksumStart = 0x0E05; header.checksumOffset = 0x0F06
        var bytes = [UInt8](repeating: 0xEE, count: VirtioNetHeader.size + 2)
        bytes.withUnsafeMutableBytes { header.write(to: $0.baseAddress! + 1) }
        let at = { (field: String) in 1 + facts[field, default: -100] }
        #expect(bytes[at("flags")] == 0xA1 && bytes[at("gso_type")] == 0xB2)
        for (field, value) in [("hdr_len", 0x0C03), ("gso_size", 0x0D04), ("csum_start", 0x0E05), ("csum_offset", 0x0F06)] {
            #expect(bytes[at(field)] == UInt8(value & 0xFF) && bytes[at(field) + 1] == UInt8(value >> 8), "\(field), little-endian")
        }
        #expect(bytes.first == 0xEE && bytes.last == 0xEE, "nothing written outside the header")
        #expect(bytes.withUnsafeBytes { VirtioNetHeader(from: $0.baseAddress! + 1) } == header, "and read back (unaligned)")
    }
}

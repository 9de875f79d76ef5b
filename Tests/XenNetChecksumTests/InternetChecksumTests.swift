import Testing
import XenNetChecksum
import XenProtocolTesting

func sum(_ bytes: [UInt8], to initial: UInt32 = 0) -> UInt32 {
    bytes.withUnsafeBytes { InternetChecksum.add($0, to: initial) }
}

@Suite struct InternetChecksumTests {
    /// RFC 1071 section 3's worked example: 00 01 f2 03 f4 f5 f6 f7 sums to
    /// 0x2ddf0, which folds to 0xddf2.
    @Test func rfc1071Example() {
        let bytes: [UInt8] = [0x00, 0x01, 0xF2, 0x03, 0xF4, 0xF5, 0xF6, 0xF7]
        #expect(sum(bytes) == 0x2DDF0)
        #expect(InternetChecksum.fold(sum(bytes)) == 0xDDF2)
    }

    /// A captured IPv4 header (the example on Wikipedia's "IPv4 header
    /// checksum" page): its checksum field holds 0xb861; with the field
    /// zeroed the complement of the sum is 0xb861, and with it in place the
    /// whole header sums to 0xffff.
    @Test func ipv4HeaderFromTheWire() {
        var header: [UInt8] = [0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11,
                               0xB8, 0x61, 0xC0, 0xA8, 0x00, 0x01, 0xC0, 0xA8, 0x00, 0xC7]
        #expect(InternetChecksum.fold(sum(header)) == 0xFFFF)
        header[10] = 0; header[11] = 0
        #expect(~InternetChecksum.fold(sum(header)) == 0xB861)
    }

    /// An odd tail is padded with a zero byte on the right (RFC 1071 1.(A)).
    @Test func oddLengthPadsTheLastByte() {
        #expect(sum([0x12, 0x34, 0x56]) == 0x1234 + 0x5600)
        #expect(sum([0xAB]) == 0xAB00)
        #expect(sum([]) == 0)
    }

    /// Random buffers, up to long enough that the 32-bit running sum would
    /// overflow many times, agree with the word-at-a-time definition; and a
    /// sum can be continued from an earlier one (even-length pieces).
    @Test(arguments: [1, 2, 3, 64, 1499, 65_536, 300_001])
    func agreesWithTheDefinition(length: Int) {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15 ^ UInt64(length)
        let bytes = (0..<length).map { _ -> UInt8 in
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            return UInt8(truncatingIfNeeded: state)
        }
        #expect(InternetChecksum.fold(sum(bytes)) == onesComplementSum(bytes))
        let half = (length / 2) & ~1
        let continued = sum(Array(bytes[half...]), to: sum(Array(bytes[..<half])))
        #expect(InternetChecksum.fold(continued) == onesComplementSum(bytes))
    }

    /// All ones: 150,000 words of 0xffff add up past 2^32, so the wide
    /// accumulator's carries must be folded back, not dropped.
    @Test func carriesPastThirtyTwoBitsAreKept() {
        let bytes = [UInt8](repeating: 0xFF, count: 300_000)
        #expect(InternetChecksum.fold(sum(bytes)) == 0xFFFF)
        let nearlyAll = bytes + [0x00, 0x01]
        #expect(InternetChecksum.fold(sum(nearlyAll)) == onesComplementSum(nearlyAll))
        #expect(InternetChecksum.fold(0xFFFF_FFFF) == 0xFFFF)
        #expect(InternetChecksum.fold(0x0001_FFFF) == 0x0001)
    }

    /// `complete` sums from `start` to `end` (the field holding its seed, the
    /// pseudo-header sum) and stores the complement at start + offset:
    /// afterwards the covered bytes plus the seed sum to 0xffff, as a
    /// receiver checks. Bytes outside [start, end) are left alone and do not count.
    @Test func completeWritesAChecksumThatVerifies() {
        var frame: [UInt8] = [0xEE, 0xEE] + (0..<40).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 5) } + [0xDD, 0xDD, 0xDD]
        // A TCP-like layout: the field at offset 16 from `start` holds a seed
        // (the pseudo-header sum) before completion.
        frame[2 + 16] = 0x12; frame[2 + 17] = 0x34
        let before = frame
        frame.withUnsafeMutableBytes { InternetChecksum.complete(frame: $0, start: 2, offset: 16, end: 42) }
        #expect(InternetChecksum.fold(sum(Array(frame[2..<42]), to: 0x1234)) == 0xFFFF)
        #expect(frame[..<2] == before[..<2] && frame[42...] == before[42...])
        var expected = Array(before[2..<42])
        let value = ~onesComplementSum(expected)
        expected[16] = UInt8(value >> 8); expected[17] = UInt8(value & 0xFF)
        #expect(Array(frame[2..<42]) == expected)
    }

    /// A UDP checksum that computes to 0 is sent as 0xffff (0 would mean
    /// "no checksum", RFC 768); a TCP one (offset 16) stays 0.
    @Test func udpNeverSendsAComputedZero() {
        // Words that sum to 0xffff, so the complement is 0.
        var udp: [UInt8] = [0xFF, 0x00, 0x00, 0xFF, 0x00, 0x00, 0x00, 0x00]
        udp.withUnsafeMutableBytes { InternetChecksum.complete(frame: $0, start: 0, offset: 6, end: 8) }
        #expect(udp[6] == 0xFF && udp[7] == 0xFF)
        var tcp = [UInt8](repeating: 0, count: 20)
        tcp[0] = 0xFF; tcp[3] = 0xFF
        tcp.withUnsafeMutableBytes { InternetChecksum.complete(frame: $0, start: 0, offset: 16, end: 20) }
        #expect(tcp[16] == 0 && tcp[17] == 0)
    }
}

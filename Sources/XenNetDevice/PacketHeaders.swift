import XenNetChecksum

/// `struct virtio_net_hdr` (10 bytes, host order, which is little-endian on
/// every Xen x86 host): what a TAP with IFF_VNET_HDR puts before each frame.
/// It carries the offloads the netif extra-info and flags describe.
public struct VirtioNetHeader: Equatable, Sendable {
    public static var size: Int { 10 }
    /// VIRTIO_NET_HDR_F_NEEDS_CSUM: the checksum at csumStart+csumOffset is
    /// partial (pseudo-header only).
    public static var needsChecksum: UInt8 { 1 }
    /// VIRTIO_NET_HDR_F_DATA_VALID: the checksum was verified.
    public static var dataValid: UInt8 { 2 }
    public static var gsoNone: UInt8 { 0 }
    public static var gsoTCPv4: UInt8 { 1 }
    public static var gsoUDP: UInt8 { 3 }
    public static var gsoTCPv6: UInt8 { 4 }
    public static var gsoECN: UInt8 { 0x80 }

    public var flags: UInt8 = 0
    public var gsoType: UInt8 = 0
    public var headerLength: UInt16 = 0
    public var gsoSize: UInt16 = 0
    public var checksumStart: UInt16 = 0
    public var checksumOffset: UInt16 = 0

    public init() {}

    /// SAFETY: `p` is 10 readable bytes of a packet buffer the caller owns
    /// for the call (private memory the TAP wrote, not a guest page);
    /// unaligned loads, as the header may sit anywhere.
    public init(from p: UnsafeRawPointer) {
        flags = p.load(as: UInt8.self)
        gsoType = p.load(fromByteOffset: 1, as: UInt8.self)
        headerLength = p.loadUnaligned(fromByteOffset: 2, as: UInt16.self)
        gsoSize = p.loadUnaligned(fromByteOffset: 4, as: UInt16.self)
        checksumStart = p.loadUnaligned(fromByteOffset: 6, as: UInt16.self)
        checksumOffset = p.loadUnaligned(fromByteOffset: 8, as: UInt16.self)
    }

    /// SAFETY: `p` is 10 writable bytes the caller owns for the call.
    public func write(to p: UnsafeMutableRawPointer) {
        p.storeBytes(of: flags, as: UInt8.self)
        p.storeBytes(of: gsoType, toByteOffset: 1, as: UInt8.self)
        p.storeBytes(of: headerLength, toByteOffset: 2, as: UInt16.self)
        p.storeBytes(of: gsoSize, toByteOffset: 4, as: UInt16.self)
        p.storeBytes(of: checksumStart, toByteOffset: 6, as: UInt16.self)
        p.storeBytes(of: checksumOffset, toByteOffset: 8, as: UInt16.self)
    }
}

/// Where the headers of an Ethernet frame are, as far as checksum and
/// segmentation offload need them: IPv4 or IPv6 (extension headers
/// skipped), then TCP or UDP. Parsed from private memory only.
public struct PacketLayout: Equatable, Sendable {
    public static var ethernetHeaderLength: Int { 14 }
    public var networkOffset: Int
    public var isIPv6: Bool
    /// IPPROTO_TCP (6) or IPPROTO_UDP (17).
    public var transportProtocol: UInt8
    public var transportOffset: Int
    /// TCP's data offset, or 8 for UDP.
    public var transportHeaderLength: Int
    /// Bytes of transport header and payload, from the IP header's length
    /// field (Ethernet padding excluded).
    public var transportLength: Int

    /// Where the transport checksum sits, from `transportOffset`.
    public var checksumOffset: Int { transportProtocol == 6 ? 16 : 6 }
    public var headerLength: Int { transportOffset + transportHeaderLength }

    /// nil for anything else (ARP, IP fragments, other protocols, or
    /// lengths that do not fit the frame).
    ///
    /// SAFETY: `frame` is a private copy the caller owns for the call (a
    /// guest could change shared memory between a check here and its use);
    /// every index is checked against frame.count before it is read.
    public init?(frame: UnsafeRawBufferPointer) {
        let n = frame.count
        guard n >= 14 else { return nil }
        func byte(_ i: Int) -> Int { Int(frame[i]) }
        func be16(_ i: Int) -> Int { byte(i) << 8 | byte(i + 1) }
        var offset = 12
        var etherType = be16(offset)
        // One 802.1Q tag at most, as the stack's own offload path accepts.
        if etherType == 0x8100 || etherType == 0x88A8 {
            guard n >= 18 else { return nil }
            offset += 4
            etherType = be16(offset)
        }
        let l3 = offset + 2
        var proto: Int
        var l4: Int
        var l4Length: Int
        switch etherType {
        case 0x0800:
            guard n >= l3 + 20, byte(l3) >> 4 == 4 else { return nil }
            let ihl = (byte(l3) & 0xF) * 4
            let total = be16(l3 + 2)
            guard ihl >= 20, total >= ihl, l3 + total <= n else { return nil }
            // Fragments carry no whole transport segment to checksum.
            guard be16(l3 + 6) & 0x3FFF == 0 else { return nil }
            proto = byte(l3 + 9)
            l4 = l3 + ihl
            l4Length = total - ihl
            isIPv6 = false
        case 0x86DD:
            guard n >= l3 + 40, byte(l3) >> 4 == 6 else { return nil }
            let payload = be16(l3 + 4)
            guard l3 + 40 + payload <= n else { return nil }
            proto = byte(l3 + 6)
            l4 = l3 + 40
            // Hop-by-hop, routing and destination options; bounded.
            var hops = 0
            while proto == 0 || proto == 43 || proto == 60 {
                hops += 1
                guard hops <= 8, l4 + 8 <= l3 + 40 + payload else { return nil }
                let length = (byte(l4 + 1) + 1) * 8
                proto = byte(l4)
                l4 += length
            }
            guard l4 <= l3 + 40 + payload else { return nil }
            l4Length = l3 + 40 + payload - l4
            isIPv6 = true
        default:
            return nil
        }
        let headerLength: Int
        switch proto {
        case 6:
            guard l4Length >= 20, l4 + 20 <= n else { return nil }
            headerLength = (byte(l4 + 12) >> 4) * 4
            guard headerLength >= 20, headerLength <= l4Length else { return nil }
        case 17:
            guard l4Length >= 8 else { return nil }
            headerLength = 8
        default:
            return nil
        }
        networkOffset = l3
        transportProtocol = UInt8(proto)
        transportOffset = l4
        transportHeaderLength = headerLength
        transportLength = l4Length
    }

    /// The one's-complement sum (folded, not inverted) of the pseudo-header:
    /// what a partial checksum field holds before the rest is summed in.
    public func pseudoHeaderSum(frame: UnsafeRawBufferPointer) -> UInt16 {
        var sum: UInt32 = 0
        let addresses = isIPv6 ? (networkOffset + 8, 32) : (networkOffset + 12, 8)
        // SAFETY: the layout was parsed from this same private frame, so the
        // address range lies inside it; the slice view lives for the call.
        sum = InternetChecksum.add(UnsafeRawBufferPointer(rebasing: frame[addresses.0..<(addresses.0 + addresses.1)]), to: sum)
        sum &+= UInt32(transportProtocol)
        sum &+= UInt32(transportLength & 0xFFFF) &+ UInt32(transportLength >> 16)
        return InternetChecksum.fold(sum)
    }

    /// Writes the pseudo-header sum into the checksum field, as a stack does
    /// for a packet whose checksum the device is to complete.
    public func preparePartialChecksum(frame: UnsafeMutableRawBufferPointer) {
        // SAFETY: a read-only view of the caller's private frame, parsed into
        // this layout, for the call; the checksum field is inside it.
        let sum = pseudoHeaderSum(frame: UnsafeRawBufferPointer(frame))
        let at = transportOffset + checksumOffset
        frame[at] = UInt8(sum >> 8)
        frame[at + 1] = UInt8(sum & 0xFF)
    }

    /// True if the transport checksum is correct (UDP's 0 means none).
    public func transportChecksumIsValid(frame: UnsafeRawBufferPointer) -> Bool {
        let at = transportOffset + checksumOffset
        if transportProtocol == 17 && !isIPv6 && frame[at] == 0 && frame[at + 1] == 0 { return true }
        var sum = UInt32(pseudoHeaderSum(frame: frame))
        // SAFETY: transportOffset + transportLength <= frame.count (checked
        // when this layout was parsed from the same private frame).
        sum = InternetChecksum.add(UnsafeRawBufferPointer(rebasing: frame[transportOffset..<(transportOffset + transportLength)]), to: sum)
        return InternetChecksum.fold(sum) == 0xFFFF
    }
}

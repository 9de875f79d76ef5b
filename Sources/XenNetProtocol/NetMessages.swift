/// `netif_tx_request` (12 bytes): gref 0:4, offset 4:2, flags 6:2, id 8:2, size 10:2.
/// In the first slot of a packet `size` is the whole packet's length.
@frozen
public struct NetTxRequest: Hashable, Sendable {
    @inlinable public static var wireSize: Int { 12 }
    public var grant: UInt32
    public var offset: UInt16
    public var flags: NetTxFlags
    public var id: UInt16
    public var size: UInt16

    @inlinable
    public init(grant: UInt32, offset: UInt16, flags: NetTxFlags, id: UInt16, size: UInt16) {
        self.grant = grant; self.offset = offset; self.flags = flags; self.id = id; self.size = size
    }
}

/// `netif_extra_info` (8 bytes): type 0, flags 1, then a 6-byte union:
/// gso {size 2:2, type 4, pad 5, features 6:2}, mcast {addr 2:6},
/// hash {type 2, algorithm 3, value 4:4}.
@frozen
public struct NetExtraInfo: Hashable, Sendable {
    @inlinable public static var wireSize: Int { 8 }
    public var type: NetExtraType
    public var flags: UInt8
    /// The union's six bytes, little-endian in the low 48 bits.
    public var payload: UInt64

    @inlinable
    public init(type: NetExtraType, flags: UInt8, payload: UInt64) {
        self.type = type; self.flags = flags; self.payload = payload & 0xFFFF_FFFF_FFFF
    }

    @inlinable public var hasMore: Bool { flags & NetLimits.extraFlagMore != 0 }

    public static func gso(size: UInt16, type: UInt8, features: UInt16 = 0, more: Bool = false) -> NetExtraInfo {
        NetExtraInfo(type: .gso, flags: more ? NetLimits.extraFlagMore : 0,
                     payload: UInt64(size) | UInt64(type) << 16 | UInt64(features) << 32)
    }
    @inlinable public var gsoSize: UInt16 { UInt16(truncatingIfNeeded: payload) }
    @inlinable public var gsoType: UInt8 { UInt8(truncatingIfNeeded: payload >> 16) }
    @inlinable public var gsoFeatures: UInt16 { UInt16(truncatingIfNeeded: payload >> 32) }

    public static func multicast(add: Bool, address: [UInt8], more: Bool = false) -> NetExtraInfo {
        precondition(address.count == 6)
        var p: UInt64 = 0
        for (i, b) in address.enumerated() { p |= UInt64(b) << UInt64(8 * i) }
        return NetExtraInfo(type: add ? .multicastAdd : .multicastDelete, flags: more ? NetLimits.extraFlagMore : 0, payload: p)
    }
    public var multicastAddress: [UInt8] { (0..<6).map { UInt8(truncatingIfNeeded: payload >> UInt64(8 * $0)) } }

    public static func hash(type: UInt8, algorithm: UInt8, value: UInt32, more: Bool = false) -> NetExtraInfo {
        NetExtraInfo(type: .hash, flags: more ? NetLimits.extraFlagMore : 0,
                     payload: UInt64(type) | UInt64(algorithm) << 8 | UInt64(value) << 16)
    }
    @inlinable public var hashType: UInt8 { UInt8(truncatingIfNeeded: payload) }
    @inlinable public var hashAlgorithm: UInt8 { UInt8(truncatingIfNeeded: payload >> 8) }
    @inlinable public var hashValue32: UInt32 { UInt32(truncatingIfNeeded: payload >> 16) }

    @inlinable
    init(wireWord w: UInt64) {
        self.init(type: NetExtraType(rawValue: UInt8(truncatingIfNeeded: w)), flags: UInt8(truncatingIfNeeded: w >> 8), payload: w >> 16)
    }
    @inlinable
    var wireWord: UInt64 { UInt64(type.rawValue) | UInt64(flags) << 8 | payload << 16 }
}

/// A tx slot holds a request or, after a request flagged `extraInfo` (or an
/// extra with the MORE flag), an extra-info descriptor. Which one depends on
/// the slots before it, so the private copy keeps both views.
@frozen
public struct NetTxSlot: Hashable, Sendable {
    @usableFromInline var low: UInt64
    @usableFromInline var high: UInt32

    @inlinable init(low: UInt64, high: UInt32) { self.low = low; self.high = high }

    public init(_ request: NetTxRequest) {
        low = UInt64(request.grant) | UInt64(request.offset) << 32 | UInt64(request.flags.rawValue) << 48
        high = UInt32(request.id) | UInt32(request.size) << 16
    }
    public init(_ extra: NetExtraInfo) { low = extra.wireWord; high = 0 }

    @inlinable
    public var request: NetTxRequest {
        NetTxRequest(grant: UInt32(truncatingIfNeeded: low), offset: UInt16(truncatingIfNeeded: low >> 32),
                     flags: NetTxFlags(rawValue: UInt16(truncatingIfNeeded: low >> 48)),
                     id: UInt16(truncatingIfNeeded: high), size: UInt16(truncatingIfNeeded: high >> 16))
    }
    @inlinable public var extraInfo: NetExtraInfo { NetExtraInfo(wireWord: low) }
}

/// `netif_tx_response` (4 bytes): id 0:2, status 2:2.
@frozen
public struct NetTxResponse: Hashable, Sendable {
    @inlinable public static var wireSize: Int { 4 }
    public var id: UInt16
    public var status: Int16
    @inlinable public init(id: UInt16, status: Int16) { self.id = id; self.status = status }
}

/// `netif_rx_request` (8 bytes): id 0:2, pad 2:2, gref 4:4.
@frozen
public struct NetRxRequest: Hashable, Sendable {
    @inlinable public static var wireSize: Int { 8 }
    public var id: UInt16
    public var grant: UInt32
    @inlinable public init(id: UInt16, grant: UInt32) { self.id = id; self.grant = grant }
}

/// `netif_rx_response` (8 bytes): id 0:2, offset 2:2, flags 4:2, status 6:2
/// (negative: error; otherwise bytes in this slot).
@frozen
public struct NetRxResponse: Hashable, Sendable {
    @inlinable public static var wireSize: Int { 8 }
    public var id: UInt16
    public var offset: UInt16
    public var flags: NetRxFlags
    public var status: Int16
    @inlinable
    public init(id: UInt16, offset: UInt16, flags: NetRxFlags, status: Int16) {
        self.id = id; self.offset = offset; self.flags = flags; self.status = status
    }
}

/// An rx response slot: a response or an extra-info descriptor (GSO, hash).
/// Netfront reads the response for request slot k from slot k, so the
/// backend keeps that correspondence.
@frozen
public struct NetRxSlot: Hashable, Sendable {
    @usableFromInline var word: UInt64
    @inlinable init(word: UInt64) { self.word = word }
    public init(_ response: NetRxResponse) {
        word = UInt64(response.id) | UInt64(response.offset) << 16 | UInt64(response.flags.rawValue) << 32
            | UInt64(UInt16(bitPattern: response.status)) << 48
    }
    public init(_ extra: NetExtraInfo) { word = extra.wireWord }
    @inlinable
    public var response: NetRxResponse {
        NetRxResponse(id: UInt16(truncatingIfNeeded: word), offset: UInt16(truncatingIfNeeded: word >> 16),
                      flags: NetRxFlags(rawValue: UInt16(truncatingIfNeeded: word >> 32)),
                      status: Int16(bitPattern: UInt16(truncatingIfNeeded: word >> 48)))
    }
    @inlinable public var extraInfo: NetExtraInfo { NetExtraInfo(wireWord: word) }
}

/// `xen_netif_ctrl_request` (16 bytes): id 0:2, type 2:2, data[3] 4:12.
@frozen
public struct NetControlRequest: Hashable, Sendable {
    @inlinable public static var wireSize: Int { 16 }
    public var id: UInt16
    public var type: NetControlType
    public var data: (UInt32, UInt32, UInt32)
    public init(id: UInt16, type: NetControlType, data: (UInt32, UInt32, UInt32) = (0, 0, 0)) {
        self.id = id; self.type = type; self.data = data
    }
    public static func == (a: Self, b: Self) -> Bool {
        a.id == b.id && a.type == b.type && a.data == b.data
    }
    public func hash(into h: inout Hasher) { h.combine(id); h.combine(type); h.combine(data.0); h.combine(data.1); h.combine(data.2) }
}

/// `xen_netif_ctrl_response` (12 bytes): id 0:2, type 2:2, status 4:4, data 8:4.
@frozen
public struct NetControlResponse: Hashable, Sendable {
    @inlinable public static var wireSize: Int { 12 }
    public var id: UInt16
    public var type: NetControlType
    public var status: UInt32
    public var data: UInt32
    public init(id: UInt16, type: NetControlType, status: UInt32, data: UInt32) {
        self.id = id; self.type = type; self.status = status; self.data = data
    }
}

#if _endian(big)
#error("Xen rings are little-endian; xenback decodes them as the host's native order")
#endif

/// `NETTXF_*`: flags of a guest transmit request.
public struct NetTxFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// The protocol checksum is blank (partial): the backend must fill it.
    @inlinable public static var checksumBlank: NetTxFlags { NetTxFlags(rawValue: 1 << 0) }
    /// The checksum is known good.
    @inlinable public static var dataValidated: NetTxFlags { NetTxFlags(rawValue: 1 << 1) }
    /// The packet continues in the next slot.
    @inlinable public static var moreData: NetTxFlags { NetTxFlags(rawValue: 1 << 2) }
    /// The next slot is a `netif_extra_info`.
    @inlinable public static var extraInfo: NetTxFlags { NetTxFlags(rawValue: 1 << 3) }
}

/// `NETRXF_*`: flags of a receive response.
public struct NetRxFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    @inlinable public static var dataValidated: NetRxFlags { NetRxFlags(rawValue: 1 << 0) }
    @inlinable public static var checksumBlank: NetRxFlags { NetRxFlags(rawValue: 1 << 1) }
    @inlinable public static var moreData: NetRxFlags { NetRxFlags(rawValue: 1 << 2) }
    @inlinable public static var extraInfo: NetRxFlags { NetRxFlags(rawValue: 1 << 3) }
    /// Deprecated GSO prefix descriptor; kept for decoding old frontends.
    @inlinable public static var gsoPrefix: NetRxFlags { NetRxFlags(rawValue: 1 << 4) }
}

/// `NETIF_RSP_*`. Positive rx statuses are byte counts.
public enum NetStatus {
    @inlinable public static var dropped: Int16 { -2 }
    @inlinable public static var error: Int16 { -1 }
    @inlinable public static var okay: Int16 { 0 }
    /// The slot carried an extra-info descriptor; no real response.
    @inlinable public static var null: Int16 { 1 }
}

/// `XEN_NETIF_EXTRA_TYPE_*`.
@frozen
public struct NetExtraType: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt8
    @inlinable public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// Never valid on the wire.
    @inlinable public static var none: NetExtraType { NetExtraType(rawValue: 0) }
    @inlinable public static var gso: NetExtraType { NetExtraType(rawValue: 1) }
    @inlinable public static var multicastAdd: NetExtraType { NetExtraType(rawValue: 2) }
    @inlinable public static var multicastDelete: NetExtraType { NetExtraType(rawValue: 3) }
    @inlinable public static var hash: NetExtraType { NetExtraType(rawValue: 4) }
    /// One past the last valid type.
    @inlinable public static var limit: NetExtraType { NetExtraType(rawValue: 5) }
}

/// `XEN_NETIF_GSO_TYPE_*`.
public enum NetGSOType {
    @inlinable public static var none: UInt8 { 0 }
    @inlinable public static var tcpv4: UInt8 { 1 }
    @inlinable public static var tcpv6: UInt8 { 2 }
}

/// Limits from netif.h and the rules Linux netback enforces.
public enum NetLimits {
    /// `XEN_NETIF_NR_SLOTS_MIN`: every backend accepts this many slots per packet.
    @inlinable public static var minimumSlotsPerPacket: Int { 18 }
    /// Linux netback's `fatal_skb_slots` default: more slots than this disables the VIF.
    @inlinable public static var fatalSlotsPerPacket: Int { 20 }
    /// `XEN_NETIF_MAX_TX_SIZE`.
    @inlinable public static var maximumPacketSize: Int { 0xFFFF }
    /// `XEN_NETIF_EXTRA_FLAG_MORE`.
    @inlinable public static var extraFlagMore: UInt8 { 1 }
    @inlinable public static var pageSize: Int { 4096 }
}

/// `XEN_NETIF_CTRL_TYPE_*`.
@frozen
public struct NetControlType: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    @inlinable public static var invalid: NetControlType { NetControlType(rawValue: 0) }
    @inlinable public static var getHashFlags: NetControlType { NetControlType(rawValue: 1) }
    @inlinable public static var setHashFlags: NetControlType { NetControlType(rawValue: 2) }
    @inlinable public static var setHashKey: NetControlType { NetControlType(rawValue: 3) }
    @inlinable public static var getHashMappingSize: NetControlType { NetControlType(rawValue: 4) }
    @inlinable public static var setHashMappingSize: NetControlType { NetControlType(rawValue: 5) }
    @inlinable public static var setHashMapping: NetControlType { NetControlType(rawValue: 6) }
    @inlinable public static var setHashAlgorithm: NetControlType { NetControlType(rawValue: 7) }
    @inlinable public static var getGrantMappingSize: NetControlType { NetControlType(rawValue: 8) }
    @inlinable public static var addGrantMapping: NetControlType { NetControlType(rawValue: 9) }
    @inlinable public static var deleteGrantMapping: NetControlType { NetControlType(rawValue: 10) }
}

/// `XEN_NETIF_CTRL_STATUS_*`.
public enum NetControlStatus {
    @inlinable public static var success: UInt32 { 0 }
    @inlinable public static var notSupported: UInt32 { 1 }
    @inlinable public static var invalidParameter: UInt32 { 2 }
    @inlinable public static var bufferOverflow: UInt32 { 3 }
}

/// `XEN_NETIF_CTRL_HASH_TYPE_*` bits and algorithms.
public struct NetHashTypes: OptionSet, Hashable, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    @inlinable public static var ipv4: NetHashTypes { NetHashTypes(rawValue: 1 << 0) }
    @inlinable public static var ipv4TCP: NetHashTypes { NetHashTypes(rawValue: 1 << 1) }
    @inlinable public static var ipv6: NetHashTypes { NetHashTypes(rawValue: 1 << 2) }
    @inlinable public static var ipv6TCP: NetHashTypes { NetHashTypes(rawValue: 1 << 3) }
}

public enum NetHashAlgorithm {
    @inlinable public static var none: UInt32 { 0 }
    @inlinable public static var toeplitz: UInt32 { 1 }
}

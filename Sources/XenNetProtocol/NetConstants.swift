#if _endian(big)
#error("Xen rings are little-endian; xenback decodes them as the host's native order")
#endif

/// `NETTXF_*`: flags of a guest transmit request.
public struct NetTxFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// The protocol checksum is blank (partial): the backend must fill it.
    public static let checksumBlank = NetTxFlags(rawValue: 1 << 0)
    /// The checksum is known good.
    public static let dataValidated = NetTxFlags(rawValue: 1 << 1)
    /// The packet continues in the next slot.
    public static let moreData = NetTxFlags(rawValue: 1 << 2)
    /// The next slot is a `netif_extra_info`.
    public static let extraInfo = NetTxFlags(rawValue: 1 << 3)
}

/// `NETRXF_*`: flags of a receive response.
public struct NetRxFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let dataValidated = NetRxFlags(rawValue: 1 << 0)
    public static let checksumBlank = NetRxFlags(rawValue: 1 << 1)
    public static let moreData = NetRxFlags(rawValue: 1 << 2)
    public static let extraInfo = NetRxFlags(rawValue: 1 << 3)
    /// Deprecated GSO prefix descriptor; kept for decoding old frontends.
    public static let gsoPrefix = NetRxFlags(rawValue: 1 << 4)
}

/// `NETIF_RSP_*`. Positive rx statuses are byte counts.
public enum NetStatus {
    public static let dropped: Int16 = -2
    public static let error: Int16 = -1
    public static let okay: Int16 = 0
    /// The slot carried an extra-info descriptor; no real response.
    public static let null: Int16 = 1
}

/// `XEN_NETIF_EXTRA_TYPE_*`.
@frozen
public struct NetExtraType: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt8
    @inlinable public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// Never valid on the wire.
    public static let none = NetExtraType(rawValue: 0)
    public static let gso = NetExtraType(rawValue: 1)
    public static let multicastAdd = NetExtraType(rawValue: 2)
    public static let multicastDelete = NetExtraType(rawValue: 3)
    public static let hash = NetExtraType(rawValue: 4)
    /// One past the last valid type.
    public static let limit = NetExtraType(rawValue: 5)
}

/// `XEN_NETIF_GSO_TYPE_*`.
public enum NetGSOType {
    public static let none: UInt8 = 0
    public static let tcpv4: UInt8 = 1
    public static let tcpv6: UInt8 = 2
}

/// Limits from netif.h and the rules Linux netback enforces.
public enum NetLimits {
    /// `XEN_NETIF_NR_SLOTS_MIN`: every backend accepts this many slots per packet.
    public static let minimumSlotsPerPacket = 18
    /// Linux netback's `fatal_skb_slots` default: more slots than this disables the VIF.
    public static let fatalSlotsPerPacket = 20
    /// `XEN_NETIF_MAX_TX_SIZE`.
    public static let maximumPacketSize = 0xFFFF
    /// `XEN_NETIF_EXTRA_FLAG_MORE`.
    public static let extraFlagMore: UInt8 = 1
    public static let pageSize = 4096
}

/// `XEN_NETIF_CTRL_TYPE_*`.
@frozen
public struct NetControlType: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let invalid = NetControlType(rawValue: 0)
    public static let getHashFlags = NetControlType(rawValue: 1)
    public static let setHashFlags = NetControlType(rawValue: 2)
    public static let setHashKey = NetControlType(rawValue: 3)
    public static let getHashMappingSize = NetControlType(rawValue: 4)
    public static let setHashMappingSize = NetControlType(rawValue: 5)
    public static let setHashMapping = NetControlType(rawValue: 6)
    public static let setHashAlgorithm = NetControlType(rawValue: 7)
    public static let getGrantMappingSize = NetControlType(rawValue: 8)
    public static let addGrantMapping = NetControlType(rawValue: 9)
    public static let deleteGrantMapping = NetControlType(rawValue: 10)
}

/// `XEN_NETIF_CTRL_STATUS_*`.
public enum NetControlStatus {
    public static let success: UInt32 = 0
    public static let notSupported: UInt32 = 1
    public static let invalidParameter: UInt32 = 2
    public static let bufferOverflow: UInt32 = 3
}

/// `XEN_NETIF_CTRL_HASH_TYPE_*` bits and algorithms.
public struct NetHashTypes: OptionSet, Hashable, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let ipv4 = NetHashTypes(rawValue: 1 << 0)
    public static let ipv4TCP = NetHashTypes(rawValue: 1 << 1)
    public static let ipv6 = NetHashTypes(rawValue: 1 << 2)
    public static let ipv6TCP = NetHashTypes(rawValue: 1 << 3)
}

public enum NetHashAlgorithm {
    public static let none: UInt32 = 0
    public static let toeplitz: UInt32 = 1
}

#if _endian(big)
#error("Xen rings are little-endian; xenback decodes them as the host's native order")
#endif

/// `BLKIF_OP_*`: the operation byte of a request. Unknown values are kept, so
/// a backend can answer them with `BLKIF_RSP_EOPNOTSUPP`.
@frozen
public struct BlockOperation: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    @inlinable public init(rawValue: UInt8) { self.rawValue = rawValue }

    @inlinable public static var read: BlockOperation { BlockOperation(rawValue: 0) }
    @inlinable public static var write: BlockOperation { BlockOperation(rawValue: 1) }
    /// Write, ordered after every earlier write reached the medium.
    @inlinable public static var writeBarrier: BlockOperation { BlockOperation(rawValue: 2) }
    /// Flush the device's write cache (optionally with data segments).
    @inlinable public static var flushDiskCache: BlockOperation { BlockOperation(rawValue: 3) }
    /// Used by SLES frontends for an unrelated purpose; never valid here.
    @inlinable public static var reserved1: BlockOperation { BlockOperation(rawValue: 4) }
    @inlinable public static var discard: BlockOperation { BlockOperation(rawValue: 5) }
    /// Segments live in granted pages (`blkif_request_indirect`).
    @inlinable public static var indirect: BlockOperation { BlockOperation(rawValue: 6) }

    public var description: String {
        switch self {
        case .read: "read"
        case .write: "write"
        case .writeBarrier: "write-barrier"
        case .flushDiskCache: "flush-diskcache"
        case .reserved1: "reserved-1"
        case .discard: "discard"
        case .indirect: "indirect"
        default: "unknown-op-\(rawValue)"
        }
    }
}

/// `BLKIF_RSP_*`: a response's status.
@frozen
public struct BlockStatus: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: Int16
    @inlinable public init(rawValue: Int16) { self.rawValue = rawValue }

    @inlinable public static var okay: BlockStatus { BlockStatus(rawValue: 0) }
    @inlinable public static var error: BlockStatus { BlockStatus(rawValue: -1) }
    /// Operation not supported (unknown op, barrier or discard unavailable).
    @inlinable public static var notSupported: BlockStatus { BlockStatus(rawValue: -2) }

    public var description: String {
        switch self {
        case .okay: "okay"
        case .error: "error"
        case .notSupported: "eopnotsupp"
        default: "status-\(rawValue)"
        }
    }
}

/// `VDISK_*` bits of the backend's `info` key.
public struct VirtualDiskInfo: OptionSet, Hashable, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    @inlinable public static var cdrom: VirtualDiskInfo { VirtualDiskInfo(rawValue: 1) }
    @inlinable public static var removable: VirtualDiskInfo { VirtualDiskInfo(rawValue: 2) }
    @inlinable public static var readOnly: VirtualDiskInfo { VirtualDiskInfo(rawValue: 4) }
}

/// Protocol limits from blkif.h.
public enum BlockLimits {
    /// `BLKIF_MAX_SEGMENTS_PER_REQUEST`: chosen so 32 requests fit one page.
    @inlinable public static var maxSegmentsPerRequest: Int { 11 }
    /// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`.
    @inlinable public static var maxIndirectPagesPerRequest: Int { 8 }
    /// Segments in one indirect page: 4096 / 8.
    @inlinable public static var segmentsPerIndirectPage: Int { 512 }
    /// Ring sector fields and the `sectors` key are always in these units
    /// (the 2024 reconciliation of blkif.h); `sector-size` only sets segment
    /// granularity and alignment.
    @inlinable public static var ringSectorSize: Int { 512 }
    /// `first_sect`/`last_sect` index 512-byte sectors within one 4 KiB page.
    @inlinable public static var sectorsPerPage: Int { 8 }
    /// `BLKIF_DISCARD_SECURE`.
    @inlinable public static var discardSecureFlag: UInt8 { 1 }
}

/// The `protocol` key a frontend writes: which struct layout its ring uses.
public enum BlockProtocolABI: String, Sendable, CaseIterable {
    /// `XEN_IO_PROTO_ABI_X86_32`: i386 layout (64-bit fields 4-aligned, 108-byte requests).
    case x86_32 = "x86_32-abi"
    /// `XEN_IO_PROTO_ABI_X86_64`: x86_64 layout (112-byte requests); native here.
    case x86_64 = "x86_64-abi"

    /// Linux blkback's `BLKIF_PROTOCOL_DEFAULT` on x86 when the key is absent:
    /// old frontends that write no key are 32-bit.
    @inlinable public static var defaultWhenAbsent: BlockProtocolABI { .x86_32 }

    /// Parses the frontend's `protocol` key; nil means absent.
    public static func parse(xenstoreValue value: String?) throws(BlockProtocolError) -> BlockProtocolABI {
        guard let value else { return defaultWhenAbsent }
        guard let abi = BlockProtocolABI(rawValue: value) else { throw .unknownProtocol(value) }
        return abi
    }
}

public enum BlockProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    case unknownProtocol(String)
    public var description: String {
        switch self {
        case .unknownProtocol(let v):
            "frontend 'protocol' is \"\(v)\"; expected \"x86_32-abi\" or \"x86_64-abi\""
        }
    }
}

/// One segment: a granted page and the inclusive range of 512-byte sectors
/// within it (`blkif_request_segment`, 8 bytes: gref, first_sect, last_sect, pad).
@frozen
public struct BlockSegment: Hashable, Sendable {
    public var grant: UInt32
    public var firstSector: UInt8
    public var lastSector: UInt8

    @inlinable
    public init(grant: UInt32, firstSector: UInt8, lastSector: UInt8) {
        self.grant = grant
        self.firstSector = firstSector
        self.lastSector = lastSector
    }

    /// Packed as it lies in a segment slot (little-endian).
    @inlinable
    public init(wireWord w: UInt64) {
        grant = UInt32(truncatingIfNeeded: w)
        firstSector = UInt8(truncatingIfNeeded: w >> 32)
        lastSector = UInt8(truncatingIfNeeded: w >> 40)
    }

    @inlinable
    public var wireWord: UInt64 {
        UInt64(grant) | UInt64(firstSector) << 32 | UInt64(lastSector) << 40
    }

    /// Sectors covered, if the range is valid (0 ≤ first ≤ last ≤ 7).
    @inlinable
    public var sectorCount: Int? {
        guard firstSector <= lastSector, Int(lastSector) < BlockLimits.sectorsPerPage else { return nil }
        return Int(lastSector) - Int(firstSector) + 1
    }
}

/// A private copy of one request slot, normalised to the x86_64 layout
/// whatever ABI the frontend speaks. It is a value: the frontend can no longer
/// change it, so it is what gets validated and used.
///
/// The same 112 bytes are read as `blkif_request` (read, write, barrier,
/// flush), `blkif_request_discard` or `blkif_request_indirect` depending on
/// `operation`, exactly like the C union.
@frozen
public struct BlockRequest: Sendable {
    /// The x86_64 layout's size.
    @inlinable public static var wireSize: Int { 112 }
    @usableFromInline var words: InlineArray<14, UInt64>

    @inlinable
    init(words: InlineArray<14, UInt64>) { self.words = words }

    // MARK: Fields common to every layout

    @inlinable public var operation: BlockOperation { BlockOperation(rawValue: UInt8(truncatingIfNeeded: words[0])) }
    /// Echoed in the response; the frontend's own tag.
    @inlinable public var id: UInt64 { words[1] }
    /// In 512-byte units whatever the disk's logical sector size.
    @inlinable public var sectorNumber: UInt64 {
        get { words[2] }
        set { words[2] = newValue }  // frontends reuse a prepared request per slot
    }

    // MARK: blkif_request (read, write, write-barrier, flush)

    @inlinable public var segmentCount: UInt8 { UInt8(truncatingIfNeeded: words[0] >> 8) }
    @inlinable public var handle: UInt16 { UInt16(truncatingIfNeeded: words[0] >> 16) }
    /// Segment `index` of the direct request, `index` < 11.
    @inlinable
    public func segment(_ index: Int) -> BlockSegment {
        precondition(index >= 0 && index < BlockLimits.maxSegmentsPerRequest)
        return BlockSegment(wireWord: words[3 + index])
    }

    // MARK: blkif_request_discard

    /// `flag`: `BLKIF_DISCARD_SECURE` or 0.
    @inlinable public var discardFlags: UInt8 { UInt8(truncatingIfNeeded: words[0] >> 8) }
    @inlinable public var discardSectorCount: UInt64 { words[3] }

    /// The operation a response to this request carries: the request's own,
    /// except for INDIRECT, whose response names the inner `indirect_op`
    /// (Linux blkback answers so, and Linux blkfront since 2021 disables a
    /// disk whose response says INDIRECT).
    @inlinable public var responseOperation: BlockOperation { operation == .indirect ? indirectOperation : operation }

    // MARK: blkif_request_indirect

    @inlinable public var indirectOperation: BlockOperation { BlockOperation(rawValue: UInt8(truncatingIfNeeded: words[0] >> 8)) }
    @inlinable public var indirectSegmentCount: UInt16 { UInt16(truncatingIfNeeded: words[0] >> 16) }
    @inlinable public var indirectHandle: UInt16 { UInt16(truncatingIfNeeded: words[3]) }
    /// Grant of indirect page `index`, `index` < 8 (bytes 28 + 4·index).
    @inlinable
    public func indirectGrant(_ index: Int) -> UInt32 {
        precondition(index >= 0 && index < BlockLimits.maxIndirectPagesPerRequest)
        let byte = 28 + 4 * index
        return UInt32(truncatingIfNeeded: words[byte >> 3] >> UInt64((byte & 7) * 8))
    }

    // MARK: Building requests (frontends, tests, fuzzers)

    /// A read, write, write-barrier or flush with up to 11 segments.
    public init(operation: BlockOperation, id: UInt64, handle: UInt16 = 0, sectorNumber: UInt64,
                segments: some Collection<BlockSegment>) {
        precondition(segments.count <= BlockLimits.maxSegmentsPerRequest)
        words = InlineArray(repeating: 0)
        words[0] = UInt64(operation.rawValue) | UInt64(UInt8(segments.count)) << 8 | UInt64(handle) << 16
        words[1] = id
        words[2] = sectorNumber
        for (i, s) in segments.enumerated() { words[3 + i] = s.wireWord }
    }

    /// The common one-segment request, without an array.
    @inlinable
    public init(operation: BlockOperation, id: UInt64, handle: UInt16 = 0, sectorNumber: UInt64, segment: BlockSegment) {
        words = InlineArray(repeating: 0)
        words[0] = UInt64(operation.rawValue) | 1 << 8 | UInt64(handle) << 16
        words[1] = id
        words[2] = sectorNumber
        words[3] = segment.wireWord
    }

    /// A discard of `sectorCount` 512-byte sectors.
    public init(discardID id: UInt64, handle: UInt16 = 0, sectorNumber: UInt64, sectorCount: UInt64, secure: Bool = false) {
        words = InlineArray(repeating: 0)
        words[0] = UInt64(BlockOperation.discard.rawValue) | UInt64(secure ? BlockLimits.discardSecureFlag : 0) << 8 | UInt64(handle) << 16
        words[1] = id
        words[2] = sectorNumber
        words[3] = sectorCount
    }

    /// An indirect request whose `segmentCount` segments sit in the pages granted as `indirectGrants`.
    public init(indirectID id: UInt64, operation: BlockOperation, handle: UInt16 = 0, sectorNumber: UInt64,
                segmentCount: UInt16, indirectGrants: some Collection<UInt32>) {
        precondition(indirectGrants.count <= BlockLimits.maxIndirectPagesPerRequest)
        words = InlineArray(repeating: 0)
        words[0] = UInt64(BlockOperation.indirect.rawValue) | UInt64(operation.rawValue) << 8 | UInt64(segmentCount) << 16
        words[1] = id
        words[2] = sectorNumber
        words[3] = UInt64(handle)
        for (i, g) in indirectGrants.enumerated() {
            let byte = 28 + 4 * i
            words[byte >> 3] |= UInt64(g) << UInt64((byte & 7) * 8)
        }
    }

    /// Any raw slot contents (hostile-frontend tests, fuzzers).
    public init(x86_64Bytes bytes: some Collection<UInt8>) {
        precondition(bytes.count == Self.wireSize)
        words = InlineArray(repeating: 0)
        for (i, b) in bytes.enumerated() { words[i >> 3] |= UInt64(b) << UInt64((i & 7) * 8) }
    }

    /// Stores the request's 112 bytes (the x86_64 layout) at `destination`,
    /// which the caller owns for at least that many bytes; allocation-free.
    @inlinable
    public func store(to destination: UnsafeMutableRawPointer) {
        for i in 0..<14 { destination.storeBytes(of: words[i], toByteOffset: 8 * i, as: UInt64.self) }
    }

    /// A request `store(to:)` wrote, read back from `source` (the caller's
    /// own memory, 112 bytes).
    @inlinable
    public init(storedAt source: UnsafeRawPointer) {
        var w = InlineArray<14, UInt64>(repeating: 0)
        for i in 0..<14 { w[i] = source.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self) }
        words = w
    }

    /// The x86_64 bytes of this request.
    public var x86_64Bytes: [UInt8] {
        (0..<Self.wireSize).map { UInt8(truncatingIfNeeded: words[$0 >> 3] >> UInt64(($0 & 7) * 8)) }
    }
}

/// `blkif_response`: id 0:8, operation 8:1, status 10:2; bytes 9 and 12...15
/// are padding that must reach the frontend as zeros (XSA-216).
@frozen
public struct BlockResponse: Hashable, Sendable {
    @inlinable public static var x86_64Size: Int { 16 }
    @inlinable public static var x86_32Size: Int { 12 }
    public var id: UInt64
    public var operation: BlockOperation
    public var status: BlockStatus

    @inlinable
    public init(id: UInt64, operation: BlockOperation, status: BlockStatus) {
        self.id = id
        self.operation = operation
        self.status = status
    }
}

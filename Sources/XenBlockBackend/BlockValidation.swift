import XenBlockProtocol
import XenDisk

/// What the backend will do for a request, decided from its private copy.
public enum BlockAction: Equatable, Sendable {
    /// Read or write `segmentCount` segments starting at 512-byte sector
    /// `sector`; the segments are the request's own (direct) or come from its
    /// indirect pages. `flushBefore`: FLUSH_DISKCACHE or WRITE_BARRIER
    /// semantics (earlier writes reach the medium first).
    case transfer(write: Bool, sector: UInt64, segmentCount: Int, indirectPages: Int, flushBefore: Bool, flushAfter: Bool)
    /// Just make earlier writes durable.
    case flush
    case discard(sector: UInt64, count: UInt64, secure: Bool)
    /// Answer at once with this status.
    case reject(BlockStatus, reason: BlockRejection)
}

/// Why a request was refused: for counters and the rate-limited log.
public enum BlockRejection: String, Error, Sendable, Equatable {
    case unknownOperation, noSegments, tooManySegments, badSegment, misaligned
    case beyondEndOfDisk, readOnly, discardUnsupported, secureDiscardUnsupported, badIndirectOperation
}

public enum BlockValidation {
    /// Checks a request's fixed fields against the disk. Direct segments are
    /// checked here; indirect ones, once copied out of their pages, with
    /// `check(segment:)`.
    public static func action(for r: BlockRequest, disk: DiskGeometry) -> BlockAction {
        switch r.operation {
        case .read, .write, .writeBarrier, .flushDiskCache:
            let write = r.operation != .read
            if write && disk.readOnly { return .reject(.error, reason: .readOnly) }
            let n = Int(r.segmentCount)
            if n == 0 {
                // A flush without data is a pure flush; a read/write needs data.
                return r.operation == .flushDiskCache ? .flush : .reject(.error, reason: .noSegments)
            }
            guard n <= BlockLimits.maxSegmentsPerRequest else { return .reject(.error, reason: .tooManySegments) }
            var total: UInt64 = 0
            for i in 0..<n {
                switch check(segment: r.segment(i), disk: disk) {
                case .failure(let why): return .reject(.error, reason: why)
                case .success(let count): total += UInt64(count)
                }
            }
            if let why = checkRange(sector: r.sectorNumber, count: total, disk: disk) { return .reject(.error, reason: why) }
            let ordered = r.operation == .writeBarrier || r.operation == .flushDiskCache
            return .transfer(write: write, sector: r.sectorNumber, segmentCount: n, indirectPages: 0,
                             flushBefore: ordered, flushAfter: r.operation == .writeBarrier)
        case .discard:
            guard disk.discard else { return .reject(.notSupported, reason: .discardUnsupported) }
            if disk.readOnly { return .reject(.error, reason: .readOnly) }
            let secure = r.discardFlags & BlockLimits.discardSecureFlag != 0
            if secure && !disk.secureDiscard { return .reject(.notSupported, reason: .secureDiscardUnsupported) }
            if let why = checkRange(sector: r.sectorNumber, count: r.discardSectorCount, disk: disk) { return .reject(.error, reason: why) }
            return .discard(sector: r.sectorNumber, count: r.discardSectorCount, secure: secure)
        case .indirect:
            guard disk.maximumIndirectSegments > 0 else { return .reject(.notSupported, reason: .unknownOperation) }
            let op = r.indirectOperation
            guard op == .read || op == .write else { return .reject(.error, reason: .badIndirectOperation) }
            if op == .write && disk.readOnly { return .reject(.error, reason: .readOnly) }
            let n = Int(r.indirectSegmentCount)
            guard n > 0 else { return .reject(.error, reason: .noSegments) }
            guard n <= disk.maximumIndirectSegments else { return .reject(.error, reason: .tooManySegments) }
            let pages = (n + BlockLimits.segmentsPerIndirectPage - 1) / BlockLimits.segmentsPerIndirectPage
            // The protocol's cap, whatever was advertised.
            guard pages <= BlockLimits.maxIndirectPagesPerRequest else { return .reject(.error, reason: .tooManySegments) }
            // The sector range is checked once the segments are known.
            return .transfer(write: op == .write, sector: r.sectorNumber, segmentCount: n, indirectPages: pages,
                             flushBefore: false, flushAfter: false)
        default:
            return .reject(.notSupported, reason: .unknownOperation)
        }
    }

    /// One segment: 0 ≤ first ≤ last ≤ 7, and whole logical sectors.
    /// Returns its 512-byte sector count.
    @inlinable
    public static func check(segment s: BlockSegment, disk: DiskGeometry) -> Result<Int, BlockRejection> {
        guard let count = s.sectorCount else { return .failure(.badSegment) }
        let perLogical = disk.logicalSectorSize / BlockLimits.ringSectorSize
        if perLogical > 1 && (Int(s.firstSector) % perLogical != 0 || count % perLogical != 0) { return .failure(.misaligned) }
        return .success(count)
    }

    /// sector + count within the disk, without overflow; aligned to the
    /// logical sector size.
    @inlinable
    public static func checkRange(sector: UInt64, count: UInt64, disk: DiskGeometry) -> BlockRejection? {
        let (end, overflow) = sector.addingReportingOverflow(count)
        if overflow || end > disk.sectors { return .beyondEndOfDisk }
        let perLogical = UInt64(disk.logicalSectorSize / BlockLimits.ringSectorSize)
        if perLogical > 1 && sector % perLogical != 0 { return .misaligned }
        return nil
    }
}

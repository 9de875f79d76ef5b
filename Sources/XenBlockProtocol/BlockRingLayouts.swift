import Synchronization
import XenRing

/// The x86_64 (native) blkif ring: 112-byte slots, 32 per page.
public enum BlockRingX86_64: RingLayout {
    public typealias Request = BlockRequest
    public typealias Response = BlockResponse
    public static var entrySize: Int { 112 }
    public static var requestSize: Int { 112 }
    public static var responseSize: Int { BlockResponse.x86_64Size }

    /// Copies the fields the request's operation has, each 8-byte word read
    /// once by a relaxed atomic load; words it does not have stay zero. The
    /// operation and segment count come from the private copy of word 0, so
    /// the frontend cannot change them between this copy and validation.
    @inlinable
    public static func copyRequest(fromShared slot: UnsafeRawPointer) -> BlockRequest {
        // SAFETY: slot is an 8-aligned 112-byte slot inside the borrowed ring
        // mapping, valid for the duration of this call. The frontend may
        // rewrite it meanwhile: each word is read once (relaxed; the caller's
        // acquiring req_prod load orders these after the index), and the
        // word count comes from our copy of word 0, never a re-read.
        let shared = slot.assumingMemoryBound(to: Atomic<UInt64>.self)
        var words = InlineArray<14, UInt64>(repeating: 0)
        let head = shared[0].load(ordering: .relaxed)
        words[0] = head
        words[1] = shared[1].load(ordering: .relaxed)
        words[2] = shared[2].load(ordering: .relaxed)
        let fieldWords: Int
        switch BlockOperation(rawValue: UInt8(truncatingIfNeeded: head)) {
        case .discard: fieldWords = 4
        case .indirect: fieldWords = 8
        default: fieldWords = 3 + min(Int(UInt8(truncatingIfNeeded: head >> 8)), BlockLimits.maxSegmentsPerRequest)
        }
        var i = 3
        while i < fieldWords {
            words[i] = shared[i].load(ordering: .relaxed)
            i += 1
        }
        return BlockRequest(words: words)
    }

    /// Like blkfront, publish only the fields the operation uses.
    @inlinable
    public static func wireLength(of request: BlockRequest) -> Int {
        requestLength(header: UInt32(truncatingIfNeeded: request.words[0]))
    }

    /// The leading bytes of a slot the operation's struct uses: the header
    /// and `nr_segments` segments (capped at 11; validation rejects more), or
    /// the whole discard/indirect struct.
    @inlinable
    public static func requestLength(header: UInt32) -> Int {
        switch BlockOperation(rawValue: UInt8(truncatingIfNeeded: header)) {
        case .discard: 32
        case .indirect: 64
        default: 24 + 8 * min(Int(UInt8(truncatingIfNeeded: header >> 8)), BlockLimits.maxSegmentsPerRequest)
        }
    }

    @inlinable
    public static func decodeRequest(from slot: UnsafeRawPointer) -> BlockRequest {
        // SAFETY: slot is a private copy of entrySize (112) bytes, 8-aligned.
        BlockRequest(words: slot.load(as: InlineArray<14, UInt64>.self))
    }

    @inlinable
    public static func encodeRequest(_ request: BlockRequest, into slot: UnsafeMutableRawPointer) {
        // SAFETY: slot is a private zeroed 112-byte staging buffer, 8-aligned.
        slot.storeBytes(of: request.words, as: InlineArray<14, UInt64>.self)
    }

    @inlinable
    public static func decodeResponse(from slot: UnsafeRawPointer) -> BlockResponse {
        decodeCommonResponse(from: slot)
    }

    @inlinable
    public static func encodeResponse(_ response: BlockResponse, into slot: UnsafeMutableRawPointer) {
        encodeCommonResponse(response, into: slot)
    }
}

/// The x86_32 blkif ring (`protocol` = `x86_32-abi`): i386 alignment puts
/// 64-bit fields on 4-byte boundaries, so requests are 108 bytes, still 32 per
/// page. Requests are converted to the x86_64 layout on the private copy, the
/// way Linux's `blkif_get_x86_32_req` does.
public enum BlockRingX86_32: RingLayout {
    public typealias Request = BlockRequest
    public typealias Response = BlockResponse
    public static var entrySize: Int { 108 }
    public static var requestSize: Int { 108 }
    public static var responseSize: Int { BlockResponse.x86_32Size }

    /// Field offsets of the i386 request layouts.
    public enum Offsets {
        @inlinable public static var id: Int { 4 }
        @inlinable public static var sectorNumber: Int { 12 }
        @inlinable public static var segments: Int { 20 }
        @inlinable public static var discardSectorCount: Int { 20 }
        @inlinable public static var indirectHandle: Int { 20 }
        @inlinable public static var indirectGrants: Int { 24 }
    }

    @inlinable
    public static func decodeRequest(from slot: UnsafeRawPointer) -> BlockRequest {
        // SAFETY: slot is a private copy of 108 bytes; 64-bit fields are only
        // 4-aligned, hence the unaligned loads.
        var words = InlineArray<14, UInt64>(repeating: 0)
        let head = slot.loadUnaligned(as: UInt32.self)  // operation, nr_segments/flag/indirect_op, handle/nr_segments
        words[1] = slot.loadUnaligned(fromByteOffset: Offsets.id, as: UInt64.self)
        words[2] = slot.loadUnaligned(fromByteOffset: Offsets.sectorNumber, as: UInt64.self)
        switch BlockOperation(rawValue: UInt8(truncatingIfNeeded: head)) {
        case .discard:
            words[0] = UInt64(head)
            words[3] = slot.loadUnaligned(fromByteOffset: Offsets.discardSectorCount, as: UInt64.self)
        case .indirect:
            words[0] = UInt64(head)
            let handle = UInt64(slot.loadUnaligned(fromByteOffset: Offsets.indirectHandle, as: UInt16.self))
            var native = handle
            // x86_64 grants start at byte 28: grant 0 shares word 3 with the handle.
            native |= UInt64(slot.loadUnaligned(fromByteOffset: Offsets.indirectGrants, as: UInt32.self)) << 32
            words[3] = native
            for pair in 0..<4 {
                // grants 1+2k and 2+2k fill word 4+k; grant 7 fills the low half of word 7.
                let lowIndex = 1 + 2 * pair
                let low = UInt64(slot.loadUnaligned(fromByteOffset: Offsets.indirectGrants + 4 * lowIndex, as: UInt32.self))
                let high = lowIndex + 1 < BlockLimits.maxIndirectPagesPerRequest
                    ? UInt64(slot.loadUnaligned(fromByteOffset: Offsets.indirectGrants + 4 * (lowIndex + 1), as: UInt32.self)) : 0
                words[4 + pair] = low | high << 32
            }
        default:
            // read, write, barrier, flush and unknown ops: the blkif_request layout.
            words[0] = UInt64(head)
            for i in 0..<BlockLimits.maxSegmentsPerRequest {
                words[3 + i] = slot.loadUnaligned(fromByteOffset: Offsets.segments + 8 * i, as: UInt64.self)
            }
        }
        return BlockRequest(words: words)
    }

    @inlinable
    public static func encodeRequest(_ request: BlockRequest, into slot: UnsafeMutableRawPointer) {
        // SAFETY: slot is a private zeroed staging buffer of at least 108
        // bytes; every offset written ends at or before byte 108.
        let words = request.words
        slot.storeBytes(of: UInt32(truncatingIfNeeded: words[0]), as: UInt32.self)
        slot.storeBytes(of: words[1], toByteOffset: Offsets.id, as: UInt64.self)
        slot.storeBytes(of: words[2], toByteOffset: Offsets.sectorNumber, as: UInt64.self)
        switch request.operation {
        case .discard:
            slot.storeBytes(of: words[3], toByteOffset: Offsets.discardSectorCount, as: UInt64.self)
        case .indirect:
            slot.storeBytes(of: request.indirectHandle, toByteOffset: Offsets.indirectHandle, as: UInt16.self)
            for i in 0..<BlockLimits.maxIndirectPagesPerRequest {
                slot.storeBytes(of: request.indirectGrant(i), toByteOffset: Offsets.indirectGrants + 4 * i, as: UInt32.self)
            }
        default:
            for i in 0..<BlockLimits.maxSegmentsPerRequest {
                slot.storeBytes(of: words[3 + i], toByteOffset: Offsets.segments + 8 * i, as: UInt64.self)
            }
        }
    }

    @inlinable
    public static func decodeResponse(from slot: UnsafeRawPointer) -> BlockResponse {
        decodeCommonResponse(from: slot)
    }

    @inlinable
    public static func encodeResponse(_ response: BlockResponse, into slot: UnsafeMutableRawPointer) {
        encodeCommonResponse(response, into: slot)
    }
}

/// Both ABIs put the response fields at 0, 8 and 10; they differ only in the
/// trailing padding (16 vs 12 bytes), which stays zero.
@inlinable
func decodeCommonResponse(from slot: UnsafeRawPointer) -> BlockResponse {
    // SAFETY: slot is a private copy of the response (12 or 16 bytes), so a
    // hostile backend cannot change it between these loads.
    BlockResponse(id: slot.loadUnaligned(as: UInt64.self),
                  operation: BlockOperation(rawValue: slot.load(fromByteOffset: 8, as: UInt8.self)),
                  status: BlockStatus(rawValue: slot.loadUnaligned(fromByteOffset: 10, as: Int16.self)))
}

@inlinable
func encodeCommonResponse(_ response: BlockResponse, into slot: UnsafeMutableRawPointer) {
    // SAFETY: slot is a private zeroed staging buffer; bytes 0..<12 written.
    slot.storeBytes(of: response.id, as: UInt64.self)
    slot.storeBytes(of: response.operation.rawValue, toByteOffset: 8, as: UInt8.self)
    slot.storeBytes(of: response.status.rawValue, toByteOffset: 10, as: Int16.self)
}

import Synchronization

/// The shared area of one ring: the io/ring.h header, then the entries.
///
/// Layout (little-endian, offsets in bytes):
///
/// | offset | field       | written by |
/// |--------|-------------|------------|
/// | 0      | `req_prod`  | frontend   |
/// | 4      | `req_event` | backend    |
/// | 8      | `rsp_prod`  | backend    |
/// | 12     | `rsp_event` | frontend   |
/// | 16     | `pvt` (4 B) + 44 B padding |  |
/// | 64     | entries     | both       |
///
/// The memory is borrowed: whoever made this value (a grant mapping, a test
/// page) owns the mapping and keeps it alive while any ring uses it. The peer
/// may write any byte at any moment, so every read of it goes through a relaxed
/// or acquiring atomic load and happens exactly once.
@frozen
public struct SharedRingMemory: @unchecked Sendable {
    /// Xen's page size; ring areas are whole pages.
    @inlinable public static var pageSize: Int { 4096 }
    /// io/ring.h allows any power-of-two page order; blkback caps it at 16 pages (order 4).
    @inlinable public static var maximumPageCount: Int { 16 }
    /// Entries start here, after the indices, `pvt` and padding.
    @inlinable public static var entriesOffset: Int { 64 }

    @inlinable static var requestProducerOffset: Int { 0 }
    @inlinable static var requestEventOffset: Int { 4 }
    @inlinable static var responseProducerOffset: Int { 8 }
    @inlinable static var responseEventOffset: Int { 12 }

    /// Start of the shared area (page-aligned for a real grant mapping).
    public let base: UnsafeMutableRawPointer
    public let byteCount: Int

    /// Wraps `byteCount` bytes at `base`. `base` must be 8-byte aligned.
    /// SAFETY: the caller owns the mapping and keeps all `byteCount` bytes
    /// mapped for as long as this value or any ring over it is used.
    public init(base: UnsafeMutableRawPointer, byteCount: Int) {
        precondition(Int(bitPattern: base) % 8 == 0, "ring memory must be 8-byte aligned")
        precondition(byteCount > SharedRingMemory.entriesOffset, "ring memory smaller than its header")
        self.base = base
        self.byteCount = byteCount
    }

    /// Wraps `pageCount` contiguous 4 KiB pages (a multi-page ring).
    public init(base: UnsafeMutableRawPointer, pageCount: Int) throws(RingError) {
        guard (1...SharedRingMemory.maximumPageCount).contains(pageCount) else {
            throw .invalidGeometry(
                byteCount: pageCount * SharedRingMemory.pageSize, entrySize: 0,
                reason: "ring must be 1...\(SharedRingMemory.maximumPageCount) pages, got \(pageCount)")
        }
        self.init(base: base, byteCount: pageCount * SharedRingMemory.pageSize)
    }

    /// Number of entries of `entrySize` bytes that fit, rounded down to a power
    /// of two (`__RING_SIZE` / `__RD32`).
    @inlinable
    public static func ringSize(byteCount: Int, entrySize: Int) -> UInt32 {
        let fitting = (byteCount - entriesOffset) / entrySize
        guard fitting > 0 else { return 0 }
        return UInt32(1) << (UInt32.bitWidth - 1 - UInt32(fitting).leadingZeroBitCount)
    }

    /// One header index as an atomic in the shared page.
    @inlinable
    func index(at offset: Int) -> UnsafePointer<Atomic<UInt32>> {
        // SAFETY: offset is one of the four 4-aligned header words inside the
        // borrowed mapping, which outlives this call; the peer writes it
        // concurrently, hence the atomic view.
        UnsafePointer((base + offset).assumingMemoryBound(to: Atomic<UInt32>.self))
    }

    /// Address of entry `slot` (already masked).
    @inlinable
    func entry(_ slot: UInt32, entrySize: Int) -> UnsafeMutableRawPointer {
        // SAFETY: callers pass a slot masked below the ring size, which
        // checkGeometry fitted into byteCount, so the entry is inside the
        // borrowed mapping. The peer writes it at will: callers only copy it
        // out or in through RingEntryBuffer's atomic word copies.
        base + SharedRingMemory.entriesOffset + Int(slot) &* entrySize
    }

    /// SHARED_RING_INIT (at index 0) or the same header at `index`:
    /// producers = index, events = index + 1, `pvt` and padding zeroed.
    /// Only the frontend initialises the header.
    @inlinable
    func initializeHeader(at index: RingIndex) {
        // SAFETY: bytes 16..<64 of the borrowed mapping (init checked it is
        // larger than the header). Plain stores: the ring is not shared with
        // the backend until the frontend advertises it.
        (base + 16).initializeMemory(as: UInt8.self, repeating: 0, count: SharedRingMemory.entriesOffset - 16)
        // Relaxed: nothing is published yet; the ring is handed over through
        // xenstore, whose messages order these stores for the backend.
        self.index(at: Self.requestProducerOffset).pointee.store(index.rawValue, ordering: .relaxed)
        self.index(at: Self.responseProducerOffset).pointee.store(index.rawValue, ordering: .relaxed)
        self.index(at: Self.requestEventOffset).pointee.store((index &+ 1).rawValue, ordering: .relaxed)
        self.index(at: Self.responseEventOffset).pointee.store((index &+ 1).rawValue, ordering: .relaxed)
    }
}

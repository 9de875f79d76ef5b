import Synchronization

/// The wire format of one ring type (what `DEFINE_RING_TYPES` names in C):
/// the size of a slot (the union of request and response) and how each
/// message is decoded from, and encoded into, the bytes of a slot.
///
/// Decoding always reads a private copy of the slot, never the shared page;
/// encoding always writes into a zeroed private slot that is then copied out.
public protocol RingLayout {
    associatedtype Request
    associatedtype Response
    /// `sizeof(union entry)`: the stride between slots. A multiple of 4, at
    /// most `RingEntryBuffer.capacity`.
    static var entrySize: Int { get }
    /// `sizeof(request)`: the bytes a backend copies out of a slot before
    /// decoding. A multiple of 4, at most `entrySize`.
    static var requestSize: Int { get }
    /// `sizeof(response)`, padding included: the bytes a backend writes for a
    /// response (all of them, padding zeroed) and a frontend copies out.
    static var responseSize: Int { get }
    /// The leading bytes of `request` a frontend must publish: the fields it
    /// uses (`requestSize` unless the layout knows better, as blkfront only
    /// fills the segments it uses).
    static func wireLength(of request: Request) -> Int
    /// Copies a request out of a shared slot, reading each byte it uses
    /// exactly once (relaxed atomic loads), and decodes the private result.
    /// The default copies `requestSize` bytes; a layout may copy only the
    /// fields the request's own first word says it has, as Linux's
    /// `blkif_get_x86_64_req` does, to touch fewer of the peer's cache lines.
    static func copyRequest(fromShared slot: UnsafeRawPointer) -> Request
    /// Decodes a request from a private copy of a slot (`entrySize` bytes).
    static func decodeRequest(from slot: UnsafeRawPointer) -> Request
    /// Encodes a request into a zeroed private slot (`entrySize` bytes).
    static func encodeRequest(_ request: Request, into slot: UnsafeMutableRawPointer)
    /// Decodes a response from a private copy of a slot.
    static func decodeResponse(from slot: UnsafeRawPointer) -> Response
    /// Encodes a response into a zeroed private slot.
    static func encodeResponse(_ response: Response, into slot: UnsafeMutableRawPointer)
}

/// Private, stack-resident room for one slot: the copy that is validated, so
/// that the peer cannot change a field between check and use (XSA-155).
@frozen
public struct RingEntryBuffer {
    @inlinable public static var capacity: Int { 128 }
    @usableFromInline var words: InlineArray<16, UInt64>

    @inlinable
    public init() { words = InlineArray(repeating: 0) }

    /// Copies bytes `range` of a shared slot into the same bytes of this
    /// buffer, each word read once by a relaxed atomic load, so the compiler
    /// can neither re-read the guest's memory later nor tear a field it has
    /// checked. Ordering against the producer index comes from the caller's
    /// acquiring load of that index. `wideWords`: the slot is 8-byte aligned
    /// and the range a multiple of 8, so 8-byte loads may be used.
    @inlinable
    public mutating func copy(fromShared source: UnsafeRawPointer, bytes range: Range<Int>, wideWords: Bool) {
        // SAFETY: `destination` is this buffer's own 128 bytes, borrowed for
        // the closure; `range` lies within the slot (and within capacity,
        // checked by checkGeometry), which the caller keeps mapped.
        withUnsafeMutableBytes { destination in
            if wideWords && (range.lowerBound | range.upperBound) & 7 == 0 {
                for offset in stride(from: range.lowerBound, to: range.upperBound, by: 8) {
                    // SAFETY: source is an 8-aligned slot inside the borrowed ring mapping.
                    let word = (source + offset).assumingMemoryBound(to: Atomic<UInt64>.self).pointee.load(ordering: .relaxed)
                    destination.storeBytes(of: word, toByteOffset: offset, as: UInt64.self)
                }
            } else {
                for offset in stride(from: range.lowerBound, to: range.upperBound, by: 4) {
                    // SAFETY: source is a 4-aligned slot inside the borrowed ring mapping.
                    let word = (source + offset).assumingMemoryBound(to: Atomic<UInt32>.self).pointee.load(ordering: .relaxed)
                    destination.storeBytes(of: word, toByteOffset: offset, as: UInt32.self)
                }
            }
        }
    }

    /// Writes `byteCount` bytes of this buffer into a shared slot. The peer may
    /// be reading it (a hostile one may), so the stores are atomic too; the
    /// caller's releasing store of the producer index publishes them.
    @inlinable
    public func copy(toShared destination: UnsafeMutableRawPointer, byteCount: Int, wideWords: Bool) {
        // SAFETY: `source` is this buffer, borrowed for the closure; plain
        // loads are fine there, it is private. `byteCount` is at most the
        // slot's size (checkGeometry), and the caller keeps the slot mapped.
        withUnsafeBytes { source in
            if wideWords && byteCount & 7 == 0 {
                for offset in stride(from: 0, to: byteCount, by: 8) {
                    let word = source.load(fromByteOffset: offset, as: UInt64.self)
                    // SAFETY: destination is an 8-aligned slot inside the borrowed ring mapping.
                    (destination + offset).assumingMemoryBound(to: Atomic<UInt64>.self).pointee.store(word, ordering: .relaxed)
                }
            } else {
                for offset in stride(from: 0, to: byteCount, by: 4) {
                    let word = source.load(fromByteOffset: offset, as: UInt32.self)
                    // SAFETY: destination is a 4-aligned slot inside the borrowed ring mapping.
                    (destination + offset).assumingMemoryBound(to: Atomic<UInt32>.self).pointee.store(word, ordering: .relaxed)
                }
            }
        }
    }

    /// Scoped access to the private bytes; the pointer must not escape `body`.
    @inlinable
    public mutating func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawPointer) throws -> R) rethrows -> R {
        // SAFETY: points at `words`, exclusively borrowed for the call; an
        // InlineArray of UInt64 is contiguous, 8-aligned and trivially typed.
        try Swift.withUnsafeMutablePointer(to: &words) { try body(UnsafeMutableRawPointer($0)) }
    }

    /// Scoped read-only access to the private bytes.
    @inlinable
    public func withUnsafeBytes<R>(_ body: (UnsafeRawPointer) throws -> R) rethrows -> R {
        // SAFETY: a read-only view of (a copy of) `words`, valid during `body` only.
        try Swift.withUnsafePointer(to: words) { try body(UnsafeRawPointer($0)) }
    }
}

extension RingLayout {
    @inlinable
    public static func wireLength(of request: Request) -> Int { requestSize }

    @inlinable
    public static func copyRequest(fromShared slot: UnsafeRawPointer) -> Request {
        // SAFETY: reads `requestSize` bytes of the shared slot once into a
        // private stack copy; decoding sees only the copy, never the slot.
        var copy = RingEntryBuffer()
        copy.copy(fromShared: slot, bytes: 0..<requestSize, wideWords: slotsAreEightByteAligned)
        return copy.withUnsafeBytes { decodeRequest(from: $0) }
    }

    /// Slots start at 64 + i * entrySize in a page-aligned area.
    @inlinable
    static var slotsAreEightByteAligned: Bool { entrySize & 7 == 0 }

    @inlinable
    static func checkGeometry(_ memory: SharedRingMemory) throws(RingError) -> UInt32 {
        guard entrySize > 0, entrySize % 4 == 0, entrySize <= RingEntryBuffer.capacity,
              requestSize % 4 == 0, requestSize <= entrySize, responseSize % 4 == 0, responseSize <= entrySize else {
            throw .invalidGeometry(byteCount: memory.byteCount, entrySize: entrySize,
                                   reason: "entry, request and response sizes must be multiples of 4, requests and responses no larger than the entry, entries at most \(RingEntryBuffer.capacity)")
        }
        let size = SharedRingMemory.ringSize(byteCount: memory.byteCount, entrySize: entrySize)
        guard size > 0 else {
            throw .invalidGeometry(byteCount: memory.byteCount, entrySize: entrySize, reason: "no entry fits")
        }
        return size
    }

    @inlinable
    static func copyResponse(from slot: UnsafeRawPointer) -> Response {
        // SAFETY: as copyRequest: one read of the shared slot into a private
        // copy, which alone is decoded.
        var copy = RingEntryBuffer()
        copy.copy(fromShared: slot, bytes: 0..<responseSize, wideWords: slotsAreEightByteAligned)
        return copy.withUnsafeBytes { decodeResponse(from: $0) }
    }

    /// Encodes into a zeroed private buffer and writes every byte of the
    /// response, padding included, so no stale byte reaches the frontend
    /// (XSA-216). The rest of the slot still holds the frontend's own request
    /// bytes, which it wrote and we only read: nothing of ours is left there.
    @inlinable
    static func writeResponse(_ response: Response, to slot: UnsafeMutableRawPointer) {
        // SAFETY: encoding writes only the private zeroed buffer (entrySize
        // <= capacity); the one write to the shared slot is the copy below.
        var staged = RingEntryBuffer()
        staged.withUnsafeMutableBytes { encodeResponse(response, into: $0) }
        staged.copy(toShared: slot, byteCount: responseSize, wideWords: slotsAreEightByteAligned)
    }

    @inlinable
    static func writeRequest(_ request: Request, to slot: UnsafeMutableRawPointer) {
        // SAFETY: as writeResponse: encode privately, then one copy into the
        // slot, rounded up to whole 4-byte words still within the slot.
        var staged = RingEntryBuffer()
        staged.withUnsafeMutableBytes { encodeRequest(request, into: $0) }
        staged.copy(toShared: slot, byteCount: (wireLength(of: request) + 3) & ~3, wideWords: slotsAreEightByteAligned)
    }
}

import Synchronization
import XenBlockProtocol
import XenRing
import XenSystem
#if canImport(Glibc)
import Glibc
#endif

/// Why a ring's record cannot be used to resume it.
public enum BlockRingRecordError: Error, Equatable, Sendable, CustomStringConvertible {
    case system(path: String, operation: String, errno: Int32)
    /// No record, or one made for another ring or by an incompatible version.
    case mismatch(path: String, why: String)

    public var description: String {
        switch self {
        case .system(let path, let op, let e): "\(path): \(op) failed: \(String(cString: strerror(e)))"
        case .mismatch(let path, let why): "\(path): \(why)"
        }
    }
}

/// What only a ring's backend knows, kept where the backend's death does not
/// take it (a file on tmpfs, mapped shared: stores reach the page cache with
/// no system call, and a killed process leaves them there): a copy of every
/// request taken off the ring and not yet answered in the shared `rsp_prod`.
///
/// A request is recorded before it is acted on; its response's index is
/// recorded before the response is written; the record is let go once
/// `rsp_prod` covers it. A new backend therefore finds, for each recorded
/// request, either an answer the frontend has seen (dropped) or a request
/// still owed (done again: reads and writes are idempotent), and the ring's
/// request consumer is `rsp_prod` plus the number owed. A request taken but
/// not yet recorded is still intact in its ring slot (responses land only in
/// slots of earlier requests), so it is simply taken again.
///
/// Layout (little-endian): a 64-byte header — magic "XBRR", version,
/// slot count, slot size, the ring's identity (frontend, ABI, grant refs,
/// port) — then one 128-byte slot per ring entry: state, ring index,
/// response index, checksum, the request's 112 bytes. The state word is
/// stored last, with release ordering; a checksum over the ring index and the request detects a
/// torn slot.
public final class BlockRingRecord: @unchecked Sendable {  // written by its ring's worker only; the device just deletes the file once the worker stopped
    public let path: String
    public let slotCount: Int
    /// SAFETY: the file's mapping, owned here until deinit; only this
    /// process (the ring's worker thread) writes it while it lives.
    private let memory: MappedMemory
    private let freeSlots: UnsafeMutableBufferPointer<Int32>
    private var freeCount: Int

    static var magic: UInt32 { 0x5252_4258 }  // "XBRR"
    static var version: UInt32 { 1 }
    static var headerBytes: Int { 64 }
    static var slotBytes: Int { 128 }
    enum SlotState: UInt32 { case free = 0, taken = 1, answered = 2 }

    /// The identity a record must carry to resume this ring.
    public static func identity(frontend: UInt16, abi: BlockProtocolABI, ringRefs: [UInt32], remotePort: UInt32) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix(_ v: UInt64) { for i in 0..<8 { hash = (hash ^ ((v >> UInt64(8 * i)) & 0xff)) &* 0x100_0000_01b3 } }
        mix(UInt64(frontend)); mix(abi == .x86_64 ? 64 : 32); mix(UInt64(remotePort)); mix(UInt64(ringRefs.count))
        for r in ringRefs { mix(UInt64(r)) }
        return hash
    }

    /// A fresh record for a new connection (any old one at `path` is replaced).
    public init(creatingAt path: String, slotCount: Int, identity: UInt64) throws(BlockRingRecordError) {
        self.path = path
        self.slotCount = slotCount
        let length = Self.headerBytes + slotCount * Self.slotBytes
        memory = try Self.map(path, length: length, create: true)
        // SAFETY: the header and slot words of our own mapping, all in range.
        memory.base.initializeMemory(as: UInt8.self, repeating: 0, count: length)
        memory.base.storeBytes(of: Self.magic, toByteOffset: 0, as: UInt32.self)
        memory.base.storeBytes(of: Self.version, toByteOffset: 4, as: UInt32.self)
        memory.base.storeBytes(of: UInt32(slotCount), toByteOffset: 8, as: UInt32.self)
        memory.base.storeBytes(of: UInt32(Self.slotBytes), toByteOffset: 12, as: UInt32.self)
        memory.base.storeBytes(of: identity, toByteOffset: 16, as: UInt64.self)
        freeSlots = .allocate(capacity: slotCount)
        for i in 0..<slotCount { freeSlots[i] = Int32(slotCount - 1 - i) }
        freeCount = slotCount
    }

    /// The record a previous backend left for this ring; throws if there is
    /// none or it was made for another ring or format.
    public init(resumingAt path: String, slotCount: Int, identity: UInt64) throws(BlockRingRecordError) {
        self.path = path
        self.slotCount = slotCount
        let length = Self.headerBytes + slotCount * Self.slotBytes
        var st = stat()
        guard stat(path, &st) == 0 else { throw .mismatch(path: path, why: "no record of the ring (\(String(cString: strerror(errno))))") }
        guard Int(st.st_size) == length else { throw .mismatch(path: path, why: "\(st.st_size) bytes, expected \(length) for \(slotCount) slots") }
        memory = try Self.map(path, length: length, create: false)
        // SAFETY: header words of our own mapping, read once each.
        let magic = memory.base.load(fromByteOffset: 0, as: UInt32.self)
        let version = memory.base.load(fromByteOffset: 4, as: UInt32.self)
        let slots = memory.base.load(fromByteOffset: 8, as: UInt32.self)
        let stored = memory.base.load(fromByteOffset: 16, as: UInt64.self)
        guard magic == Self.magic else { throw .mismatch(path: path, why: "not a ring record") }
        guard version == Self.version else { throw .mismatch(path: path, why: "record version \(version); this xenbackd reads version \(Self.version)") }
        guard Int(slots) == slotCount else { throw .mismatch(path: path, why: "record of \(slots) slots, the ring has \(slotCount)") }
        guard stored == identity else { throw .mismatch(path: path, why: "record of another connection (its grant refs or port differ)") }
        freeSlots = .allocate(capacity: slotCount)
        freeCount = 0
        // Free slots are found by `owed`; until then none is handed out.
    }

    private static func map(_ path: String, length: Int, create: Bool) throws(BlockRingRecordError) -> MappedMemory {
        let fd = Glibc.open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_TRUNC : 0), 0o600)
        guard fd >= 0 else { throw .system(path: path, operation: "open", errno: errno) }
        defer { Syscall.close(fd) }
        if create && ftruncate(fd, off_t(length)) != 0 { throw .system(path: path, operation: "ftruncate", errno: errno) }
        do { return try MappedMemory(file: fd, length: length) } catch { throw .system(path: path, operation: "mmap", errno: error.code) }
    }

    deinit { freeSlots.deallocate() }

    /// Deletes the file (the connection ended cleanly: nothing is owed).
    public func remove() { unlink(path) }

    /// SAFETY: slot `i` (< slotCount) of our own mapping.
    private func slot(_ i: Int) -> UnsafeMutableRawPointer { memory.base + Self.headerBytes + i * Self.slotBytes }

    /// Release: the slot's words are visible before its state says they count
    /// (to a reader that maps the file after we died, the page cache holds
    /// both; the ordering keeps a torn slot marked free).
    private func setState(_ i: Int, _ state: SlotState) {
        UnsafeMutablePointer((slot(i)).assumingMemoryBound(to: Atomic<UInt32>.self)).pointee.store(state.rawValue, ordering: .releasing)
    }

    private func state(_ i: Int) -> UInt32 {
        UnsafeMutablePointer((slot(i)).assumingMemoryBound(to: Atomic<UInt32>.self)).pointee.load(ordering: .acquiring)
    }

    /// Over the ring index and the request: what a torn copy would garble.
    /// The response index is one aligned word stored before the state word
    /// that makes it count, so it needs no checksum.
    private func checksum(_ i: Int) -> UInt32 {
        let s = slot(i)
        var hash: UInt32 = 0x811c_9dc5
        for offset in stride(from: 4, to: Self.slotBytes, by: 4) where offset != 8 && offset != 12 {
            hash = (hash ^ s.load(fromByteOffset: offset, as: UInt32.self)) &* 0x0100_0193
        }
        return hash
    }

    /// Whether another request can be recorded. An honest frontend never
    /// has more than a ring's worth owed; a hostile one that publishes
    /// requests before it saw our answers is made to wait for the next push.
    public var hasRoom: Bool { freeCount > 0 }

    /// Records a request just taken off the ring at `ringIndex`, before it is
    /// acted on; returns its record slot (take only while `hasRoom`).
    public func recordTaken(_ request: BlockRequest, ringIndex: RingIndex) -> Int {
        guard freeCount > 0 else { return -1 }
        freeCount -= 1
        let i = Int(freeSlots[freeCount])
        let s = slot(i)
        s.storeBytes(of: ringIndex.rawValue, toByteOffset: 4, as: UInt32.self)
        request.store(to: s + 16)
        s.storeBytes(of: checksum(i), toByteOffset: 12, as: UInt32.self)
        setState(i, .taken)
        return i
    }

    /// The request's response goes to ring index `responseIndex`; recorded
    /// before it is written there.
    public func recordAnswered(_ i: Int, responseIndex: RingIndex) {
        let s = slot(i)
        s.storeBytes(of: responseIndex.rawValue, toByteOffset: 8, as: UInt32.self)
        setState(i, .answered)
    }

    /// `rsp_prod` now covers the slot's answer: nothing is owed for it.
    public func release(_ i: Int) {
        setState(i, .free)
        freeSlots[freeCount] = Int32(i)
        freeCount += 1
    }

    /// What a previous backend owed, in ring order, given the `rsp_prod`
    /// the frontend was told (`published`): requests taken and not answered,
    /// and answers not yet covered by `published`. Answered-and-published
    /// slots and torn ones (their checksum fails: the request was never acted
    /// on and is still on the ring) are freed. Call once, on resume.
    public func owed(published: RingIndex) -> [(slot: Int, ringIndex: RingIndex, request: BlockRequest)] {
        var owed: [(slot: Int, ringIndex: RingIndex, request: BlockRequest)] = []
        freeCount = 0
        for i in 0..<slotCount {
            let s = slot(i)
            let state = state(i)
            let ringIndex = RingIndex(s.load(fromByteOffset: 4, as: UInt32.self))
            let responseIndex = RingIndex(s.load(fromByteOffset: 8, as: UInt32.self))
            let intact = s.load(fromByteOffset: 12, as: UInt32.self) == checksum(i)
            // An answer at or past `published` was written but not published.
            let stillOwed = intact && (state == SlotState.taken.rawValue
                || (state == SlotState.answered.rawValue && (responseIndex &- published) < UInt32(slotCount)))
            if stillOwed {
                owed.append((i, ringIndex, BlockRequest(storedAt: s + 16)))
                setState(i, .taken)
            } else {
                setState(i, .free)
                freeSlots[freeCount] = Int32(i)
                freeCount += 1
            }
        }
        // Owed requests lie within a ring's length before req_cons, which is
        // at most a ring past `published`: order them from a ring before it.
        let base = RingIndex(published.rawValue &- UInt32(slotCount))
        return owed.sorted { ($0.ringIndex &- base) < ($1.ringIndex &- base) }
    }
}

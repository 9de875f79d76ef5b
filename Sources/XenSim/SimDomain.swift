import Synchronization
import XenPlatform
#if canImport(Glibc)
import Glibc
#endif

/// Grant entry flags (GTF_*), v1 layout: flags u16 @0, domid u16 @2, frame u32 @4.
enum GrantFlags {
    static let permitAccess: UInt16 = 1
    static let typeMask: UInt16 = 3
    static let readOnly: UInt16 = 1 << 2
    static let reading: UInt16 = 1 << 3
    static let writing: UInt16 = 1 << 4
    static let subPage: UInt16 = 1 << 8
    static let entrySize = 8
    /// Not a Xen flag: marks an entry a guest-side process has taken while it
    /// fills it in (the type bits stay 0, so Xen would see it as invalid).
    static let claimed: UInt16 = 1 << 15
    /// GNTTAB_NR_RESERVED_ENTRIES: refs 0-7 belong to the toolstack.
    static let reservedEntries: UInt32 = 8
}

/// A simulated guest domain: its memory, its v1 grant table (both in
/// memfds, as shared memory) and the guest-side grant calls a frontend
/// makes. The hypervisor (`SimHypervisor`) reads the grant table the way
/// Xen does, with atomic accesses, and sets the busy bits while a grant is
/// mapped or copied.
public final class SimDomain: GuestDomain, @unchecked Sendable {
    public let id: DomainID
    public let pageCount: Int
    let memory: SharedPages
    let grantTable: SharedPages
    let grantEntryCount: UInt32
    /// This process's pin counts per ref, in a memfd the sim server also
    /// maps, so that it can release them when this process dies (as Xen does
    /// when a dead process's gntdev file closes). Only in a `SimClient`.
    let pinLedger: SharedPages?
    weak var hypervisor: SimHypervisor?
    /// The guest's free refs, and those whose revocation waits for a backend
    /// to let go (Linux's deferred end_foreign_access).
    private let freeRefs: Mutex<(free: [UInt32], deferred: [UInt32])>

    init(id: DomainID, pageCount: Int, grantEntries: UInt32, hypervisor: SimHypervisor) throws(SimError) {
        self.id = id
        self.pageCount = pageCount
        memory = try SharedPages(name: "xenback-dom\(id.rawValue)-memory", pageCount: pageCount)
        let tablePages = (Int(grantEntries) * GrantFlags.entrySize + 4095) / 4096
        grantTable = try SharedPages(name: "xenback-dom\(id.rawValue)-grants", pageCount: tablePages)
        grantEntryCount = grantEntries
        pinLedger = nil
        self.hypervisor = hypervisor
        freeRefs = Mutex((Array((GrantFlags.reservedEntries..<grantEntries).reversed()), []))
    }

    /// A domain whose memory and grant table another process created.
    init(id: DomainID, memory: SharedPages, grantTable: SharedPages, grantEntries: UInt32, pinLedger: SharedPages?,
         hypervisor: SimHypervisor) {
        precondition(pinLedger.map { $0.pageCount * 4096 >= Int(grantEntries) * 4 } ?? true)
        self.id = id
        self.pageCount = memory.pageCount
        self.memory = memory
        self.grantTable = grantTable
        grantEntryCount = grantEntries
        self.pinLedger = pinLedger
        self.hypervisor = hypervisor
        freeRefs = Mutex((Array((GrantFlags.reservedEntries..<grantEntries).reversed()), []))
    }

    /// The guest's own view of page `frame` (valid while the domain lives).
    /// SAFETY: the domain's SharedPages own the mapping; backends may map
    /// the same page at any time, so it is shared memory, not private.
    public func page(_ frame: UInt32) -> UnsafeMutableRawPointer {
        precondition(Int(frame) < pageCount, "frame \(frame) outside \(pageCount) pages")
        return memory.page(frame)
    }

    func flags(_ ref: UInt32) -> UnsafePointer<Atomic<UInt16>> {
        // SAFETY: ref < grantEntryCount (checked by callers); the table
        // mapping lives as long as the domain. Guest and backends change the
        // flags concurrently, so they are only ever touched atomically.
        UnsafePointer((grantTable.base + Int(ref) * GrantFlags.entrySize).assumingMemoryBound(to: Atomic<UInt16>.self))
    }

    /// Publishes this process's pins of `ref` (readers in the high half,
    /// writers in the low) for the sim server. Releasing, though the server
    /// reads a ledger only once its writer's connection has closed.
    func recordPins(_ ref: UInt32, readers: Int, writers: Int) {
        guard let pinLedger else { return }
        // SAFETY: ref < grantEntryCount and the ledger holds a word per entry
        // (checked in init); it is mapped for the domain's life.
        let word = (pinLedger.base + Int(ref) * 4).assumingMemoryBound(to: Atomic<UInt32>.self)
        word.pointee.store(UInt32(min(readers, 0xFFFF)) << 16 | UInt32(min(writers, 0xFFFF)), ordering: .releasing)
    }

    // Relaxed: read after an acquiring load or exchange of the entry's flags,
    // which the guest stored (releasing) after these fields. SAFETY: ref <
    // grantEntryCount (callers check), inside the domain's table mapping; the
    // guest may rewrite the entry at any time, so callers read each field
    // once and check that copy.
    func entryDomain(_ ref: UInt32) -> UInt16 {
        (grantTable.base + Int(ref) * GrantFlags.entrySize + 2).assumingMemoryBound(to: Atomic<UInt16>.self).pointee.load(ordering: .relaxed)
    }

    func entryFrame(_ ref: UInt32) -> UInt32 {
        (grantTable.base + Int(ref) * GrantFlags.entrySize + 4).assumingMemoryBound(to: Atomic<UInt32>.self).pointee.load(ordering: .relaxed)
    }

    /// gnttab_grant_foreign_access: lets `domain` map or copy page `frame`.
    public func grantAccess(to domain: DomainID, frame: UInt32, readOnly: Bool) throws(SimError) -> GrantRef {
        guard Int(frame) < pageCount else { throw .frameOutOfRange(frame, pageCount: pageCount) }
        // Several processes may act for one guest (a frontend each), each with
        // its own free list over the shared table: an entry is ours only once
        // we swing its flags from 0 (unused) to claimed; one another process
        // took is dropped from our list.
        while let ref = freeRefs.withLock({ refs -> UInt32? in
            if refs.free.isEmpty { retryDeferred(&refs) }
            return refs.free.popLast()
        }) {
            // Acquire-release: the claim orders against other processes'
            // claims and revocations of the same entry.
            let (exchanged, _) = flags(ref).pointee.compareExchange(expected: 0, desired: GrantFlags.claimed, ordering: .acquiringAndReleasing)
            guard exchanged else { continue }
            writeEntry(ref, domain: domain.rawValue, frame: frame,
                       flags: GrantFlags.permitAccess | (readOnly ? GrantFlags.readOnly : 0))
            return GrantRef(ref)
        }
        throw .grantTableFull(id.rawValue)
    }

    /// Writes an entry the way a guest does: domid and frame first, then the
    /// flags with a releasing store so Xen never sees the flags before them.
    /// Tests use it to plant arbitrary (hostile) entries too.
    public func writeEntry(_ ref: UInt32, domain: UInt16, frame: UInt32, flags value: UInt16) {
        precondition(ref < grantEntryCount)
        // SAFETY: ref checked above, inside the table mapping the domain
        // owns. Relaxed stores of domid and frame, then a releasing store of
        // the flags publishes them to whoever acquires the flags.
        let entry = grantTable.base + Int(ref) * GrantFlags.entrySize
        (entry + 2).assumingMemoryBound(to: Atomic<UInt16>.self).pointee.store(domain, ordering: .relaxed)
        (entry + 4).assumingMemoryBound(to: Atomic<UInt32>.self).pointee.store(frame, ordering: .relaxed)
        flags(ref).pointee.store(value, ordering: .releasing)
    }

    /// gnttab_end_foreign_access: revokes the grant unless a mapping or copy
    /// holds it (the reading/writing bits are set); false then, as Linux's
    /// gnttab_end_foreign_access_ref reports, and the grant stays.
    public func endForeignAccess(_ ref: GrantRef) -> Bool {
        guard ref.rawValue < grantEntryCount, tryEnd(ref.rawValue) else { return false }
        if ref.rawValue >= GrantFlags.reservedEntries {
            freeRefs.withLock { $0.free.append(ref.rawValue) }
        }
        return true
    }

    /// Revokes the grant, or, while a backend still holds it, keeps it to
    /// retry when the free list runs dry: a frontend giving up on a dead or
    /// stuck backend must not lose the entry for good (Linux defers such
    /// refs the same way). Returns whether it was revoked now.
    @discardableResult
    public func endForeignAccessOrDefer(_ ref: GrantRef) -> Bool {
        if endForeignAccess(ref) { return true }
        guard ref.rawValue >= GrantFlags.reservedEntries, ref.rawValue < grantEntryCount else { return false }
        freeRefs.withLock { $0.deferred.append(ref.rawValue) }
        return false
    }

    /// Refs still waiting for a backend to let go.
    public var deferredRevocations: Int { freeRefs.withLock { $0.deferred.count } }

    /// Moves every deferred ref no longer held to the free list; bounded by
    /// the deferred list, which holds each ref at most once.
    private func retryDeferred(_ refs: inout (free: [UInt32], deferred: [UInt32])) {
        var stillHeld: [UInt32] = []
        for ref in refs.deferred {
            if tryEnd(ref) { refs.free.append(ref) } else { stillHeld.append(ref) }
        }
        refs.deferred = stillHeld
    }

    /// Clears the entry unless the busy bits say a mapping or copy holds it.
    private func tryEnd(_ ref: UInt32) -> Bool {
        // Acquiring load and acquire-release exchange: a backend's busy bits
        // (set with an exchange, cleared with a releasing AND) are seen
        // before the entry is cleared for reuse.
        var current = flags(ref).pointee.load(ordering: .acquiring)
        while true {
            if current & (GrantFlags.reading | GrantFlags.writing) != 0 { return false }
            let (exchanged, original) = flags(ref).pointee.compareExchange(
                expected: current, desired: 0, ordering: .acquiringAndReleasing)
            if exchanged { return true }
            current = original
        }
    }

    /// The guest side of event channels: a device for this domain.
    public func openEventChannels() throws(EventChannelError) -> SimEventChannelDevice {
        guard let hypervisor else { throw .system(operation: "open", errno: ENODEV) }
        return try SimEventChannelDevice(hypervisor: hypervisor, domain: id)
    }

    public func openGuestEventChannels() throws -> any GuestEventChannelDevice { try openEventChannels() }
}

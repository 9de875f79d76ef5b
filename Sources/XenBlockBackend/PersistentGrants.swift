import XenPlatform

/// The persistent grants of one ring (feature-persistent): guest pages the
/// frontend keeps granted and reuses, mapped on first use and kept mapped
/// until the ring goes, so their data moves with no grant operation at all.
///
/// A flat open-addressing table keyed by grant reference with a fixed
/// capacity (Linux's max_persistent_grants, 1056 by default): nothing is
/// allocated after init. When it is full, the least recently used entry
/// that no request holds is unmapped to make room if it has been idle for
/// a while (Linux purges unused grants on a timer; we count lookups); else
/// the request falls back to grant copy. The scan is O(capacity), bounded,
/// and happens only on a miss with a full table. Owned by the ring's
/// worker thread.
final class PersistentGrantTable<Grants: GrantOperations> {
    struct Entry {
        var ref: UInt32 = 0
        var page: UnsafeMutableRawPointer? = nil
        var mapping: GrantMapping? = nil
        var lastUse: UInt64 = 0
        /// Requests in flight using the page.
        var holders: Int32 = 0
    }
    let capacity: Int
    /// SAFETY: both tables are owned here (allocated in init, freed in
    /// deinit) and used only by the ring's worker thread.
    private let entries: UnsafeMutableBufferPointer<Entry>
    /// Open addressing over `buckets` (a power of two ≥ 2·capacity): entry
    /// index + 1, 0 empty, -1 deleted.
    private let buckets: UnsafeMutableBufferPointer<Int32>
    private var used = 0
    private var clock: UInt64 = 0
    private let grants: Grants
    private let domain: DomainID
    /// Counters for statistics: maps made, evictions, lookups that fell back.
    private(set) var maps: UInt64 = 0
    private(set) var evictions: UInt64 = 0

    init(capacity: Int, grants: Grants, domain: DomainID) {
        self.capacity = capacity
        self.grants = grants
        self.domain = domain
        entries = .allocate(capacity: max(capacity, 1))
        entries.initialize(repeating: Entry())
        var n = 16
        while n < 2 * capacity { n <<= 1 }
        buckets = .allocate(capacity: n)
        buckets.initialize(repeating: 0)
    }

    /// Unmaps every page (the ring is going; nothing is in flight).
    func unmapAll() {
        for i in 0..<used { if let m = entries[i].mapping { try? grants.unmap(m) } }
        entries.update(repeating: Entry())
        buckets.update(repeating: 0)
        used = 0
    }

    deinit {
        unmapAll()
        entries.deallocate()
        buckets.deallocate()
    }

    var count: Int { used }

    @inline(__always)
    private func bucket(_ ref: UInt32) -> Int {
        // Fibonacci hashing: refs are small consecutive numbers.
        Int(truncatingIfNeeded: (UInt64(ref) &* 0x9E37_79B9_7F4A_7C15) >> 32) & (buckets.count - 1)
    }

    private func find(_ ref: UInt32) -> (slot: Int, entry: Int?) {
        var b = bucket(ref)
        var firstFree = -1
        // Bounded by the bucket count.
        for _ in 0..<buckets.count {
            let v = buckets[b]
            if v == 0 { return (firstFree >= 0 ? firstFree : b, nil) }
            if v < 0 { if firstFree < 0 { firstFree = b } }
            else if entries[Int(v) - 1].ref == ref { return (b, Int(v) - 1) }
            b = (b + 1) & (buckets.count - 1)
        }
        return (firstFree, nil)
    }

    /// The page granted as `ref`, mapped writable, held for one request
    /// (give it back with `release`); nil if it cannot be mapped or the
    /// table is full of held entries.
    /// SAFETY: the page stays mapped while held: an entry with holders is
    /// never evicted, and `unmapAll` runs only once nothing is in flight.
    /// The guest may change its bytes at any time (it is the guest's data).
    func acquire(_ ref: UInt32) -> UnsafeMutableRawPointer? {
        clock &+= 1
        let (slot, found) = find(ref)
        if let e = found {
            entries[e].lastUse = clock
            entries[e].holders += 1
            return entries[e].page
        }
        guard capacity > 0 else { return nil }
        var index = used
        if used == capacity {
            // Age out only an entry idle for a while (4 × capacity lookups):
            // a working set larger than the table then settles into a mapped
            // part and a copied part instead of mapping and unmapping forever.
            guard let victim = leastRecentlyUnheld(), clock &- entries[victim].lastUse > UInt64(4 * capacity) else { return nil }
            evict(victim)
            index = victim
            // The eviction may have freed a bucket on ref's probe path.
            return insert(ref, at: index, slot: find(ref).slot)
        }
        used += 1
        guard let page = insert(ref, at: index, slot: slot) else {
            used -= 1
            return nil
        }
        return page
    }

    private func insert(_ ref: UInt32, at index: Int, slot: Int) -> UnsafeMutableRawPointer? {
        var r = GrantRef(ref)
        let mapping: GrantMapping
        // SAFETY: `r` outlives the call that reads it.
        do { mapping = try withUnsafePointer(to: &r) { try grants.map(UnsafeBufferPointer(start: $0, count: 1), of: domain, writable: true) } }
        catch { return nil }
        maps += 1
        entries[index] = Entry(ref: ref, page: mapping.base, mapping: mapping, lastUse: clock, holders: 1)
        buckets[slot] = Int32(index + 1)
        return mapping.base
    }

    private func leastRecentlyUnheld() -> Int? {
        var best: Int?
        for i in 0..<used where entries[i].holders == 0 {
            if best == nil || entries[i].lastUse < entries[best!].lastUse { best = i }
        }
        return best
    }

    private func evict(_ index: Int) {
        let (slot, found) = find(entries[index].ref)
        if found == index { buckets[slot] = -1 }
        if let m = entries[index].mapping { try? grants.unmap(m) }
        entries[index] = Entry()
        evictions += 1
    }

    /// Gives back a page `acquire` returned.
    func release(_ ref: UInt32) {
        if let e = find(ref).entry, entries[e].holders > 0 { entries[e].holders -= 1 }
    }
}

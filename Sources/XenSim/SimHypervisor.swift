import Synchronization
import XenPlatform
#if canImport(Glibc)
import Glibc
#endif

/// The software hypervisor: domains, the grant-table operations Xen
/// performs for a backend domain (map, unmap, copy, with Xen v1's checks
/// and busy bits), and event channels. Thread-safe; one per simulated host.
public final class SimHypervisor: @unchecked Sendable {
    struct PortKey: Hashable { var domain: UInt16; var port: UInt32 }
    enum PortState {
        /// Allocated by `owner`'s device for `remote` to bind to.
        case unbound(remote: UInt16)
        case interdomain(remote: PortKey)
    }
    struct Port { var state: PortState; weak var device: SimEventChannelDevice? }

    struct Mapping {
        var domain: UInt16
        var backend: UInt16
        var refs: [UInt32]
        var writable: Bool
        /// SAFETY: the reservation SimGrants.map made; this entry owns it
        /// until SimGrants.unmap removes the entry and unmaps it.
        var base: UnsafeMutableRawPointer
        var clearByte: Int?
        var notifyPort: UInt32?
    }

    struct State {
        var domains: [UInt16: SimDomain] = [:]
        /// Active pins per (granting domain, ref): readers and writers.
        var pins: [PortKey: (readers: Int, writers: Int)] = [:]
        var mappings: [UInt64: Mapping] = [:]
        var nextMapping: UInt64 = 1
        var ports: [PortKey: Port] = [:]
        var nextPort: [UInt16: UInt32] = [:]
    }
    private let lock = Mutex(())
    private nonisolated(unsafe) var _state = State()

    /// The only way to the hypervisor's state: under its lock.
    func withState<R>(_ body: (inout State) throws -> R) rethrows -> R {
        try lock.withLock { _ in try body(&_state) }
    }

    public init() {}

    /// Creates a guest with `pages` of memory and a grant table of `grantEntries`.
    @discardableResult
    public func createDomain(_ id: DomainID, pages: Int, grantEntries: UInt32 = 1024) throws(SimError) -> SimDomain {
        let domain = try SimDomain(id: id, pageCount: pages, grantEntries: grantEntries, hypervisor: self)
        let added = withState { s -> Bool in
            guard s.domains[id.rawValue] == nil else { return false }
            s.domains[id.rawValue] = domain
            return true
        }
        guard added else { throw .domainExists(id.rawValue) }
        return domain
    }

    /// Adds a domain whose memfds came from another process.
    @discardableResult
    func attach(_ domain: SimDomain) -> SimDomain {
        withState { s in
            if let existing = s.domains[domain.id.rawValue] { return existing }
            s.domains[domain.id.rawValue] = domain
            return domain
        }
    }

    public func domain(_ id: DomainID) -> SimDomain? { withState { $0.domains[id.rawValue] } }

    /// Destroys a guest: its ports close (peers see them unbound).
    public func destroyDomain(_ id: DomainID) {
        withState { s in
            s.domains[id.rawValue] = nil
            for (key, port) in s.ports where key.domain == id.rawValue {
                if case .interdomain(let remote) = port.state { s.ports[remote]?.state = .unbound(remote: id.rawValue) }
                s.ports[key] = nil
            }
        }
    }

    /// The platform a backend in `domain` uses.
    public func platform(for domain: DomainID) -> SimPlatform { SimPlatform(hypervisor: self, backendDomain: domain) }

    /// Number of live grant mappings (tests check nothing leaks).
    public var mappingCount: Int { withState { $0.mappings.count } }

    /// Whether this hypervisor's own pins hold `ref` of `domain` (readers, writers).
    func holds(_ ref: UInt32, of domain: UInt16) -> (reading: Bool, writing: Bool) {
        withState { s in
            let count = s.pins[PortKey(domain: domain, port: ref)] ?? (0, 0)
            return (count.readers > 0, count.writers > 0)
        }
    }

    // MARK: Grant checks, as Xen does them

    /// Validates ref of `granter` for `backend` and pins it (sets the busy
    /// bit(s) in the shared entry when the first pin appears). Returns the frame.
    func pin(_ ref: UInt32, of granter: SimDomain, for backend: UInt16, write: Bool,
             in s: inout State) -> Result<UInt32, GrantStatus> {
        guard ref < granter.grantEntryCount else { return .failure(.badGrantRef) }
        let flags = granter.flags(ref)
        // Acquiring: the entry's domid and frame, stored before the flags by
        // the guest (releasing), are read after this. The guest may change
        // the entry at any moment: the exchange below sets the busy bits only
        // if the flags are still what we checked, and the frame is read once.
        var current = flags.pointee.load(ordering: .acquiring)
        while true {
            guard current & GrantFlags.typeMask == GrantFlags.permitAccess else { return .failure(.badGrantRef) }
            guard granter.entryDomain(ref) == backend else { return .failure(.permissionDenied) }
            if write && current & GrantFlags.readOnly != 0 { return .failure(.permissionDenied) }
            let busy = GrantFlags.reading | (write ? GrantFlags.writing : 0)
            if current & busy == busy { break }
            // Set the busy bits only if the guest did not change the entry meanwhile.
            // Acquire-release: orders against the guest's releasing flag
            // stores and its revoking exchange on the same word.
            let (exchanged, original) = flags.pointee.compareExchange(
                expected: current, desired: current | busy, ordering: .acquiringAndReleasing)
            if exchanged { break }
            current = original
        }
        let frame = granter.entryFrame(ref)
        let key = PortKey(domain: granter.id.rawValue, port: ref)
        var count = s.pins[key] ?? (0, 0)
        count.readers += 1
        if write { count.writers += 1 }
        s.pins[key] = count
        granter.recordPins(ref, readers: count.readers, writers: count.writers)
        guard Int(frame) < granter.pageCount else {
            unpin(ref, of: granter, write: write, in: &s)
            return .failure(.badPage)
        }
        return .success(frame)
    }

    /// Drops a pin; clears the busy bits when the last one goes.
    func unpin(_ ref: UInt32, of granter: SimDomain, write: Bool, in s: inout State) {
        let key = PortKey(domain: granter.id.rawValue, port: ref)
        guard var count = s.pins[key] else { return }
        count.readers -= 1
        if write { count.writers -= 1 }
        var clear: UInt16 = 0
        if count.writers == 0 { clear |= GrantFlags.writing }
        if count.readers == 0 { clear |= GrantFlags.reading }
        s.pins[key] = count.readers == 0 ? nil : count
        granter.recordPins(ref, readers: count.readers, writers: count.writers)
        // Acquire-release: our accesses to the page happen before the guest
        // sees the busy bits clear and reuses the entry.
        if clear != 0 { granter.flags(ref).pointee.bitwiseAnd(~clear, ordering: .acquiringAndReleasing) }
    }
}

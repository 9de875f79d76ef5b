import Synchronization
import XenPlatform
import XenSystem
#if canImport(Glibc)
import Glibc
#endif

/// The software hypervisor as a backend's platform.
public struct SimPlatform: XenPlatform {
    public let hypervisor: SimHypervisor
    public let backendDomain: DomainID
    public let grants: SimGrants

    init(hypervisor: SimHypervisor, backendDomain: DomainID) {
        self.hypervisor = hypervisor
        self.backendDomain = backendDomain
        grants = SimGrants(hypervisor: hypervisor, backend: backendDomain)
    }

    public func openEventChannels() throws(EventChannelError) -> SimEventChannelDevice {
        try SimEventChannelDevice(hypervisor: hypervisor, domain: backendDomain)
    }
}

/// Grant map, unmap and copy for one backend domain, with Xen v1's checks:
/// the entry must permit access, name the backend, allow writing if asked;
/// busy bits are held while a mapping or copy lasts.
public final class SimGrants: GrantOperations {
    let hypervisor: SimHypervisor
    let backend: DomainID

    init(hypervisor: SimHypervisor, backend: DomainID) {
        self.hypervisor = hypervisor
        self.backend = backend
    }

    public func map(_ refs: UnsafeBufferPointer<GrantRef>, of domain: DomainID, writable: Bool) throws(GrantError) -> GrantMapping {
        guard !refs.isEmpty else { throw .invalidArgument("no grant references to map") }
        let result: Result<GrantMapping, GrantError> = hypervisor.withState { s in
            guard let granter = s.domains[domain.rawValue] else {
                return .failure(.mapFailed(domain: domain, refs: Array(refs), statuses: Array(repeating: .badDomain, count: refs.count)))
            }
            var statuses: [GrantStatus] = []
            var frames: [UInt32] = []
            statuses.reserveCapacity(refs.count)
            for ref in refs {
                switch hypervisor.pin(ref.rawValue, of: granter, for: backend.rawValue, write: writable, in: &s) {
                case .success(let frame): frames.append(frame); statuses.append(.okay)
                case .failure(let status): frames.append(0); statuses.append(status)
                }
            }
            func undoPins() {
                for (ref, status) in zip(refs, statuses) where status.isOkay {
                    hypervisor.unpin(ref.rawValue, of: granter, write: writable, in: &s)
                }
            }
            guard statuses.allSatisfy(\.isOkay) else {
                undoPins()
                return .failure(.mapFailed(domain: domain, refs: Array(refs), statuses: statuses))
            }
            // One contiguous reservation, then each guest page mapped over its slot.
            // SAFETY: the reservation is ours from here; on success it belongs
            // to the mapping entry `handle` (and the GrantMapping the backend
            // holds) until `unmap` removes the entry and unmaps it; on failure
            // we unmap it before returning. The guest writes the pages mapped
            // into it at any time: the backend copies out what it checks.
            let bytes = refs.count * 4096
            let reserved: UnsafeMutableRawPointer
            switch Syscall.mmap(length: bytes, protection: PROT_NONE, flags: MAP_PRIVATE | MAP_ANONYMOUS, fd: -1, offset: 0) {
            case .success(let p): reserved = p
            case .failure(let e):
                undoPins()
                return .failure(.system(operation: "mmap", errno: e.code))
            }
            let protection = PROT_READ | (writable ? PROT_WRITE : 0)
            for (i, frame) in frames.enumerated() {
                // SAFETY: slot i lies inside the reservation we own; MAP_FIXED
                // replaces only those 4096 bytes.
                let slot = Syscall.mmap(at: reserved + i * 4096, length: 4096, protection: protection, flags: MAP_SHARED | MAP_FIXED,
                                        fd: granter.memory.fd, offset: Int64(frame) * 4096)
                if case .failure(let e) = slot {
                    Syscall.munmap(reserved, length: bytes)
                    undoPins()
                    return .failure(.system(operation: "mmap", errno: e.code))
                }
            }
            let handle = s.nextMapping
            s.nextMapping += 1
            s.mappings[handle] = SimHypervisor.Mapping(domain: domain.rawValue, backend: backend.rawValue,
                                                       refs: refs.map(\.rawValue), writable: writable, base: reserved,
                                                       clearByte: nil, notifyPort: nil)
            return .success(GrantMapping(base: reserved, pageCount: refs.count, domain: domain, writable: writable, handle: handle))
        }
        return try result.get()
    }

    public func unmap(_ mapping: GrantMapping) throws(GrantError) {
        let result: Result<(SimEventChannelDevice, UInt32)?, GrantError> = hypervisor.withState { s in
            guard let m = s.mappings.removeValue(forKey: mapping.handle), m.backend == backend.rawValue else {
                return .failure(.invalidArgument("unknown grant mapping \(mapping.handle)"))
            }
            // SAFETY: the entry owned this reservation and is gone now, so we
            // unmap it here; `offset` was checked against its size when set.
            if let offset = m.clearByte, m.writable { m.base.storeBytes(of: UInt8(0), toByteOffset: offset, as: UInt8.self) }
            Syscall.munmap(m.base, length: m.refs.count * 4096)
            if let granter = s.domains[m.domain] {
                for ref in m.refs { hypervisor.unpin(ref, of: granter, write: m.writable, in: &s) }
            }
            // The notification goes to the peer of our port, as EVTCHNOP_send would.
            guard let port = m.notifyPort,
                  case .interdomain(let remote)? = s.ports[.init(domain: backend.rawValue, port: port)]?.state,
                  let device = s.ports[remote]?.device else { return .success(nil) }
            return .success((device, remote.port))
        }
        if let (device, port) = try result.get() { device.raise(port) }
    }

    public func setUnmapNotify(_ mapping: GrantMapping, clearingByteAt offset: Int?, notifying port: EventChannelPort?) throws(GrantError) {
        if let offset, !(0..<mapping.byteCount).contains(offset) {
            throw .invalidArgument("unmap-notify byte \(offset) is outside the \(mapping.byteCount)-byte mapping")
        }
        let known = hypervisor.withState { s -> Bool in
            guard s.mappings[mapping.handle]?.backend == backend.rawValue else { return false }
            s.mappings[mapping.handle]!.clearByte = offset
            s.mappings[mapping.handle]!.notifyPort = port?.rawValue
            return true
        }
        guard known else { throw .invalidArgument("unknown grant mapping \(mapping.handle)") }
    }

    public func copy(_ operations: UnsafeMutableBufferPointer<GrantCopyOperation>) throws(GrantError) {
        hypervisor.withState { s in
            // SAFETY: the caller's buffer, valid for the call; in-bounds indices.
            for i in operations.indices {
                operations[i].status = copyOne(operations[i], in: &s)
            }
        }
    }

    private func copyOne(_ op: GrantCopyOperation, in s: inout SimHypervisor.State) -> GrantStatus {
        // At most two pins (source and destination), released when done.
        var pinnedSource: (SimDomain, UInt32)?
        var pinnedDestination: (SimDomain, UInt32)?
        defer {
            if let (d, ref) = pinnedSource { hypervisor.unpin(ref, of: d, write: false, in: &s) }
            if let (d, ref) = pinnedDestination { hypervisor.unpin(ref, of: d, write: true, in: &s) }
        }
        func resolve(_ end: GrantCopyEndpoint, write: Bool) -> Result<UnsafeMutableRawPointer, GrantStatus> {
            switch end {
            case .local(let p): return .success(p)
            case .grant(let ref, let domain, let offset):
                guard Int(offset) + Int(op.length) <= 4096 else { return .failure(.badCopyArgument) }
                guard let granter = s.domains[domain.rawValue] else { return .failure(.badDomain) }
                switch hypervisor.pin(ref.rawValue, of: granter, for: backend.rawValue, write: write, in: &s) {
                case .failure(let status): return .failure(status)
                case .success(let frame):
                    if write { pinnedDestination = (granter, ref.rawValue) } else { pinnedSource = (granter, ref.rawValue) }
                    // SAFETY: frame < pageCount (pin checked it), offset + length <= 4096.
                    return .success(granter.memory.page(frame) + Int(offset))
                }
            }
        }
        let source: UnsafeMutableRawPointer, destination: UnsafeMutableRawPointer
        switch resolve(op.source, write: false) {
        case .failure(let status): return status
        case .success(let p): source = p
        }
        switch resolve(op.destination, write: true) {
        case .failure(let status): return status
        case .success(let p): destination = p
        }
        // SAFETY: both ends are within one page (checked) of memory that
        // stays mapped while the state lock is held (a local end is the
        // caller's, valid for the call). The guest may write its page during
        // the copy; a copy promises no more than that, like Xen's.
        memmove(destination, source, Int(op.length))
        return .okay
    }
}

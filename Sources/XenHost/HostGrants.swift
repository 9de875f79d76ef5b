import CXenUAPI
import XenPlatform
#if canImport(Glibc)
import Glibc
import XenSystem
#endif

/// Grant mapping and copying through the kernel's /dev/xen/gntdev:
/// IOCTL_GNTDEV_MAP_GRANT_REF reserves an index for the refs, mmap of that
/// index maps them (the hypercall happens there), munmap +
/// IOCTL_GNTDEV_UNMAP_GRANT_REF release them; IOCTL_GNTDEV_GRANT_COPY runs
/// a GNTTABOP_copy batch.
///
/// Chosen over libxengnttab: the ioctls are few and stable, and going through
/// our own funnel lets tests check every call's exact bytes.
public final class HostGrants: GrantOperations, @unchecked Sendable {
    public let devicePath: String
    private let device: OwnedDescriptor
    var fd: Int32 { device.raw }

    public init(devicePath: String = "/dev/xen/gntdev") throws(GrantError) {
        self.devicePath = devicePath
        do { device = try OwnedDescriptor(opening: devicePath, O_RDWR | O_CLOEXEC) } catch {
            throw .system(operation: "open \(devicePath)", errno: error.code)
        }
    }

    public func map(_ refs: UnsafeBufferPointer<GrantRef>, of domain: DomainID, writable: Bool) throws(GrantError) -> GrantMapping {
        guard !refs.isEmpty else { throw .invalidArgument("no grant references to map") }
        switch mapBatch(refs, domain, writable) {
        case .success(let mapping):
            return mapping
        case .failure(.system(let op, let e)) where op == "mmap":
            // The batch failed at the hypercall: find which refs did, one by
            // one, so the error names them; nothing stays mapped.
            var statuses: [GrantStatus] = []
            for i in refs.indices {
                // SAFETY: a one-element view into the caller's refs, used within this call.
                let single = UnsafeBufferPointer(rebasing: refs[i...i])
                switch mapBatch(single, domain, writable) {
                case .success(let m): try unmap(m); statuses.append(.okay)
                case .failure: statuses.append(.generalError)
                }
            }
            if statuses.allSatisfy(\.isOkay) { throw .system(operation: "mmap of \(refs.count) grants", errno: e) }
            throw .mapFailed(domain: domain, refs: Array(refs), statuses: statuses)
        case .failure(let error):
            throw error
        }
    }

    private func mapBatch(_ refs: UnsafeBufferPointer<GrantRef>, _ domain: DomainID, _ writable: Bool) -> Result<GrantMapping, GrantError> {
        let header = CXenUAPI_sizeof_map_grant_ref_header()
        let size = header + 8 * refs.count
        // SAFETY: `raw` is a stack buffer of exactly header + 8 * count
        // bytes, 8-aligned, owned by this closure; every store and the index
        // load stay inside it and the kernel is done with it when the ioctl
        // returns.
        return withUnsafeTemporaryAllocation(byteCount: size, alignment: 8) { raw -> Result<GrantMapping, GrantError> in
            // struct ioctl_gntdev_map_grant_ref: count, pad, index (out), refs[{domid, ref}].
            let arg = raw.baseAddress!
            arg.storeBytes(of: UInt32(refs.count), as: UInt32.self)
            arg.storeBytes(of: UInt32(0), toByteOffset: 4, as: UInt32.self)
            arg.storeBytes(of: UInt64(0), toByteOffset: 8, as: UInt64.self)
            for (i, ref) in refs.enumerated() {
                arg.storeBytes(of: UInt32(domain.rawValue), toByteOffset: header + 8 * i, as: UInt32.self)
                arg.storeBytes(of: ref.rawValue, toByteOffset: header + 8 * i + 4, as: UInt32.self)
            }
            if case .failure(let failure) = Syscall.ioctl(fd, CXenUAPI_IOCTL_GNTDEV_MAP_GRANT_REF, arg, size: size) {
                return .failure(.system(operation: "IOCTL_GNTDEV_MAP_GRANT_REF", errno: failure.code))
            }
            let index = arg.load(fromByteOffset: 8, as: UInt64.self)
            let length = refs.count * 4096
            switch Syscall.mmap(length: length, protection: PROT_READ | (writable ? PROT_WRITE : 0),
                                flags: MAP_SHARED, fd: fd, offset: Int64(bitPattern: index)) {
            case .success(let base):
                // SAFETY: the caller owns this mapping (the guest's pages, which
                // the guest may write at any time) until it passes it to unmap.
                return .success(GrantMapping(base: base, pageCount: refs.count, domain: domain, writable: writable, handle: index))
            case .failure(let failure):
                releaseIndex(index, count: refs.count)
                return .failure(.system(operation: "mmap", errno: failure.code))
            }
        }
    }

    private func releaseIndex(_ index: UInt64, count: Int) {
        // struct ioctl_gntdev_unmap_grant_ref: index, count, pad.
        var arg: (UInt64, UInt32, UInt32) = (index, UInt32(count), 0)
        // SAFETY: a local 16-byte struct, borrowed for the ioctl only.
        _ = withUnsafeMutableBytes(of: &arg) { Syscall.ioctl(fd, CXenUAPI_IOCTL_GNTDEV_UNMAP_GRANT_REF, $0.baseAddress, size: 16) }
    }

    public func unmap(_ mapping: GrantMapping) throws(GrantError) {
        // SAFETY: the caller hands back the mapping map gave it and must not
        // touch its pages again; the local ioctl struct lives for the call.
        Syscall.munmap(mapping.base, length: mapping.byteCount)
        var arg: (UInt64, UInt32, UInt32) = (mapping.handle, UInt32(mapping.pageCount), 0)
        let result = withUnsafeMutableBytes(of: &arg) { Syscall.ioctl(fd, CXenUAPI_IOCTL_GNTDEV_UNMAP_GRANT_REF, $0.baseAddress, size: 16) }
        if case .failure(let failure) = result { throw .system(operation: "IOCTL_GNTDEV_UNMAP_GRANT_REF", errno: failure.code) }
    }

    public func setUnmapNotify(_ mapping: GrantMapping, clearingByteAt offset: Int?, notifying port: EventChannelPort?) throws(GrantError) {
        if let offset, !(0..<mapping.byteCount).contains(offset) {
            throw .invalidArgument("unmap-notify byte \(offset) is outside the \(mapping.byteCount)-byte mapping")
        }
        // struct ioctl_gntdev_unmap_notify: index (of the byte), action, event_channel_port.
        var action: UInt32 = 0
        if offset != nil { action |= CXenUAPI_UNMAP_NOTIFY_CLEAR_BYTE }
        if port != nil { action |= CXenUAPI_UNMAP_NOTIFY_SEND_EVENT }
        var arg: (UInt64, UInt32, UInt32) = (mapping.handle + UInt64(offset ?? 0), action, port?.rawValue ?? 0)
        // SAFETY: a local 16-byte struct, borrowed for the ioctl only.
        let result = withUnsafeMutableBytes(of: &arg) { Syscall.ioctl(fd, CXenUAPI_IOCTL_GNTDEV_SET_UNMAP_NOTIFY, $0.baseAddress, size: 16) }
        if case .failure(let failure) = result { throw .system(operation: "IOCTL_GNTDEV_SET_UNMAP_NOTIFY", errno: failure.code) }
    }

    /// Segments per ioctl; larger batches are split.
    static var batchLimit: Int { 64 }

    public func copy(_ operations: UnsafeMutableBufferPointer<GrantCopyOperation>) throws(GrantError) {
        let segmentSize = CXenUAPI_sizeof_grant_copy_segment()
        var start = 0
        while start < operations.count {
            let end = min(start + Self.batchLimit, operations.count)
            // SAFETY: both stack buffers are owned by these closures and sized
            // for batchLimit segments (each segment written below lies inside
            // its slot); the kernel reads and writes the segments only during
            // the ioctl, after which the statuses are read back.
            let failure: GrantError? = withUnsafeTemporaryAllocation(byteCount: segmentSize * Self.batchLimit, alignment: 8) { raw in
                withUnsafeTemporaryAllocation(of: Int.self, capacity: Self.batchLimit) { slotBuffer in
                    let segments = raw.baseAddress!
                    // slotBuffer[n]: the operation index of kernel segment n.
                    var slotCount = 0
                    for i in start..<end {
                        let op = operations[i]
                        if let status = Self.precheck(op) { operations[i].status = status; continue }
                        if case .local(let s) = op.source, case .local(let d) = op.destination {
                            // SAFETY: both ends are the caller's memory, valid for
                            // `length` bytes during this call (its contract).
                            memmove(d, s, Int(op.length))  // no grant involved: no hypercall
                            operations[i].status = .okay
                            continue
                        }
                        let seg = segments + slotCount * segmentSize
                        var flags: UInt16 = 0
                        Self.store(op.source, into: seg, flag: CXenUAPI_GNTCOPY_SOURCE_GREF, flags: &flags)
                        Self.store(op.destination, into: seg + 8, flag: CXenUAPI_GNTCOPY_DEST_GREF, flags: &flags)
                        seg.storeBytes(of: op.length, toByteOffset: 16, as: UInt16.self)
                        seg.storeBytes(of: flags, toByteOffset: 18, as: UInt16.self)
                        seg.storeBytes(of: Int16(-1), toByteOffset: 20, as: Int16.self)
                        seg.storeBytes(of: UInt16(0), toByteOffset: 22, as: UInt16.self)
                        slotBuffer[slotCount] = i
                        slotCount += 1
                    }
                    guard slotCount > 0 else { return nil }
                    // struct ioctl_gntdev_grant_copy: count, pad, segments pointer.
                    var arg: (UInt32, UInt32, UInt) = (UInt32(slotCount), 0, UInt(bitPattern: segments))
                    // SAFETY: a local struct for the ioctl; the segments it
                    // points at outlive the call (see above).
                    let result = withUnsafeMutableBytes(of: &arg) { Syscall.ioctl(fd, CXenUAPI_IOCTL_GNTDEV_GRANT_COPY, $0.baseAddress, size: 16) }
                    if case .failure(let failure) = result { return .system(operation: "IOCTL_GNTDEV_GRANT_COPY", errno: failure.code) }
                    for n in 0..<slotCount {
                        operations[slotBuffer[n]].status = GrantStatus(rawValue: (segments + n * segmentSize).load(fromByteOffset: 20, as: Int16.self))
                    }
                    return nil
                }
            }
            if let failure { throw failure }
            start = end
        }
    }

    /// What the kernel would reject for the whole batch is answered per
    /// operation instead: a granted side crossing its page.
    static func precheck(_ op: GrantCopyOperation) -> GrantStatus? {
        for end in [op.source, op.destination] {
            if case .grant(_, _, let offset) = end, Int(offset) + Int(op.length) > 4096 { return .badCopyArgument }
        }
        return nil
    }

    /// SAFETY: `p` is 8 bytes of a segment in copy's stack buffer; a local
    /// end's address is the caller's memory, valid until the copy returns.
    static func store(_ end: GrantCopyEndpoint, into p: UnsafeMutableRawPointer, flag: UInt16, flags: inout UInt16) {
        switch end {
        case .local(let pointer):
            p.storeBytes(of: UInt(bitPattern: pointer), as: UInt.self)
        case .grant(let ref, let domain, let offset):
            p.storeBytes(of: ref.rawValue, as: UInt32.self)
            p.storeBytes(of: offset, toByteOffset: 4, as: UInt16.self)
            p.storeBytes(of: domain.rawValue, toByteOffset: 6, as: UInt16.self)
            flags |= flag
        }
    }
}

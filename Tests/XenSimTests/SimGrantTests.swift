import Testing
import XenPlatform
@testable import XenSim

@Suite struct SimGrantTests {
    let hv = SimHypervisor()
    let guest: SimDomain
    let dom0 = DomainID.dom0
    var grants: SimGrants { hv.platform(for: dom0).grants }

    init() throws {
        _ = try hv.createDomain(dom0, pages: 4)
        guest = try hv.createDomain(DomainID(5), pages: 64)
    }

    func fill(_ frame: UInt32, _ byte: UInt8) {
        guest.page(frame).initializeMemory(as: UInt8.self, repeating: byte, count: 4096)
    }

    func busy(_ ref: GrantRef) -> UInt16 {
        guest.flags(ref.rawValue).pointee.load(ordering: .relaxed) & (GrantFlags.reading | GrantFlags.writing)
    }

    @Test func readOnlyMappingSeesGuestData() throws {
        fill(10, 0xAB)
        let ref = try guest.grantAccess(to: dom0, frame: 10, readOnly: true)
        let m = try grants.map([ref], of: guest.id, writable: false)
        #expect(m.base.load(fromByteOffset: 4095, as: UInt8.self) == 0xAB)
        #expect(busy(ref) == GrantFlags.reading, "reading bit held while mapped")
        #expect(!guest.endForeignAccess(ref), "cannot revoke a mapped grant")
        guest.page(10).storeBytes(of: 0x42, as: UInt8.self)
        #expect(m.base.load(as: UInt8.self) == 0x42, "the mapping is the guest's page, not a copy")
        try grants.unmap(m)
        #expect(busy(ref) == 0)
        #expect(guest.endForeignAccess(ref))
        #expect(hv.mappingCount == 0)
    }

    @Test func writableMappingWritesIntoTheGuest() throws {
        let ref = try guest.grantAccess(to: dom0, frame: 3, readOnly: false)
        let m = try grants.map([ref], of: guest.id, writable: true)
        #expect(busy(ref) == GrantFlags.reading | GrantFlags.writing)
        (m.base + 100).copyMemory(from: Array("from the backend".utf8), byteCount: 16)
        #expect(String(decoding: UnsafeRawBufferPointer(start: guest.page(3) + 100, count: 16), as: UTF8.self) == "from the backend")
        try grants.unmap(m)
    }

    @Test func manyRefsMapContiguouslyInRefOrder() throws {
        let frames: [UInt32] = [40, 2, 33, 7]
        for (i, f) in frames.enumerated() { fill(f, UInt8(i + 1)) }
        let refs = try frames.map { try guest.grantAccess(to: dom0, frame: $0, readOnly: true) }
        let m = try grants.map(refs, of: guest.id, writable: false)
        #expect(m.pageCount == 4)
        for i in 0..<4 { #expect(m.base.load(fromByteOffset: i * 4096 + 17, as: UInt8.self) == UInt8(i + 1)) }
        try grants.unmap(m)
    }

    @Test func oneBadRefFailsTheMappingAndLeavesNothingMapped() throws {
        var refs = try (0..<11).map { try guest.grantAccess(to: dom0, frame: UInt32($0), readOnly: false) }
        refs[6] = GrantRef(900)  // never granted
        do {
            _ = try grants.map(refs, of: guest.id, writable: true)
            Issue.record("mapping succeeded")
        } catch {
            guard case .mapFailed(_, _, let statuses) = error else { Issue.record("\(error)"); return }
            #expect(statuses.count == 11)
            #expect(statuses[6] == .badGrantRef, "the seventh says so")
            #expect(statuses.enumerated().allSatisfy { $0.offset == 6 || $0.element == .okay })
            #expect(error.description.contains("#6 gref 900: bad grant reference"))
        }
        #expect(hv.mappingCount == 0)
        for (i, ref) in refs.enumerated() where i != 6 {
            #expect(busy(ref) == 0, "pins of the good refs were released")
            #expect(guest.endForeignAccess(ref))
        }
    }

    @Test func refusalsAreStatusesNotCrashes() throws {
        let other = try hv.createDomain(DomainID(6), pages: 1)
        _ = other
        let forSix = try guest.grantAccess(to: DomainID(6), frame: 1, readOnly: false)
        let readOnly = try guest.grantAccess(to: dom0, frame: 2, readOnly: true)
        let revoked = try guest.grantAccess(to: dom0, frame: 3, readOnly: false)
        #expect(guest.endForeignAccess(revoked))
        guest.writeEntry(20, domain: 0, frame: 5000, flags: GrantFlags.permitAccess)  // frame beyond the guest
        let cases: [(GrantRef, DomainID, Bool, GrantStatus)] = [
            (forSix, guest.id, false, .permissionDenied),
            (readOnly, guest.id, true, .permissionDenied),
            (revoked, guest.id, false, .badGrantRef),
            (GrantRef(1 << 30), guest.id, false, .badGrantRef),
            (GrantRef(20), guest.id, false, .badPage),
            (readOnly, DomainID(77), false, .badDomain),
        ]
        for (ref, domain, writable, status) in cases {
            #expect(throws: GrantError.mapFailed(domain: domain, refs: [ref], statuses: [status])) {
                try grants.map([ref], of: domain, writable: writable)
            }
        }
        #expect(busy(readOnly) == 0 && busy(forSix) == 0)
        #expect(throws: GrantError.self) { try grants.map([], of: guest.id, writable: false) }
    }

    @Test func copiesEachWithItsOwnStatus() throws {
        fill(8, 0x11); fill(9, 0x22)
        let src = try guest.grantAccess(to: dom0, frame: 8, readOnly: true)
        let dst = try guest.grantAccess(to: dom0, frame: 9, readOnly: false)
        let local = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { local.deallocate() }
        local.initializeMemory(as: UInt8.self, repeating: 0x99, count: 4096)
        var ops = [
            GrantCopyOperation(source: .grant(src, domain: guest.id, offset: 100), destination: .local(local), length: 50),
            GrantCopyOperation(source: .local(local + 2000), destination: .grant(dst, domain: guest.id, offset: 4000), length: 96),
            GrantCopyOperation(source: .grant(src, domain: guest.id, offset: 0), destination: .grant(dst, domain: guest.id, offset: 0), length: 10),
            GrantCopyOperation(source: .local(local), destination: .grant(src, domain: guest.id, offset: 0), length: 1),
            GrantCopyOperation(source: .grant(src, domain: guest.id, offset: 4000), destination: .local(local), length: 97),
            GrantCopyOperation(source: .grant(GrantRef(999), domain: guest.id, offset: 0), destination: .local(local), length: 1),
        ]
        try grants.copy(&ops)
        #expect(ops.map(\.status) == [.okay, .okay, .okay, .permissionDenied, .badCopyArgument, .badGrantRef])
        #expect(local.load(fromByteOffset: 49, as: UInt8.self) == 0x11 && local.load(fromByteOffset: 50, as: UInt8.self) == 0x99)
        #expect(guest.page(9).load(fromByteOffset: 4095, as: UInt8.self) == 0x99)
        #expect(guest.page(9).load(fromByteOffset: 9, as: UInt8.self) == 0x11 && guest.page(9).load(fromByteOffset: 10, as: UInt8.self) == 0x22)
        #expect(guest.page(8).load(as: UInt8.self) == 0x11, "read-only grant untouched")
        #expect(busy(src) == 0 && busy(dst) == 0, "copies hold the busy bits only while copying")
    }
}

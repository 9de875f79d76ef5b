import Testing
import XenBlockProtocol
import XenPlatform
import XenRing
@testable import XenSim

/// A blkif ring end to end over the software hypervisor: the guest
/// initialises the ring in its own page and grants it; the backend maps the
/// grant and serves requests whose data pages it maps too; event channels
/// carry the kicks.
@Suite struct SimRingTests {
    @Test func backendServesAGuestRingThroughGrantsAndEventChannels() throws {
        let hv = SimHypervisor()
        try hv.createDomain(.dom0, pages: 1)
        let guest = try hv.createDomain(DomainID(4), pages: 16)
        let platform = hv.platform(for: .dom0)

        // Guest: ring in frame 0, data in frames 1...8.
        let ringMemory = SharedRingMemory(base: guest.page(0), byteCount: 4096)
        var front = try FrontRing<BlockRingX86_64>(initializing: ringMemory)
        let ringRef = try guest.grantAccess(to: .dom0, frame: 0, readOnly: false)
        let guestEvents = try guest.openEventChannels()
        let guestPort = guestEvents.allocateUnbound(remoteDomain: .dom0)

        // Backend: map the ring, bind the channel.
        let ringMapping = try platform.grants.map([ringRef], of: guest.id, writable: true)
        var back = try BackRing<BlockRingX86_64>(attaching: SharedRingMemory(base: ringMapping.base, byteCount: 4096))
        let events = try platform.openEventChannels()
        let port = try events.bindInterdomain(remoteDomain: guest.id, remotePort: guestPort)

        // The guest writes 8 pages and asks the backend to "write" them, i.e.
        // here: to read each granted page and answer with its first byte as id check.
        var dataRefs: [GrantRef] = []
        for i in 1...8 {
            guest.page(UInt32(i)).initializeMemory(as: UInt8.self, repeating: UInt8(i * 3), count: 4096)
            let ref = try guest.grantAccess(to: .dom0, frame: UInt32(i), readOnly: true)
            dataRefs.append(ref)
            front.produceRequest(BlockRequest(operation: .write, id: UInt64(i), sectorNumber: UInt64(i * 8),
                                              segment: BlockSegment(grant: ref.rawValue, firstSector: 0, lastSector: 7)))
        }
        if front.pushRequests() { try guestEvents.notify(guestPort) }

        #expect(events.wait(timeoutMilliseconds: 2000), "the backend is kicked")
        var pending = [EventChannelPort](repeating: EventChannelPort(0), count: 4)
        #expect(try pending.withUnsafeMutableBufferPointer { try events.takePending(into: $0) } == 1)
        let producer = try back.readRequestProducer()
        while let request = back.nextRequest(before: producer) {
            let segment = request.segment(0)
            let page = try platform.grants.map([GrantRef(segment.grant)], of: guest.id, writable: false)
            let firstByte = page.base.load(as: UInt8.self)
            try platform.grants.unmap(page)
            back.produceResponse(BlockResponse(id: request.id, operation: request.operation,
                                               status: firstByte == UInt8(request.id * 3) ? .okay : .error))
        }
        if back.pushResponses() { try events.notify(port) }
        try events.unmask(port)

        #expect(guestEvents.wait(timeoutMilliseconds: 2000), "the guest is kicked")
        let rp = try front.readResponseProducer()
        var answered: [UInt64] = []
        while let response = front.nextResponse(before: rp) {
            #expect(response.status == .okay)
            answered.append(response.id)
        }
        #expect(answered == Array(1...8))
        try platform.grants.unmap(ringMapping)
        #expect(hv.mappingCount == 0)
        for ref in dataRefs + [ringRef] { #expect(guest.endForeignAccess(ref)) }
    }
}

import Testing
import XenPlatform
@testable import XenSim

@Suite struct SimEventChannelTests {
    func setup() throws -> (SimHypervisor, SimEventChannelDevice, SimEventChannelDevice, EventChannelPort, EventChannelPort) {
        let hv = SimHypervisor()
        try hv.createDomain(.dom0, pages: 1)
        let guest = try hv.createDomain(DomainID(3), pages: 1)
        let guestEvents = try guest.openEventChannels()
        let offered = guestEvents.allocateUnbound(remoteDomain: .dom0)
        let backendEvents = try hv.platform(for: .dom0).openEventChannels()
        let local = try backendEvents.bindInterdomain(remoteDomain: guest.id, remotePort: offered)
        return (hv, guestEvents, backendEvents, offered, local)
    }

    func take(_ d: SimEventChannelDevice) throws -> [UInt32] {
        var buffer = [EventChannelPort](repeating: EventChannelPort(0), count: 8)
        let n = try buffer.withUnsafeMutableBufferPointer { try d.takePending(into: $0) }
        return buffer.prefix(n).map(\.rawValue)
    }

    @Test func notifyBothWays() throws {
        let (_, guest, backend, guestPort, backendPort) = try setup()
        #expect(!backend.wait(timeoutMilliseconds: 0), "nothing pending yet")
        try guest.notify(guestPort)
        #expect(backend.wait(timeoutMilliseconds: 1000))
        #expect(try take(backend) == [backendPort.rawValue])
        #expect(!backend.wait(timeoutMilliseconds: 0), "taking the ports clears readability")
        try backend.notify(backendPort)
        #expect(guest.wait(timeoutMilliseconds: 1000))
        #expect(try take(guest) == [guestPort.rawValue])
    }

    @Test func eventsMaskThePortUntilUnmaskAndAreNotLost() throws {
        let (_, guest, backend, guestPort, backendPort) = try setup()
        try guest.notify(guestPort)
        try guest.notify(guestPort)
        #expect(try take(backend) == [backendPort.rawValue], "a masked port is queued once")
        try guest.notify(guestPort)
        #expect(try take(backend) == [], "still masked")
        try backend.unmask(backendPort)
        #expect(backend.wait(timeoutMilliseconds: 1000), "the event that came while masked is delivered on unmask")
        #expect(try take(backend) == [backendPort.rawValue])
        try backend.unmask(backendPort)
        #expect(try take(backend) == [])
    }

    @Test func bindingRules() throws {
        let (hv, guest, backend, guestPort, backendPort) = try setup()
        #expect(throws: EventChannelError.self) { try backend.bindInterdomain(remoteDomain: DomainID(3), remotePort: guestPort) }
        #expect(throws: EventChannelError.self) { try backend.bindInterdomain(remoteDomain: DomainID(3), remotePort: EventChannelPort(99)) }
        let forSomeoneElse = guest.allocateUnbound(remoteDomain: DomainID(8))
        #expect(throws: EventChannelError.self) { try backend.bindInterdomain(remoteDomain: DomainID(3), remotePort: forSomeoneElse) }
        #expect(throws: EventChannelError.notBound(EventChannelPort(4242))) { try backend.notify(EventChannelPort(4242)) }
        // Unbinding frees the guest's port to be bound again; its events go nowhere meanwhile.
        try backend.unbind(backendPort)
        try guest.notify(guestPort)
        #expect(try take(backend) == [])
        let again = try backend.bindInterdomain(remoteDomain: DomainID(3), remotePort: guestPort)
        try guest.notify(guestPort)
        #expect(try take(backend) == [again.rawValue])
        _ = hv
    }
}

@Suite struct SimUnmapNotifyTests {
    @Test func unmapClearsTheByteAndKicksTheGuest() throws {
        let hv = SimHypervisor()
        try hv.createDomain(.dom0, pages: 1)
        let guest = try hv.createDomain(DomainID(2), pages: 4)
        let grants = hv.platform(for: .dom0).grants
        let guestEvents = try guest.openEventChannels()
        let offered = guestEvents.allocateUnbound(remoteDomain: .dom0)
        let backendEvents = try hv.platform(for: .dom0).openEventChannels()
        let port = try backendEvents.bindInterdomain(remoteDomain: guest.id, remotePort: offered)
        guest.page(1).storeBytes(of: UInt8(0xFF), toByteOffset: 4100 - 4096, as: UInt8.self)
        let ref = try guest.grantAccess(to: .dom0, frame: 1, readOnly: false)
        let m = try grants.map([ref], of: guest.id, writable: true)
        #expect(throws: GrantError.self) { try grants.setUnmapNotify(m, clearingByteAt: 4096, notifying: nil) }
        try grants.setUnmapNotify(m, clearingByteAt: 4, notifying: port)
        #expect(!guestEvents.wait(timeoutMilliseconds: 0))
        try grants.unmap(m)
        #expect(guest.page(1).load(fromByteOffset: 4, as: UInt8.self) == 0, "the byte is cleared")
        #expect(guestEvents.wait(timeoutMilliseconds: 1000), "the guest is notified")
    }
}

#if canImport(Glibc)
import Glibc
#endif
import Testing
import XenNetBackend
import XenNetFrontend
import XenPlatform
import XenSim

/// Grant mappings and bound ports are owned values: a worker whose setup
/// fails halfway, and a worker that is dropped, leave nothing mapped and
/// nothing bound, with no rollback code of their own.
@Suite struct ResourceOwnershipTests {
    func guestQueue() throws -> (SimHypervisor, SimDomain, NetFrontendQueue) {
        let hypervisor = SimHypervisor()
        try hypervisor.createDomain(.dom0, pages: 1)
        let guest = try hypervisor.createDomain(DomainID(7), pages: 600, grantEntries: 700)
        return (hypervisor, guest, try NetFrontendQueue.standalone(domain: guest, backend: .dom0))
    }

    /// Both rings map, the transmit port binds, the receive port does not:
    /// the two mappings and the bound port are given back as the init throws.
    @Test func aSetupThatFailsHalfwayGivesEverythingBack() throws {
        let (hypervisor, guest, front) = try guestQueue()
        #expect(hypervisor.mappingCount == 0)
        #expect(throws: NetBackendError.self) {
            _ = try NetQueueWorker(platform: hypervisor.platform(for: .dom0), frontend: guest.id, txRingRef: front.txRingRef,
                                   rxRingRef: front.rxRingRef, txRemotePort: front.txPort, rxRemotePort: EventChannelPort(4000),
                                   tapDescriptor: -1, options: NetQueueOptions())
        }
        #expect(hypervisor.mappingCount == 0, "both ring mappings undone")
        // The guest's port is offered to dom0 again only if our end was unbound.
        let events = try hypervisor.platform(for: .dom0).openEventChannels()
        let port = try events.bindInterdomain(remoteDomain: guest.id, remotePort: front.txPort)
        try events.unbind(port)
    }

    @Test func aDroppedWorkerGivesEverythingBack() throws {
        let (hypervisor, guest, front) = try guestQueue()
        do {
            let worker = try NetQueueWorker(platform: hypervisor.platform(for: .dom0), frontend: guest.id, txRingRef: front.txRingRef,
                                            rxRingRef: front.rxRingRef, txRemotePort: front.txPort, rxRemotePort: front.rxPort,
                                            tapDescriptor: -1, options: NetQueueOptions())
            #expect(hypervisor.mappingCount == 2)
            _ = worker
        }
        #expect(hypervisor.mappingCount == 0)
        let events = try hypervisor.platform(for: .dom0).openEventChannels()
        for remote in Set([front.txPort, front.rxPort]) {
            let port = try events.bindInterdomain(remoteDomain: guest.id, remotePort: remote)
            try events.unbind(port)
        }
    }

    @Test func releaseGuestResourcesIsEarlyAndSafeToRepeat() throws {
        let (hypervisor, guest, front) = try guestQueue()
        let worker = try NetQueueWorker(platform: hypervisor.platform(for: .dom0), frontend: guest.id, txRingRef: front.txRingRef,
                                        rxRingRef: front.rxRingRef, txRemotePort: front.txPort, rxRemotePort: front.rxPort,
                                        tapDescriptor: -1, options: NetQueueOptions())
        worker.releaseGuestResources()
        #expect(hypervisor.mappingCount == 0, "unmapped while the worker still exists")
        worker.releaseGuestResources()
        #expect(hypervisor.mappingCount == 0)
    }
}

#if canImport(Glibc)
import Glibc
#endif
import CXenShims
import Logging
import ServiceLifecycle
import Testing
import XenBackendDaemon
import XenBlockBackend
import XenBlockFrontend
import XenBlockProtocol
import XenBlockTestbed
import XenBusDriver
import XenPlatform
import XenProtocolTesting
import XenSim
import XenStore
import XenStoreProtocol
import XenToolstack
import XenBusClient
import XenBus

/// One `BackendDaemon` serving several guests' disks, one guest of which is
/// hostile: the daemon-level rows of protocol-anchors.md §4. Each test
/// asserts that the daemon survives, that only the hostile device suffers
/// (and recovers once its frontend behaves), that a bystander guest's disk
/// keeps full, verified service meanwhile, and that memory and mappings
/// stay bounded.
@Suite struct DaemonHostileTests {
    /// Guest 5 is the hostile one; guest 6 is the bystander.
    final class Rig: @unchecked Sendable {
        let host: SimBlockHost
        let bystander: SimDomain
        let daemon: BackendDaemon<SimPlatform>
        let task: Task<Void, Error>
        let hostileFile = TempDisk(megabytes: 8), bystanderFile = TempDisk(megabytes: 8)
        var hostileDisk: ToolstackDisk!
        var bystanderDisk: ToolstackDisk!
        var bystanderFront: BlockFrontend<BlockRingX86_64>!

        init() async throws {
            var logger: Logger?
            if getenv("XENBACK_TEST_LOG") != nil { logger = Logger(label: "xenback.test"); logger?.logLevel = .debug }
            host = try await SimBlockHost(guestID: DomainID(5), guestPages: 1024, grantEntries: 4096, logger: logger)
            bystander = try host.hypervisor.createDomain(DomainID(6), pages: 512, grantEntries: 2048)
            daemon = BackendDaemon(platform: host.hypervisor.platform(for: .dom0), xenstore: host.backendStore,
                                   block: BlockBackendConfiguration(maximumQueues: 2), metricsInterval: .seconds(3600),
                                   logger: host.logger)
            let (ready, readySignal) = AsyncStream<Void>.makeStream()
            daemon.onReady = { readySignal.yield() }
            task = Task { [daemon] in try await daemon.run() }
            var readyEvents = ready.makeAsyncIterator()
            await readyEvents.next()
            hostileDisk = try await ToolstackDisk.create(xenstore: host.backendStore, frontend: host.guest.id, target: hostileFile.path)
            bystanderDisk = try await ToolstackDisk.create(xenstore: host.backendStore, frontend: bystander.id, target: bystanderFile.path)
            for disk in [hostileDisk!, bystanderDisk!] {
                _ = try await awaitXenbusState(host.backendStore, disk.backendPath, "the daemon probing \(disk.backendPath)") { $0 == .initWait }
            }
            bystanderFront = try await BlockFrontend<BlockRingX86_64>.connect(
                domain: bystander, xenstore: host.frontendStore, frontendPath: bystanderDisk.frontendPath, frames: 0..<512,
                options: BlockFrontendOptions(queues: 1, slotsPerQueue: 8, segmentsPerRequest: 8))
        }

        /// Writes `rounds` distinct 4 KiB blocks through the bystander's
        /// frontend and reads each back, through the ring and from its file.
        func bystanderServes(rounds: Int, seed: UInt8) throws -> Bool {
            let q = bystanderFront.queues[0]
            for i in 0..<rounds {
                let block = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ i &+ Int(seed)) }
                let sector = UInt64(i % 1024) * 8
                guard try q.write(sector: sector, block) == .okay else { return false }
                let (status, back) = try q.read(sector: sector, byteCount: 4096)
                guard status == .okay, back == block, bystanderFile.read(Int(sector) * 512, 4096) == block else { return false }
            }
            return true
        }

        /// A well-behaved frontend on the hostile guest's disk: connects,
        /// writes and reads back through the ring and the file.
        func hostileDiskServesAGoodFrontend(frames: Range<UInt32>) async throws -> Bool {
            // A frontend probed anew starts from Initialising (after a Closed).
            try await host.frontendStore.write(hostileDisk.frontendPath + "/state", "\(XenbusState.initialising.rawValue)")
            let front = try await BlockFrontend<BlockRingX86_64>.connect(
                domain: host.guest, xenstore: host.frontendStore, frontendPath: hostileDisk.frontendPath, frames: frames,
                options: BlockFrontendOptions(queues: 2, slotsPerQueue: 8, segmentsPerRequest: 8))
            let block = (0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 1) }
            let q = front.queues[1]
            let written = try q.write(sector: 64, block) == .okay
            let (status, back) = try q.read(sector: 64, byteCount: 8192)
            let onDisk = hostileFile.read(64 * 512, 8192) == block
            let closed = try await front.close()
            return written && status == .okay && back == block && onDisk && closed
        }

        func shutdown() async throws {
            #expect(try await bystanderFront.close(), "every bystander grant revocable after close")
            task.cancel()
            try await task.value
            #expect(host.hypervisor.mappingCount == 0, "the daemon left no grant mapped")
            await host.shutdown()
        }
    }

    /// Bytes the process's heap holds (glibc's view; the daemon runs here).
    static func heapInUse() -> Int { Int(CXenShims_heap_in_use()) }

    /// XSA-349: a frontend can write as much as it likes below the nodes a
    /// backend watches (its own `state` here). Each write is a watch event
    /// for the daemon; they must not pile up in memory, and the daemon must
    /// go on serving everyone, the flooding guest included.
    @Test func xsa349_aWatchEventFloodStaysBoundedAndEveryoneIsServed() async throws {
        let rig = try await Rig()
        let goodFrames: Range<UInt32> = 0..<512
        #expect(try await rig.hostileDiskServesAGoodFrontend(frames: goodFrames))
        _ = try await awaitXenbusState(rig.host.backendStore, rig.hostileDisk.backendPath, "backend Closed") { $0 == .closed }
        // Connected again, then the flood from the same guest.
        try await rig.host.frontendStore.write(rig.hostileDisk.frontendPath + "/state", "\(XenbusState.initialising.rawValue)")
        let front = try await BlockFrontend<BlockRingX86_64>.connect(
            domain: rig.host.guest, xenstore: rig.host.frontendStore, frontendPath: rig.hostileDisk.frontendPath, frames: goodFrames,
            options: BlockFrontendOptions(queues: 1, slotsPerQueue: 8, segmentsPerRequest: 8))
        let heapBefore = Self.heapInUse()
        let statePath = rig.hostileDisk.frontendPath + "/state"
        let floodWriters = 32, writesEach = 1000
        try await withThrowingTaskGroup(of: Bool.self) { group in
            for w in 0..<floodWriters {
                group.addTask {
                    for i in 0..<writesEach { try await rig.host.frontendStore.write("\(statePath)/flood-\(w)-\(i % 50)", "\(i)") }
                    return true
                }
            }
            group.addTask { try rig.bystanderServes(rounds: 100, seed: 1) }
            for try await served in group { #expect(served, "the bystander's writes read back during the flood") }
        }
        let growth = Self.heapInUse() - heapBefore
        #expect(growth < 16 << 20, "\(floodWriters * writesEach) watch events grew the heap by \(growth) bytes")
        // The flooding guest's own device still works and is still Connected.
        let block = [UInt8](repeating: 0x5A, count: 4096)
        #expect(try front.queues[0].write(sector: 8, block) == .okay)
        #expect(try front.queues[0].read(sector: 8, byteCount: 4096).1 == block)
        #expect(try await rig.host.backendStore.readString(rig.hostileDisk.backendPath + "/state") == "4")
        #expect(rig.daemon.blockDevices.count == 2)
        #expect(try await front.close())
        try await rig.shutdown()
    }

    enum BrokenPart: String, CaseIterable, Sendable { case eventChannel, secondRing, secondEventChannel }

    /// XSA-350: a connect that fails halfway (queue 0 set up, queue 1's ring
    /// or channel bogus; or the only channel bogus) must undo exactly what
    /// it did: no ring left mapped, no channel left bound, the error
    /// reported, the device Closing. A good frontend then gets full service.
    @Test(arguments: BrokenPart.allCases)
    func xsa350_aHalfDoneConnectIsUndone(broken: BrokenPart) async throws {
        let rig = try await Rig()
        let mappedBefore = rig.host.hypervisor.mappingCount  // the bystander's
        let guest = rig.host.guest, store = rig.host.frontendStore, path = rig.hostileDisk.frontendPath
        let events = try guest.openEventChannels()
        let ringFrames: [UInt32] = [600, 601]
        for f in ringFrames { guest.page(f).initializeMemory(as: UInt8.self, repeating: 0, count: 4096) }
        let ringRefs = try ringFrames.map { try guest.grantAccess(to: .dom0, frame: $0, readOnly: false) }
        let ports = (0..<2).map { _ in events.allocateUnbound(remoteDomain: .dom0) }
        let queues = broken == .eventChannel ? 1 : 2
        if queues == 1 {
            try await store.write(path + "/ring-ref", "\(ringRefs[0].rawValue)")
            try await store.write(path + "/event-channel", "4095")
        } else {
            try await store.write(path + "/multi-queue-num-queues", "2")
            for q in 0..<2 {
                let ring = broken == .secondRing && q == 1 ? "3999" : "\(ringRefs[q].rawValue)"
                let port = broken == .secondEventChannel && q == 1 ? "4095" : "\(ports[q].rawValue)"
                try await store.write(path + "/queue-\(q)/ring-ref", ring)
                try await store.write(path + "/queue-\(q)/event-channel", port)
            }
        }
        try await store.write(path + "/protocol", "x86_64-abi")
        try await store.write(path + "/state", "\(XenbusState.initialised.rawValue)")
        _ = try await awaitXenbusState(store, rig.hostileDisk.backendPath, "the backend giving up on the broken connect") {
            $0 == .closing || $0 == .closed
        }
        let error = try await rig.host.backendStore.readIfPresent(rig.hostileDisk.backendPath + "/error") ?? ""
        #expect(!error.isEmpty, "the reason is reported for the toolstack")
        #expect(rig.host.hypervisor.mappingCount == mappedBefore, "nothing of the half-done connect is still mapped")
        for ref in ringRefs { #expect(guest.endForeignAccess(ref), "ring grant \(ref.rawValue) revocable") }
        #expect(try rig.bystanderServes(rounds: 20, seed: 2))

        // The frontend closes and starts over, well-behaved this time.
        try await store.write(path + "/state", "\(XenbusState.closed.rawValue)")
        _ = try await awaitXenbusState(store, rig.hostileDisk.backendPath, "backend Closed") { $0 == .closed }
        for key in ["ring-ref", "event-channel", "multi-queue-num-queues", "queue-0", "queue-1"] { try? await store.rm(path + "/" + key) }
        #expect(try await rig.hostileDiskServesAGoodFrontend(frames: 0..<512))
        try await rig.shutdown()
    }

    /// XSA-350's other half: a frontend that flips between setting up and
    /// closing as fast as it can, so connects and teardowns overlap. The
    /// daemon must end with nothing mapped, and serve the next good frontend.
    @Test func xsa350_stateFlipsDuringSetupLeaveNothingBehind() async throws {
        let rig = try await Rig()
        let mappedBefore = rig.host.hypervisor.mappingCount
        let guest = rig.host.guest, store = rig.host.frontendStore, path = rig.hostileDisk.frontendPath
        let events = try guest.openEventChannels()
        let frame: UInt32 = 700
        guest.page(frame).initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
        let ringRef = try guest.grantAccess(to: .dom0, frame: frame, readOnly: false)
        let port = events.allocateUnbound(remoteDomain: .dom0)
        try await store.write(path + "/ring-ref", "\(ringRef.rawValue)")
        try await store.write(path + "/event-channel", "\(port.rawValue)")
        try await store.write(path + "/protocol", "x86_64-abi")
        let flips: [XenbusState] = [.initialised, .closing, .initialised, .connected, .closed, .initialising, .initialised, .closing]
        for round in 0..<40 {
            try await store.write(path + "/state", "\(flips[round % flips.count].rawValue)")
        }
        // The toolstack detaches the disk (xl block-detach) as the frontend
        // closes, then the daemon is done with it.
        try await rig.hostileDisk.setOffline(xenstore: rig.host.backendStore)
        try await store.write(path + "/state", "\(XenbusState.closed.rawValue)")
        await rig.daemon.awaitStopped("vbd/5/\(rig.hostileDisk.devid)")
        #expect(try await rig.host.backendStore.readString(rig.hostileDisk.backendPath + "/state") == "\(XenbusState.closed.rawValue)")
        #expect(rig.host.hypervisor.mappingCount == mappedBefore, "no ring of the flipping frontend is still mapped")
        #expect(guest.endForeignAccess(ringRef))
        #expect(try rig.bystanderServes(rounds: 20, seed: 3))
        // Attached again at the same path: a good frontend gets full service.
        try await rig.hostileDisk.remove(xenstore: rig.host.backendStore)
        rig.hostileDisk = try await ToolstackDisk.create(xenstore: rig.host.backendStore, frontend: guest.id, target: rig.hostileFile.path)
        #expect(try await rig.hostileDiskServesAGoodFrontend(frames: 0..<512))
        try await rig.shutdown()
    }

    /// XSA-39 and XSA-332 across guests: the hostile guest lies about its
    /// producer index on one ring and storms notifications on the other; the
    /// bystander guest's disk is served in full throughout, the lying ring
    /// halts, the storming one still answers, and the daemon keeps both devices.
    @Test func xsa39_332_aLyingAndStormingGuestLeavesOthersServed() async throws {
        let rig = try await Rig()
        try await rig.host.frontendStore.write(rig.hostileDisk.frontendPath + "/state", "\(XenbusState.initialising.rawValue)")
        let front = try await BlockFrontend<BlockRingX86_64>.connect(
            domain: rig.host.guest, xenstore: rig.host.frontendStore, frontendPath: rig.hostileDisk.frontendPath, frames: 0..<512,
            options: BlockFrontendOptions(queues: 2, slotsPerQueue: 8, segmentsPerRequest: 8))
        let (lying, storming) = (front.queues[0], front.queues[1])
        let ring = rig.host.guest.page(lying.ringFrames[0])
        ring.storeBytes(of: UInt32(1000), as: UInt32.self)  // req_prod 1000 ahead: RING_REQUEST_PROD_OVERFLOW
        try lying.kick()
        async let storm = EventStorm.run(kicks: 100_000) { try storming.kick() }
        let served = try await offThePool { try rig.bystanderServes(rounds: 40, seed: 5) }
        let stormed = try await storm
        #expect(served, "the bystander's 40 writes read back through the ring and the file")
        // Each spurious wake is one bounded pass; the hold keeps them few.
        let spurious = rig.daemon.blockDevices["5/\(rig.hostileDisk.devid)"]?.statistics[.spuriousEvents] ?? 0
        #expect(spurious <= stormed.spuriousWakeBound,
                "\(stormed.kicks) kicks in \(stormed.seconds) s woke the storming ring for nothing \(spurious) times")
        let block = [UInt8](repeating: 0xC3, count: 4096)
        #expect(try storming.write(sector: 24, block) == .okay && storming.read(sector: 24, byteCount: 4096) == (.okay, block),
                "the storming ring still answers")
        #expect(rig.daemon.blockDevices.count == 2)
        #expect(rig.daemon.blockDevices["5/\(rig.hostileDisk.devid)"]?.statistics[.ringsHalted] == 1, "the lying ring, and only it, halted")
        ring.storeBytes(of: UInt32(0), as: UInt32.self)  // sane again for close (the backend already halted that ring)
        #expect(try await front.close())
        try await rig.shutdown()
    }

    /// Every malformed request class of the device-level suite (XSA-155,
    /// 361/365 bad grants, segments and indirect pages out of bounds, sector
    /// overflow, unknown operations), 2,400 of them from one guest through
    /// the daemon: each gets its status, the heap does not grow with them,
    /// the bystander's I/O reads back throughout, nothing refused reaches
    /// the file, the hostile device stays Connected and serves good requests,
    /// and at close every grant is revocable (XSA-371).
    @Test func malformedRequestsCostOnlyTheirSender() async throws {
        let rig = try await Rig()
        try await rig.host.frontendStore.write(rig.hostileDisk.frontendPath + "/state", "\(XenbusState.initialising.rawValue)")
        let front = try await BlockFrontend<BlockRingX86_64>.connect(
            domain: rig.host.guest, xenstore: rig.host.frontendStore, frontendPath: rig.hostileDisk.frontendPath, frames: 0..<512,
            options: BlockFrontendOptions(queues: 1, slotsPerQueue: 8, segmentsPerRequest: 8))
        let q = front.queues[0]
        let guest = rig.host.guest
        let sectors = UInt64(8 << 20) / 512
        let g = q.dataGrant(slot: 0, page: 0).rawValue
        let hostile: UInt32 = 1000  // frames 1000... are outside the frontend's own
        let otherDomain = try guest.grantAccess(to: DomainID(99), frame: hostile, readOnly: false).rawValue
        let readOnly = try guest.grantAccess(to: .dom0, frame: hostile + 1, readOnly: true).rawValue
        let indirectRef = try guest.grantAccess(to: .dom0, frame: hostile + 2, readOnly: true).rawValue
        func indirectPage(_ segments: [BlockSegment]) {
            for (i, s) in segments.enumerated() { guest.page(hostile + 2).storeBytes(of: s.wireWord, toByteOffset: 8 * i, as: UInt64.self) }
        }
        func one(_ op: BlockOperation, _ sector: UInt64, _ segment: BlockSegment) -> BlockRequest {
            BlockRequest(operation: op, id: 1, sectorNumber: sector, segment: segment)
        }
        let cases: [(String, () -> Void, BlockRequest, BlockStatus)] = [
            ("never granted", {}, one(.read, 0, BlockSegment(grant: 9999, firstSector: 0, lastSector: 7)), .error),
            ("granted to another domain", {}, one(.read, 0, BlockSegment(grant: otherDomain, firstSector: 0, lastSector: 7)), .error),
            ("read into a read-only grant", {}, one(.read, 0, BlockSegment(grant: readOnly, firstSector: 0, lastSector: 7)), .error),
            ("one bad segment of two", {}, BlockRequest(operation: .write, id: 2, sectorNumber: sectors - 16,
                segments: [BlockSegment(grant: g, firstSector: 0, lastSector: 7), BlockSegment(grant: 9999, firstSector: 0, lastSector: 7)]), .error),
            ("last sector past the page", {}, one(.read, 0, BlockSegment(grant: g, firstSector: 0, lastSector: 8)), .error),
            ("first after last", {}, one(.read, 0, BlockSegment(grant: g, firstSector: 6, lastSector: 5)), .error),
            ("past the end of the disk", {}, one(.write, sectors - 7, BlockSegment(grant: g, firstSector: 0, lastSector: 7)), .error),
            ("sector overflow", {}, one(.write, UInt64.max - 3, BlockSegment(grant: g, firstSector: 0, lastSector: 7)), .error),
            ("discard overflow", {}, BlockRequest(discardID: 5, sectorNumber: 8, sectorCount: UInt64.max - 4), .error),
            ("indirect: a bad segment inside the page", { indirectPage([BlockSegment(grant: g, firstSector: 0, lastSector: 7), BlockSegment(grant: g, firstSector: 3, lastSector: 9)]) },
             BlockRequest(indirectID: 6, operation: .read, sectorNumber: 0, segmentCount: 2, indirectGrants: [indirectRef]), .error),
            ("indirect: the page's grant is bad", {}, BlockRequest(indirectID: 8, operation: .read, sectorNumber: 0, segmentCount: 1, indirectGrants: [4000]), .error),
            ("unknown operation", {}, BlockRequest(operation: BlockOperation(rawValue: 200), id: 11, sectorNumber: 0, segments: []), .notSupported),
        ]
        let tail = rig.hostileFile.read(Int(sectors - 16) * 512, 16 * 512)
        func battery() throws -> Int {
            var wrong = 0
            for (_, prepare, request, status) in cases {
                prepare()
                if try q.raw(request).status != status { wrong += 1 }
            }
            return wrong
        }
        #expect(try battery() == 0, "each malformed request got its status")  // warm-up: first mappings, buffers
        let heapBefore = Self.heapInUse()
        var wrong = 0, bystanderOK = true
        for round in 0..<200 {
            wrong += try battery()
            if round % 20 == 0 { bystanderOK = try bystanderOK && rig.bystanderServes(rounds: 2, seed: UInt8(round & 0xFF)) }
        }
        let growth = Self.heapInUse() - heapBefore
        #expect(wrong == 0, "\(wrong) of \(200 * cases.count) malformed requests got the wrong status")
        #expect(bystanderOK, "the bystander's writes read back through the ring and the file throughout")
        #expect(growth < 4 << 20, "\(200 * cases.count) malformed requests grew the heap by \(growth) bytes")
        #expect(rig.hostileFile.read(Int(sectors - 16) * 512, 16 * 512) == tail, "no refused write reached the file")
        let block = [UInt8](repeating: 0x3C, count: 4096)
        #expect(try q.write(sector: 16, block) == .okay && q.read(sector: 16, byteCount: 4096) == (.okay, block),
                "the sender's device still serves good requests")
        #expect(try await rig.host.backendStore.readString(rig.hostileDisk.backendPath + "/state") == "\(XenbusState.connected.rawValue)")
        #expect(try await front.close(), "XSA-371: every grant revocable after close")
        try await rig.shutdown()
    }

    /// A frontend that fills its ring and then stops consuming answers (and
    /// kicks instead): the backend answers each request exactly once, keeps
    /// nothing else in flight, serves the bystander meanwhile, and the
    /// answers are all there, each id once, when the frontend looks again.
    @Test func aFrontendThatStopsConsumingResponses() async throws {
        let rig = try await Rig()
        let front = try await BlockFrontend<BlockRingX86_64>.connect(
            domain: rig.host.guest, xenstore: rig.host.frontendStore, frontendPath: rig.hostileDisk.frontendPath, frames: 0..<512,
            options: BlockFrontendOptions(queues: 1, slotsPerQueue: 8, segmentsPerRequest: 8))
        let q = front.queues[0]
        let requests = (0..<q.slotCount).map { slot in
            BlockRequest(operation: .read, id: UInt64(1000 + slot), sectorNumber: UInt64(slot) * 8,
                         segments: [BlockSegment(grant: q.dataGrant(slot: slot, page: 0).rawValue, firstSector: 0, lastSector: 7)])
        }
        _ = try q.submit(requests, expecting: 0)
        for _ in 0..<10_000 { try q.kick() }
        #expect(try rig.bystanderServes(rounds: 50, seed: 4), "the bystander is served while the hostile ring sits full")
        let answers = try q.submit([], expecting: requests.count, timeoutMilliseconds: 10_000)
        #expect(answers.map(\.id).sorted() == requests.map(\.id), "each request answered exactly once")
        #expect(answers.allSatisfy { $0.status == .okay })
        // And nothing more comes: the ring is idle, not re-answering.
        #expect(throws: (any Error).self) { _ = try q.submit([], expecting: 1, timeoutMilliseconds: 200) }
        #expect(try q.write(sector: 0, [UInt8](repeating: 1, count: 4096)) == .okay, "the ring works on")
        #expect(try await front.close())
        try await rig.shutdown()
    }
}

/// xenstored gone and not coming back while xenbackd is told to stop: the
/// daemon must still stop (its xenstore requests give up once cancelled,
/// its unwatches are local) instead of waiting for a connection for ever.
@Suite struct DaemonOutageTests {
    @Test func gracefulShutdownDuringAXenstoredOutage() async throws {
        var logger: Logger?
        if getenv("XENBACK_TEST_LOG") != nil { logger = Logger(label: "xenback.test"); logger?.logLevel = .debug }
        let host = try await SimBlockHost(guestID: DomainID(5), guestPages: 1024, grantEntries: 4096, logger: logger)
        let store = try await XenStoreClient.connect(reconnecting: XenStoreReconnection(.socket(path: host.socketPath), logger: host.logger))
        let daemon = BackendDaemon(platform: host.hypervisor.platform(for: .dom0), xenstore: store, metricsInterval: .seconds(3600),
                                   logger: host.logger)
        let (ready, readySignal) = AsyncStream<Void>.makeStream()
        daemon.onReady = { readySignal.yield() }
        let group = ServiceGroup(configuration: .init(services: [.init(service: daemon)], logger: host.logger))
        let running = Task { try await group.run() }
        var readyEvents = ready.makeAsyncIterator()
        await readyEvents.next()
        let file = TempDisk(megabytes: 8)
        let disk = try await host.attachDisk(target: file.path)
        let front = try await host.connect(disk, BlockRingX86_64.self, options: BlockFrontendOptions(queues: 1, slotsPerQueue: 8, segmentsPerRequest: 8),
                                           frames: 0..<512)
        let block = [UInt8](repeating: 0x7E, count: 4096)
        #expect(try front.queues[0].write(sector: 0, block) == .okay)

        try await host.server.stop()  // xenstored is gone
        #expect(try front.queues[0].read(sector: 0, byteCount: 4096) == (.okay, block), "rings need no xenstore")
        await group.triggerGracefulShutdown()
        try await running.value
        #expect(host.hypervisor.mappingCount == 0, "the device let go of the guest's pages")
        await store.close()
        await host.frontendStore.close()
        await host.backendStore.close()
        unlink(host.socketPath)
    }
}

#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import Testing
import XenProtocolTesting
import XenBlockBackend
import XenBlockFrontend
import XenBlockProtocol
import XenPlatform
import XenRing
import XenSim
import XenStore
import XenToolstack
import XenBusClient

/// A hostile frontend against the whole block backend (xenbus, rings,
/// grants, I/O), one test per row of protocol-anchors.md §4 that concerns
/// block backends. Each asserts the right status, that the ring (or only
/// the broken ring) goes on, and that teardown leaves no grant mapped.
@Suite struct BlockHostileFrontendTests {
    /// Frames 0..<960 belong to the frontend; 960..<1024 are for hostile pages.
    static let hostileFrames: Range<UInt32> = 960..<1024

    func withDevice(queues: Int = 1, persistent: Bool = true, megabytes: Int = 4,
                    _ body: (SimHost, TempDisk, BlockFrontend<BlockRingX86_64>, BlockBackendDevice<SimPlatform>) async throws -> Void) async throws {
        let host = try await SimHost(guestPages: 1024, grantEntries: 2048)
        let file = TempDisk(megabytes: megabytes)
        let disk = try await ToolstackDisk.create(xenstore: host.backendStore, frontend: host.guest.id, target: file.path)
        let (device, task) = host.startBackend(disk, configuration: BlockBackendConfiguration(maximumQueues: 4))
        let front = try await host.connect(disk, BlockRingX86_64.self,
                                           options: BlockFrontendOptions(queues: queues, slotsPerQueue: 8, segmentsPerRequest: 16,
                                                                         persistentGrants: persistent),
                                           frames: 0..<Self.hostileFrames.lowerBound)
        try await body(host, file, front, device)
        #expect(try await front.close(), "XSA-371: after close no grant is still mapped, persistent ones included")
        task.cancel()
        try await task.value
        await host.shutdown()
    }

    @Test(arguments: [true, false])
    func xsa361_365_badGrantsFailOnlyTheirRequest(persistent: Bool) async throws {
        try await withDevice(persistent: persistent) { host, _, front, _ in
            let q = front.queues[0]
            let good = q.dataGrant(slot: 0, page: 0).rawValue
            let f = Self.hostileFrames.lowerBound
            let otherDomain = try host.guest.grantAccess(to: DomainID(99), frame: f, readOnly: false).rawValue
            let readOnly = try host.guest.grantAccess(to: .dom0, frame: f + 1, readOnly: true).rawValue
            func rw(_ op: BlockOperation, _ id: UInt64, _ grants: [UInt32]) -> BlockRequest {
                BlockRequest(operation: op, id: id, sectorNumber: 8, segments: grants.map { BlockSegment(grant: $0, firstSector: 0, lastSector: 7) })
            }
            let cases: [(BlockRequest, BlockStatus)] = [
                (rw(.read, 1, [9999]), .error),                    // never granted
                (rw(.read, 2, [otherDomain]), .error),             // granted to someone else
                (rw(.read, 3, [readOnly]), .error),                // the backend must write it
                (rw(.read, 4, [good, 9999]), .error),              // one bad segment of two
                (rw(.write, 5, [good, otherDomain]), .error),
                (rw(.write, 6, [readOnly]), .okay),                // reading a read-only grant is fine
                (rw(.read, 7, [good]), .okay),
            ]
            for (request, status) in cases {
                #expect(try q.raw(request).status == status, "request \(request.id)")
            }
            // The good page that shared a request with a bad one is not left mapped (checked at close).
        }
    }

    @Test func segmentsOutsideThePageIndirectPagesOutOfBoundsAndSectorOverflow() async throws {
        try await withDevice { host, file, front, _ in
            let q = front.queues[0]
            let sectors = UInt64(4 << 20) / 512
            let g = q.dataGrant(slot: 0, page: 0).rawValue
            // An indirect page whose segments are bad, granted read-only like blkfront does.
            let page = Self.hostileFrames.lowerBound + 2
            let indirectRef = try host.guest.grantAccess(to: .dom0, frame: page, readOnly: true).rawValue
            func indirectPage(_ segments: [BlockSegment]) {
                for (i, s) in segments.enumerated() { host.guest.page(page).storeBytes(of: s.wireWord, toByteOffset: 8 * i, as: UInt64.self) }
            }
            let cases: [(String, () -> Void, BlockRequest, BlockStatus)] = [
                ("last sector past the page", {}, BlockRequest(operation: .read, id: 1, sectorNumber: 0, segment: BlockSegment(grant: g, firstSector: 0, lastSector: 8)), .error),
                ("first after last", {}, BlockRequest(operation: .read, id: 2, sectorNumber: 0, segment: BlockSegment(grant: g, firstSector: 6, lastSector: 5)), .error),
                ("past the end of the disk", {}, BlockRequest(operation: .read, id: 3, sectorNumber: sectors - 7, segment: BlockSegment(grant: g, firstSector: 0, lastSector: 7)), .error),
                ("sector overflow", {}, BlockRequest(operation: .write, id: 4, sectorNumber: UInt64.max - 3, segment: BlockSegment(grant: g, firstSector: 0, lastSector: 7)), .error),
                ("discard overflow", {}, BlockRequest(discardID: 5, sectorNumber: 8, sectorCount: UInt64.max - 4), .error),
                ("indirect: a bad segment inside the page", { indirectPage([BlockSegment(grant: g, firstSector: 0, lastSector: 7), BlockSegment(grant: g, firstSector: 3, lastSector: 9)]) },
                 BlockRequest(indirectID: 6, operation: .read, sectorNumber: 0, segmentCount: 2, indirectGrants: [indirectRef]), .error),
                ("indirect: more segments than the granted pages hold", { indirectPage([BlockSegment(grant: g, firstSector: 0, lastSector: 7)]) },
                 BlockRequest(indirectID: 7, operation: .read, sectorNumber: 0, segmentCount: 513, indirectGrants: [indirectRef]), .error),
                ("indirect: the page's grant is bad", {}, BlockRequest(indirectID: 8, operation: .read, sectorNumber: 0, segmentCount: 1, indirectGrants: [4000]), .error),
                ("indirect: total past the end", { indirectPage(Array(repeating: BlockSegment(grant: g, firstSector: 0, lastSector: 7), count: 16)) },
                 BlockRequest(indirectID: 9, operation: .write, sectorNumber: sectors - 64, segmentCount: 16, indirectGrants: [indirectRef]), .error),
                ("indirect carrying a flush", {}, BlockRequest(indirectID: 10, operation: .flushDiskCache, sectorNumber: 0, segmentCount: 1, indirectGrants: [indirectRef]), .error),
                ("unknown operation", {}, BlockRequest(operation: BlockOperation(rawValue: 200), id: 11, sectorNumber: 0, segments: []), .notSupported),
            ]
            let before = file.read(Int(sectors - 64) * 512, 64 * 512)
            for (what, prepare, request, status) in cases {
                prepare()
                #expect(try q.raw(request).status == status, "\(what)")
            }
            #expect(file.read(Int(sectors - 64) * 512, 64 * 512) == before, "nothing was written by a refused request")
            #expect(try q.write(sector: 0, pattern(4096, seed: 1)) == .okay, "the ring goes on")
        }
    }

    @Test func xsa216_responsePaddingIsZeroed() async throws {
        try await withDevice { host, _, front, _ throws in
            let q = front.queues[0]
            // The request's id fills bytes 8...15 of the slot with ones; the
            // response (id @0, operation @8, status @10) must clear 9 and 12...15.
            let request = BlockRequest(operation: .flushDiskCache, id: UInt64.max, sectorNumber: 0, segments: [])
            #expect(try q.raw(request).status == .okay)
            let slot = host.guest.page(q.ringFrames[0]) + 64
            let bytes = (0..<16).map { slot.load(fromByteOffset: $0, as: UInt8.self) }
            #expect(bytes[9] == 0 && bytes[12..<16].allSatisfy { $0 == 0 }, "padding zeroed: \(bytes)")
            #expect(bytes[8] == BlockOperation.flushDiskCache.rawValue)
        }
    }

    @Test func xsa39_aLyingProducerHaltsOnlyItsRing() async throws {
        try await withDevice(queues: 2) { host, _, front, device in
            let broken = front.queues[0]
            let ring = host.guest.page(broken.ringFrames[0])
            // req_prod 1000 ahead of everything: RING_REQUEST_PROD_OVERFLOW.
            ring.storeBytes(of: UInt32(1000), as: UInt32.self)
            try broken.kick()
            // The other queue is served in full meanwhile.
            let healthy = front.queues[1]
            for i in 0..<20 {
                #expect(try healthy.write(sector: UInt64(i * 8), pattern(4096, seed: i)) == .okay)
                let (status, data) = try healthy.read(sector: UInt64(i * 8), byteCount: 4096)
                #expect(status == .okay && data == pattern(4096, seed: i))
            }
            #expect(device.statistics[.writeRequests] == 20)
            // Put the index back so close() sees a sane ring (the backend already halted it).
            ring.storeBytes(of: UInt32(0), as: UInt32.self)
        }
    }

    /// XSA-332: one ring's frontend notifies without pause; the device's
    /// other ring is served in full meanwhile, and the storming ring still
    /// answers afterwards.
    @Test func xsa332_anEventStormOnOneRingLeavesTheOtherServed() async throws {
        try await withDevice(queues: 2) { _, _, front, device in
            let (storming, healthy) = (front.queues[0], front.queues[1])
            async let storm = EventStorm.run(kicks: 100_000) { try storming.kick() }
            let served = try await offThePool { () throws -> Int in
                var good = 0
                for i in 0..<20 {
                    let data = pattern(4096, seed: i)
                    guard try healthy.write(sector: UInt64(i * 8), data) == .okay else { continue }
                    let (status, back) = try healthy.read(sector: UInt64(i * 8), byteCount: 4096)
                    if status == .okay && back == data { good += 1 }
                }
                return good
            }
            let stormed = try await storm
            #expect(served == 20, "the other ring wrote and read back 20 blocks during the storm")
            #expect(device.statistics[.spuriousEvents] <= stormed.spuriousWakeBound)
            #expect(try storming.write(sector: 512, pattern(4096, seed: 99)) == .okay)
            #expect(try storming.read(sector: 512, byteCount: 4096) == (.okay, pattern(4096, seed: 99)), "the storming ring still works")
            #expect(device.statistics[.errors] == 0)
        }
    }

    /// XSA-332, the cost: a frontend notifying without pause for 1.5 s with
    /// nothing on its ring wakes the backend only a bounded number of times
    /// (each wake is one ring pass, bounded by the ring size), because from
    /// the second spurious wake in a row the port stays masked, 1 ms
    /// doubling to 1 s. Without that every kick the worker sees is a wake.
    /// A request sent after the storm is still answered.
    @Test func xsa332_anEventStormCostsABoundedNumberOfWakes() async throws {
        try await withDevice { _, _, front, device in
            let storming = front.queues[0]
            let storm = try await EventStorm.run(for: .milliseconds(1500)) { try storming.kick() }
            let spurious = device.statistics[.spuriousEvents]
            #expect(spurious >= 2 && spurious <= storm.spuriousWakeBound,
                    "\(storm.kicks) kicks in \(storm.seconds) s woke the backend for nothing \(spurious) times (at most \(storm.spuriousWakeBound) allowed)")
            #expect(try storming.write(sector: 8, pattern(4096, seed: 5)) == .okay, "the stormed ring still answers")
            #expect(try storming.read(sector: 8, byteCount: 4096) == (.okay, pattern(4096, seed: 5)))
        }
    }

    /// The other side of the XSA-332 throttle: an honest frontend is never
    /// held back. Its kicks often arrive after a final check already took
    /// the request; those count as work, so at queue depth 1 (every request
    /// waits for an event) and 8 almost no wake is spurious, and no hold
    /// (which would cost a millisecond or more) comes of it.
    @Test(arguments: [1, 8])
    func honestTrafficIsNotThrottled(iodepth: Int) async throws {
        try await withDevice { _, _, front, device in
            let workload = BlockWorkload(pattern: .randwrite, blockSize: 4096, iodepth: iodepth, regionBytes: 4 << 20, operations: 3000)
            let result = try await offThePool { try front.queues[0].run(workload) }
            #expect(result.errors == 0 && result.operations == 3000)
            let spurious = device.statistics[.spuriousEvents]
            #expect(spurious <= 30, "\(spurious) of 3000 requests' wakes were spurious")
        }
    }

    @Test func xsa155_requestsRewrittenWhileTheBackendReadsThem() async throws {
        try await withDevice { host, _, front, _ throws in
            let q = front.queues[0]
            let ringPage = host.guest.page(q.ringFrames[0])
            let stop = Atomic<Bool>(false)
            // A thread scribbling over every request slot while requests flow.
            final class Page: @unchecked Sendable { let p: UnsafeMutableRawPointer; init(_ p: UnsafeMutableRawPointer) { self.p = p } }
            let page = Page(ringPage)
            let scribbler = JoinableThread {
                var x: UInt64 = 0x1234_5678
                while !stop.load(ordering: .relaxed) {
                    x ^= x << 13; x ^= x >> 7; x ^= x << 17
                    let slot = Int(x % 32)
                    // Never touch the indices (first 64 bytes) or slot ids, only the bodies.
                    let offset = 64 + slot * 112 + 16 + Int((x >> 8) % 12) * 8
                    (page.p + offset).assumingMemoryBound(to: Atomic<UInt64>.self).pointee.store(x, ordering: .relaxed)
                }
            }
            var answered = 0
            for round in 0..<200 {
                let requests = (0..<8).map { i in
                    BlockRequest(operation: i % 2 == 0 ? .read : .write, id: UInt64(i), sectorNumber: UInt64(round % 100) * 8,
                                 segment: BlockSegment(grant: q.dataGrant(slot: i, page: 0).rawValue, firstSector: 0, lastSector: 7))
                }
                answered += try q.submit(requests, expecting: 8).count
            }
            stop.store(true, ordering: .relaxed)
            scribbler.join()
            #expect(answered == 1600, "every request answered, whatever was scribbled over it")
            #expect(try q.write(sector: 0, pattern(4096, seed: 5)) == .okay)
            let (status, data) = try q.read(sector: 0, byteCount: 4096)
            #expect(status == .okay && data == pattern(4096, seed: 5), "the ring still works")
        }
    }

    @Test func detachRequestedWhileIOIsInFlight() async throws {
        let host = try await SimHost(guestPages: 1024, grantEntries: 2048)
        let file = TempDisk(megabytes: 8)
        let disk = try await ToolstackDisk.create(xenstore: host.backendStore, frontend: host.guest.id, target: file.path)
        let (device, task) = host.startBackend(disk)
        let front = try await host.connect(disk, BlockRingX86_64.self, options: BlockFrontendOptions(slotsPerQueue: 16))
        let workload = BlockWorkload(pattern: .randwrite, blockSize: 8192, iodepth: 16, regionBytes: 8 << 20, duration: .milliseconds(800))
        let result = Mutex<Result<BlockWorkloadResult, Error>?>(nil)
        let worker = JoinableThread { let r = Result { try front.queues[0].run(workload) }; result.withLock { $0 = r } }
        // `xl block-detach` while the guest is writing: online = 0.
        try await disk.setOffline(xenstore: host.backendStore)
        let state = try await awaitXenbusState(host.frontendStore, disk.backendPath, "backend Closing") { $0 == .closing }
        #expect(state == .closing)
        worker.join()
        let outcome = try #require(result.withLock { $0 })
        let done = try outcome.get()
        #expect(done.errors == 0, "I/O in flight at detach completed normally")
        // Closing asks the frontend to close; until it does, I/O is served.
        let before = device.statistics[.writeRequests]
        let more = try front.queues[0].run(BlockWorkload(pattern: .randwrite, blockSize: 8192, iodepth: 16,
                                                         regionBytes: 8 << 20, operations: 200))
        #expect(more.errors == 0 && more.operations == 200)
        #expect(device.statistics[.writeRequests] == before + 200, "the backend kept serving until the frontend closed")
        #expect(try await front.close(), "every grant released after the drain")
        try await task.value  // the device is removed
        await host.shutdown()
    }
}

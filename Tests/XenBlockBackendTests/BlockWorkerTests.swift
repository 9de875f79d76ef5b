#if canImport(Glibc)
import Glibc
#endif
import CXenShims
import Synchronization
import Testing
import XenBlockBackend
import XenBlockProtocol
import XenPlatform
import XenRing
import XenSim
import XenProtocolTesting
import XenDisk

struct Timeout: Error {}

/// A guest with a blkif ring in its page 0 and data pages after it: what
/// blkfront sets up, done by hand.
final class TestGuest<L: RingLayout>: @unchecked Sendable where L.Request == BlockRequest, L.Response == BlockResponse {
    let hv = SimHypervisor()
    let guest: SimDomain
    var front: FrontRing<L>
    let ringRef: GrantRef
    let events: SimEventChannelDevice
    let port: EventChannelPort

    init(pages: Int = 64) throws {
        try hv.createDomain(.dom0, pages: 1)
        guest = try hv.createDomain(DomainID(7), pages: pages)
        front = try FrontRing(initializing: SharedRingMemory(base: guest.page(0), byteCount: 4096))
        ringRef = try guest.grantAccess(to: .dom0, frame: 0, readOnly: false)
        events = try guest.openEventChannels()
        port = events.allocateUnbound(remoteDomain: .dom0)
    }

    func grant(_ frame: UInt32, readOnly: Bool = false) throws -> UInt32 {
        try guest.grantAccess(to: .dom0, frame: frame, readOnly: readOnly).rawValue
    }

    func submit(_ requests: [BlockRequest]) throws {
        for r in requests { front.produceRequest(r) }
        if front.pushRequests() { try events.notify(port) }
    }

    /// Waits (on the event channel, no polling) for `count` responses.
    func responses(_ count: Int) throws -> [BlockResponse] {
        var out: [BlockResponse] = []
        var ports = [EventChannelPort](repeating: EventChannelPort(0), count: 4)
        while out.count < count {
            let producer = try front.readResponseProducer()
            while let r = front.nextResponse(before: producer) { out.append(r) }
            if out.count >= count || front.finalCheckForResponses() { continue }
            guard events.wait(timeoutMilliseconds: 10_000) else { throw Timeout() }
            _ = try ports.withUnsafeMutableBufferPointer { try events.takePending(into: $0) }
            try events.unmask(port)
        }
        return out
    }

    func fill(_ frame: UInt32, seed: UInt8) {
        let p = guest.page(frame)
        for i in 0..<4096 { p.storeBytes(of: UInt8(truncatingIfNeeded: i &* 31 &+ Int(seed)), toByteOffset: i, as: UInt8.self) }
    }

    func bytes(_ frame: UInt32, _ range: Range<Int>) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: guest.page(frame) + range.lowerBound, count: range.count))
    }
}

/// Runs a worker on its own thread for the duration of `body`.
func withWorker<L: RingLayout>(_ guest: TestGuest<L>, backing: FileBacking, geometry: DiskGeometry? = nil,
                               engine: BlockEngineKind = .default, persistentGrants: Int = 0,
                               _ body: (BlockRingWorker<SimPlatform, L>) throws -> Void) throws
where L.Request == BlockRequest, L.Response == BlockResponse {
    let worker = try BlockRingWorker<SimPlatform, L>(platform: guest.hv.platform(for: .dom0), frontend: guest.guest.id,
                                                     ringRefs: [guest.ringRef], remotePort: guest.port,
                                                     backing: backing, geometry: geometry, engine: engine,
                                                     persistentGrants: persistentGrants)
    let stop = eventfd(0, Int32(EFD_CLOEXEC))
    defer { close(stop) }
    let workerOutcome = WorkerOutcome()
    let thread = JoinableThread { workerOutcome.record { try worker.run(stopDescriptor: stop) } }
    let outcome = Result { try body(worker) }
    var one: UInt64 = 1
    _ = write(stop, &one, 8)
    thread.join()
    try outcome.get()
    try workerOutcome.get()
}

/// How a worker's run on its own thread ended: written by that thread,
/// read only after it was joined (the join orders the two).
final class WorkerOutcome: @unchecked Sendable {
    private var error: (any Error)?
    func record(_ run: () throws -> Void) {
        do { try run() } catch { self.error = error }
    }
    func get() throws { if let error { throw error } }
}

@Suite struct BlockWorkerTests {
    @Test(arguments: BlockEngineKind.allCases) func writesReachTheFileAndReadsComeFromIt(engine: BlockEngineKind) throws {
        let disk = TempDisk(megabytes: 4)
        let g = try TestGuest<BlockRingX86_64>()
        try withWorker(g, backing: try FileBacking(path: disk.path, direct: true), engine: engine) { worker in
            for f: UInt32 in 1...3 { g.fill(f, seed: UInt8(f)) }
            let segs = try (1...3).map { BlockSegment(grant: try g.grant(UInt32($0)), firstSector: 0, lastSector: 7) }
            try g.submit([BlockRequest(operation: .write, id: 0xAA, sectorNumber: 16, segments: segs)])
            #expect(try g.responses(1) == [BlockResponse(id: 0xAA, operation: .write, status: .okay)])
            let written = disk.read(16 * 512, 4096 * 3) == g.bytes(1, 0..<4096) + g.bytes(2, 0..<4096) + g.bytes(3, 0..<4096)
            #expect(written)

            // The other way: bytes put in the file directly, read into partial segments.
            let pattern = (0..<5120).map { UInt8(truncatingIfNeeded: $0 * 7 + 3) }
            disk.write(100 * 512, pattern)
            let r = BlockRequest(operation: .read, id: 0xBB, sectorNumber: 100, segments: [
                BlockSegment(grant: try g.grant(5), firstSector: 2, lastSector: 7),
                BlockSegment(grant: try g.grant(6), firstSector: 0, lastSector: 3),
            ])
            try g.submit([r])
            #expect(try g.responses(1) == [BlockResponse(id: 0xBB, operation: .read, status: .okay)])
            #expect(g.bytes(5, 1024..<4096) == Array(pattern[0..<3072]))
            #expect(g.bytes(6, 0..<2048) == Array(pattern[3072..<5120]))
            let s = worker.statistics.snapshot
            #expect(s[.writeRequests] == 1 && s[.writeSectors] == 24 && s[.readRequests] == 1 && s[.readSectors] == 10 && s[.errors] == 0)
        }
    }

    @Test(arguments: BlockEngineKind.allCases) func everyMalformedRequestGetsItsStatusAndTheRingGoesOn(engine: BlockEngineKind) throws {
        let disk = TempDisk(megabytes: 1)
        let g = try TestGuest<BlockRingX86_64>()
        try withWorker(g, backing: try FileBacking(path: disk.path, direct: true), engine: engine) { _ in
            let good = try g.grant(1)
            let readOnlyGrant = try g.grant(2, readOnly: true)
            let sectors = UInt64(1 << 20) / 512
            var tooMany = BlockRequest(operation: .read, id: 9, sectorNumber: 0, segment: BlockSegment(grant: good, firstSector: 0, lastSector: 7)).x86_64Bytes
            tooMany[1] = 12
            let cases: [(BlockRequest, BlockStatus)] = [
                (BlockRequest(operation: BlockOperation(rawValue: 9), id: 1, sectorNumber: 0, segments: []), .notSupported),
                (BlockRequest(operation: .reserved1, id: 2, sectorNumber: 0, segments: []), .notSupported),
                (BlockRequest(operation: .read, id: 3, sectorNumber: 0, segments: []), .error),
                (BlockRequest(operation: .read, id: 4, sectorNumber: 0, segment: BlockSegment(grant: good, firstSector: 0, lastSector: 8)), .error),
                (BlockRequest(operation: .read, id: 5, sectorNumber: 0, segment: BlockSegment(grant: good, firstSector: 5, lastSector: 4)), .error),
                (BlockRequest(operation: .read, id: 6, sectorNumber: sectors - 4, segment: BlockSegment(grant: good, firstSector: 0, lastSector: 7)), .error),
                (BlockRequest(operation: .read, id: 7, sectorNumber: UInt64.max - 2, segment: BlockSegment(grant: good, firstSector: 0, lastSector: 7)), .error),
                (BlockRequest(operation: .read, id: 8, sectorNumber: 0, segment: BlockSegment(grant: 999, firstSector: 0, lastSector: 7)), .error),
                (BlockRequest(x86_64Bytes: tooMany), .error),
                (BlockRequest(operation: .read, id: 10, sectorNumber: 0, segment: BlockSegment(grant: readOnlyGrant, firstSector: 0, lastSector: 7)), .error),
                (BlockRequest(discardID: 11, sectorNumber: 0, sectorCount: 8, secure: true), .notSupported),
                (BlockRequest(discardID: 12, sectorNumber: sectors, sectorCount: 1), .error),
                (BlockRequest(indirectID: 13, operation: .flushDiskCache, sectorNumber: 0, segmentCount: 1, indirectGrants: [good]), .error),
                (BlockRequest(indirectID: 14, operation: .read, sectorNumber: 0, segmentCount: 257, indirectGrants: [good]), .error),
                (BlockRequest(operation: .write, id: 15, sectorNumber: 8, segment: BlockSegment(grant: readOnlyGrant, firstSector: 0, lastSector: 7)), .okay),
                (BlockRequest(operation: .read, id: 16, sectorNumber: 8, segment: BlockSegment(grant: good, firstSector: 0, lastSector: 7)), .okay),
            ]
            try g.submit(cases.map(\.0))
            // Answers come as I/O completes, not necessarily in order.
            let responses = try g.responses(cases.count).sorted { $0.id < $1.id }
            #expect(responses.map(\.id) == cases.map(\.0.id), "every request answered once, with its own id")
            for (response, (request, status)) in zip(responses, cases) {
                #expect(response.status == status, "request \(request.id) (\(request.operation))")
                #expect(response.operation == request.responseOperation, "an indirect request's answer names its inner operation")
            }
            #expect(g.bytes(1, 0..<4096) == g.bytes(2, 0..<4096), "the ring kept working: the last read returned the written data")
        }
    }

    @Test func readOnlyDiskRefusesWrites() throws {
        let disk = TempDisk(megabytes: 1)
        let g = try TestGuest<BlockRingX86_64>()
        try withWorker(g, backing: try FileBacking(path: disk.path, readOnly: true)) { _ in
            let ref = try g.grant(1)
            try g.submit([
                BlockRequest(operation: .write, id: 1, sectorNumber: 0, segment: BlockSegment(grant: ref, firstSector: 0, lastSector: 7)),
                BlockRequest(operation: .writeBarrier, id: 2, sectorNumber: 0, segment: BlockSegment(grant: ref, firstSector: 0, lastSector: 7)),
                BlockRequest(discardID: 3, sectorNumber: 0, sectorCount: 8),
                BlockRequest(operation: .read, id: 4, sectorNumber: 0, segment: BlockSegment(grant: ref, firstSector: 0, lastSector: 7)),
            ])
            #expect(try g.responses(4).map(\.status) == [.error, .error, .notSupported, .okay])
        }
    }

    @Test(arguments: BlockEngineKind.allCases) func flushBarrierAndDiscard(engine: BlockEngineKind) throws {
        let disk = TempDisk(megabytes: 4)
        let g = try TestGuest<BlockRingX86_64>(pages: 300)
        try withWorker(g, backing: try FileBacking(path: disk.path, direct: true), engine: engine) { worker in
            // 1 MiB of data, written with barriers, then flushed.
            var requests: [BlockRequest] = []
            for i in 0..<23 {
                let frames = (0..<11).map { UInt32(1 + (i * 11 + $0) % 256) }
                for f in frames { g.fill(f, seed: UInt8(truncatingIfNeeded: f)) }
                let segs = try frames.map { BlockSegment(grant: try g.grant($0), firstSector: 0, lastSector: 7) }
                requests.append(BlockRequest(operation: i == 0 ? .writeBarrier : .write, id: UInt64(i), sectorNumber: UInt64(i * 88), segments: segs))
            }
            try g.submit(Array(requests.prefix(20)))
            #expect(try g.responses(20).allSatisfy { $0.status == .okay })
            try g.submit(Array(requests.suffix(3)) + [BlockRequest(operation: .flushDiskCache, id: 99, sectorNumber: 0, segments: [])])
            let last = try g.responses(4)
            #expect(last.allSatisfy { $0.status == .okay } && last.contains { $0.id == 99 })
            let before = disk.allocatedBlocks
            #expect(before >= (23 * 88 * 512) / 512, "the data is allocated on disk")
            // Discard the first 512 KiB: the file gives the blocks back and reads zeros.
            try g.submit([BlockRequest(discardID: 100, sectorNumber: 0, sectorCount: 1024)])
            #expect(try g.responses(1).first?.status == .okay)
            #expect(disk.allocatedBlocks < before, "st_blocks shrank")
            let zeros = disk.read(0, 512 * 1024).allSatisfy { $0 == 0 }
            #expect(zeros, "discarded sectors read as zeros")
            let s = worker.statistics.snapshot
            #expect(s[.flushRequests] == 1 && s[.discardRequests] == 1 && s[.writeRequests] == 23)
        }
    }

    @Test(arguments: BlockEngineKind.allCases) func indirectRequestsOfTheAdvertisedMaximum(engine: BlockEngineKind) throws {
        let disk = TempDisk(megabytes: 4)
        let g = try TestGuest<BlockRingX86_64>(pages: 700)
        try withWorker(g, backing: try FileBacking(path: disk.path, direct: true), engine: engine) { _ in
            // Segment i: frame 10 + i, sectors 1...6 (so every copy is a partial page).
            let n = 256  // feature-max-indirect-segments
            func indirect(base: UInt32, page: UInt32) throws -> [UInt32] {
                let p = g.guest.page(page)
                for i in 0..<n {
                    let s = BlockSegment(grant: try g.grant(base + UInt32(i)), firstSector: 1, lastSector: 6)
                    p.storeBytes(of: s.wireWord, toByteOffset: 8 * i, as: UInt64.self)
                }
                return [try g.grant(page, readOnly: true)]
            }
            for i in 0..<n { g.fill(10 + UInt32(i), seed: UInt8(truncatingIfNeeded: i)) }
            let writePages = try indirect(base: 10, page: 5)
            try g.submit([BlockRequest(indirectID: 1, operation: .write, sectorNumber: 64, segmentCount: UInt16(n), indirectGrants: writePages)])
            // The response names the inner operation, as Linux blkfront checks (it disables the disk otherwise).
            #expect(try g.responses(1) == [BlockResponse(id: 1, operation: .write, status: .okay)])
            let expected = (0..<n).flatMap { g.bytes(10 + UInt32($0), 512..<3584) }
            let onDisk = disk.read(64 * 512, n * 3072) == expected
            #expect(onDisk, "the file has every segment's sectors back to back")
            let readPages = try indirect(base: 350, page: 6)
            try g.submit([BlockRequest(indirectID: 2, operation: .read, sectorNumber: 64, segmentCount: UInt16(n), indirectGrants: readPages)])
            #expect(try g.responses(1) == [BlockResponse(id: 2, operation: .read, status: .okay)])
            let readBack = (0..<n).flatMap { g.bytes(350 + UInt32($0), 512..<3584) } == expected
            #expect(readBack, "read back through other pages")
            // One more than advertised is refused, and the ring goes on.
            try g.submit([BlockRequest(indirectID: 3, operation: .read, sectorNumber: 64, segmentCount: UInt16(n + 1), indirectGrants: readPages),
                          BlockRequest(operation: .read, id: 4, sectorNumber: 64, segment: BlockSegment(grant: try g.grant(700 - 1), firstSector: 0, lastSector: 7))])
            let last = try g.responses(2)
            #expect(last.map(\.status) == [.error, .okay])
            #expect(last.map(\.operation) == [.read, .read], "a refused indirect read is answered as a read")
        }
    }

    @Test func x86_32Frontend() throws {
        let disk = TempDisk(megabytes: 1)
        let g = try TestGuest<BlockRingX86_32>()
        try withWorker(g, backing: try FileBacking(path: disk.path, direct: true)) { _ in
            g.fill(1, seed: 42)
            let ref = try g.grant(1)
            try g.submit([BlockRequest(operation: .write, id: 0x1234_5678_9ABC, sectorNumber: 40, segment: BlockSegment(grant: ref, firstSector: 0, lastSector: 7))])
            #expect(try g.responses(1) == [BlockResponse(id: 0x1234_5678_9ABC, operation: .write, status: .okay)])
            #expect(disk.read(40 * 512, 4096) == g.bytes(1, 0..<4096))
        }
    }

    @Test func fourKilobyteSectorsNeedAlignedSegments() throws {
        let disk = TempDisk(megabytes: 1)
        let g = try TestGuest<BlockRingX86_64>()
        let backing = try FileBacking(path: disk.path)
        var geometry = backing.geometry
        geometry.logicalSectorSize = 4096
        try withWorker(g, backing: backing, geometry: geometry) { _ in
            let ref = try g.grant(1)
            try g.submit([
                BlockRequest(operation: .read, id: 1, sectorNumber: 8, segment: BlockSegment(grant: ref, firstSector: 0, lastSector: 7)),
                BlockRequest(operation: .read, id: 2, sectorNumber: 8, segment: BlockSegment(grant: ref, firstSector: 1, lastSector: 7)),
                BlockRequest(operation: .read, id: 3, sectorNumber: 4, segment: BlockSegment(grant: ref, firstSector: 0, lastSector: 7)),
            ])
            #expect(try g.responses(3).sorted { $0.id < $1.id }.map(\.status) == [.okay, .error, .error], "sector units stay 512 bytes; alignment is 4 KiB")
        }
    }

    @Test func aLyingProducerHaltsThisRing() throws {
        let disk = TempDisk(megabytes: 1)
        let g = try TestGuest<BlockRingX86_64>()
        let worker = try BlockRingWorker<SimPlatform, BlockRingX86_64>(platform: g.hv.platform(for: .dom0), frontend: g.guest.id,
                                                                       ringRefs: [g.ringRef], remotePort: g.port,
                                                                       backing: try FileBacking(path: disk.path))
        g.guest.page(0).storeBytes(of: UInt32(1000), as: UInt32.self)  // req_prod far past the ring
        #expect(throws: BlockBackendError.self) { try worker.processRing() }
        #expect(throws: BlockBackendError.ring(.halted)) { try worker.processRing() }
        #expect(worker.statistics.snapshot[.ringsHalted] == 1, "the halt is counted once (xenback_block_rings_halted_total)")
    }
}

@Suite struct BlockValidationTests {
    @Test func indirectPagesNeverExceedTheProtocolCap() {
        // A configuration advertising more than 8 pages' worth of segments.
        let disk = DiskGeometry(sectors: 1 << 20, maximumIndirectSegments: 10_000)
        let r = BlockRequest(indirectID: 1, operation: .read, sectorNumber: 0, segmentCount: 4097, indirectGrants: [1])
        #expect(BlockValidation.action(for: r, disk: disk) == .reject(.error, reason: .tooManySegments))
        let ok = BlockRequest(indirectID: 2, operation: .read, sectorNumber: 0, segmentCount: 4096, indirectGrants: [1])
        #expect(BlockValidation.action(for: ok, disk: disk) == .transfer(write: false, sector: 0, segmentCount: 4096, indirectPages: 8, flushBefore: false, flushAfter: false))
    }

    @Test func rangesAreCheckedWithoutOverflow() {
        let disk = DiskGeometry(sectors: 100, logicalSectorSize: 4096)
        #expect(BlockValidation.checkRange(sector: 96, count: 4, disk: disk) == nil)
        #expect(BlockValidation.checkRange(sector: 96, count: 5, disk: disk) == .beyondEndOfDisk)
        #expect(BlockValidation.checkRange(sector: UInt64.max, count: 2, disk: disk) == .beyondEndOfDisk)
        #expect(BlockValidation.checkRange(sector: 2, count: 8, disk: disk) == .misaligned)
    }
}

@Suite struct PersistentGrantTests {
    /// More distinct pages than the table holds: requests beyond it go by
    /// grant copy, nothing is remapped in a loop, and every byte is right.
    @Test func aWorkingSetLargerThanTheTableStaysCorrect() throws {
        let disk = TempDisk(megabytes: 4)
        let g = try TestGuest<BlockRingX86_64>(pages: 200)
        try withWorker(g, backing: try FileBacking(path: disk.path, direct: true), engine: .libaio, persistentGrants: 16) { worker in
            // 8 pages per request, 12 different page sets, written then read back elsewhere, 3 times.
            let refs = try (1...96).map { try g.grant(UInt32($0)) }
            for pass in 0..<3 {
                for set in 0..<12 {
                    let frames = (0..<8).map { UInt32(1 + set * 8 + $0) }
                    for f in frames { g.fill(f, seed: UInt8(truncatingIfNeeded: Int(f) * 3 + pass)) }
                    let segs = frames.map { BlockSegment(grant: refs[Int($0) - 1], firstSector: 0, lastSector: 7) }
                    try g.submit([BlockRequest(operation: .write, id: UInt64(set), sectorNumber: UInt64(set * 64), segments: segs)])
                    #expect(try g.responses(1).first?.status == .okay)
                    let onDisk = disk.read(set * 64 * 512, 8 * 4096) == frames.flatMap { g.bytes($0, 0..<4096) }
                    #expect(onDisk, "pass \(pass) set \(set) written")
                }
            }
            let maps = worker.statistics.snapshot[.persistentGrantMaps]
            #expect(maps >= 16 && maps <= 16 * 3, "the table filled and aged a little, never churned: \(maps) maps for 288 requests")
            #expect(worker.statistics.snapshot[.outOfResources] > 0, "requests the full table could not take were counted (oo_req)")
        }
    }
}

@Suite struct BarrierOrderingTests {
    /// A WRITE_BARRIER waits for every request before it to finish, then
    /// flushes, writes and flushes again: its answer comes after theirs, and
    /// once it is answered its data and theirs are durable. Nothing after
    /// it is taken off the ring until the drain is done.
    @Test(arguments: [BlockEngineKind.libaio, .ioUring])
    func aBarrierIsAnsweredAfterEverythingBeforeIt(engine: BlockEngineKind) throws {
        let disk = TempDisk(megabytes: 4)
        let g = try TestGuest<BlockRingX86_64>(pages: 64)
        try withWorker(g, backing: try FileBacking(path: disk.path, direct: true), engine: engine) { worker in
            for f: UInt32 in 1...10 { g.fill(f, seed: UInt8(f)) }
            var requests = try (1...8).map { i in
                BlockRequest(operation: .write, id: UInt64(i), sectorNumber: UInt64(i * 8),
                             segment: BlockSegment(grant: try g.grant(UInt32(i)), firstSector: 0, lastSector: 7))
            }
            requests.append(BlockRequest(operation: .writeBarrier, id: 100, sectorNumber: 0,
                                         segment: BlockSegment(grant: try g.grant(9), firstSector: 0, lastSector: 7)))
            requests.append(BlockRequest(operation: .write, id: 101, sectorNumber: 200,
                                         segment: BlockSegment(grant: try g.grant(10), firstSector: 0, lastSector: 7)))
            try g.submit(requests)
            let order = try g.responses(10).map(\.id)
            let barrier = try #require(order.firstIndex(of: 100))
            // Earlier writes drain first; a later one may overtake the barrier's
            // final flush, as with Linux blkback (it drains, it does not hold back).
            #expect(Set(order[..<barrier]).isSuperset(of: (1...8).map(UInt64.init)), "all eight earlier writes were answered before the barrier: \(order)")
            #expect(worker.statistics.snapshot[.barrierWaits] == 1)
            for i in 1...8 { #expect(disk.read(i * 8 * 512, 4096) == g.bytes(UInt32(i), 0..<4096)) }
            #expect(disk.read(0, 4096) == g.bytes(9, 0..<4096))
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
import Testing
import XenBlockBackend
import XenBlockFrontend
import XenBlockProtocol
import XenBlockTestbed
import XenBus
import XenBusClient
import XenPlatform
import XenProtocolTesting
import XenRing
import XenSim
import XenStore
import XenToolstack

/// A sim host, a disk image attached by the toolstack and a backend serving
/// it; `body` connects the frontend under test. Torn down in order.
func withBackend(megabytes: Int = 8, configuration: BlockBackendConfiguration = BlockBackendConfiguration(maximumQueues: 4),
                    _ body: (SimBlockHost, ToolstackDisk, TempDisk) async throws -> Void) async throws {
    let host = try await SimBlockHost(guestPages: 4096, grantEntries: 4096)
    let file = TempDisk(megabytes: megabytes)
    let disk = try await host.attachDisk(target: file.path)
    let (_, task) = host.startBackend(disk, configuration: configuration)
    do {
        try await body(host, disk, file)
    } catch {
        task.cancel()
        _ = try? await task.value
        await host.shutdown()
        throw error
    }
    task.cancel()
    try await task.value
    await host.shutdown()
}

@Suite struct BlockFrontendNegotiationTests {
    /// Guest frames (and grants, one per frame) a configuration takes: ring
    /// pages, a page per segment of every slot, and the indirect pages
    /// (512 segments each) of every slot beyond 11 segments.
    @Test func framesNeeded() {
        #expect(BlockFrontendOptions(queues: 1, ringPageOrder: 0, slotsPerQueue: 32, segmentsPerRequest: 11).framesNeeded == 1 + 32 * 11)
        #expect(BlockFrontendOptions(queues: 2, ringPageOrder: 2, slotsPerQueue: 8, segmentsPerRequest: 256).framesNeeded == 2 * (4 + 8 * (256 + 1)))
        let big = BlockFrontendOptions(queues: 3, ringPageOrder: 4, slotsPerQueue: 2, segmentsPerRequest: 600)
        #expect(big.framesNeeded == 3 * (16 + 2 * (600 + 2)) && big.grantsNeeded == big.framesNeeded)
    }

    /// Each request is capped by what the backend offers (queues, ring
    /// order, indirect segments), as blkfront does, and the keys it writes
    /// say what it chose: per-queue directories, ring-refN for a
    /// multi-page ring, the protocol, persistent grants; then Connected.
    @Test func takesNoMoreThanTheBackendOffers() async throws {
        let configuration = BlockBackendConfiguration(maximumQueues: 2, maximumRingPageOrder: 1, maximumIndirectSegments: 64)
        try await withBackend(configuration: configuration) { host, disk, _ in
            let options = BlockFrontendOptions(queues: 4, ringPageOrder: 3, slotsPerQueue: 4, segmentsPerRequest: 256, persistentGrants: false)
            let front = try await host.connect(disk, BlockRingX86_64.self, options: options)
            #expect(front.queues.count == 2)
            #expect(front.queues.allSatisfy { $0.ringRefs.count == 2 && $0.segmentsPerRequest == 64 && $0.slotCount == 4 })
            #expect(front.disk.maximumQueues == 2 && front.disk.maximumRingPageOrder == 1 && front.disk.maximumIndirectSegments == 64)
            #expect(front.disk.sectors == 8 * 2048 && front.disk.sectorSize == 512 && front.disk.flush && front.disk.discard)
            var expected = ["backend": disk.backendPath, "backend-id": "0", "virtual-device": "51712", "device-type": "disk",
                            "state": "4", "multi-queue-num-queues": "2", "ring-page-order": "1", "protocol": "x86_64-abi",
                            "feature-persistent": "0"]
            for (q, queue) in front.queues.enumerated() {
                expected["queue-\(q)/ring-ref0"] = "\(queue.ringRefs[0].rawValue)"
                expected["queue-\(q)/ring-ref1"] = "\(queue.ringRefs[1].rawValue)"
                expected["queue-\(q)/event-channel"] = "\(queue.port.rawValue)"
            }
            #expect(try await xenstoreKeys(host.backendStore, disk.frontendPath) == expected)
            #expect(Set(front.queues.flatMap(\.ringRefs)).count == 4, "every ring page its own grant")
            #expect(try await front.close())
        }
    }

    /// One queue, a one-page ring and the 32-bit ABI: the plain keys; keys
    /// an earlier connection left (more queues, a larger ring) are removed
    /// in the same transaction so the backend cannot read stale rings.
    @Test func oneQueueOnePageAndStaleKeysRemoved() async throws {
        try await withBackend { host, disk, _ in
            for (key, value) in ["multi-queue-num-queues": "4", "ring-page-order": "2"] {
                try await host.frontendStore.write(disk.frontendPath + "/" + key, value)
            }
            let front = try await host.connect(disk, BlockRingX86_32.self, options: BlockFrontendOptions(abi: .x86_32, slotsPerQueue: 4))
            let keys = try await xenstoreKeys(host.backendStore, disk.frontendPath)
            #expect(keys["ring-ref"] == "\(front.queues[0].ringRefs[0].rawValue)" && keys["event-channel"] == "\(front.queues[0].port.rawValue)")
            #expect(keys["protocol"] == "x86_32-abi" && keys["feature-persistent"] == "1")
            #expect(keys["multi-queue-num-queues"] == nil && keys["ring-page-order"] == nil, "\(keys)")
            #expect(try await front.close())
        }
    }

    /// Too few guest frames for what was negotiated: an error saying how
    /// many were needed, before anything is granted.
    @Test func notEnoughGuestMemory() async throws {
        try await withBackend { host, disk, _ in
            do {
                _ = try await host.connect(disk, BlockRingX86_64.self, options: BlockFrontendOptions(slotsPerQueue: 4, segmentsPerRequest: 11),
                                           frames: 0..<10)
                Issue.record("connected with 10 frames")
            } catch BlockFrontendError.notEnoughMemory(let needed, let given) {
                #expect(needed == 1 + 4 * 11 && given == 10)
            }
            #expect(try await host.frontendStore.readString(disk.frontendPath + "/state") == "1", "still Initialising")
        }
    }

    /// A backend that never reaches InitWait, and a frontend directory that
    /// names no backend: errors, not hangs.
    @Test func noBackend() async throws {
        let host = try await SimBlockHost(guestPages: 64, grantEntries: 128)
        let file = TempDisk(megabytes: 1)
        let disk = try await host.attachDisk(target: file.path)
        await #expect(throws: XenbusWaitTimeout(what: "backend InitWait")) {
            _ = try await BlockFrontend<BlockRingX86_64>.connect(domain: host.guest, xenstore: host.frontendStore, frontendPath: disk.frontendPath,
                                                                 frames: 0..<64, options: BlockFrontendOptions(slotsPerQueue: 2),
                                                                 timeout: .milliseconds(300))
        }
        try await host.frontendStore.rm(disk.frontendPath + "/backend")
        do {
            _ = try await host.connect(disk, BlockRingX86_64.self, options: BlockFrontendOptions(slotsPerQueue: 2))
            Issue.record("connected without a backend")
        } catch BlockFrontendError.badBackendKey(let path, _) {
            #expect(path == disk.frontendPath + "/backend")
        }
        await host.shutdown()
    }
}

@Suite struct BlockFrontendIOTests {
    /// Writes reach the file and reads return what the file holds, in
    /// direct and indirect requests; flush, discard (the range reads back as
    /// zeros) and a read past the end (an error, the ring goes on).
    @Test func requestsMoveTheRightBytes() async throws {
        try await withBackend { host, disk, file in
            let front = try await host.connect(disk, BlockRingX86_64.self, options: BlockFrontendOptions(slotsPerQueue: 4, segmentsPerRequest: 32))
            let queue = front.queues[0]
            for (sector, bytes) in [(UInt64(8), 512), (UInt64(64), 11 * 4096), (UInt64(1024), 32 * 4096)] {
                let data = pattern(bytes, seed: Int(sector))
                #expect(try queue.write(sector: sector, data) == .okay)
                #expect(file.read(Int(sector) * 512, bytes) == data, "\(bytes) bytes at sector \(sector) in the file")
                let other = pattern(bytes, seed: Int(sector) + 1)
                file.write(Int(sector + 4096) * 512, other)
                let (status, back) = try queue.read(sector: sector + 4096, byteCount: bytes)
                #expect(status == .okay && back == other, "\(bytes) bytes at sector \(sector + 4096) from the file")
            }
            #expect(try queue.flush() == .okay)
            #expect(try queue.discard(sector: 64, sectorCount: 88) == .okay)
            #expect(file.read(64 * 512, 88 * 512).allSatisfy { $0 == 0 })
            #expect(try queue.read(sector: 8 * 2048 - 1, byteCount: 1024).0 == .error, "one sector past the end")
            #expect(try queue.read(sector: 8, byteCount: 512) == (.okay, pattern(512, seed: 8)), "and the ring goes on")
            #expect(try await front.close())
        }
    }

    /// The verify pass (the guest's write–flush–read-back check) and a
    /// workload on every queue: counts and bytes add up, no errors, and
    /// the verify pattern is in the file.
    @Test func verifyAndWorkloads() async throws {
        try await withBackend { host, disk, file in
            let front = try await host.connect(disk, BlockRingX86_64.self, options: BlockFrontendOptions(queues: 2, slotsPerQueue: 8))
            let result = try front.queues[1].verify(startSector: 2048, blocks: 16, blockSize: 4096, seed: 99)
            #expect(result == BlockVerifyResult(blocksWritten: 16, blocksVerified: 16, mismatches: 0, failedRequests: 0) && result.ok)
            #expect(file.read(2048 * 512 + 3 * 4096, 4096) == BlockFrontendQueue<BlockRingX86_64>.verifyPattern(sector: 2048 + 24, seed: 99, count: 4096))
            let workload = BlockWorkload(pattern: .randwrite, blockSize: 8192, iodepth: 8, regionBytes: 4 << 20, operations: 200)
            let total = try await offThePool { try front.run(workload) }
            #expect(total.operations == 400 && total.errors == 0 && total.bytes == 400 * 8192, "200 on each of 2 queues")
            let queue = front.queues[0]
            let reads = try await offThePool { try queue.run(BlockWorkload(pattern: .read, blockSize: 4096, iodepth: 4, regionBytes: 1 << 20, operations: 50)) }
            #expect(reads.operations == 50 && reads.errors == 0)
            #expect(try await front.close())
        }
    }

    /// Closing goes Closing → Closed with the backend, then every grant is
    /// revoked: the backend can no longer map the ring.
    @Test func closeRevokesEveryGrant() async throws {
        try await withBackend { host, disk, _ in
            let front = try await host.connect(disk, BlockRingX86_64.self, options: BlockFrontendOptions(slotsPerQueue: 2))
            let ring = front.queues[0].ringRefs[0], data = front.queues[0].dataGrant(slot: 1, page: 10)
            let grants = host.hypervisor.platform(for: .dom0).grants
            let mapped = try grants.map([ring], of: host.guest.id, writable: false)
            try grants.unmap(mapped)
            #expect(try await front.close())
            #expect(try await host.frontendStore.readString(disk.backendPath + "/state") == "\(XenbusState.closed.rawValue)")
            #expect(try await host.frontendStore.readString(disk.frontendPath + "/state") == "\(XenbusState.closed.rawValue)")
            for ref in [ring, data] {
                #expect(throws: GrantError.self) { _ = try grants.map([ref], of: host.guest.id, writable: false) }
            }
        }
    }
}

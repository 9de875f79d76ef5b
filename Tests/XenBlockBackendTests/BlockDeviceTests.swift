#if canImport(Glibc)
import Glibc
#endif
import Logging
import Testing
import XenBlockBackend
import XenBlockFrontend
import XenBlockProtocol
import XenPlatform
import XenRing
import XenSim
import XenStore
import XenProtocolTesting
import XenBlockTestbed
import XenToolstack
import XenBusClient

/// The tests' simulated host (hypervisor, xenstored, both sides' xenstore).
typealias SimHost = SimBlockHost

extension SimBlockHost {
    /// The tests' name for the hypervisor.
    var hv: SimHypervisor { hypervisor }
}

@Suite struct BlockDeviceTests {
    /// Frontend → rings → backend → file, and file → backend → frontend, with
    /// every negotiated shape: both ABIs, multi-page rings, several queues,
    /// indirect requests.
    @Test(arguments: [
        (BlockProtocolABI.x86_64, 0, 1, 11),
        (BlockProtocolABI.x86_64, 2, 2, 256),
        (BlockProtocolABI.x86_32, 4, 3, 64),
        (BlockProtocolABI.x86_32, 1, 1, 11),
    ])
    func negotiatesAndMovesDataBothWays(abi: BlockProtocolABI, order: Int, queues: Int, segments: Int) async throws {
        let host = try await SimHost(guestPages: 8192, grantEntries: 8192)
        let file = TempDisk(megabytes: 16)
        let disk = try await ToolstackDisk.create(xenstore: host.backendStore, frontend: host.guest.id, target: file.path)
        let (device, task) = host.startBackend(disk, configuration: BlockBackendConfiguration(maximumQueues: 4))
        let options = BlockFrontendOptions(queues: queues, ringPageOrder: order, abi: abi, slotsPerQueue: 8, segmentsPerRequest: segments)

        func exercise<L: RingLayout>(_ front: BlockFrontend<L>) throws where L.Request == BlockRequest, L.Response == BlockResponse {
            #expect(front.disk.sectors == 16 * 2048)
            #expect(front.disk.flush && front.disk.barrier && front.disk.discard)
            #expect(front.disk.maximumIndirectSegments == 256 && front.disk.maximumQueues == 4 && front.disk.maximumRingPageOrder == 4)
            #expect(front.queues.count == queues)
            for (q, queue) in front.queues.enumerated() {
                // A request as large as the queue allows, at a queue-specific place.
                let bytes = segments * 4096
                let sector = UInt64(q * 4096)
                let data = pattern(bytes, seed: q + 1)
                #expect(try queue.write(sector: sector, data) == .okay)
                let onDisk = file.read(Int(sector) * 512, bytes) == data
                #expect(onDisk, "queue \(q): the write is in the file")
                let other = pattern(bytes, seed: 77 + q)
                file.write(Int(sector) * 512 + 1024 * 1024, other)
                let (status, readBack) = try queue.read(sector: sector + 2048, byteCount: bytes)
                #expect(status == .okay)
                let same = readBack == other
                #expect(same, "queue \(q): the read returns what the file holds")
                #expect(try queue.flush() == .okay)
            }
        }
        switch abi {
        case .x86_64: try exercise(try await host.connect(disk, BlockRingX86_64.self, options: options))
        case .x86_32: try exercise(try await host.connect(disk, BlockRingX86_32.self, options: options))
        }
        let n = device.negotiation
        #expect(n == BlockNegotiation(queues: queues, ringPageOrder: order, abi: abi, engine: .default, directIO: true, persistentGrants: true))
        let stats = device.statistics
        #expect(stats[.writeRequests] == UInt64(queues) && stats[.readRequests] == UInt64(queues) && stats[.flushRequests] == UInt64(queues))
        #expect(stats[.writeSectors] == UInt64(queues * segments * 8) && stats[.errors] == 0)
        // Published keys, as blkfront reads them.
        let keys = try await host.frontendStore.directory(disk.backendPath)
        for key in ["feature-flush-cache", "feature-barrier", "feature-discard", "discard-granularity", "discard-alignment",
                    "discard-secure", "feature-persistent", "feature-max-indirect-segments", "max-ring-page-order",
                    "multi-queue-max-queues", "sectors", "sector-size", "physical-sector-size", "info", "mode", "state"] {
            #expect(keys.contains(key), "backend publishes \(key)")
        }
        task.cancel()
        try await task.value
        await host.shutdown()
    }

    @Test func closeDrainsAndRemovalEndsTheDevice() async throws {
        let host = try await SimHost(guestPages: 512, grantEntries: 1024)
        let file = TempDisk(megabytes: 4)
        let disk = try await ToolstackDisk.create(xenstore: host.backendStore, frontend: host.guest.id, target: file.path)
        let (device, task) = host.startBackend(disk)
        let front = try await host.connect(disk, BlockRingX86_64.self, options: BlockFrontendOptions(slotsPerQueue: 4))
        #expect(try front.queues[0].write(sector: 8, pattern(4096, seed: 3)) == .okay)
        #expect(try await front.close(), "every grant could be revoked: the backend unmapped everything")
        #expect(device.negotiation == nil)
        #expect(try await host.frontendStore.readString(disk.backendPath + "/state") == "6")
        // A frontend that starts over (a guest reboot) finds the backend in InitWait again.
        try await host.frontendStore.write(disk.frontendPath + "/state", "1")
        let again = try await host.connect(disk, BlockRingX86_64.self, options: BlockFrontendOptions(slotsPerQueue: 4))
        let (status, data) = try again.queues[0].read(sector: 8, byteCount: 4096)
        #expect(status == .okay && data == pattern(4096, seed: 3), "the reconnected frontend reads what was written before")
        #expect(try await again.close())
        try await disk.setOffline(xenstore: host.backendStore)
        try await task.value  // run() returns: the device is removed
        #expect(device.statistics[.writeRequests] == 1 && device.statistics[.readRequests] == 1)
        await host.shutdown()
    }

    /// An idle ring gives its thread back (parked on its event channel in
    /// the shared reactor) and gets one again with the next request; a
    /// parked device still closes cleanly.
    @Test func idleRingsHoldNoThread() async throws {
        let host = try await SimHost(guestPages: 1024, grantEntries: 2048)
        let file = TempDisk(megabytes: 4)
        let disk = try await ToolstackDisk.create(xenstore: host.backendStore, frontend: host.guest.id, target: file.path)
        let (device, task) = host.startBackend(disk, configuration: BlockBackendConfiguration(maximumQueues: 2, parkAfterMilliseconds: 50))
        let front = try await host.connect(disk, BlockRingX86_64.self, options: BlockFrontendOptions(queues: 2, slotsPerQueue: 4))
        func awaitParked() async throws -> Int {
            try await offThePool { () -> Int in
                for _ in 0..<500 where device.runningWorkerThreads > 0 { usleep(10_000) }
                return device.runningWorkerThreads
            }
        }
        #expect(try await awaitParked() == 0, "both idle rings parked")
        for round in 0..<3 {
            for (q, queue) in front.queues.enumerated() {
                let data = pattern(8192, seed: round * 2 + q)
                #expect(try queue.write(sector: UInt64(q * 64), data) == .okay)
                let (status, back) = try queue.read(sector: UInt64(q * 64), byteCount: 8192)
                #expect(status == .okay && back == data, "a parked ring wakes for its next request")
            }
            #expect(try await awaitParked() == 0)
        }
        #expect(try await front.close())
        try await disk.setOffline(xenstore: host.backendStore)
        try await task.value
        await host.shutdown()
    }

    @Test func readOnlyAndCdrom() async throws {
        let host = try await SimHost(guestPages: 512, grantEntries: 1024)
        let file = TempDisk(megabytes: 2)
        file.write(0, pattern(4096, seed: 9))
        let disk = try await ToolstackDisk.create(xenstore: host.backendStore, frontend: host.guest.id, target: file.path,
                                                  readOnly: true, cdrom: true)
        let (_, task) = host.startBackend(disk)
        let front = try await host.connect(disk, BlockRingX86_64.self, options: BlockFrontendOptions(slotsPerQueue: 4))
        #expect(front.disk.info == [.readOnly, .cdrom])
        #expect(!front.disk.discard, "no discard on a read-only disk")
        let q = front.queues[0]
        #expect(try q.write(sector: 0, pattern(4096, seed: 1)) == .error)
        #expect(try q.discard(sector: 0, sectorCount: 8) == .notSupported)
        let (status, data) = try q.read(sector: 0, byteCount: 4096)
        #expect(status == .okay && data == pattern(4096, seed: 9))
        #expect(file.read(0, 4096) == pattern(4096, seed: 9), "the file is untouched")
        task.cancel()
        try await task.value
        await host.shutdown()
    }

    @Test func badToolstackKeysAreReported() async throws {
        let host = try await SimHost(guestPages: 64, grantEntries: 256)
        let cases: [(String, [String: String], String)] = [
            ("/nonexistent/xenback-disk.img", [:], "params"),
            (TempDisk(megabytes: 1).path, ["mode": "x"], "mode"),
        ]
        for (i, (target, extra, word)) in cases.enumerated() {
            let disk = try await ToolstackDisk.create(xenstore: host.backendStore, frontend: host.guest.id,
                                                      devid: ToolstackDisk.firstXenDisk + 16 * i, target: target, extraBackendKeys: extra)
            let (_, task) = host.startBackend(disk)
            await #expect(throws: (any Error).self) { try await task.value }
            let error = try await host.frontendStore.readIfPresent(disk.backendPath + "/hotplug-error") ?? ""
            #expect(try await host.frontendStore.readIfPresent(disk.backendPath + "/hotplug-status") == "error")
            #expect(error.contains(word == "params" ? target : "mode"), "the error names what was wrong: \(error)")
        }
        await host.shutdown()
    }

    @Test func frontendAskingTooMuchIsRefused() async throws {
        let host = try await SimHost(guestPages: 256, grantEntries: 1024)
        let file = TempDisk(megabytes: 1)
        let disk = try await ToolstackDisk.create(xenstore: host.backendStore, frontend: host.guest.id, target: file.path)
        let (_, task) = host.startBackend(disk, configuration: BlockBackendConfiguration(maximumQueues: 2))
        // A hostile frontend writes its keys by hand: 3 queues where 2 are offered.
        try await host.frontendStore.write(disk.frontendPath + "/multi-queue-num-queues", "3")
        try await host.frontendStore.write(disk.frontendPath + "/protocol", "x86_64-abi")
        try await host.frontendStore.write(disk.frontendPath + "/state", "3")
        let state = try await awaitXenbusState(host.frontendStore, disk.backendPath, "backend Closing") { $0 == .closing }
        #expect(state == .closing, "the backend refused and went to Closing")
        let error = try await host.frontendStore.readIfPresent(disk.backendPath + "/error") ?? ""
        #expect(error.contains("multi-queue-num-queues"), "error names the key: \(error)")
        task.cancel()
        try await task.value
        await host.shutdown()
    }
}

@Suite struct BlockCrossProcessTests {
    /// The guest's blkfront is `xenback front blk --sim` in its own process:
    /// it attaches the guest's memory through the sim socket, talks xenstore
    /// as the guest (permissions as libxl sets them), and its event channel
    /// kicks cross the process boundary. The backend runs here.
    @Test func frontendInAnotherProcess() async throws {
        let xenback = try #require(builtProduct("xenback"), "xenback is built next to the tests (swift build --build-tests)")

        let tag = "\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let xenstore = XenStoreServer(socketPath: "/tmp/xenback-xs-\(tag).sock")
        try await xenstore.start()
        let server = try SimServer(socketPath: "/tmp/xenback-sim-\(tag).sock", xenstore: xenstore)
        server.start()
        try server.hypervisor.createDomain(.dom0, pages: 1)
        try server.hypervisor.createDomain(DomainID(9), pages: 2048, grantEntries: 2048)
        let dom0 = try await XenStoreClient.connect(socketPath: xenstore.socketPath)
        let file = TempDisk(megabytes: 32)
        let disk = try await ToolstackDisk.create(xenstore: dom0, frontend: DomainID(9), target: file.path)
        var logger = Logger(label: "test.blkback")
        logger.logLevel = .critical
        let device = BlockBackendDevice(platform: server.hypervisor.platform(for: .dom0), xenstore: dom0,
                                        backendPath: disk.backendPath, logger: logger)
        let task = Task { try await device.run() }

        let (status, output) = try await offThePool { runShell("\(xenback) front blk --sim \(server.socketPath) --domain 9 --queues 2 --verify-mb 8 --seconds 1 --iodepth 8 2>&1") }
        #expect(status == 0, "the frontend process verified its data:\n\(output)")
        #expect(output.contains("verified: ok") && output.contains("queues 2"))
        let s = device.statistics
        #expect(s[.writeRequests] == 128 && s[.errors] == 0, "8 MiB of 64 KiB writes came through this backend: \(s)")
        #expect(try await dom0.readString(disk.backendPath + "/state") == "6", "the frontend closed and the backend followed")
        // The other process wrote its pattern (seeded with its pid) into the file: not zeros.
        #expect(file.read(0, 65536).contains { $0 != 0 }, "the data is in the file")
        task.cancel()
        try await task.value
        await dom0.close()
        server.stop()
        try await xenstore.stop()
    }
}

import Testing
import XenBlockBackend
import XenBlockFrontend
import XenBlockProtocol
import XenBlockTestbed
import XenBusClient
import XenProtocolTesting
import XenSim
import XenStore
import XenToolstack

/// Per-disk I/O limits: the token buckets' arithmetic on a simulated
/// clock, and the keys that set them at attach time and live.
@Suite struct BlockIOLimitTests {
    /// Admits requests as fast as the limiter allows over `seconds` of
    /// simulated time; returns how many went and how many bytes.
    func drive(_ limiter: BlockIOLimiter, bytesPerRequest: Int, seconds: Int) -> (requests: Int, bytes: Int) {
        var now = 1_000_000_000
        let end = now + seconds * 1_000_000_000
        var requests = 0
        while now < end {
            if let wait = limiter.admit(bytes: bytesPerRequest, now: now) { now += wait } else { requests += 1 }
        }
        return (requests, requests * bytesPerRequest)
    }

    @Test func requestsPerSecondHold() {
        for rate in [5, 100, 20_000] {
            let (requests, _) = drive(BlockIOLimiter(BlockIOLimit(requestsPerSecond: rate)), bytesPerRequest: 4096, seconds: 10)
            // Ten seconds' worth plus at most the first bucket (a tenth, or one request).
            #expect(requests >= rate * 10 && requests <= rate * 10 + max(1, rate / 10) + 1, "\(rate)/s gave \(requests) in 10 s")
        }
    }

    @Test func bytesPerSecondHoldEvenForRequestsLargerThanTheBucket() {
        let rate = 1 << 20
        for size in [4096, 256 * 1024, 4 << 20] {
            let (_, bytes) = drive(BlockIOLimiter(BlockIOLimit(bytesPerSecond: rate)), bytesPerRequest: size, seconds: 20)
            let expected = Double(rate) * 20
            #expect(Double(bytes) >= expected * 0.95 && Double(bytes) <= expected + Double(rate / 10 + size), "\(size)-byte requests moved \(bytes)")
        }
    }

    @Test func bothLimitsTheTighterWins() {
        let limiter = BlockIOLimiter(BlockIOLimit(requestsPerSecond: 1000, bytesPerSecond: 100 * 4096))
        let (requests, _) = drive(limiter, bytesPerRequest: 4096, seconds: 10)
        #expect(requests >= 1000 && requests <= 1012, "bytes bind at 100 requests/s: \(requests)")
    }

    @Test func unlimitedIsInactiveAndChangesApplyAtOnce() {
        let limiter = BlockIOLimiter()
        #expect(!limiter.isActive && limiter.admit(bytes: 1 << 30, now: 1) == nil)
        limiter.set(BlockIOLimit(requestsPerSecond: 1))
        #expect(limiter.isActive)
        #expect(limiter.admit(bytes: 0, now: 10) == nil)
        #expect(limiter.admit(bytes: 0, now: 11) != nil, "one request per second: the second waits")
        limiter.set(.unlimited)
        #expect(!limiter.isActive)
    }

    @Test func keyValuesParse() {
        #expect(BlockIOLimit.parse(nil) == .some(nil))
        #expect(BlockIOLimit.parse("") == .some(nil))
        #expect(BlockIOLimit.parse("0") == .some(nil))
        #expect(BlockIOLimit.parse("250") == .some(250))
        for bad in ["-1", "fast", "1.5", "99999999999999999999", " 5"] { #expect(BlockIOLimit.parse(bad) == nil, "\(bad)") }
    }

    func awaitKey(_ store: XenStoreClient, _ path: String, _ done: @escaping @Sendable (String?) -> Bool) async throws -> String? {
        try await awaitXenstoreValue(store, path, timeout: .seconds(20), path, done)
    }

    /// 50 KB/s with 44 KiB requests: each leaves the disk some 0.8 s in
    /// debt, far longer than a request takes, so the next one must wait
    /// however slow or loaded the machine is.
    @Test func aLimitedDiskMovesItsDataAndItsNeighbourIsNotHeldBack() async throws {
        let host = try await SimBlockHost(guestPages: 2048, grantEntries: 4096)
        let limitedFile = TempDisk(megabytes: 4), freeFile = TempDisk(megabytes: 4)
        let limited = try await ToolstackDisk.create(xenstore: host.backendStore, frontend: host.guest.id, target: limitedFile.path,
                                                     extraBackendKeys: [BlockIOLimit.bytesKey: "50000"])
        let free = try await ToolstackDisk.create(xenstore: host.backendStore, frontend: host.guest.id,
                                                  devid: ToolstackDisk.firstXenDisk + 16, target: freeFile.path)
        let (limitedDevice, limitedTask) = host.startBackend(limited)
        let (freeDevice, freeTask) = host.startBackend(free)
        let options = BlockFrontendOptions(queues: 1, ringPageOrder: 0, abi: .x86_64, slotsPerQueue: 8, segmentsPerRequest: 11)
        let limitedFront = try await host.connect(limited, BlockRingX86_64.self, options: options, frames: 0..<1024)
        let freeFront = try await host.connect(free, BlockRingX86_64.self, options: options, frames: 1024..<2048)
        let size = 11 * 4096
        for i in 0..<3 {
            let data = pattern(size, seed: i)
            #expect(try limitedFront.queues[0].write(sector: UInt64(i * size / 512), data) == .okay)
            #expect(try freeFront.queues[0].write(sector: UInt64(i * size / 512), data) == .okay)
        }
        for i in 0..<3 {
            let expected = pattern(size, seed: i)
            #expect(limitedFile.read(i * size, size) == expected && freeFile.read(i * size, size) == expected, "request \(i) is on both disks")
        }
        #expect(limitedDevice.statistics[.limitWaits] > 0, "the limited disk held requests back")
        #expect(freeDevice.statistics[.limitWaits] == 0, "its neighbour never waited")
        #expect(limitedDevice.limiter.limit == BlockIOLimit(bytesPerSecond: 50000))
        limitedTask.cancel(); freeTask.cancel()
        _ = await limitedTask.result; _ = await freeTask.result
        await host.shutdown()
    }

    @Test func aBadLimitAtAttachNamesTheKey() async throws {
        let host = try await SimBlockHost(guestPages: 64, grantEntries: 256)
        let file = TempDisk(megabytes: 1)
        let disk = try await ToolstackDisk.create(xenstore: host.backendStore, frontend: host.guest.id, target: file.path,
                                                  extraBackendKeys: [BlockIOLimit.bytesKey: "lots"])
        let (_, task) = host.startBackend(disk)
        await #expect(throws: (any Error).self) { try await task.value }
        let error = try await host.frontendStore.readIfPresent(disk.backendPath + "/hotplug-error") ?? ""
        #expect(error.contains(BlockIOLimit.bytesKey) && error.contains("lots"), "\(error)")
        await host.shutdown()
    }

    @Test func limitsChangeLiveAndBadValuesAreRefused() async throws {
        let host = try await SimBlockHost(guestPages: 64, grantEntries: 256)
        let file = TempDisk(megabytes: 1)
        let disk = try await ToolstackDisk.create(xenstore: host.backendStore, frontend: host.guest.id, target: file.path)
        let (device, task) = host.startBackend(disk)
        let status = disk.backendPath + "/" + BlockBackendDevice<SimPlatform>.limitStatusKey
        #expect(try await awaitKey(host.backendStore, status) { $0 == "unlimited" } == "unlimited")
        try await host.backendStore.write(disk.backendPath + "/" + BlockIOLimit.requestsKey, "150")
        try await host.backendStore.write(disk.backendPath + "/" + BlockIOLimit.bytesKey, "1048576")
        _ = try await awaitKey(host.backendStore, status) { $0 == "150 requests/s, 1048576 bytes/s" }
        #expect(device.limiter.limit == BlockIOLimit(requestsPerSecond: 150, bytesPerSecond: 1 << 20) && device.limiter.isActive)
        try await host.backendStore.write(disk.backendPath + "/" + BlockIOLimit.requestsKey, "-3")
        let refused = try await awaitKey(host.backendStore, status) { $0?.hasPrefix("refused") == true } ?? ""
        #expect(refused.contains(BlockIOLimit.requestsKey) && refused.contains("-3"), "\(refused)")
        #expect(device.limiter.limit == BlockIOLimit(requestsPerSecond: 150, bytesPerSecond: 1 << 20), "a refused value changes nothing")
        try await host.backendStore.write(disk.backendPath + "/" + BlockIOLimit.requestsKey, "0")
        try await host.backendStore.write(disk.backendPath + "/" + BlockIOLimit.bytesKey, "0")
        _ = try await awaitKey(host.backendStore, status) { $0 == "unlimited" }
        #expect(!device.limiter.isActive)
        task.cancel()
        _ = await task.result
        await host.shutdown()
    }
}

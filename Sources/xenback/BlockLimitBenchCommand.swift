import ArgumentParser
import Logging
import XenBlockBackend
import XenBlockFrontend
import XenBlockProtocol
import XenBusClient
import XenPlatform
import XenSim

struct BlockLimitBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "blk-limit",
        abstract: "Per-disk I/O limits: a limited disk beside an unlimited neighbour, and the neighbour alone.",
        discussion: """
        Two disks, each a file in /var/tmp served by its own backend and driven by our frontend. Each \
        round runs the neighbour alone (the baseline), then both at once with the first disk limited \
        through its limit-iops key. Reported: how close the limited disk stays to its limit, and the \
        neighbour's IOPS beside it over its IOPS alone. The last line is JSON.
        """)

    @Option(help: "The limited disk's limit-iops.") var limitIops: Int = 2000
    @Option(help: "Pattern for both disks: read, write, randread, randwrite.") var rw: BlockPattern = .randread
    @Option(help: "Requests in flight per disk (1...256).") var iodepth: Int = 16
    @Option(help: "Region of each file (and its size when created).") var size: String = "256M"
    @Option(help: "Seconds per run.") var runtime: Int = 5
    @Option(help: "Rounds; medians are reported.") var rounds: Int = 3

    var regionBytes: UInt64 { parseSize(size) ?? 0 }

    func validate() throws {
        guard (1...1_000_000).contains(limitIops) else { throw ValidationError("--limit-iops must be 1...1000000, got \(limitIops)") }
        guard (1...256).contains(iodepth) else { throw ValidationError("--iodepth must be 1...256, got \(iodepth)") }
        guard regionBytes >= 4096 else { throw ValidationError("--size must be at least 4k, got \(size)") }
        guard runtime > 0, rounds > 0 else { throw ValidationError("--runtime and --rounds must be positive") }
    }

    func run() async throws {
        var logger = Logger(label: "xenback.bench.blk-limit")
        logger.logLevel = .warning
        let limitedPath = try BlockBenchCommand.layOut(size: size, regionBytes: regionBytes, name: "limited")
        let neighbourPath = try BlockBenchCommand.layOut(size: size, regionBytes: regionBytes, name: "neighbour")
        var order = 0
        while (32 << order) < iodepth { order += 1 }
        let options = BlockFrontendOptions(queues: 1, ringPageOrder: order, abi: .x86_64, slotsPerQueue: iodepth)
        let configuration = BlockBackendConfiguration(maximumQueues: 1)
        let limited = try await BlockRig(path: limitedPath, configuration: configuration, options: options, logger: logger)
        let neighbour = try await BlockRig(path: neighbourPath, configuration: configuration, options: options, logger: logger)
        // Set as an operator would: the key, then the device's word that it holds.
        let backendPath = limited.device.backendPath
        try await limited.host.backendStore.write(backendPath + "/" + BlockIOLimit.requestsKey, "\(limitIops)")
        _ = try await awaitXenstoreValue(limited.host.backendStore, backendPath + "/" + BlockBackendDevice<SimPlatform>.limitStatusKey,
                                         timeout: .seconds(10), "the limit to hold") { $0 == "\(limitIops) requests/s" }
        let workload = BlockWorkload(pattern: rw, blockSize: 4096, iodepth: iodepth, regionBytes: regionBytes, duration: .seconds(runtime))

        print("blk-limit benchmark: \(rw) 4k iodepth \(iodepth), limit \(limitIops) IOPS, \(runtime) s x \(rounds) round(s)")
        print("round  alone IOPS   beside IOPS  neighbour ratio  limited IOPS  of limit")
        var ratios: [Double] = [], accuracies: [Double] = [], limitedRuns: [Double] = [], alone: [Double] = [], beside: [Double] = []
        for round in 1...rounds {
            let seed = UInt64(round) &* 0x9E37_79B9_7F4A_7C15
            let baseline = try drive([neighbour], workload, seed: seed)[0]
            let both = try drive([neighbour, limited], workload, seed: seed)
            let ratio = both[0].iops / baseline.iops, accuracy = both[1].iops / Double(limitIops)
            alone.append(baseline.iops); beside.append(both[0].iops); limitedRuns.append(both[1].iops)
            ratios.append(ratio); accuracies.append(accuracy)
            print("\(round)".padding(7) + fmt(baseline.iops, 0).padding(13) + fmt(both[0].iops, 0).padding(13)
                  + fmt(ratio, 3).padding(17) + fmt(both[1].iops, 0).padding(14) + fmt(accuracy, 3))
        }
        let limitedStatistics = limited.device.statistics
        let limitedOperations = limitedRuns.reduce(0, +) * Double(runtime)
        print("limited disk: \(limitedStatistics)")
        print("neighbour: \(neighbour.device.statistics)")
        await limited.shutdown()
        await neighbour.shutdown()
        let waitsPerRequest = Double(limitedStatistics[.limitWaits]) / max(limitedOperations, 1)
        print("median: limited \(fmt(median(limitedRuns), 0)) IOPS (\(fmt(median(accuracies) * 100, 1)) % of the limit); neighbour \(fmt(median(beside), 0)) beside vs \(fmt(median(alone), 0)) alone (ratio \(fmt(median(ratios), 3))); limit waits/request \(fmt(waitsPerRequest, 3))")
        print("{\"bench\":\"blk-limit\",\"rw\":\"\(rw)\",\"iodepth\":\(iodepth),\"runtime\":\(runtime),\"rounds\":\(rounds),\"limit_iops\":\(limitIops),\"limited_iops\":\(fmt(median(limitedRuns), 0)),\"limit_accuracy\":\(fmt(median(accuracies), 4)),\"neighbour_alone_iops\":\(fmt(median(alone), 0)),\"neighbour_beside_iops\":\(fmt(median(beside), 0)),\"neighbour_ratio\":\(fmt(median(ratios), 3)),\"limit_waits_per_request\":\(fmt(waitsPerRequest, 3))}")
    }

    /// Runs `workload` on every rig at once, each from a thread of its own.
    private func drive(_ rigs: [BlockRig], _ workload: BlockWorkload, seed: UInt64) throws -> [BlockWorkloadResult] {
        let outcomes = rigs.map { _ in OneResult<BlockWorkloadResult>() }
        let group = ThreadGroup()
        for (rig, outcome) in zip(rigs, outcomes) {
            let queue = rig.frontend.queues[0]
            group.spawn { outcome.value = Result { try queue.run(workload, seed: seed) } }
        }
        group.joinAll()
        let results = try outcomes.map { try $0.value!.get() }
        for r in results where r.errors > 0 { throw ValidationError("a backend answered \(r.errors) request(s) with an error") }
        return results
    }
}

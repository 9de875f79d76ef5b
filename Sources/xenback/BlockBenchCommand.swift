import ArgumentParser
import Foundation
import Logging
import XenBlockBackend
import XenBlockFrontend
import XenBlockProtocol
import XenPlatform
import XenProcess
import XenRingBenchmark
import XenDisk

extension BlockPattern: ExpressibleByArgument {}
extension BlockEngineKind: ExpressibleByArgument {}

struct BlockBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "blk",
        abstract: "Block backend vs fio on the same file: our frontend → rings → backend → file, and fio (libaio, direct=1), interleaved.",
        discussion: """
        Each round runs fio, then ours, with the same pattern, block size, queue depth, region and \
        time. The median of the rounds is reported; the last line is JSON. Without --file a data \
        file is laid out once in /var/tmp and kept for later runs.
        """)

    @Option(help: "Pattern: read, write, randread, randwrite.")
    var rw: BlockPattern = .randread

    @Option(help: "Block size (512 to 1m, a multiple of 512: 4k, 64k, 1m).")
    var bs: String = "4k"

    @Option(help: "Requests in flight (1...512).")
    var iodepth: Int = 32

    @Option(help: "Region of the file used (and its size when it is created): 1G, 256M...")
    var size: String = "1G"

    @Option(help: "Seconds per run.")
    var runtime: Int = 10

    @Option(help: "Our backend's I/O engine: libaio, io_uring or sync.")
    var engine: BlockEngineKind = .default

    enum GrantMode: String, ExpressibleByArgument, CaseIterable { case persistent, copy }

    @Option(help: "How our backend moves data: persistent (grants mapped once, I/O straight into guest pages) or copy (grant copy through a bounce buffer).")
    var grants: GrantMode = .persistent

    @Option(help: "Microseconds our backend and frontend watch for work before sleeping (0: sleep at once).")
    var pollUs: Int = 0

    @Option(help: "The data file (default: /var/tmp/xenback-bench-<size>.img, laid out once).")
    var file: String?

    @Option(help: "Rounds (fio then ours each time); the median is reported.")
    var rounds: Int = 3

    var blockSize: Int { Int(parseSize(bs) ?? 0) }
    var regionBytes: UInt64 { parseSize(size) ?? 0 }

    func validate() throws {
        guard blockSize >= 512, blockSize % 512 == 0, blockSize <= 1 << 20 else {
            throw ValidationError("--bs must be a multiple of 512 between 512 and 1m, got \(bs)")
        }
        guard regionBytes >= UInt64(blockSize) else { throw ValidationError("--size must be at least one block, got \(size)") }
        guard (1...512).contains(iodepth) else { throw ValidationError("--iodepth must be 1...512, got \(iodepth)") }
        guard runtime > 0, rounds > 0 else { throw ValidationError("--runtime and --rounds must be positive") }
        if let file, access(file, R_OK | W_OK) != 0 { throw ValidationError("--file \(file) is not a readable and writable file") }
    }

    func run() async throws {
        var logger = Logger(label: "xenback.bench.blk")
        logger.logLevel = .warning
        let path = try file ?? layOut()
        let segments = (blockSize + 4095) / 4096
        // A ring that holds the whole queue depth: 32 requests per page.
        var order = 0
        while (32 << order) < iodepth { order += 1 }
        let options = BlockFrontendOptions(queues: 1, ringPageOrder: order, abi: .x86_64, slotsPerQueue: iodepth,
                                           segmentsPerRequest: max(segments, BlockLimits.maxSegmentsPerRequest))
        // Count mallocs on the backend's ring thread and on this (frontend) thread.
        if AllocationCounter.isActive {
            BlockBackendInstrumentation.setWorkerThreadStartHook { AllocationCounter.measureThisThread() }
        }
        let rig = try await BlockRig(path: path, configuration: BlockBackendConfiguration(
            engine: engine, maximumQueues: 1, maximumPersistentGrants: grants == .persistent ? BlockBackendConfiguration().maximumPersistentGrants : 0,
            pollMicroseconds: pollUs),
                                     options: options, logger: logger)
        let queue = rig.frontend.queues[0]
        let negotiation = rig.device.negotiation
        let workload = BlockWorkload(pattern: rw, blockSize: blockSize, iodepth: iodepth, regionBytes: regionBytes,
                                     duration: .seconds(runtime), pollMicroseconds: pollUs)
        print("blk benchmark: \(rw) bs \(blockSize) iodepth \(iodepth) region \(regionBytes) B, \(runtime) s x \(rounds) round(s), file \(path)")
        print("ours: engine \(engine), grants \(negotiation?.persistentGrants == true ? "persistent" : "copy"), O_DIRECT \(negotiation?.directIO ?? false), ring order \(order), \(segments > 11 ? "indirect" : "direct") segments")
        print("round  fio IOPS      fio MB/s   ours IOPS     ours MB/s  ratio")
        var fioRuns: [FioResult] = []
        var ourRuns: [BlockWorkloadResult] = []
        var allocations: Int?
        for round in 1...rounds {
            let fio = try runFio(path: path)
            // Our frontend on a thread of its own: counting is per thread, and a
            // pool thread would go on to run other tasks while still flagged.
            let counted = round == rounds
            let outcome = OneResult<(BlockWorkloadResult, Int?)>()
            let group = ThreadGroup()
            group.spawn {
                AllocationCounter.measureThisThread()
                let r = Result {
                    try queue.run(workload, seed: UInt64(round) &* 0x9E37_79B9_7F4A_7C15) {
                        if counted { AllocationCounter.start() }
                    }
                }
                let n = counted ? AllocationCounter.stop() : nil
                outcome.value = r.map { ($0, n) }
            }
            group.joinAll()
            let (ours, counts) = try outcome.value!.get()
            if counted { allocations = counts }
            guard ours.errors == 0 else { throw ValidationError("our backend answered \(ours.errors) request(s) with an error") }
            fioRuns.append(fio)
            ourRuns.append(ours)
            print("\(round)".padding(7) + fmt(fio.iops, 0).padding(14) + fmt(fio.megabytesPerSecond, 1).padding(11)
                  + fmt(ours.iops, 0).padding(14) + fmt(ours.megabytesPerSecond, 1).padding(11) + fmt(ours.iops / fio.iops, 3))
        }
        let ops = ourRuns.last.map(\.operations) ?? 0
        let backend = rig.device.statistics
        print("backend: \(backend)")
        // Counted, not timed: what the backend's ring thread asked of the kernel
        // (on the sim, grant copies are not system calls; under Xen they are).
        let requests = Double(max(1, backend[.readRequests] + backend[.writeRequests] + backend[.flushRequests] + backend[.discardRequests]))
        let syscallsPerRequest = Double(backend[.syscalls]) / requests
        let notificationsPerRequest = Double(backend[.notifications]) / requests
        await rig.shutdown()
        BlockBackendInstrumentation.setWorkerThreadStartHook(nil)

        let fioIOPS = median(fioRuns.map(\.iops)), ourIOPS = median(ourRuns.map(\.iops))
        let fioMBps = median(fioRuns.map(\.megabytesPerSecond)), ourMBps = median(ourRuns.map(\.megabytesPerSecond))
        let ratio = median(zip(ourRuns, fioRuns).map { $0.iops / $1.iops })
        let allocs = allocations.map { fmt(Double($0) / Double(max(ops, 1)), 6) } ?? "null"
        print("median: fio \(fmt(fioIOPS, 0)) IOPS \(fmt(fioMBps, 1)) MB/s; ours \(fmt(ourIOPS, 0)) IOPS \(fmt(ourMBps, 1)) MB/s; ratio \(fmt(ratio, 3)); allocations/request \(allocs); backend system calls/request \(fmt(syscallsPerRequest, 3)), notifications/request \(fmt(notificationsPerRequest, 3))")
        print("{\"bench\":\"blk\",\"rw\":\"\(rw)\",\"bs\":\(blockSize),\"iodepth\":\(iodepth),\"engine\":\"\(engine)\",\"grants\":\"\(grants)\",\"poll_us\":\(pollUs),\"runtime\":\(runtime),\"rounds\":\(rounds),\"backend_iops\":\(fmt(ourIOPS, 0)),\"fio_iops\":\(fmt(fioIOPS, 0)),\"ratio\":\(fmt(ratio, 3)),\"backend_mbps\":\(fmt(ourMBps, 1)),\"fio_mbps\":\(fmt(fioMBps, 1)),\"allocs_per_request\":\(allocs),\"syscalls_per_request\":\(fmt(syscallsPerRequest, 3)),\"notifications_per_request\":\(fmt(notificationsPerRequest, 3))}")
    }

    struct FioResult { var iops: Double; var megabytesPerSecond: Double }

    private func runFio(path: String) throws -> FioResult {
        let command = "fio --name=baseline --filename=\(path) --rw=\(rw) --bs=\(blockSize) --iodepth=\(iodepth) --ioengine=libaio --direct=1 --size=\(regionBytes) --runtime=\(runtime) --time_based --randrepeat=0 --norandommap --output-format=json 2>&1"
        let (status, output) = runShell(command)
        guard status == 0, let start = output.firstIndex(of: "{") else {
            throw ValidationError("fio failed (is it installed? tools/setup.sh installs it):\n\(output)")
        }
        guard let json = try? JSONSerialization.jsonObject(with: Data(output[start...].utf8)) as? [String: Any],
              let job = (json["jobs"] as? [[String: Any]])?.first,
              let side = job[rw.writes ? "write" : "read"] as? [String: Any],
              let iops = (side["iops"] as? NSNumber)?.doubleValue,
              let bandwidth = (side["bw_bytes"] as? NSNumber)?.doubleValue else {
            throw ValidationError("cannot read fio's JSON output:\n\(output)")
        }
        return FioResult(iops: iops, megabytesPerSecond: bandwidth / 1_000_000)
    }

    private func layOut() throws -> String { try Self.layOut(size: size, regionBytes: regionBytes) }

    /// Writes the data file once (non-zero data, so reads hit real blocks, not holes).
    static func layOut(size: String, regionBytes: UInt64, name: String = "bench") throws -> String {
        let path = "/var/tmp/xenback-\(name)-\(size).img"
        var st = stat()
        if stat(path, &st) == 0, UInt64(st.st_size) == regionBytes, UInt64(st.st_blocks) * 512 >= regionBytes { return path }
        print("laying out \(path) (\(regionBytes) bytes, once)")
        let (status, output) = runShell("fio --name=layout --filename=\(path) --rw=write --bs=1m --size=\(regionBytes) --ioengine=libaio --direct=1 --iodepth=8 --output-format=terse 2>&1")
        guard status == 0 else { throw ValidationError("laying out \(path) with fio failed:\n\(output)") }
        return path
    }
}

/// A value one thread sets and another reads after joining it.
final class OneResult<T>: @unchecked Sendable {
    var value: Result<T, Error>?
}

func median(_ values: [Double]) -> Double {
    let s = values.sorted()
    guard !s.isEmpty else { return 0 }
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}


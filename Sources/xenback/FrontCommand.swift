import ArgumentParser
import Logging
import XenBlockBackend
import XenBlockFrontend
import XenBlockProtocol
import XenPlatform
import XenRing
import XenSim
import XenStore
import XenSystem
#if canImport(Glibc)
import Glibc
import XenToolstack
#endif

struct FrontCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "front",
        abstract: "The Swift frontends (test drivers) against a backend.",
        subcommands: [BlockFrontCommand.self, NetFrontCommand.self])
}

extension BlockProtocolABI: ExpressibleByArgument {}

struct BlockFrontCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "blk",
        abstract: "A blkfront: negotiate, write–flush–read back and verify, then run a workload.",
        discussion: """
        With --disk, everything runs in this process: the software hypervisor, its xenstored, the \
        block backend on PATH and this frontend. With --sim, this process is guest DOMAIN of a \
        running `xenback sim serve` and drives the disk the toolstack attached to it (DEVID), \
        served by a backend in another process. Exit status 0 only if every block verified.
        """)

    @Option(help: "Serve this file or block device in-process.")
    var disk: String?

    @Option(help: "A running sim's control socket (the guest runs in this process).")
    var sim: String?

    @Option(help: "The guest's domain id (with --sim).")
    var domain: UInt16 = 1

    @Option(help: "The virtual device number (51712 is xvda).")
    var devid: Int = ToolstackDisk.firstXenDisk

    @Flag(help: "Read-only (in-process: the disk is attached with mode r; verify only reads).")
    var readOnly = false

    @Option(help: "Queues to ask for.") var queues: Int = 1
    @Option(help: "Ring page order to ask for (0...4).") var ringPageOrder: Int = 0
    @Option(help: "Ring ABI: x86_64-abi or x86_32-abi.") var abi: BlockProtocolABI = .x86_64
    @Option(help: "MiB written, flushed and read back for verification (0 skips).") var verifyMb: Int = 16
    @Option(help: "Workload pattern after verification.") var rw: BlockPattern = .randread
    @Option(help: "Workload block size.") var bs: String = "4k"
    @Option(help: "Workload requests in flight per queue.") var iodepth: Int = 16
    @Option(help: "Workload seconds (0 skips).") var seconds: Int = 3
    @Option(help: "Soak mode: for this many seconds (or until SIGTERM), alternate a 4 MiB verify pass and a second of random I/O, printing a progress line each second.")
    var soak: Int?
    @Flag(help: "With --soak: behave as Linux's blkfront does when its backend goes silent: never set up new rings; wait (30 s at most) for a backend that takes over the old ones. A pause longer than that fails the soak.")
    var neverReconnect = false

    @Flag(help: "With --soak: stay connected but idle (no I/O) for that long or until SIGTERM.")
    var idle = false
    @Option(help: "First guest frame this frontend may use (with --sim; several disks of one guest need disjoint frames).")
    var firstFrame: UInt32 = 0
    @Option(help: "Guest frames it may use (default: all from --first-frame).")
    var frameCount: UInt32?

    func validate() throws {
        guard (disk == nil) != (sim == nil) else { throw ValidationError("give exactly one of --disk PATH or --sim SOCKET") }
        if soak != nil && sim == nil { throw ValidationError("--soak runs as a sim guest: use it with --sim") }
        guard (1...64).contains(queues) else { throw ValidationError("--queues must be 1...64") }
        guard (0...4).contains(ringPageOrder) else { throw ValidationError("--ring-page-order must be 0...4") }
        guard let size = parseSize(bs), size >= 512, size % 512 == 0, size <= 1 << 20 else {
            throw ValidationError("--bs must be a multiple of 512 up to 1m, got \(bs)")
        }
        guard (1...512).contains(iodepth), verifyMb >= 0, seconds >= 0 else { throw ValidationError("--iodepth 1...512, --verify-mb and --seconds ≥ 0") }
    }

    func run() async throws {
        let blockSize = Int(parseSize(bs)!)
        var logger = Logger(label: "xenback.front.blk")
        logger.logLevel = .warning
        let segments = max(BlockLimits.maxSegmentsPerRequest, max(16, (blockSize + 4095) / 4096))
        let options = BlockFrontendOptions(queues: queues, ringPageOrder: ringPageOrder, abi: abi,
                                           slotsPerQueue: iodepth, segmentsPerRequest: segments)
        if let disk {
            guard abi == .x86_64 else { throw ValidationError("in-process mode speaks x86_64-abi; use --sim for x86_32") }
            let rig = try await BlockRig(path: disk, readOnly: readOnly,
                                         configuration: BlockBackendConfiguration(maximumQueues: max(queues, BlockBackendConfiguration.onlineCPUs)),
                                         options: options, logger: logger)
            let outcome = Result { try exercise(rig.frontend, blockSize: blockSize) }
            print("backend: \(rig.device.statistics)")
            await rig.shutdown()
            if try !outcome.get() { throw ExitCode.failure }
            return
        }
        let client = try SimClient(socketPath: sim!)
        let guest = try client.attachDomain(DomainID(domain))
        let xenstore = try await client.xenstore(as: DomainID(domain), reconnectingWith: logger)
        let frontendPath = "/local/domain/\(domain)/device/vbd/\(devid)"
        func connectAndRun<L: RingLayout>(_: L.Type) async throws -> Bool where L.Request == BlockRequest, L.Response == BlockResponse {
            let front = try await BlockFrontend<L>.connect(
                domain: guest, xenstore: xenstore, frontendPath: frontendPath,
                frames: firstFrame..<(frameCount.map { firstFrame + $0 } ?? UInt32(guest.pageCount)),
                options: options, openEventChannels: { try client.openEventChannels(domain: DomainID(domain)) })
            let outcome: Result<Bool, Error>
            do {
                if let soak { outcome = .success(try await self.soak(front, seconds: soak)) }
                else { outcome = .success(try exercise(front, blockSize: blockSize)) }
            } catch { outcome = .failure(error) }
            _ = try await front.close()
            return try outcome.get()
        }
        let ok = abi == .x86_64 ? try await connectAndRun(BlockRingX86_64.self) : try await connectAndRun(BlockRingX86_32.self)
        await xenstore.close()
        if !ok { throw ExitCode.failure }
    }

    /// Verify passes (rotating through the disk) and random I/O, a progress
    /// line a second, until `seconds` pass or SIGTERM; true if all verified.
    ///
    /// If the backend stops answering (xenbackd killed), it waits for a new
    /// one, reconnects with new rings, and checks that every region whose
    /// writes and flush were acknowledged still reads back exactly: the
    /// crash-consistency check. The interrupted pass is simply done again.
    func soak<L: RingLayout>(_ front: BlockFrontend<L>, seconds: Int) async throws -> Bool
    where L.Request == BlockRequest, L.Response == BlockResponse {
        let d = front.disk
        if idle {
            print("connected sectors=\(d.sectors) queues=\(front.queues.count) idle")
            fflush(nil)
            SoakSignal.waitForTermination(seconds: seconds)
            print("verified: ok idle")
            return true
        }
        SoakSignal.install()
        print("connected sectors=\(d.sectors) queues=\(front.queues.count) persistent=\(d.persistentGrants) indirect=\(d.maximumIndirectSegments)")
        fflush(nil)
        let clock = ContinuousClock()
        let end = clock.now + .seconds(seconds)
        let verifyBlocks = 64, verifyBlock = 65536
        // Verify passes use the first half of the disk; random I/O the second
        // half, so it never overwrites a region the crash check relies on.
        let half = d.sectors * 512 / 2 / 4096 * 4096
        let regions = max(1, Int(half) / (verifyBlocks * verifyBlock))
        var totals = BlockVerifyResult()
        /// Regions whose last pass was written, flushed and read back, with its seed.
        var committed: [Int: UInt64] = [:]
        var pass = 0, recoveries = 0, lostAfterRecovery = 0
        let readOnly = d.info.contains(.readOnly)
        func shortTimeouts() { for q in front.queues { q.responseTimeoutMilliseconds = neverReconnect ? 30_000 : 2_000 } }
        shortTimeouts()
        // Relaxed: a flag with nothing to publish; seeing it a pass late is fine.
        while clock.now < end && !SoakSignal.stop.load(ordering: .relaxed) {
            let started = clock.now
            var ops = 0, bytes: UInt64 = 0, errors = 0
            do {
                if !readOnly {
                    let queue = front.queues[pass % front.queues.count]
                    let region = pass % regions
                    let seed = UInt64(pass) &+ 1
                    committed[region] = nil  // being overwritten: no claim until its flush is answered
                    let start = UInt64(region * verifyBlocks * verifyBlock / 512)
                    let r = try queue.verify(startSector: start, blocks: verifyBlocks, blockSize: verifyBlock, seed: seed)
                    if r.ok { committed[region] = seed }
                    totals.blocksWritten += r.blocksWritten; totals.blocksVerified += r.blocksVerified
                    totals.mismatches += r.mismatches; totals.failedRequests += r.failedRequests
                    ops += r.blocksWritten + r.blocksVerified + 1
                    bytes += UInt64((r.blocksWritten + r.blocksVerified) * verifyBlock)
                }
                let pattern: BlockPattern = readOnly || pass % 2 == 0 ? .randread : .randwrite
                var workload = BlockWorkload(pattern: pattern, blockSize: 4096, iodepth: iodepth,
                                             regionBytes: d.sectors * 512 - half, duration: .milliseconds(800))
                workload.startBytes = half
                let w = try front.run(workload)
                ops += w.operations; bytes += w.bytes; errors += w.errors
            } catch BlockFrontendError.timeout where neverReconnect {
                // Linux's blkfront would hang here for ever; we say so and stop.
                print("backend stopped answering for 30 s: a Linux guest's disk would hang here")
                fflush(nil)
                return false
            } catch BlockFrontendError.timeout {
                // The backend is gone: new rings once a new one is there.
                print("backend stopped answering: reconnecting")
                fflush(nil)
                try await front.reconnect()
                shortTimeouts()
                recoveries += 1
                // Every acknowledged-and-flushed region must have survived.
                for (region, seed) in committed.sorted(by: { $0.key < $1.key }) {
                    let queue = front.queues[0]
                    for i in 0..<verifyBlocks {
                        let sector = UInt64(region * verifyBlocks * verifyBlock / 512 + i * verifyBlock / 512)
                        let (status, data) = try queue.read(sector: sector, byteCount: verifyBlock)
                        if status != .okay || data != BlockFrontendQueue<L>.verifyPattern(sector: sector, seed: seed, count: verifyBlock) {
                            lostAfterRecovery += 1
                        }
                    }
                }
                print("reconnected: \(committed.count) committed regions checked, \(lostAfterRecovery) blocks lost")
                fflush(nil)
                continue
            }
            let elapsed = clock.now - started
            let secs = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            // The longest the guest waited for an answer in this pass (ms).
            let longest = front.queues.map(\.longestWait).max() ?? .zero
            for q in front.queues { q.longestWait = .zero }
            let pauseMilliseconds = longest.components.seconds * 1000 + longest.components.attoseconds / 1_000_000_000_000_000
            print("progress iops=\(Int(Double(ops) / secs)) mbps=\(fmt(Double(bytes) / 1e6 / secs, 1)) errors=\(errors + totals.failedRequests) verified=\(totals.blocksVerified) mismatches=\(totals.mismatches) recoveries=\(recoveries) pause_ms=\(pauseMilliseconds)")
            fflush(nil)
            pass += 1
            if errors > 0 { totals.failedRequests += errors }
        }
        let ok = totals.ok && lostAfterRecovery == 0
        print("verified: \(ok ? "ok" : "FAILED") blocks=\(totals.blocksVerified) mismatches=\(totals.mismatches) failed=\(totals.failedRequests) recoveries=\(recoveries) lost=\(lostAfterRecovery)")
        fflush(nil)
        return ok
    }

    /// Prints what was negotiated, verifies, runs the workload; true if all verified.
    func exercise<L: RingLayout>(_ front: BlockFrontend<L>, blockSize: Int) throws -> Bool
    where L.Request == BlockRequest, L.Response == BlockResponse {
        let d = front.disk
        print("connected: \(d.sectors) sectors of 512 B (sector-size \(d.sectorSize), physical \(d.physicalSectorSize)), info \(d.info.rawValue), queues \(front.queues.count), flush \(d.flush), barrier \(d.barrier), discard \(d.discard), persistent \(d.persistentGrants), indirect \(d.maximumIndirectSegments)")
        var ok = true
        if verifyMb > 0 && !d.info.contains(.readOnly) {
            let verifyBlock = 64 * 1024
            let blocks = min(verifyMb << 20, Int(d.sectors * 512)) / verifyBlock / front.queues.count
            for (i, q) in front.queues.enumerated() {
                let r = try q.verify(startSector: UInt64(i * blocks * verifyBlock / 512), blocks: blocks, blockSize: verifyBlock,
                                     seed: UInt64(getpid()))
                print("verify queue \(i): \(r.blocksWritten) blocks of 64 KiB written, flushed, \(r.blocksVerified) read back, \(r.mismatches) mismatches, \(r.failedRequests) failed requests")
                ok = ok && r.ok
            }
        }
        if seconds > 0 {
            let pattern = d.info.contains(.readOnly) && rw.writes ? BlockPattern.randread : rw
            let result = try front.run(BlockWorkload(pattern: pattern, blockSize: blockSize, iodepth: iodepth,
                                                     regionBytes: d.sectors * 512, duration: .seconds(seconds)))
            print("workload \(pattern) bs \(blockSize) iodepth \(iodepth) x \(front.queues.count) queue(s): \(fmt(result.iops, 0)) IOPS, \(fmt(result.megabytesPerSecond, 1)) MB/s, \(result.errors) errors")
            ok = ok && result.errors == 0
        }
        print(ok ? "verified: ok" : "verified: FAILED")
        return ok
    }
}

import Synchronization

/// SIGTERM/SIGINT end a soak at the next pass (then the frontend closes
/// cleanly); the handler also writes to a pipe so a waiter can sleep on it.
enum SoakSignal {
    static let stop = Atomic<Bool>(false)
    // Plain integers: the handler must not touch anything that could allocate or lock.
    nonisolated(unsafe) static var readFD: Int32 = -1
    nonisolated(unsafe) static var writeFD: Int32 = -1

    static func install() {
        if readFD < 0 {
            var fds: [Int32] = [-1, -1]
            pipe(&fds)
            readFD = fds[0]; writeFD = fds[1]
        }
        let handler: @convention(c) (Int32) -> Void = { _ in
            // Relaxed: the flag guards no data; the pipe write wakes sleepers.
            SoakSignal.stop.store(true, ordering: .relaxed)
            var byte: UInt8 = 1
            _ = write(SoakSignal.writeFD, &byte, 1)  // raw: in a signal handler (async-signal-safe, no task-local mock)
        }
        signal(SIGTERM, handler)
        signal(SIGINT, handler)
    }

    /// Sleeps (no polling loop) until SIGTERM/SIGINT or `seconds` pass.
    static func waitForTermination(seconds: Int) {
        install()
        let deadline = ContinuousClock.now + .seconds(seconds)
        // Relaxed, as above.
        while !stop.load(ordering: .relaxed) {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { return }
            let ms = Int32(clamping: left.components.seconds * 1000 + 1)
            // EINTR: the handler ran; the loop looks at the flag.
            if case .failure(let failure) = Syscall.poll(readFD, timeoutMilliseconds: ms, retryingInterrupts: false),
               failure.code != EINTR { return }
        }
    }
}

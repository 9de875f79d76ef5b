import XenBlockProtocol
import XenPlatform
import XenRing
#if canImport(Glibc)
import Glibc
#endif

/// fio's rw= patterns that the benchmark and the demo use.
public enum BlockPattern: String, Sendable, CaseIterable {
    case read, write, randread, randwrite

    public var writes: Bool { self == .write || self == .randwrite }
    public var random: Bool { self == .randread || self == .randwrite }
}

/// A closed-loop workload: `iodepth` requests in flight per queue, each
/// answered one replaced at once, until `duration` passes or `operations`
/// have completed.
public struct BlockWorkload: Sendable {
    public var pattern: BlockPattern
    public var blockSize: Int
    public var iodepth: Int
    /// The bytes of the disk the workload stays within, from `startBytes`.
    public var regionBytes: UInt64
    public var startBytes: UInt64 = 0
    public var duration: Duration?
    public var operations: Int?
    /// How long to watch the response ring before sleeping on the event
    /// channel (a guest's interrupt costs nothing like a thread wakeup).
    public var pollMicroseconds: Int

    public init(pattern: BlockPattern, blockSize: Int, iodepth: Int, regionBytes: UInt64,
                duration: Duration? = nil, operations: Int? = nil, pollMicroseconds: Int = 0) {
        self.pollMicroseconds = pollMicroseconds
        self.pattern = pattern; self.blockSize = blockSize; self.iodepth = iodepth
        self.regionBytes = regionBytes; self.duration = duration; self.operations = operations
    }
}

public struct BlockWorkloadResult: Sendable {
    public var operations: Int
    public var errors: Int
    public var bytes: UInt64
    public var elapsed: Duration

    public var seconds: Double {
        Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }
    public var iops: Double { Double(operations) / max(seconds, 1e-9) }
    public var megabytesPerSecond: Double { Double(bytes) / 1_000_000 / max(seconds, 1e-9) }

    static func + (a: BlockWorkloadResult, b: BlockWorkloadResult) -> BlockWorkloadResult {
        BlockWorkloadResult(operations: a.operations + b.operations, errors: a.errors + b.errors, bytes: a.bytes + b.bytes,
                            elapsed: max(a.elapsed, b.elapsed))
    }
}

extension BlockFrontendQueue {
    /// Runs `workload` on this queue from the calling thread. Requests are
    /// prepared per slot and the ring is pushed once per batch of answers.
    /// `steady` runs once setup is done, just before the first request (the
    /// benchmark starts its malloc counter there).
    public func run(_ workload: BlockWorkload, seed: UInt64 = 0x9E37_79B9_7F4A_7C15,
                    steady: () -> Void = {}) throws -> BlockWorkloadResult {
        precondition(workload.blockSize % 512 == 0 && workload.blockSize <= segmentsPerRequest * 4096,
                     "block size \(workload.blockSize) does not fit \(segmentsPerRequest) pages")
        let depth = max(1, min(workload.iodepth, slotCount, Int(ring.size)))
        let blocks = max(1, workload.regionBytes / UInt64(workload.blockSize))
        let sectorsPerBlock = UInt64(workload.blockSize / 512)
        let operation: BlockOperation = workload.pattern.writes ? .write : .read
        var random = seed | 1
        var sequential: UInt64 = 0
        func nextSector() -> UInt64 {
            let block: UInt64
            if workload.pattern.random {
                // xorshift64: cheap, no allocation, reproducible.
                random ^= random << 13; random ^= random >> 7; random ^= random << 17
                block = random % blocks
            } else {
                block = sequential
                sequential = (sequential + 1) % blocks
            }
            return workload.startBytes / 512 + block * sectorsPerBlock
        }
        let clock = ContinuousClock()
        let start = clock.now
        let deadline = workload.duration.map { start + $0 }
        var issued = 0, completed = 0, errors = 0, inFlight = 0
        func mayIssue() -> Bool {
            if let limit = workload.operations, issued >= limit { return false }
            if let deadline, (issued & 15) == 0, clock.now >= deadline { return false }
            return true
        }
        // One prepared request per slot (segments and indirect pages do not
        // change between uses): the loop below allocates nothing.
        var prepared = (0..<depth).map { makeRequest(slot: $0, operation: operation, sector: 0, byteCount: workload.blockSize) }
        var outstanding = OutstandingRequests(capacity: depth)
        func issue(_ slot: Int) {
            prepared[slot].sectorNumber = nextSector()
            outstanding.sent(slot)
            ring.produceRequest(prepared[slot])
            issued += 1
            inFlight += 1
        }
        var stopping = false
        steady()
        for slot in 0..<depth where mayIssue() { issue(slot) }
        if ring.pushRequests() { try events.notify(port) }
        while inFlight > 0 {
            let producer = try ring.readResponseProducer()
            var answered = 0
            while let response = ring.nextResponse(before: producer) {
                answered += 1
                inFlight -= 1
                completed += 1
                // XSA-391: an id not waiting for an answer means the backend
                // lies; stop rather than reuse a slot still in flight.
                do { try outstanding.answered(response.id) } catch { throw BlockFrontendError.request("\(error)") }
                let slot = Int(response.id)
                // An answer naming another operation is an error, as Linux blkfront treats it.
                if response.status != .okay || response.operation != prepared[slot].responseOperation { errors += 1 }
                if !stopping && mayIssue() {
                    issue(slot)
                    // Publish every few, so the backend starts before the whole batch is answered.
                    if issued % 4 == 0, ring.pushRequests() { try events.notify(port) }
                } else { stopping = true }
            }
            if answered > 0 {
                if ring.pushRequests() { try events.notify(port) }
                continue
            }
            if ring.finalCheckForResponses() { continue }
            if workload.pollMicroseconds > 0 {
                let until = clock.now + .microseconds(workload.pollMicroseconds)
                while ring.unconsumedResponses() == 0 && clock.now < until {}
                if ring.unconsumedResponses() > 0 { continue }
            }
            guard waitForAnswer(timeoutMilliseconds: responseTimeoutMilliseconds) else { throw BlockFrontendError.timeout("a block response") }
            // SAFETY: our array, borrowed for the call only.
            _ = try pendingPorts.withUnsafeMutableBufferPointer { try events.takePending(into: $0) }
            try events.unmask(port)
        }
        return BlockWorkloadResult(operations: completed, errors: errors, bytes: UInt64(completed - errors) * UInt64(workload.blockSize),
                                   elapsed: clock.now - start)
    }
}

extension BlockFrontend {
    /// Runs `workload` on every queue at once, a thread per queue (each
    /// queue's region is the whole disk region, with its own random seed).
    public func run(_ workload: BlockWorkload) throws -> BlockWorkloadResult {
        let box = ResultSlots(count: queues.count)
        let group = ThreadGroup()
        for (i, queue) in queues.enumerated() {
            group.spawn { box.results[i] = Result { try queue.run(workload, seed: 0x9E37_79B9_7F4A_7C15 &* UInt64(i + 1)) } }
        }
        group.joinAll()
        return try box.results.map { try $0!.get() }.reduce(BlockWorkloadResult(operations: 0, errors: 0, bytes: 0, elapsed: .zero), +)
    }
}


/// One result per thread; each thread writes only its own slot, read after join.
final class ResultSlots: @unchecked Sendable {
    var results: [Result<BlockWorkloadResult, Error>?]
    init(count: Int) { results = Array(repeating: nil, count: count) }
}

/// The outcome of a write–flush–read-back pass.
public struct BlockVerifyResult: Sendable, Equatable {
    public var blocksWritten: Int
    public var blocksVerified: Int
    /// Blocks whose read-back differed, or whose request failed.
    public var mismatches: Int
    public var failedRequests: Int
    public var ok: Bool { mismatches == 0 && failedRequests == 0 && blocksVerified == blocksWritten }

    public init(blocksWritten: Int = 0, blocksVerified: Int = 0, mismatches: Int = 0, failedRequests: Int = 0) {
        self.blocksWritten = blocksWritten; self.blocksVerified = blocksVerified
        self.mismatches = mismatches; self.failedRequests = failedRequests
    }
}

extension BlockFrontendQueue {
    /// The data `verify` writes to a block: depends on the sector and the
    /// seed, so a block read back from anywhere else cannot match by chance.
    public static func verifyPattern(sector: UInt64, seed: UInt64, count: Int) -> [UInt8] {
        var x = (sector &+ 1) &* 0x9E37_79B9_7F4A_7C15 ^ seed
        return (0..<count).map { _ in
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            return UInt8(truncatingIfNeeded: x)
        }
    }

    /// Writes `blocks` blocks of `blockSize` from `startSector`, flushes,
    /// then reads each back and compares.
    public func verify(startSector: UInt64, blocks: Int, blockSize: Int, seed: UInt64) throws -> BlockVerifyResult {
        var result = BlockVerifyResult(blocksWritten: 0, blocksVerified: 0, mismatches: 0, failedRequests: 0)
        let step = UInt64(blockSize / 512)
        for i in 0..<blocks {
            let sector = startSector + UInt64(i) * step
            if try write(sector: sector, Self.verifyPattern(sector: sector, seed: seed, count: blockSize)) == .okay {
                result.blocksWritten += 1
            } else {
                result.failedRequests += 1
            }
        }
        if try flush() != .okay { result.failedRequests += 1 }
        for i in 0..<blocks {
            let sector = startSector + UInt64(i) * step
            let (status, data) = try read(sector: sector, byteCount: blockSize)
            guard status == .okay else { result.failedRequests += 1; continue }
            result.blocksVerified += 1
            if data != Self.verifyPattern(sector: sector, seed: seed, count: blockSize) { result.mismatches += 1 }
        }
        return result
    }
}

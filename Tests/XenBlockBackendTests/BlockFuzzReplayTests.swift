import Testing
import XenFuzzing
import XenProtocolTesting

@Suite struct BlockFuzzReplayTests {
    /// Every seed and every crash the block request fuzzer ever found, replayed
    /// through the real worker (its own checks are preconditions).
    @Test func seedsAndRegressionsReplay() {
        let inputs = fuzzInputs(target: "FuzzBlockRequests")
        #expect(inputs.count >= 6, "the seeds are there")
        for input in inputs {
            input.bytes.withUnsafeBytes { BlockRequestFuzzer.run($0) }
        }
    }
}

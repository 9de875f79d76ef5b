import Testing
import XenFuzzing
import XenProtocolTesting

@Suite struct NetFuzzReplayTests {
    /// Every seed and every crash the netback queue fuzzer ever found,
    /// replayed through the real worker (its own checks are preconditions).
    @Test func seedsAndRegressionsReplay() {
        let inputs = fuzzInputs(target: "FuzzNetQueue")
        #expect(inputs.count >= 6, "the seeds are there")
        for input in inputs {
            input.bytes.withUnsafeBytes { NetQueueFuzzer.run($0) }
        }
    }
}

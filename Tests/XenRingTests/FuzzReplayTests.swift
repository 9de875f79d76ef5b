import Testing
import XenFuzzing
import XenProtocolTesting

/// Replays the back-ring fuzz target's seed corpus and every regression input
/// through the same code libFuzzer runs (without sanitizers here; the fuzz
/// run itself has them).
@Suite struct FuzzReplayTests {
    @Test func backRingSeedsAndRegressions() {
        let inputs = fuzzInputs(target: "FuzzBackRing")
        #expect(inputs.count > 50, "seed corpus present")
        for input in inputs {
            input.bytes.withUnsafeBytes { BackRingFuzzer.run($0) }
        }
    }
}

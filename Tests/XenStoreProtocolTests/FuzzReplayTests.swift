import Testing
import XenFuzzing
import XenProtocolTesting

@Suite struct XenStoreFuzzReplayTests {
    @Test func wireSeedsAndRegressions() {
        let inputs = fuzzInputs(target: "FuzzXenStoreWire")
        #expect(inputs.count > 20, "seed corpus present")
        for input in inputs {
            input.bytes.withUnsafeBytes { XenStoreWireFuzzer.run($0) }
        }
    }
}

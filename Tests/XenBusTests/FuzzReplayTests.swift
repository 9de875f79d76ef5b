import Testing
import XenFuzzing
import XenProtocolTesting

@Suite struct XenbusFuzzReplayTests {
    @Test func stateMachineSeedsAndRegressions() {
        let inputs = fuzzInputs(target: "FuzzXenbusStateMachine")
        #expect(inputs.count > 20, "seed corpus present")
        for input in inputs { input.bytes.withUnsafeBytes { XenbusStateMachineFuzzer.run($0) } }
    }
}

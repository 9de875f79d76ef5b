import Foundation
import Testing
import XenFuzzing

/// Replays every committed seed and every regression of each fuzz target
/// through the same harness libFuzzer runs (here without sanitizers; the fuzz
/// runs have them). The harnesses' own checks are preconditions.
@Suite struct FuzzReplayTests {
    @Test func backRing() { replay("FuzzBackRing", atLeast: 50, BackRingFuzzer.run) }
    @Test func blockRequests() { replay("FuzzBlockRequests", atLeast: 6, BlockRequestFuzzer.run) }
    @Test func netQueue() { replay("FuzzNetQueue", atLeast: 6, NetQueueFuzzer.run) }
    @Test func xenStoreWire() { replay("FuzzXenStoreWire", atLeast: 20, XenStoreWireFuzzer.run) }
    @Test func xenStoreServer() { replay("FuzzXenStoreServer", atLeast: 20, XenStoreServerFuzzer.run) }
    @Test func xenbusStateMachine() { replay("FuzzXenbusStateMachine", atLeast: 20, XenbusStateMachineFuzzer.run) }

    private func replay(_ target: String, atLeast minimum: Int, _ run: (UnsafeRawBufferPointer) -> Void) {
        let inputs = fuzzInputs(target: target)
        #expect(inputs.count >= minimum, "\(target): the committed seeds are there")
        for input in inputs { input.bytes.withUnsafeBytes { run($0) } }
    }
}

/// tools/fuzz, found from this file's path.
private let fuzzDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent().path

/// The committed inputs of a fuzz target: seeds/TARGET and regressions/TARGET
/// (every crash ever found), sorted by folder and file name.
private func fuzzInputs(target: String) -> [(name: String, bytes: [UInt8])] {
    var inputs: [(name: String, bytes: [UInt8])] = []
    for folder in ["seeds", "regressions"] {
        let directory = fuzzDirectory + "/\(folder)/\(target)"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        for name in names where !name.hasPrefix(".") {
            guard let data = FileManager.default.contents(atPath: directory + "/" + name) else { continue }
            inputs.append(("\(folder)/\(name)", [UInt8](data)))
        }
    }
    return inputs.sorted { $0.name < $1.name }
}

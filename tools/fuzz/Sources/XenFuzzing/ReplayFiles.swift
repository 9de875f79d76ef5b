import Foundation

/// Runs `harness` once on each file in `paths`, printing each name first, so a
/// crash names its input. What a fuzz target does when built without libFuzzer.
public func replayFiles(_ paths: some Sequence<String>, through harness: (UnsafeRawBufferPointer) -> Void) {
    for path in paths {
        guard let data = FileManager.default.contents(atPath: path) else {
            FileHandle.standardError.write(Data("cannot read \(path)\n".utf8))
            exit(2)
        }
        print("replaying \(path) (\(data.count) bytes)")
        [UInt8](data).withUnsafeBytes { harness($0) }
    }
}

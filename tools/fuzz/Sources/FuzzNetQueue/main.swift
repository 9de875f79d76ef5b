import XenFuzzing

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    NetQueueFuzzer.run(UnsafeRawBufferPointer(start: start, count: count))
    return 0
}

#if !LIBFUZZER
/// Built without libFuzzer (swift test, a plain swift build): runs the
/// harness once on each file named on the command line, to replay a finding.
@main enum Replay {
    static func main() { replayFiles(CommandLine.arguments.dropFirst(), through: NetQueueFuzzer.run) }
}
#endif

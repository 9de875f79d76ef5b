import XenFuzzing

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzNetQueue(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    NetQueueFuzzer.run(UnsafeRawBufferPointer(start: start, count: count))
    return 0
}

import XenFuzzing

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzBlockRequests(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    BlockRequestFuzzer.run(UnsafeRawBufferPointer(start: start, count: count))
    return 0
}

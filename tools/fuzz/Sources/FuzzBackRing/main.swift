import XenFuzzing

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzBackRing(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    BackRingFuzzer.run(UnsafeRawBufferPointer(start: start, count: count))
    return 0
}

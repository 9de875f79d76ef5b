import XenFuzzing

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    XenStoreServerFuzzer.run(UnsafeRawBufferPointer(start: start, count: count))
    return 0
}

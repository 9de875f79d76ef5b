import XenFuzzing

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzXenStoreWire(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    XenStoreWireFuzzer.run(UnsafeRawBufferPointer(start: start, count: count))
    return 0
}

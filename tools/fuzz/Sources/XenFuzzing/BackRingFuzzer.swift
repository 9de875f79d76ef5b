import Synchronization
import XenBlockProtocol
import XenNetProtocol
import XenRing

/// A hostile frontend against our back ring. The fuzzer's bytes choose the
/// ring type and geometry, then script what the frontend does to the shared
/// area (arbitrary slot bytes, arbitrary index values) between the backend's
/// consume/respond/push/final-check passes. The backend must never touch
/// memory outside the area (AddressSanitizer watches the exact allocation),
/// never take more than the ring size in one pass, and must halt exactly
/// when ring.h's RING_REQUEST_PROD_OVERFLOW (or a producer behind its
/// consumer) says the frontend lied.
public enum BackRingFuzzer {
    public static func run(_ data: UnsafeRawBufferPointer) {
        var input = FuzzInput(data)
        let kind = input.byte() % 5
        let pages = Int(input.byte() % 4) + 1
        let start = RingIndex(input.u32())
        switch kind {
        case 0: exercise(BlockRingX86_64.self, pages: pages, start: start, input: &input) { $0.touchAllFields() }
        case 1: exercise(BlockRingX86_32.self, pages: pages, start: start, input: &input) { $0.touchAllFields() }
        case 2: exercise(NetTxRing.self, pages: pages, start: start, input: &input) { slot in
                _ = slot.request.size; _ = slot.extraInfo.gsoSize }
        case 3: exercise(NetRxRing.self, pages: pages, start: start, input: &input) { _ = $0.grant }
        default: exercise(NetControlRing.self, pages: pages, start: start, input: &input) { _ = $0.data.2 }
        }
    }

    static func exercise<L: RingLayout>(_: L.Type, pages: Int, start: RingIndex, input: inout FuzzInput,
                                        use: (L.Request) -> Void) where L.Response: FuzzResponse {
        let byteCount = pages * SharedRingMemory.pageSize
        // Exactly the ring's bytes, so any access beyond them is caught.
        let area = UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: SharedRingMemory.pageSize)
        defer { area.deallocate() }
        area.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount)
        let memory = SharedRingMemory(base: area, byteCount: byteCount)
        // The frontend initialises; the script then does as it likes.
        do { _ = try FrontRing<L>(initializing: memory, at: start) } catch { return }
        guard var back = try? BackRing<L>(attaching: memory, at: start) else { return }
        let size = back.size
        var steps = 0
        while !input.isAtEnd && steps < 10_000 {
            steps += 1
            switch input.byte() % 8 {
            case 0:  // frontend scribbles anywhere in the area
                let offset = Int(input.u16()) % byteCount
                let chunk = input.take(Int(input.byte()))
                let n = min(chunk.count, byteCount - offset)
                (area + offset).copyMemory(from: chunk.baseAddress ?? UnsafeRawPointer(area), byteCount: n)
            case 1:  // an arbitrary req_prod
                storeIndex(area, word: 0, input.u32())
            case 2:  // req_prod a little ahead of where the backend is
                storeIndex(area, word: 0, back.requestConsumer.rawValue &+ UInt32(input.byte() % 40))
            case 3:  // the backend's consume pass, answering some of what it takes
                let answerAll = input.byte() & 1 == 0
                let rspBefore = back.responseProducerPrivate, consBefore = back.requestConsumer
                let producer = loadIndex(area, word: 0)
                let lying = (producer &- rspBefore.rawValue) > size
                    || (producer &- rspBefore.rawValue) < (consBefore &- rspBefore)
                do {
                    let p = try back.readRequestProducer()
                    precondition(!lying, "missed PROD_OVERFLOW: prod \(producer) rsp_prod_pvt \(rspBefore)")
                    var taken: UInt32 = 0
                    while let request = back.nextRequest(before: p) {
                        use(request)
                        taken += 1
                        precondition(taken <= size, "consume pass not bounded by the ring size")
                        if answerAll { back.produceResponse(L.Response.fuzzResponse(answering: taken)) }
                    }
                } catch RingError.halted {
                    precondition(back.isHalted)
                } catch {
                    precondition(lying || back.isHalted, "halted an honest ring: \(error)")
                }
                precondition(back.requestConsumer &- back.responseProducerPrivate <= size)
            case 4:  // answer one outstanding request
                if back.canProduceResponse { back.produceResponse(L.Response.fuzzResponse(answering: 0)) }
            case 5:
                _ = back.pushResponses()
            case 6:
                _ = back.finalCheckForRequests()
                precondition(back.unconsumedRequests() <= size)
            default:  // the frontend moves the fields the backend reads or owns
                storeIndex(area, word: UInt32(input.byte() % 4), input.u32())
            }
        }
    }

    static func storeIndex(_ area: UnsafeMutableRawPointer, word: UInt32, _ value: UInt32) {
        (area + Int(word) * 4).assumingMemoryBound(to: Atomic<UInt32>.self).pointee.store(value, ordering: .relaxed)
    }

    static func loadIndex(_ area: UnsafeMutableRawPointer, word: UInt32) -> UInt32 {
        (area + Int(word) * 4).assumingMemoryBound(to: Atomic<UInt32>.self).pointee.load(ordering: .relaxed)
    }
}

/// A response the fuzzing backend can make for any layout.
public protocol FuzzResponse { static func fuzzResponse(answering n: UInt32) -> Self }

extension BlockResponse: FuzzResponse {
    public static func fuzzResponse(answering n: UInt32) -> BlockResponse {
        BlockResponse(id: UInt64(n), operation: .read, status: .error)
    }
}
extension NetTxResponse: FuzzResponse {
    public static func fuzzResponse(answering n: UInt32) -> NetTxResponse { NetTxResponse(id: UInt16(truncatingIfNeeded: n), status: NetStatus.dropped) }
}
extension NetRxSlot: FuzzResponse {
    public static func fuzzResponse(answering n: UInt32) -> NetRxSlot {
        NetRxSlot(NetRxResponse(id: UInt16(truncatingIfNeeded: n), offset: 0, flags: [], status: NetStatus.error))
    }
}
extension NetControlResponse: FuzzResponse {
    public static func fuzzResponse(answering n: UInt32) -> NetControlResponse {
        NetControlResponse(id: UInt16(truncatingIfNeeded: n), type: .invalid, status: NetControlStatus.notSupported, data: 0)
    }
}

extension BlockRequest {
    /// Reads every field a backend might, through the checked accessors.
    func touchAllFields() {
        _ = (operation, id, sectorNumber, handle, discardFlags, discardSectorCount, indirectHandle, indirectSegmentCount)
        for i in 0..<min(Int(segmentCount), BlockLimits.maxSegmentsPerRequest) { _ = segment(i).sectorCount }
        for i in 0..<BlockLimits.maxIndirectPagesPerRequest { _ = indirectGrant(i) }
    }
}

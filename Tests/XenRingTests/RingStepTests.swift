import CXenRingReference
import Testing
import XenBlockProtocol
import XenRing
import XenRingBenchmark

/// A small deterministic PRNG (SplitMix64) so every scripted run is reproducible.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Plays the same scripted sequence of pushes, consumes and final checks
/// through Xen's ring.h macros (CXenRingReference) and through our rings,
/// each over its own page, and requires the same notify decisions, the same
/// header words and the same messages at every step.
@Suite struct RingStepTests {
    @Test(arguments: [(UInt32(0), 1), (UInt32(0xFFFF_FF00), 1), (UInt32(0x7FFF_FFF0), 4), (UInt32(0xFFFF_FFF0), 16)])
    func sameDecisionsAsRingH(start: UInt32, pages: Int) throws {
        let cPages = RingPages(pageCount: pages), swiftPages = RingPages(pageCount: pages)
        let bytes = pages * 4096
        cxr_shared_init(cPages.base, start)
        let cFront = try #require(cxr_front_attach(cPages.base, bytes, start))
        let cBack = try #require(cxr_back_attach(cPages.base, bytes, start))
        defer { cxr_front_free(cFront); cxr_back_free(cBack) }
        let memory = SharedRingMemory(base: swiftPages.base, byteCount: bytes)
        var front = try FrontRing<BlockRingX86_64>(initializing: memory, at: RingIndex(start))
        var back = try BackRing<BlockRingX86_64>(attaching: memory, at: RingIndex(start))
        do { let ok = (front.size == cxr_blkif_ring_size(bytes) && back.size == front.size); #expect(ok) }

        var rng = SplitMix(state: UInt64(start) &* 31 &+ UInt64(pages))
        var nextID: UInt64 = 0
        var unanswered: [UInt64] = []  // consumed by both backends, not yet answered
        var notifies = 0
        for step in 0..<20_000 {
            let k = Int.random(in: 1...Int(front.size / 2 + 1), using: &rng)
            switch Int.random(in: 0..<8, using: &rng) {
            case 0:  // frontend produces up to k requests
                for _ in 0..<k where !front.isFull {
                    #expect(cxr_front_full(cFront) == 0)
                    front.produceRequest(BlockRequest(operation: .read, id: nextID, sectorNumber: nextID * 8,
                                                      segment: BlockSegment(grant: UInt32(truncatingIfNeeded: nextID), firstSector: 0, lastSector: 7)))
                    cxr_front_produce(cFront, 0, nextID, nextID * 8)
                    nextID += 1
                }
                do { let ok = (front.isFull == (cxr_front_full(cFront) != 0)); #expect(ok) }
            case 1:  // frontend pushes
                let n = front.pushRequests()
                #expect(n == (cxr_front_push(cFront) != 0), "step \(step): request notify")
                if n { notifies += 1 }
            case 2:  // backend consumes up to k
                let producer = try back.readRequestProducer()
                #expect(cxr_back_request_prod_overflow(cBack, producer.rawValue) == 0)
                for _ in 0..<k {
                    let mine = back.nextRequest(before: producer)
                    var id: UInt64 = 0, op: UInt8 = 0, sector: UInt64 = 0
                    let theirs = cxr_back_consume(cBack, cxr_header_load(cPages.base, 0), &id, &op, &sector)
                    #expect((mine != nil) == (theirs != 0), "step \(step): consume")
                    guard let mine else { break }
                    #expect(mine.id == id && mine.operation.rawValue == op && mine.sectorNumber == sector)
                    unanswered.append(id)
                }
            case 3:  // backend answers up to k
                for _ in 0..<min(k, unanswered.count) {
                    let id = unanswered.removeFirst()
                    back.produceResponse(BlockResponse(id: id, operation: .read, status: .okay))
                    cxr_back_produce(cBack, id, 0, 0)
                }
            case 4:  // backend pushes
                let n = back.pushResponses()
                #expect(n == (cxr_back_push(cBack) != 0), "step \(step): response notify")
                if n { notifies += 1 }
            case 5:  // frontend consumes up to k
                let producer = try front.readResponseProducer()
                for _ in 0..<k {
                    let mine = front.nextResponse(before: producer)
                    var id: UInt64 = 0, op: UInt8 = 0, status: Int16 = 0
                    let theirs = cxr_front_consume(cFront, &id, &op, &status)
                    #expect((mine != nil) == (theirs != 0), "step \(step): response consume")
                    guard let mine else { break }
                    #expect(mine.id == id && mine.status.rawValue == status)
                }
            case 6:
                do { let ok = (back.finalCheckForRequests() == (cxr_back_final_check(cBack) != 0)); #expect(ok, "step \(step): back final check") }
            default:
                do { let ok = (front.finalCheckForResponses() == (cxr_front_final_check(cFront) != 0)); #expect(ok, "step \(step): front final check") }
            }
            for word in 0..<4 {
                #expect(swiftPages.base.load(fromByteOffset: 4 * word, as: UInt32.self) == cxr_header_load(cPages.base, UInt32(word)),
                        "step \(step): header word \(word)")
            }
            do { let ok = (front.freeRequests == cxr_front_free_requests(cFront)); #expect(ok) }
            do { let ok = (back.unconsumedRequests() == cxr_back_unconsumed_requests(cBack)); #expect(ok) }
            do { let ok = (front.unconsumedResponses() == cxr_front_unconsumed_responses(cFront)); #expect(ok) }
            do { let ok = (back.requestConsumer.rawValue == cxr_back_req_cons(cBack)); #expect(ok) }
            do { let ok = (back.responseProducerPrivate.rawValue == cxr_back_rsp_prod_pvt(cBack)); #expect(ok) }
            do { let ok = (front.requestProducerPrivate.rawValue == cxr_front_req_prod_pvt(cFront)); #expect(ok) }
            do { let ok = (front.responseConsumer.rawValue == cxr_front_rsp_cons(cFront)); #expect(ok) }
        }
        #expect(nextID > 1000 && notifies > 100, "the script exercised the ring")
    }

    /// RING_REQUEST_PROD_OVERFLOW decisions for producer values around every
    /// boundary, from many honest states; we additionally reject a producer
    /// behind our consumer, which no honest frontend can publish.
    @Test func producerOverflowMatchesRingH() throws {
        var rng = SplitMix(state: 7)
        for trial in 0..<2_000 {
            let pages = RingPages(pageCount: 1)
            let start = UInt32.random(in: 0...UInt32.max, using: &rng)
            let memory = SharedRingMemory(base: pages.base, byteCount: 4096)
            var front = try FrontRing<BlockRingX86_64>(initializing: memory, at: RingIndex(start))
            var back = try BackRing<BlockRingX86_64>(attaching: memory, at: RingIndex(start))
            let consumed = UInt32.random(in: 0...front.size, using: &rng)
            let answered = UInt32.random(in: 0...consumed, using: &rng)
            for i in 0..<consumed { front.produceRequest(BlockRequest(operation: .read, id: UInt64(i), sectorNumber: 0, segments: [])) }
            _ = front.pushRequests()
            let p = try back.readRequestProducer()
            while back.nextRequest(before: p) != nil {}
            for i in 0..<answered { back.produceResponse(BlockResponse(id: UInt64(i), operation: .read, status: .okay)) }
            let rspPvt = start &+ answered, cons = start &+ consumed
            let cBack = try #require(cxr_back_attach(pages.base, 4096, rspPvt))
            defer { cxr_back_free(cBack) }
            let candidates: [UInt32] = [cons, cons &+ 1, rspPvt &+ 32, rspPvt &+ 33, cons &- 1, rspPvt &- 1,
                                        cons &+ 0x8000_0000, UInt32.random(in: 0...UInt32.max, using: &rng)]
            let producer = candidates[trial % candidates.count]
            cxr_header_store(pages.base, 0, producer)
            let ringH = cxr_back_request_prod_overflow(cBack, producer) != 0
            let behind = (producer &- rspPvt) < (cons &- rspPvt)
            var halted = false
            do { _ = try back.readRequestProducer() } catch { halted = true; #expect(error != .halted) }
            #expect(halted == (ringH || behind), "trial \(trial): prod \(producer) rsp_pvt \(rspPvt) cons \(cons)")
            if halted {
                do { let ok = (back.isHalted); #expect(ok) }
                #expect(throws: RingError.halted) { try back.readRequestProducer() }
                do { let ok = (back.nextRequest(before: RingIndex(producer)) == nil); #expect(ok) }
                do { let ok = (!back.finalCheckForRequests()); #expect(ok) }
            }
        }
    }
}

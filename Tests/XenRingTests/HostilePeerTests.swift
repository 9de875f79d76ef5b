import Testing
import XenBlockProtocol
import XenRing
import XenRingBenchmark

/// What a backend must survive from a frontend that writes anything at all.
@Suite struct HostilePeerTests {
    func page() -> (RingPages, SharedRingMemory) {
        let p = RingPages(pageCount: 1)
        return (p, SharedRingMemory(base: p.base, byteCount: 4096))
    }

    @Test func consumingIsBoundedByTheRingSize() throws {
        let (pages, memory) = page()
        var back = try BackRing<BlockRingX86_64>(attaching: memory, at: RingIndex(0))
        // A lying frontend claims exactly a full ring (legal) and never reads
        // responses: we take 32 requests and stop, however often we ask.
        pages.base.storeBytes(of: UInt32(32), as: UInt32.self)
        let producer = try back.readRequestProducer()
        var taken = 0
        while back.nextRequest(before: producer) != nil { taken += 1 }
        #expect(taken == 32)
        do { let ok = (back.unconsumedRequests() == 0); #expect(ok) }
        // One past the ring is PROD_OVERFLOW: the ring halts for good.
        pages.base.storeBytes(of: UInt32(33), as: UInt32.self)
        #expect(throws: RingError.self) { try back.readRequestProducer() }
        do { let ok = (back.isHalted); #expect(ok) }
        pages.base.storeBytes(of: UInt32(1), as: UInt32.self)
        #expect(throws: RingError.halted) { try back.readRequestProducer() }
    }

    @Test func unconsumedCountUsesTheMinRule() throws {
        let (pages, memory) = page()
        let back = try BackRing<BlockRingX86_64>(attaching: memory, at: RingIndex(10))
        for producer: UInt32 in [10 + 5, 10 + 32, 10 + 33, 9, 0x8000_0000, UInt32.max] {
            pages.base.storeBytes(of: producer, as: UInt32.self)
            do { let ok = (back.unconsumedRequests() <= 32); #expect(ok, "req_prod \(producer)") }
        }
    }

    @Test func requestIsCopiedOnce() throws {
        let (pages, memory) = page()
        var front = try FrontRing<BlockRingX86_64>(initializing: memory)
        var back = try BackRing<BlockRingX86_64>(attaching: memory)
        front.produceRequest(BlockRequest(operation: .write, id: 1, sectorNumber: 8,
                                          segment: BlockSegment(grant: 5, firstSector: 0, lastSector: 7)))
        _ = front.pushRequests()
        let request = try #require(back.nextRequest(before: try back.readRequestProducer()))
        // The frontend rewrites the slot after we took it: our copy stands.
        (pages.base + 64).initializeMemory(as: UInt8.self, repeating: 0xFF, count: 112)
        #expect(request.operation == .write && request.segmentCount == 1 && request.segment(0).lastSector == 7)
    }

    @Test func responseIsWrittenWholeWithZeroPadding() throws {
        let (pages, memory) = page()
        var front = try FrontRing<BlockRingX86_64>(initializing: memory)
        var back = try BackRing<BlockRingX86_64>(attaching: memory)
        front.produceRequest(BlockRequest(operation: .read, id: 0xAB, sectorNumber: 0, segments: []))
        _ = front.pushRequests()
        _ = back.nextRequest(before: try back.readRequestProducer())
        (pages.base + 64).initializeMemory(as: UInt8.self, repeating: 0xAA, count: 112)
        back.produceResponse(BlockResponse(id: 0xAB, operation: .read, status: .error))
        _ = back.pushResponses()
        // Every byte of the 16-byte blkif_response is written: padding bytes 9
        // and 12...15 are zero whatever was there (XSA-216). The slot's other
        // bytes are the frontend's own request bytes; we leave them alone.
        let slot = UnsafeRawBufferPointer(start: pages.base + 64, count: 112)
        var expected = [UInt8](repeating: 0xAA, count: 112)
        expected.replaceSubrange(0..<16, with: [0xAB, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0, 0, 0])
        #expect(Array(slot) == expected, "no stale byte or padding reaches the frontend (XSA-216)")
    }

    @Test func frontendRejectsResponsesBeyondItsRequests() throws {
        let (pages, memory) = page()
        var front = try FrontRing<BlockRingX86_64>(initializing: memory)
        front.produceRequest(BlockRequest(operation: .read, id: 1, sectorNumber: 0, segments: []))
        _ = front.pushRequests()
        pages.base.storeBytes(of: UInt32(2), toByteOffset: 8, as: UInt32.self)  // rsp_prod = 2 for 1 request
        #expect(throws: RingError.self) { try front.readResponseProducer() }
        do { let ok = (front.isHalted); #expect(ok) }
        do { let ok = (front.unconsumedResponses() <= 1); #expect(ok) }
    }

    @Test func geometryIsChecked() throws {
        let p = RingPages(pageCount: 1)
        #expect(throws: RingError.self) { try SharedRingMemory(base: p.base, pageCount: 0) }
        #expect(throws: RingError.self) { try SharedRingMemory(base: p.base, pageCount: 17) }
        // A 100-byte area holds no 112-byte entry.
        #expect(throws: RingError.self) { _ = try BackRing<BlockRingX86_64>(attaching: SharedRingMemory(base: p.base, byteCount: 100)) }
        #expect(SharedRingMemory.ringSize(byteCount: 4096, entrySize: 112) == 32)
        #expect(SharedRingMemory.ringSize(byteCount: 4096, entrySize: 108) == 32)
        #expect(SharedRingMemory.ringSize(byteCount: 4096, entrySize: 12) == 256)
        #expect(SharedRingMemory.ringSize(byteCount: 65536, entrySize: 112) == 512)
    }

    @Test func frontInitialisesTheHeaderLikeSharedRingInit() throws {
        let (pages, memory) = page()
        pages.base.initializeMemory(as: UInt8.self, repeating: 0xEE, count: 64)
        _ = try FrontRing<BlockRingX86_64>(initializing: memory)
        let header = Array(UnsafeRawBufferPointer(start: pages.base, count: 64))
        #expect(header == [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0] + [UInt8](repeating: 0, count: 48))
    }
}

/// XSA-391 from the frontend's side: a backend's answer is checked against
/// what is waiting, so a lying id neither frees a slot twice nor one never used.
@Suite struct OutstandingRequestsTests {
    @Test func onlyWaitingIdsAreAccepted() throws {
        var outstanding = OutstandingRequests(capacity: 4)
        outstanding.sent(1)
        outstanding.sent(3)
        #expect(outstanding.count == 2)
        #expect(throws: UnexpectedResponse(id: 0)) { try outstanding.answered(0) }          // never sent
        #expect(throws: UnexpectedResponse(id: 4)) { try outstanding.answered(4) }          // out of range
        #expect(throws: UnexpectedResponse(id: UInt64.max)) { try outstanding.answered(.max) }
        try outstanding.answered(3)
        #expect(throws: UnexpectedResponse(id: 3)) { try outstanding.answered(3) }          // answered twice
        #expect(outstanding.count == 1 && outstanding.isWaiting(1) && !outstanding.isWaiting(3))
        outstanding.sent(3)                                                                  // the slot is reusable
        try outstanding.answered(1)
        try outstanding.answered(3)
        #expect(outstanding.count == 0)
    }
}

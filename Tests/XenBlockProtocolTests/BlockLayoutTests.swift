import Testing
import XenBlockProtocol
import XenProtocolTesting
import XenRing

/// Our blkif layouts against gcc's layout of Debian's libxen-dev headers.
@Suite struct BlockLayoutTests {
    @Test func x86_64LayoutMatchesHeaders() throws {
        let p = try ABIProbe.x86_64.get()
        #expect(p.int("abi.pointer_bits") == 64)
        #expect(p.int("sizeof.blkif_sring_entry") == BlockRingX86_64.entrySize)
        #expect(p.int("sizeof.blkif_request") == BlockRequest.wireSize)
        #expect(p.int("sizeof.blkif_response") == BlockResponse.x86_64Size)
        #expect(p.int("sizeof.blkif_request_segment") == 8)
        // The offsets our accessors use (see BlockRequest).
        let expected: [String: Int] = [
            "offsetof.blkif_request.operation": 0, "offsetof.blkif_request.nr_segments": 1,
            "offsetof.blkif_request.handle": 2, "offsetof.blkif_request.id": 8,
            "offsetof.blkif_request.sector_number": 16, "offsetof.blkif_request.seg": 24,
            "offsetof.blkif_request_segment.gref": 0, "offsetof.blkif_request_segment.first_sect": 4,
            "offsetof.blkif_request_segment.last_sect": 5,
            "offsetof.blkif_request_discard.flag": 1, "offsetof.blkif_request_discard.handle": 2,
            "offsetof.blkif_request_discard.id": 8, "offsetof.blkif_request_discard.sector_number": 16,
            "offsetof.blkif_request_discard.nr_sectors": 24,
            "offsetof.blkif_request_indirect.indirect_op": 1, "offsetof.blkif_request_indirect.nr_segments": 2,
            "offsetof.blkif_request_indirect.id": 8, "offsetof.blkif_request_indirect.sector_number": 16,
            "offsetof.blkif_request_indirect.handle": 24, "offsetof.blkif_request_indirect.indirect_grefs": 28,
            "offsetof.blkif_response.id": 0, "offsetof.blkif_response.operation": 8, "offsetof.blkif_response.status": 10,
        ]
        for (key, value) in expected { #expect(p.int(key) == value, "\(key)") }
        #expect(p.facts["string.XEN_IO_PROTO_ABI_NATIVE"] == BlockProtocolABI.x86_64.rawValue)
    }

    @Test func x86_32LayoutMatchesHeaders() throws {
        let p = try ABIProbe.x86_32.get()
        #expect(p.int("abi.pointer_bits") == 32)
        #expect(p.int("sizeof.blkif_sring_entry") == BlockRingX86_32.entrySize)
        #expect(p.int("sizeof.blkif_response") == BlockResponse.x86_32Size)
        #expect(p.int("offsetof.blkif_request.id") == BlockRingX86_32.Offsets.id)
        #expect(p.int("offsetof.blkif_request.sector_number") == BlockRingX86_32.Offsets.sectorNumber)
        #expect(p.int("offsetof.blkif_request.seg") == BlockRingX86_32.Offsets.segments)
        #expect(p.int("offsetof.blkif_request_discard.nr_sectors") == BlockRingX86_32.Offsets.discardSectorCount)
        #expect(p.int("offsetof.blkif_request_indirect.handle") == BlockRingX86_32.Offsets.indirectHandle)
        #expect(p.int("offsetof.blkif_request_indirect.indirect_grefs") == BlockRingX86_32.Offsets.indirectGrants)
        #expect(p.int("offsetof.blkif_response.status") == 10)
        #expect(p.facts["string.XEN_IO_PROTO_ABI_NATIVE"] == BlockProtocolABI.x86_32.rawValue)
    }

    @Test(arguments: [ABIProbe.Target.x86_64, .x86_32])
    func ringSizesMatchRingH(target: ABIProbe.Target) throws {
        let p = try (target == .x86_64 ? ABIProbe.x86_64 : ABIProbe.x86_32).get()
        let entry = target == .x86_64 ? BlockRingX86_64.entrySize : BlockRingX86_32.entrySize
        for pages in 1...16 {
            #expect(p.int("ringsize.blkif.\(pages)") == Int(SharedRingMemory.ringSize(byteCount: pages * 4096, entrySize: entry)),
                    "\(pages) pages")
        }
        #expect(p.int("ringsize.blkif.1") == 32)
        #expect(p.int("ringsize.blkif.16") == 512)
    }

    @Test func constantsMatchHeaders() throws {
        let p = try ABIProbe.x86_64.get()
        let ops: [(String, BlockOperation)] = [
            ("READ", .read), ("WRITE", .write), ("WRITE_BARRIER", .writeBarrier), ("FLUSH_DISKCACHE", .flushDiskCache),
            ("RESERVED_1", .reserved1), ("DISCARD", .discard), ("INDIRECT", .indirect),
        ]
        for (name, op) in ops { #expect(p.int("const.BLKIF_OP_\(name)") == Int(op.rawValue), "\(name)") }
        #expect(p.int("const.BLKIF_RSP_OKAY") == Int(BlockStatus.okay.rawValue))
        #expect(p.int("const.BLKIF_RSP_ERROR") == Int(BlockStatus.error.rawValue))
        #expect(p.int("const.BLKIF_RSP_EOPNOTSUPP") == Int(BlockStatus.notSupported.rawValue))
        #expect(p.int("const.BLKIF_MAX_SEGMENTS_PER_REQUEST") == BlockLimits.maxSegmentsPerRequest)
        #expect(p.int("const.BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST") == BlockLimits.maxIndirectPagesPerRequest)
        #expect(p.int("const.VDISK_CDROM") == Int(VirtualDiskInfo.cdrom.rawValue))
        #expect(p.int("const.VDISK_REMOVABLE") == Int(VirtualDiskInfo.removable.rawValue))
        #expect(p.int("const.VDISK_READONLY") == Int(VirtualDiskInfo.readOnly.rawValue))
        #expect(p.int("const.BLKIF_DISCARD_SECURE") == Int(BlockLimits.discardSecureFlag))
        #expect(p.facts["string.XEN_IO_PROTO_ABI_X86_32"] == BlockProtocolABI.x86_32.rawValue)
        #expect(p.facts["string.XEN_IO_PROTO_ABI_X86_64"] == BlockProtocolABI.x86_64.rawValue)
    }
}

/// Encoding and decoding against the golden vectors in protocols/vectors,
/// which the C probe must reproduce too.
@Suite struct BlockVectorTests {
    static let write3 = BlockRequest(
        operation: .write, id: 0x1122_3344_5566_7788, handle: 0x0102, sectorNumber: 0x0A_0B0C_0D0E,
        segments: (0..<3).map { BlockSegment(grant: 0x100 + UInt32($0), firstSector: UInt8($0), lastSector: UInt8(7 - $0)) })
    static let discard = BlockRequest(discardID: 42, handle: 7, sectorNumber: 2048, sectorCount: 0x1_2345_6789, secure: true)
    static let indirect = BlockRequest(indirectID: 0xdead_beef_cafe_f00d, operation: .read, handle: 0x51,
                                       sectorNumber: 123_456, segmentCount: 600,
                                       indirectGrants: (0..<8).map { 0x7000 + UInt32($0) })
    static let cases: [(String, BlockRequest)] = [
        ("blkif_request_write3", write3), ("blkif_request_discard_secure", discard), ("blkif_request_indirect_read600", indirect),
    ]

    func encode<L: RingLayout>(_ layout: L.Type, _ request: BlockRequest) -> [UInt8] where L.Request == BlockRequest {
        var slot = [UInt8](repeating: 0, count: L.entrySize)
        slot.withUnsafeMutableBytes { L.encodeRequest(request, into: $0.baseAddress!) }
        return slot
    }

    func decode<L: RingLayout>(_ layout: L.Type, _ bytes: [UInt8]) -> BlockRequest where L.Request == BlockRequest {
        var slot = bytes + [UInt8](repeating: 0, count: L.entrySize - bytes.count)
        return slot.withUnsafeMutableBytes { L.decodeRequest(from: $0.baseAddress!) }
    }

    @Test func goldenVectorsAreWhatTheHeadersProduce() throws {
        let golden = try GoldenVectors("blkif")
        let p64 = try ABIProbe.x86_64.get(), p32 = try ABIProbe.x86_32.get()
        for (name, _) in Self.cases {
            #expect(p64.bytes("vector.\(name)") == golden[name], "\(name)")
            #expect(p32.bytes("vector.\(name)") == golden["\(name)_x86_32"], "\(name)_x86_32")
        }
        #expect(p64.bytes("vector.blkif_response_flush_eopnotsupp") == golden["blkif_response_flush_eopnotsupp"])
    }

    @Test func x86_64EncodingMatchesGoldenVectors() throws {
        let golden = try GoldenVectors("blkif")
        for (name, request) in Self.cases {
            let vector = try #require(golden[name])
            let slot = encode(BlockRingX86_64.self, request)
            #expect(Array(slot.prefix(vector.count)) == vector, "\(name)")
            #expect(slot.dropFirst(vector.count).allSatisfy { $0 == 0 }, "\(name) tail")
            let back = decode(BlockRingX86_64.self, vector)
            #expect(back.x86_64Bytes == request.x86_64Bytes, "\(name) round trip")
        }
    }

    @Test func x86_32ConvertsToTheSameRequests() throws {
        let golden = try GoldenVectors("blkif")
        for (name, request) in Self.cases {
            let vector = try #require(golden["\(name)_x86_32"])
            let decoded = decode(BlockRingX86_32.self, vector)
            #expect(decoded.x86_64Bytes == request.x86_64Bytes, "\(name) decodes to the x86_64 request")
            let slot = encode(BlockRingX86_32.self, request)
            #expect(Array(slot.prefix(vector.count)) == vector, "\(name) encodes to the i386 bytes")
        }
    }

    @Test func fieldAccessorsReadTheRightBytes() {
        let w = Self.write3
        #expect(w.operation == .write && w.segmentCount == 3 && w.handle == 0x0102)
        #expect(w.id == 0x1122_3344_5566_7788 && w.sectorNumber == 0x0A_0B0C_0D0E)
        #expect(w.segment(2) == BlockSegment(grant: 0x102, firstSector: 2, lastSector: 5))
        let d = Self.discard
        #expect(d.operation == .discard && d.discardFlags == 1 && d.discardSectorCount == 0x1_2345_6789 && d.id == 42)
        let i = Self.indirect
        #expect(i.operation == .indirect && i.indirectOperation == .read && i.indirectSegmentCount == 600)
        #expect(i.indirectHandle == 0x51 && (0..<8).map(i.indirectGrant) == (0..<8).map { 0x7000 + UInt32($0) })
    }

    @Test func responsesEncodeWithZeroPadding() throws {
        let golden = try GoldenVectors("blkif")
        let vector = try #require(golden["blkif_response_flush_eopnotsupp"])
        let response = BlockResponse(id: 0x0102_0304_0506_0708, operation: .flushDiskCache, status: .notSupported)
        var slot = [UInt8](repeating: 0, count: 16)
        slot.withUnsafeMutableBytes { BlockRingX86_64.encodeResponse(response, into: $0.baseAddress!) }
        #expect(slot == vector)
        let decoded = slot.withUnsafeBytes { BlockRingX86_64.decodeResponse(from: $0.baseAddress!) }
        #expect(decoded == response)
    }

    @Test func segmentRangeRule() {
        #expect(BlockSegment(grant: 1, firstSector: 0, lastSector: 7).sectorCount == 8)
        #expect(BlockSegment(grant: 1, firstSector: 3, lastSector: 3).sectorCount == 1)
        #expect(BlockSegment(grant: 1, firstSector: 4, lastSector: 3).sectorCount == nil)
        #expect(BlockSegment(grant: 1, firstSector: 0, lastSector: 8).sectorCount == nil)
    }

    @Test func protocolKey() throws {
        #expect(try BlockProtocolABI.parse(xenstoreValue: "x86_32-abi") == .x86_32)
        #expect(try BlockProtocolABI.parse(xenstoreValue: "x86_64-abi") == .x86_64)
        #expect(try BlockProtocolABI.parse(xenstoreValue: nil) == .x86_32)
        #expect(throws: BlockProtocolError.unknownProtocol("arm-abi")) { try BlockProtocolABI.parse(xenstoreValue: "arm-abi") }
        #expect(BlockProtocolError.unknownProtocol("x").description.contains("\"x\""))
    }
}

/// The backend's per-operation copy out of a shared slot.
@Suite struct BlockSharedCopyTests {
    func copy(_ bytes: [UInt8]) -> BlockRequest {
        // An exact 112-byte allocation: the copy may not read past it.
        let slot = UnsafeMutableRawPointer.allocate(byteCount: 112, alignment: 8)
        defer { slot.deallocate() }
        slot.copyMemory(from: bytes, byteCount: 112)
        return BlockRingX86_64.copyRequest(fromShared: slot)
    }

    @Test func takesOnlyTheFieldsTheOperationHas() throws {
        var bytes = BlockVectorTests.write3.x86_64Bytes
        for i in 48..<112 { bytes[i] = 0xEE }  // stale data after segment 2
        let r = copy(bytes)
        #expect(r.segmentCount == 3 && r.segment(2) == BlockVectorTests.write3.segment(2))
        #expect((3..<11).allSatisfy { r.segment($0) == BlockSegment(wireWord: 0) }, "segments past nr_segments are not copied")
        #expect(r.x86_64Bytes == BlockVectorTests.write3.x86_64Bytes)

        var discard = BlockVectorTests.discard.x86_64Bytes
        for i in 32..<112 { discard[i] = 0xEE }
        #expect(copy(discard).x86_64Bytes == BlockVectorTests.discard.x86_64Bytes)

        var indirect = BlockVectorTests.indirect.x86_64Bytes
        for i in 64..<112 { indirect[i] = 0xEE }
        #expect(copy(indirect).x86_64Bytes == BlockVectorTests.indirect.x86_64Bytes)
    }

    @Test func hostileSegmentCountStaysInsideTheSlot() {
        var bytes = [UInt8](repeating: 0x5A, count: 112)
        bytes[0] = BlockOperation.write.rawValue
        bytes[1] = 255  // nr_segments far beyond 11
        let r = copy(bytes)
        #expect(r.segmentCount == 255, "kept for validation to reject")
        #expect(r.segment(10).grant == 0x5A5A_5A5A, "all 11 segments copied, none beyond")
        #expect(BlockRingX86_64.wireLength(of: r) == 112)
    }

    @Test func unknownOperationKeepsItsID() {
        var bytes = [UInt8](repeating: 0x77, count: 112)
        bytes[0] = 200
        bytes[1] = 0
        let r = copy(bytes)
        #expect(r.operation == BlockOperation(rawValue: 200))
        #expect(r.id == 0x7777_7777_7777_7777, "the id to answer EOPNOTSUPP with")
    }
}

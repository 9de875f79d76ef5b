#if canImport(Glibc)
import Glibc
#endif
import Testing
import XenBlockBackend
import XenBlockProtocol
import XenRing

/// The ring record a restarted backend resumes from: what it keeps, what
/// it hands back as owed, and what it refuses.
@Suite struct BlockRingRecordTests {
    let identity = BlockRingRecord.identity(frontend: 7, abi: .x86_64, ringRefs: [8, 9], remotePort: 12)

    func path() -> String { "/tmp/xenback-record-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).ring" }

    func request(id: UInt64, sector: UInt64) -> BlockRequest {
        BlockRequest(operation: .write, id: id, sectorNumber: sector, segment: BlockSegment(grant: UInt32(id), firstSector: 0, lastSector: 7))
    }

    @Test func owedIsWhatWasTakenOrAnsweredButNotPublished() throws {
        let file = path()
        defer { unlink(file) }
        do {
            let record = try BlockRingRecord(creatingAt: file, slotCount: 32, identity: identity)
            // Ring indices 10...14 taken; 11 answered at response 10 and published;
            // 12 answered at response 11, not yet published; 10, 13, 14 in flight.
            var slots: [Int] = []
            for i in 10...14 { slots.append(record.recordTaken(request(id: UInt64(i), sector: UInt64(i * 8)), ringIndex: RingIndex(UInt32(i)))) }
            record.recordAnswered(slots[1], responseIndex: RingIndex(10))
            record.release(slots[1])
            record.recordAnswered(slots[2], responseIndex: RingIndex(11))
            // The process dies here: the record is all that is left.
        }
        let resumed = try BlockRingRecord(resumingAt: file, slotCount: 32, identity: identity)
        let owed = resumed.owed(published: RingIndex(11))
        #expect(owed.map(\.ringIndex.rawValue) == [10, 12, 13, 14], "in ring order, the unpublished answer included")
        #expect(owed.map(\.request.id) == [10, 12, 13, 14])
        #expect(owed.allSatisfy { $0.request.sectorNumber == $0.request.id * 8 && $0.request.segment(0).grant == UInt32($0.request.id) },
                "each request comes back whole")
        #expect(resumed.hasRoom)
    }

    @Test func answersThePageShowsAreNotOwed() throws {
        let file = path()
        defer { unlink(file) }
        do {
            let record = try BlockRingRecord(creatingAt: file, slotCount: 32, identity: identity)
            let a = record.recordTaken(request(id: 1, sector: 0), ringIndex: RingIndex(0))
            let b = record.recordTaken(request(id: 2, sector: 8), ringIndex: RingIndex(1))
            record.recordAnswered(a, responseIndex: RingIndex(0))
            record.recordAnswered(b, responseIndex: RingIndex(1))
            // Died after publishing rsp_prod = 2, before letting the slots go.
        }
        let resumed = try BlockRingRecord(resumingAt: file, slotCount: 32, identity: identity)
        #expect(resumed.owed(published: RingIndex(2)).isEmpty)
    }

    @Test func aTornSlotIsNotOwed() throws {
        let file = path()
        defer { unlink(file) }
        do {
            let record = try BlockRingRecord(creatingAt: file, slotCount: 32, identity: identity)
            _ = record.recordTaken(request(id: 1, sector: 0), ringIndex: RingIndex(0))
            _ = record.recordTaken(request(id: 2, sector: 8), ringIndex: RingIndex(1))
        }
        // Scribble over the second request's bytes (slot 1: slots are handed
        // out lowest first), as a torn write would leave them.
        let fd = open(file, O_RDWR)
        var junk = [UInt8](repeating: 0xA5, count: 16)
        #expect(pwrite(fd, &junk, 16, off_t(64 + 128 * 1 + 40)) == 16)
        close(fd)
        let resumed = try BlockRingRecord(resumingAt: file, slotCount: 32, identity: identity)
        let owed = resumed.owed(published: RingIndex(0))
        #expect(owed.map(\.request.id) == [1], "the intact slot is owed, the torn one dropped")
    }

    @Test func aRecordOfAnotherRingIsRefused() throws {
        let file = path()
        defer { unlink(file) }
        _ = try BlockRingRecord(creatingAt: file, slotCount: 32, identity: identity)
        let other = BlockRingRecord.identity(frontend: 7, abi: .x86_64, ringRefs: [8, 10], remotePort: 12)
        #expect(throws: BlockRingRecordError.self) { try BlockRingRecord(resumingAt: file, slotCount: 32, identity: other) }
        #expect(throws: BlockRingRecordError.self) { try BlockRingRecord(resumingAt: file, slotCount: 64, identity: identity) }
        #expect(throws: BlockRingRecordError.self) { try BlockRingRecord(resumingAt: file + ".missing", slotCount: 32, identity: identity) }
        // A future version's record fails loudly, naming the version.
        let fd = open(file, O_RDWR)
        var version: UInt32 = 99
        _ = pwrite(fd, &version, 4, 4)
        close(fd)
        do {
            _ = try BlockRingRecord(resumingAt: file, slotCount: 32, identity: identity)
            Issue.record("a version 99 record was accepted")
        } catch {
            #expect("\(error)".contains("version 99"), "\(error)")
        }
    }
}

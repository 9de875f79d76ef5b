import XenDisk
import XenSystem
import XenBlockBackend
import XenBlockProtocol
import XenPlatform
import XenRing
import XenSim
#if canImport(Glibc)
import Glibc
#endif

/// A hostile frontend against the real block ring worker over the in-process
/// sim and a memory disk. The fuzzer's bytes pick the ABI, ring size and
/// whether persistent grants are on, then script what the guest does:
/// raw request slots, well-formed requests on a small grant pool, indirect
/// page contents, hostile grant-table entries, arbitrary producer indices,
/// and the backend's passes. After every pass each new response must have
/// its padding zeroed and a status blkif knows; at the end, once the worker
/// is gone, no grant may still be mapped (persistent ones included).
public enum BlockRequestFuzzer {
    /// A 1 MiB disk in a memfd, shared by all runs (its contents do not matter).
    static let disk: FileBacking? = {
        guard let fd = try? Syscall.memfdCreate("xenback-fuzz-disk").get(), ftruncate(fd, 1 << 20) == 0 else { return nil }
        return try? FileBacking(path: "/proc/self/fd/\(fd)")
    }()

    static let dataFrames: Range<UInt32> = 8..<40
    static let indirectFrames: Range<UInt32> = 40..<44

    public static func run(_ data: UnsafeRawBufferPointer) {
        guard let disk else { return }
        var input = FuzzInput(data)
        let flags = input.byte()
        let pages = 1 << Int((flags >> 2) % 3)  // 1, 2 or 4 ring pages
        if flags & 1 == 0 {
            exercise(BlockRingX86_64.self, pages: pages, persistent: flags & 2 != 0, disk: disk, input: &input)
        } else {
            exercise(BlockRingX86_32.self, pages: pages, persistent: flags & 2 != 0, disk: disk, input: &input)
        }
    }

    static func exercise<L: RingLayout>(_: L.Type, pages: Int, persistent: Bool, disk: FileBacking, input: inout FuzzInput)
    where L.Request == BlockRequest, L.Response == BlockResponse {
        let hv = SimHypervisor()
        guard (try? hv.createDomain(.dom0, pages: 1)) != nil,
              let guest = try? hv.createDomain(DomainID(3), pages: 48, grantEntries: 256),
              let memory = try? SharedRingMemory(base: guest.page(0), pageCount: pages),
              let ringRefs = try? (0..<pages).map({ try guest.grantAccess(to: .dom0, frame: UInt32($0), readOnly: false) }),
              let events = try? guest.openEventChannels() else { return }
        guard var front = try? FrontRing<L>(initializing: memory) else { return }
        let port = events.allocateUnbound(remoteDomain: .dom0)
        // A pool of data grants (a few read-only) and the indirect pages' grants.
        var pool: [UInt32] = []
        for f in dataFrames { if let r = try? guest.grantAccess(to: .dom0, frame: f, readOnly: f % 7 == 0) { pool.append(r.rawValue) } }
        for f in indirectFrames { if let r = try? guest.grantAccess(to: .dom0, frame: f, readOnly: true) { pool.append(r.rawValue) } }
        guard !pool.isEmpty else { return }
        do {
            var geometry = disk.geometry
            geometry.maximumIndirectSegments = 256
            // A small persistent table, so eviction and the copy fallback run too.
            let worker = try BlockRingWorker<SimPlatform, L>(
                platform: hv.platform(for: .dom0), frontend: guest.id, ringRefs: ringRefs, remotePort: port,
                backing: disk, geometry: geometry, engine: .sync, persistentGrants: persistent ? 6 : 0)
            let ring = guest.page(0)
            let size = front.size
            var steps = 0
            script: while !input.isAtEnd && steps < 2_000 {
                steps += 1
                switch input.byte() % 7 {
                case 0:  // any bytes in the next request slot, then publish it
                    if front.isFull { continue }
                    front.produceRequest(BlockRequest(operation: .read, id: 0, sectorNumber: 0, segments: []))
                    let slot = Int((front.requestProducerPrivate.rawValue &- 1) & (size - 1))
                    let raw = input.take(L.entrySize)
                    (ring + 64 + slot * L.entrySize).copyMemory(from: raw.baseAddress ?? UnsafeRawPointer(ring), byteCount: raw.count)
                    _ = front.pushRequests()
                case 1:  // a plausible request on the grant pool
                    if front.isFull { continue }
                    front.produceRequest(plausibleRequest(&input, pool: pool))
                    _ = front.pushRequests()
                case 2:  // indirect page contents
                    let page = guest.page(indirectFrames.lowerBound + UInt32(input.byte()) % UInt32(indirectFrames.count))
                    let offset = Int(input.u16()) % 4096
                    let raw = input.take(Int(input.byte()))
                    (page + offset).copyMemory(from: raw.baseAddress ?? UnsafeRawPointer(page), byteCount: min(raw.count, 4096 - offset))
                case 3:  // a hostile grant entry
                    let ref = pool[Int(input.byte()) % pool.count]
                    guest.writeEntry(ref, domain: input.byte() & 1 == 0 ? 0 : UInt16(input.byte()),
                                     frame: UInt32(input.u16()) % 64, flags: input.u16())
                case 4:  // an arbitrary producer index
                    ring.storeBytes(of: input.u32(), as: UInt32.self)
                case 5:  // req_event / rsp_event
                    ring.storeBytes(of: input.u32(), toByteOffset: input.byte() & 1 == 0 ? 4 : 12, as: UInt32.self)
                default:  // a backend pass, then the frontend takes the answers
                    if !pass(worker, ring: ring, size: size) { break script }
                    if let producer = try? front.readResponseProducer() {
                        while front.nextResponse(before: producer) != nil {}
                    }
                }
            }
            _ = pass(worker, ring: ring, size: size)
            worker.drain()
        } catch {
            return
        }
        // The worker is gone: every mapping, persistent ones included, is too.
        precondition(hv.mappingCount == 0, "a grant stayed mapped after the ring worker went")
    }

    /// One processRing; checks the responses it wrote. False once the ring halted.
    static func pass<L: RingLayout>(_ worker: BlockRingWorker<SimPlatform, L>, ring: UnsafeMutableRawPointer, size: UInt32) -> Bool
    where L.Request == BlockRequest, L.Response == BlockResponse {
        let before = ring.load(fromByteOffset: 8, as: UInt32.self)  // rsp_prod
        let halted: Bool
        do { try worker.processRing(); halted = false } catch { halted = true }
        let after = ring.load(fromByteOffset: 8, as: UInt32.self)
        precondition(after &- before <= size, "more responses than the ring holds in one pass")
        var i = before
        while i != after {
            let slot = ring + 64 + Int(i & (size - 1)) * L.entrySize
            // Response layout (both ABIs): id u64 @0, operation u8 @8, status i16 @10.
            let status = slot.loadUnaligned(fromByteOffset: 10, as: Int16.self)
            precondition(status == 0 || status == -1 || status == -2, "status \(status) is not blkif's")
            precondition(slot.load(fromByteOffset: 9, as: UInt8.self) == 0, "response padding byte 9 not zeroed")
            if L.responseSize >= 16 {  // x86_32 responses are 12 bytes: the rest of the slot is not theirs
                precondition(slot.loadUnaligned(fromByteOffset: 12, as: UInt32.self) == 0, "response padding 12...15 not zeroed")
            }
            i &+= 1
        }
        return !halted
    }

    static func plausibleRequest(_ input: inout FuzzInput, pool: [UInt32]) -> BlockRequest {
        let id = UInt64(input.u16())
        let sector = UInt64(input.u16()) % 2100  // around and past the 2048-sector end
        func segment() -> BlockSegment {
            let first = input.byte() % 9, last = input.byte() % 9
            return BlockSegment(grant: pool[Int(input.byte()) % pool.count], firstSector: first, lastSector: last)
        }
        switch input.byte() % 6 {
        case 0: return BlockRequest(operation: .read, id: id, sectorNumber: sector, segments: (0..<Int(input.byte() % 12)).map { _ in segment() })
        case 1: return BlockRequest(operation: .write, id: id, sectorNumber: sector, segments: (0..<Int(input.byte() % 12)).map { _ in segment() })
        case 2: return BlockRequest(operation: .writeBarrier, id: id, sectorNumber: sector, segment: segment())
        case 3: return BlockRequest(operation: .flushDiskCache, id: id, sectorNumber: 0, segments: [])
        case 4: return BlockRequest(discardID: id, sectorNumber: sector, sectorCount: UInt64(input.u16()), secure: input.byte() & 1 == 1)
        default:
            let grants = (0..<Int(input.byte() % 3)).map { _ in pool[pool.count - 1 - Int(input.byte()) % 4] }
            return BlockRequest(indirectID: id, operation: input.byte() & 1 == 0 ? .read : .write, sectorNumber: sector,
                                segmentCount: UInt16(input.u16() % 600), indirectGrants: grants)
        }
    }
}

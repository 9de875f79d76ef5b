#if canImport(Glibc)
import Glibc
#endif
import Testing
import XenBlockBackend
import XenBlockFrontend
import XenBlockProtocol
import XenPlatform
import XenProtocolTesting
import XenSim
import XenStore
import XenToolstack

/// Serves `path` as a disk and runs `body` with a connected frontend.
func withServedDisk(_ path: String, _ body: (BlockFrontend<BlockRingX86_64>, BlockBackendDevice<SimPlatform>) throws -> Void) async throws {
    let host = try await SimHost(guestPages: 512, grantEntries: 1024)
    let disk = try await ToolstackDisk.create(xenstore: host.backendStore, frontend: host.guest.id, target: path)
    let (device, task) = host.startBackend(disk)
    let front = try await host.connect(disk, BlockRingX86_64.self, options: BlockFrontendOptions(slotsPerQueue: 4, segmentsPerRequest: 16))
    let outcome = Result { try body(front, device) }
    #expect(try await front.close())
    task.cancel()
    try await task.value
    await host.shutdown()
    try outcome.get()
}

func readDevice(_ path: String, offset: Int, count: Int) -> [UInt8] {
    let fd = open(path, O_RDONLY)
    defer { close(fd) }
    var b = [UInt8](repeating: 0, count: count)
    _ = pread(fd, &b, count, off_t(offset))
    return b
}

@Suite(.serialized) struct BlockDeviceBackingTests {
    /// A loop device: size, sector sizes and discard come from the device
    /// itself; 4 KiB logical sectors follow the 2024 rule (sector numbers
    /// stay in 512-byte units, I/O must be 4 KiB aligned).
    @Test(.enabled(if: BlockDevices.loopAvailable, "needs root and loop devices"), arguments: [512, 4096])
    func loopDevice(sectorSize: Int) async throws {
        let image = TempDisk(megabytes: 16)
        let loop = try runCommand("losetup --find --show --sector-size \(sectorSize) \(image.path)")
        defer { _ = runShell("losetup -d \(loop)") }
        try await withServedDisk(loop) { front, _ in
            #expect(front.disk.sectorSize == sectorSize && front.disk.sectors == 16 * 2048)
            #expect(front.disk.discard && front.disk.discardGranularity >= sectorSize)
            #expect(!front.disk.secureDiscard, "loop devices cannot erase securely, and we say so")
            let q = front.queues[0]
            let data = pattern(16 * 4096, seed: sectorSize)
            #expect(try q.write(sector: 2048, data) == .okay)
            #expect(try q.flush() == .okay)
            let onDevice = readDevice(loop, offset: 2048 * 512, count: data.count) == data
            let inImage = image.read(2048 * 512, data.count) == data
            #expect(onDevice && inImage, "the write is on the device and in its backing file")
            if sectorSize == 4096 {
                let misaligned = BlockRequest(operation: .read, id: 1, sectorNumber: 2049,
                                              segment: BlockSegment(grant: q.dataGrant(slot: 0, page: 0).rawValue, firstSector: 0, lastSector: 7))
                #expect(try q.raw(misaligned).status == .error, "a 4 KiB-sector device refuses 512-byte aligned I/O")
            }
            let blocks = image.allocatedBlocks
            #expect(try q.discard(sector: 2048, sectorCount: 128) == .okay, "BLKDISCARD")
            #expect(image.allocatedBlocks < blocks, "the loop device punched the backing file")
            #expect(try q.discard(sector: 2048, sectorCount: 8, secure: true) == .notSupported)
            let (status, back) = try q.read(sector: 2048, byteCount: 16 * 4096)
            #expect(status == .okay && back.allSatisfy { $0 == 0 }, "discarded sectors read as zeros")
        }
    }

    /// An LVM logical volume on a loop device, made and removed here.
    @Test(.enabled(if: BlockDevices.lvmAvailable, "needs device-mapper in the kernel and lvm2"))
    func lvmLogicalVolume() async throws {
        let image = TempDisk(megabytes: 64)
        let loop = try runCommand("losetup --find --show \(image.path)")
        let vg = "xenbacktest\(getpid())"
        let c = BlockDevices.lvmConfig
        defer {
            _ = runShell("lvremove -q -y \(c) \(vg) ; vgremove -q -y \(c) \(vg) ; pvremove -q -y \(c) \(loop) ; losetup -d \(loop)")
        }
        try runCommand("pvcreate -q \(c) \(loop)")
        try runCommand("vgcreate -q \(c) \(vg) \(loop)")
        try runCommand("lvcreate -q -y \(c) -L 16M -n disk0 \(vg)")
        let lv = "/dev/\(vg)/disk0"
        try await withServedDisk(lv) { front, _ in
            #expect(front.disk.sectors == 16 * 2048)
            let data = pattern(11 * 4096, seed: 42)
            let q = front.queues[0]
            #expect(try q.write(sector: 800, data) == .okay)
            #expect(try q.flush() == .okay)
            let onVolume = readDevice(lv, offset: 800 * 512, count: data.count) == data
            #expect(onVolume, "the write is on the logical volume")
            let other = pattern(4096, seed: 7)
            let fd = open(lv, O_WRONLY)
            _ = pwrite(fd, other, other.count, 4096 * 100)
            fsync(fd)
            close(fd)
            let (status, back) = try q.read(sector: 800, byteCount: 4096)
            #expect(status == .okay && back == Array(data[0..<4096]))
            let (s3, fromVolume) = try q.read(sector: 4096 * 100 / 512, byteCount: 4096)
            #expect(s3 == .okay && fromVolume == other, "what was written to the volume directly reads back through the ring")
        }
    }
}

@Suite struct BlockBackingErrorTests {
    static var canMount: Bool { getuid() == 0 }

    /// A sparse image on a full file system: writes that need new blocks get
    /// BLKIF_RSP_ERROR (ENOSPC), each for that request only; reads, writes to
    /// blocks that exist and flushes go on; once there is room again the
    /// same device takes every write.
    @Test(.enabled(if: canMount, "needs root to mount a small tmpfs"))
    func fullFileSystemFailsOnlyTheWritesThatNeedSpace() async throws {
        var template = Array("/tmp/xenback-full-XXXXXX".utf8CString)
        let dir = String(cString: mkdtemp(&template))
        try runCommand("mount -t tmpfs -o size=256k xenback-full \(dir)")
        defer { _ = runShell("umount \(dir); rmdir \(dir)") }
        let path = dir + "/disk.img"
        let fd = open(path, O_CREAT | O_RDWR, 0o600)
        ftruncate(fd, 8 << 20)
        // 64 KiB of real blocks at the start; the rest is a hole.
        let head = [UInt8](repeating: 0xAB, count: 65536)
        _ = pwrite(fd, head, head.count, 0)
        close(fd)
        try await withServedDisk(path) { front, device in
            let q = front.queues[0]
            var refused: [Int] = []
            for i in 0..<64 {
                // 64 × 16 KiB into the hole: the file system has room for about 12 of them.
                if try q.write(sector: 1024 + UInt64(i) * 32, pattern(16384, seed: i)) == .error { refused.append(i) }
            }
            #expect(refused.count > 0, "ENOSPC surfaced as errors")
            #expect(refused.count < 64, "until the space ran out writes succeeded")
            #expect(try q.write(sector: 0, pattern(4096, seed: 9)) == .okay, "writing blocks that exist still works")
            let (status, data) = try q.read(sector: 0, byteCount: 4096)
            #expect(status == .okay && data == pattern(4096, seed: 9))
            #expect(try q.flush() == .okay)
            #expect(device.statistics[.errors] == UInt64(refused.count))
            // The fault clears (the file system grows): the refused writes now
            // succeed, and every block written reads back.
            try runCommand("mount -o remount,size=16m \(dir)")
            for i in refused {
                #expect(try q.write(sector: 1024 + UInt64(i) * 32, pattern(16384, seed: i)) == .okay, "write \(i) after the space came back")
            }
            #expect(try q.flush() == .okay)
            for i in 0..<64 {
                let (status, back) = try q.read(sector: 1024 + UInt64(i) * 32, byteCount: 16384)
                #expect(status == .okay && back == pattern(16384, seed: i), "block \(i)")
            }
        }
    }
}

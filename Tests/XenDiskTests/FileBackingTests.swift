#if canImport(Glibc)
import Glibc
#endif
import CXenShims
import Testing
import XenDisk
import XenProtocolTesting

func fileStat(_ path: String) -> stat {
    var st = stat()
    _ = stat(path, &st)
    return st
}

@Suite struct FileBackingTests {
    /// A regular file: its size in 512-byte sectors, 512-byte logical
    /// sectors, the file system's block as the physical sector and the
    /// discard granularity (holes are punched in whole blocks).
    @Test func aFilesGeometry() throws {
        let image = TempDisk(megabytes: 3)
        let backing = try FileBacking(path: image.path)
        let blockSize = Int(fileStat(image.path).st_blksize)
        #expect(backing.geometry == {
            var g = DiskGeometry(sectors: 3 * 2048, logicalSectorSize: 512, physicalSectorSize: max(512, blockSize), discard: true)
            g.discardGranularity = blockSize
            return g
        }())
        #expect(!backing.isBlockDevice && !backing.isDirect && backing.path == image.path)
        #expect(fcntl(backing.fd, F_GETFL) & O_ACCMODE == O_RDWR)
        #expect(fcntl(backing.fd, F_GETFD) & FD_CLOEXEC != 0, "not inherited by hotplug scripts")
    }

    /// Read-only: opened O_RDONLY (a write fails in the kernel, whatever the
    /// backend does), advertised read-only, no discard.
    @Test func readOnly() throws {
        let image = TempDisk(megabytes: 1)
        let backing = try FileBacking(path: image.path, readOnly: true)
        #expect(backing.geometry.readOnly && !backing.geometry.discard)
        var byte: UInt8 = 1
        #expect(pwrite(backing.fd, &byte, 1, 0) == -1 && errno == EBADF)
        #expect(throws: BackingError.io(operation: "discard \(image.path)", errno: EBADF)) {
            try backing.discard(offset: 0, count: 4096, secure: false)
        }
    }

    /// With `direct`, O_DIRECT where a sector-aligned direct read works,
    /// and what `isDirect` says is what the descriptor has.
    @Test func directIOIsWhatTheDescriptorSays() throws {
        let image = TempDisk(megabytes: 1)
        let direct = try FileBacking(path: image.path, direct: true)
        #expect(direct.isDirect == (fcntl(direct.fd, F_GETFL) & CXenShims_O_DIRECT() != 0))
        let buffered = try FileBacking(path: image.path)
        #expect(fcntl(buffered.fd, F_GETFL) & CXenShims_O_DIRECT() == 0)
        // ext4, xfs and btrfs take direct I/O; tmpfs did not before Linux 6.6.
        let fileSystem = runShell("stat -f -c %T \(image.path)").1
        if ["ext2/ext3", "xfs", "btrfs"].contains(where: fileSystem.hasPrefix) { #expect(direct.isDirect, "\(fileSystem)") }
    }

    /// Discard punches a hole: the range reads back as zeros and gives its
    /// blocks back to the file system; the rest of the file is untouched.
    @Test func discardPunchesAHole() throws {
        let image = TempDisk(megabytes: 2)
        let data = pattern(2 << 20, seed: 7)
        image.write(0, data)
        let backing = try FileBacking(path: image.path)
        let before = image.allocatedBlocks
        try backing.discard(offset: 1 << 20, count: 1 << 20, secure: false)
        #expect(image.read(1 << 20, 1 << 20).allSatisfy { $0 == 0 })
        #expect(image.read(0, 1 << 20) == Array(data[..<(1 << 20)]))
        #expect(image.allocatedBlocks <= before - (1 << 20) / 512 + 8, "about 1 MiB given back: \(before) → \(image.allocatedBlocks) blocks")
        #expect(fileStat(image.path).st_size == 2 << 20, "the size stays")
    }

    /// What cannot be a disk is refused with its reason.
    @Test func whatIsNotADisk() throws {
        let missing = "/nonexistent/xenback-\(getpid()).img"
        #expect(throws: BackingError.open(path: missing, errno: ENOENT)) { _ = try FileBacking(path: missing) }
        #expect(throws: BackingError.notADisk(path: "/dev/null")) { _ = try FileBacking(path: "/dev/null") }
        #expect(throws: BackingError.open(path: "/tmp", errno: EISDIR)) { _ = try FileBacking(path: "/tmp") }
        #expect(throws: BackingError.notADisk(path: "/tmp")) { _ = try FileBacking(path: "/tmp", readOnly: true) }
        #expect("\(BackingError.open(path: missing, errno: ENOENT))" == "cannot open \(missing): No such file or directory")
    }

    /// sysfs: the queue directory of a device number, split the way glibc
    /// encodes major and minor (Linux's 12-bit majors and 20-bit minors), and numbers read
    /// from sysfs-style files.
    @Test func sysfsLookups() throws {
        func makedev(_ major: UInt64, _ minor: UInt64) -> UInt64 {
            (major & 0xFFFF_F000) << 32 | (major & 0xFFF) << 8 | (minor & 0xFFFF_FF00) << 12 | (minor & 0xFF)
        }
        #expect(FileBacking.sysfsQueue(device: makedev(8, 16)) == "/sys/dev/block/8:16/queue/")
        #expect(FileBacking.sysfsQueue(device: makedev(259, 300)) == "/sys/dev/block/259:300/queue/")
        #expect(FileBacking.sysfsQueue(device: makedev(259, (1 << 20) - 1)) == "/sys/dev/block/259:1048575/queue/", "Linux's largest minor")
        #expect(FileBacking.sysfsQueue(device: makedev(4095, 256)) == "/sys/dev/block/4095:256/queue/", "and largest major")
        let path = "/tmp/xenback-sysfs-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { unlink(path) }
        for (text, value) in [("4096\n", 4096), ("0\n", 0), ("512", 512), ("none\n", nil), ("", nil)] as [(String, Int?)] {
            #expect(runShell("printf '\(text.replacingNewlines)' > \(path)").0 == 0)
            #expect(FileBacking.sysfsNumber(path) == value, "\(text)")
        }
        #expect(FileBacking.sysfsNumber(path + "-missing") == nil)
    }

    /// A loop device with 4 KiB sectors: size and sector sizes come from the
    /// device (compared with blockdev's), the queue directory is the one
    /// sysfs names for it, and discard reaches the device (BLKDISCARD).
    @Test(.enabled(if: BlockDevices.loopAvailable, "needs root and loop devices"))
    func aLoopDevice() throws {
        let image = TempDisk(megabytes: 8)
        let loop = try runCommand("losetup --find --show --sector-size 4096 \(image.path)")
        defer { _ = runShell("losetup -d \(loop)") }
        let backing = try FileBacking(path: loop)
        #expect(backing.isBlockDevice)
        #expect(backing.geometry.logicalSectorSize == Int(try runCommand("blockdev --getss \(loop)")))
        #expect(backing.geometry.physicalSectorSize == Int(try runCommand("blockdev --getpbsz \(loop)")))
        #expect(backing.geometry.sectors == UInt64(try runCommand("blockdev --getsize64 \(loop)"))! / 512)
        #expect(backing.geometry.logicalSectorSize == 4096 && backing.geometry.sectors == 8 * 2048)
        let name = String(loop.split(separator: "/").last!)
        let numbers = try runCommand("cat /sys/class/block/\(name)/dev")
        let queue = FileBacking.sysfsQueue(device: UInt64(fileStat(loop).st_rdev))
        #expect(queue == "/sys/dev/block/\(numbers)/queue/")
        let discardMax = Int(try runCommand("cat \(queue)discard_max_bytes")) ?? 0
        #expect(backing.geometry.discard == (discardMax > 0))
        if backing.geometry.discard {
            let data = pattern(1 << 20, seed: 3)
            #expect(pwrite(backing.fd, data, data.count, 0) == data.count && fsync(backing.fd) == 0)
            try backing.discard(offset: 0, count: 1 << 20, secure: false)
            var back = [UInt8](repeating: 0xFF, count: 1 << 20)
            #expect(pread(backing.fd, &back, back.count, 0) == back.count)
            #expect(back.allSatisfy { $0 == 0 }, "discarded blocks of a loop device read as zeros")
        }
        let readOnly = try FileBacking(path: loop, readOnly: true)
        #expect(readOnly.geometry.readOnly && !readOnly.geometry.discard)
    }
}

extension String {
    /// For printf: newlines as \n.
    var replacingNewlines: String { split(separator: "\n", omittingEmptySubsequences: false).joined(separator: "\\n") }
}

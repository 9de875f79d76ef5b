import Testing
import XenDisk
import XenSystem
#if canImport(Glibc)
import Glibc
#endif

/// Descriptors that release themselves: dropping closes, `take` hands over,
/// and an initialiser that throws after opening leaves nothing open.
@Suite struct OwnedDescriptorTests {
    /// A descriptor numbered far above what the rest of this (parallel) test
    /// process holds: the kernel hands out the lowest free number, so no
    /// other test's open can reuse it between our close and our check.
    static func highDescriptor() throws -> Int32 {
        let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
        try #require(fd >= 0)
        defer { close(fd) }
        let high = fcntl(fd, F_DUPFD_CLOEXEC, 900)
        try #require(high >= 900, "errno \(errno)")
        return high
    }

    static func isOpen(_ fd: Int32) -> Bool {
        if fcntl(fd, F_GETFD) != -1 { return true }
        #expect(errno == EBADF)
        return false
    }

    @Test func droppingClosesTheDescriptor() throws {
        let raw = try Self.highDescriptor()
        do {
            let owned = OwnedDescriptor(adopting: raw)
            #expect(Self.isOpen(owned.raw))
        }
        #expect(!Self.isOpen(raw), "closed when the owner's scope ended")
    }

    @Test func takeGivesTheDescriptorUpWithoutClosing() throws {
        let raw = try Self.highDescriptor()
        let owned = OwnedDescriptor(adopting: raw)
        let taken = owned.take()
        #expect(taken == raw)
        #expect(Self.isOpen(raw), "take does not close")
        close(raw)
    }

    @Test func aGroupClosesWhatItStillHolds() throws {
        let a = try Self.highDescriptor(), b = try Self.highDescriptor(), c = try Self.highDescriptor()
        let handedOut: Int32
        do {
            var group = OwnedDescriptors(adopting: [a, b])
            group.append(OwnedDescriptor(adopting: c))
            #expect(group.raw == [a, b, c])
            handedOut = group.removeFirst().take()
            group.removeLast(1).close()
            #expect(!Self.isOpen(c), "removed and closed")
            #expect(Self.isOpen(b))
        }
        #expect(!Self.isOpen(b), "closed with the group")
        #expect(handedOut == a && Self.isOpen(a), "removed, then taken: still open")
        close(a)
    }

    @Test func aDuplicateIsOwnedApartFromItsOriginal() throws {
        let raw = try Self.highDescriptor()
        let original = OwnedDescriptor(adopting: raw)
        let copy = try OwnedDescriptor(duplicating: original.raw)
        #expect(copy.raw != original.raw && fcntl(copy.raw, F_GETFD) & FD_CLOEXEC != 0)
        original.close()
        #expect(!Self.isOpen(raw) && Self.isOpen(copy.raw))
    }

    /// How many of this process's descriptors refer to `path`.
    static func descriptors(to path: String) throws -> Int {
        let directory = try #require(opendir("/proc/self/fd"))
        defer { closedir(directory) }
        var count = 0
        var target = [CChar](repeating: 0, count: 4096)
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard Int32(name) != nil else { continue }
            let n = readlink("/proc/self/fd/" + name, &target, target.count - 1)
            if n > 0, String(decoding: target[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) == path { count += 1 }
        }
        return count
    }

    /// FileBacking opens a FIFO (it opens for reading and writing without
    /// blocking), then refuses it as not a disk: the throw must close it.
    /// Counted by path, so other tests' descriptors do not disturb the count.
    @Test(arguments: [false, true]) func aFailedFileBackingLeavesNothingOpen(direct: Bool) throws {
        let path = "/tmp/xenback-owned-fd-\(getpid())-\(direct)-\(UInt32.random(in: 0...UInt32.max))"
        try #require(mkfifo(path, 0o600) == 0, "mkfifo: errno \(errno)")
        defer { unlink(path) }
        let before = try Self.descriptors(to: path)
        #expect(before == 0)

        // The count sees a descriptor that is open.
        let probe = open(path, O_RDWR | O_CLOEXEC)
        try #require(probe >= 0)
        #expect(try Self.descriptors(to: path) == before + 1)
        close(probe)

        #expect(throws: BackingError.notADisk(path: path)) { try FileBacking(path: path, direct: direct) }
        #expect(try Self.descriptors(to: path) == before, "the init's throw closed what it opened")
    }
}

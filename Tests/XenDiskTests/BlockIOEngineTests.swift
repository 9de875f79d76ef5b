#if canImport(Glibc)
import Glibc
#endif
import Testing
import XenDisk
import XenProtocolTesting

/// Page-aligned memory for direct I/O, freed when released.
final class AlignedBuffer {
    let pointer: UnsafeMutableRawPointer
    let count: Int
    init(_ count: Int, filledWith bytes: [UInt8]? = nil) {
        self.count = count
        pointer = .allocate(byteCount: count, alignment: 4096)
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: count)
        if let bytes { bytes.withUnsafeBytes { pointer.copyMemory(from: $0.baseAddress!, byteCount: min(count, bytes.count)) } }
    }
    deinit { pointer.deallocate() }
    var bytes: [UInt8] { Array(UnsafeRawBufferPointer(start: pointer, count: count)) }
}

/// Submits what is prepared and collects `count` completions (tag →
/// result), sleeping on the completion eventfd between looks. The 30 s
/// bound is a failure deadline.
func complete(_ engine: BlockIOEngine, _ count: Int) throws -> [UInt64: Int64] {
    try engine.submit()
    var results: [UInt64: Int64] = [:]
    let deadline = ContinuousClock.now + .seconds(30)
    while results.count < count && ContinuousClock.now < deadline {
        if engine.completionDescriptor >= 0 && !engine.hasCompletions {
            var p = pollfd(fd: engine.completionDescriptor, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, 1000)
        }
        _ = engine.reap { tag, result in results[tag] = result }
    }
    return results
}

@Suite struct BlockIOEngineTests {
    /// Writes land in the file, reads come from it, flush succeeds; results
    /// are bytes moved, matched to their tags. On the file as the backend
    /// opens it (O_DIRECT where the file system takes it).
    @Test(arguments: BlockEngineKind.allCases)
    func writesReadsAndFlush(kind: BlockEngineKind) throws {
        let image = TempDisk(megabytes: 1)
        let backing = try FileBacking(path: image.path, direct: true)
        let engine = try BlockIOEngine(kind: kind, depth: 8)
        let data = pattern(8192, seed: 11)
        let out = AlignedBuffer(8192, filledWith: data)
        #expect(engine.prepare(.write, fd: backing.fd, buffer: out.pointer, length: 8192, offset: 4096, tag: 41))
        #expect(try complete(engine, 1) == [41: 8192])
        #expect(engine.prepare(.fdatasync, fd: backing.fd, buffer: nil, length: 0, offset: 0, tag: 42))
        #expect(try complete(engine, 1) == [42: 0])
        #expect(image.read(4096, 8192) == data, "in the file")

        let other = pattern(4096, seed: 12)
        image.write(65536, other)
        let first = AlignedBuffer(4096), second = AlignedBuffer(8192)
        #expect(engine.prepare(.read, fd: backing.fd, buffer: first.pointer, length: 4096, offset: 65536, tag: 1))
        #expect(engine.prepare(.read, fd: backing.fd, buffer: second.pointer, length: 8192, offset: 4096, tag: 2))
        #expect(try complete(engine, 2) == [1: 4096, 2: 8192])
        #expect(first.bytes == other && second.bytes == data)
        #expect(!engine.hasCompletions)
    }

    /// readv/writev take an iovec array (`length` is its count): one
    /// request's scattered segments in one operation.
    @Test(arguments: BlockEngineKind.allCases)
    func vectoredIO(kind: BlockEngineKind) throws {
        let image = TempDisk(megabytes: 1)
        let backing = try FileBacking(path: image.path, direct: true)
        let engine = try BlockIOEngine(kind: kind, depth: 4)
        let pieces = [AlignedBuffer(4096, filledWith: pattern(4096, seed: 1)), AlignedBuffer(8192, filledWith: pattern(8192, seed: 2)),
                      AlignedBuffer(4096, filledWith: pattern(4096, seed: 3))]
        var iov = pieces.map { iovec(iov_base: $0.pointer, iov_len: $0.count) }
        let written = try iov.withUnsafeMutableBytes { vector in
            #expect(engine.prepare(.writev, fd: backing.fd, buffer: vector.baseAddress, length: 3, offset: 8192, tag: 7))
            return try complete(engine, 1)
        }
        #expect(written == [7: 16384])
        #expect(image.read(8192, 16384) == pieces.flatMap(\.bytes))
        let halves = [AlignedBuffer(8192), AlignedBuffer(8192)]
        var back = halves.map { iovec(iov_base: $0.pointer, iov_len: $0.count) }
        let read = try back.withUnsafeMutableBytes { vector in
            #expect(engine.prepare(.readv, fd: backing.fd, buffer: vector.baseAddress, length: 2, offset: 8192, tag: 8))
            return try complete(engine, 1)
        }
        #expect(read == [8: 16384])
        #expect(halves.flatMap(\.bytes) == pieces.flatMap(\.bytes))
    }

    /// A failed operation completes with -errno (a write to a descriptor
    /// opened read-only); a read at the end of the file moves 0 bytes.
    @Test(arguments: BlockEngineKind.allCases)
    func failuresAreNegativeErrnos(kind: BlockEngineKind) throws {
        let image = TempDisk(megabytes: 1)
        let readOnly = try FileBacking(path: image.path, readOnly: true)
        let engine = try BlockIOEngine(kind: kind, depth: 4)
        let buffer = AlignedBuffer(4096, filledWith: [1, 2, 3])
        #expect(engine.prepare(.write, fd: readOnly.fd, buffer: buffer.pointer, length: 4096, offset: 0, tag: 1))
        #expect(engine.prepare(.read, fd: readOnly.fd, buffer: buffer.pointer, length: 4096, offset: 1 << 20, tag: 2))
        #expect(try complete(engine, 2) == [1: -Int64(EBADF), 2: 0])
        #expect(image.read(0, 3) == [0, 0, 0])
    }

    /// At most `depth` operations are held: one more is refused until
    /// completions are reaped; the async engines signal completions on
    /// their eventfd, sync needs none (it has completed at `prepare`).
    @Test(arguments: BlockEngineKind.allCases)
    func depthBoundsWhatIsHeld(kind: BlockEngineKind) throws {
        let image = TempDisk(megabytes: 1)
        let backing = try FileBacking(path: image.path)
        let engine = try BlockIOEngine(kind: kind, depth: 4)
        #expect((engine.completionDescriptor < 0) == (kind == .sync))
        let buffers = (0..<5).map { _ in AlignedBuffer(4096) }
        for i in 0..<4 {
            #expect(engine.prepare(.read, fd: backing.fd, buffer: buffers[i].pointer, length: 4096, offset: UInt64(i) * 4096, tag: UInt64(i)))
        }
        #expect(!engine.prepare(.read, fd: backing.fd, buffer: buffers[4].pointer, length: 4096, offset: 0, tag: 4), "a fifth is refused")
        if kind == .sync { #expect(engine.hasCompletions, "done at prepare") }
        #expect(try complete(engine, 4).count == 4)
        #expect(engine.prepare(.read, fd: backing.fd, buffer: buffers[4].pointer, length: 4096, offset: 0, tag: 4), "room again")
        #expect(try complete(engine, 1) == [4: 4096])
        engine.shutdown()
        engine.shutdown()  // idempotent: the worker's drain and deinit both call it
    }

    @Test func engineNames() {
        #expect(BlockEngineKind.allCases.map(\.rawValue) == ["sync", "libaio", "io_uring"], "the configuration's values")
        #expect(BlockEngineKind.default == .libaio)
        #expect("\(BlockIOError.setup(engine: .ioUring, errno: ENOSYS))" == "cannot set up the io_uring engine: Function not implemented")
    }
}

#if canImport(Glibc)
import Glibc
#endif
import CXenShims
import Synchronization
import Testing
import XenProtocolTesting
import XenSystem

/// The funnel with a scripted kernel (`SyscallMock`, debug builds).
@Suite struct SyscallMockTests {
    /// Every call is recorded with its arguments as they were when it was
    /// made (an ioctl's struct before the kernel wrote its out field), and
    /// the handler plays the kernel: return values, out fields, read data.
    @Test func callsAreRecordedAndTheHandlerPlaysTheKernel() {
        let mock = SyscallMock { record, argument in
            switch record {
            case .open: return .result(7)
            case .ioctl:
                argument!.storeBytes(of: UInt32(0xABCD), toByteOffset: 4, as: UInt32.self)
                return .result(0)
            case .read(_, let count):
                for i in 0..<count { argument!.storeBytes(of: UInt8(i + 1), toByteOffset: i, as: UInt8.self) }
                return .result(count)
            case .write(_, let bytes): return .result(bytes.count)
            default: return .result(0)
            }
        }
        var argument: (UInt32, UInt32) = (0x1122_3344, 0)
        var readBack = [UInt8](repeating: 0, count: 3)
        let written: [UInt8] = [9, 8]
        let outcomes: [Result<Int, Errno>] = SyscallMock.$current.withValue(mock) {
            defer { Syscall.close(7) }
            return [
                Syscall.open("/dev/xen/gntdev", O_RDWR).map { Int($0) },
                withUnsafeMutableBytes(of: &argument) { Syscall.ioctl(7, 0x1234, $0.baseAddress, size: 8) }.map { Int($0) },
                readBack.withUnsafeMutableBytes { Syscall.read(7, $0.baseAddress!, count: 3) },
                written.withUnsafeBytes { Syscall.write(7, $0.baseAddress!, count: 2) },
            ]
        }
        #expect(outcomes == [.success(7), .success(0), .success(3), .success(2)])
        #expect(argument.1 == 0xABCD, "the handler's out field reached the caller")
        #expect(readBack == [1, 2, 3])
        #expect(mock.records == [
            .open(path: "/dev/xen/gntdev", flags: O_RDWR),
            .ioctl(fd: 7, request: 0x1234, argument: le32(0x1122_3344) + le32(0)),
            .read(fd: 7, count: 3),
            .write(fd: 7, bytes: [9, 8]),
            .close(fd: 7),
        ])
    }

    /// Without a mock in the task, calls reach the kernel and nothing is recorded.
    @Test func aMockOnlyAppliesWhereItIsSet() throws {
        let mock = SyscallMock { _, _ in .error(EPERM) }
        #expect(Syscall.open("/nonexistent/xenback-\(getpid())", O_RDONLY) == .failure(Errno(ENOENT)))
        #expect(mock.records.isEmpty)
    }

    /// EINTR is retried for every call that can be interrupted; the caller
    /// sees only the final outcome.
    @Test(arguments: ["open", "ioctl", "read", "write"])
    func interruptedCallsAreRetried(call: String) throws {
        let interruptions = Locked(2)
        let mock = SyscallMock { _, _ in
            interruptions.withLock { left in
                left -= 1
                return left >= 0 ? .error(EINTR) : .result(5)
            }
        }
        var byte: UInt8 = 0
        let outcome: Result<Int, Errno> = SyscallMock.$current.withValue(mock) {
            switch call {
            case "open": Syscall.open("/x", O_RDONLY).map { Int($0) }
            case "ioctl": Syscall.ioctl(3, 1, &byte, size: 1).map { Int($0) }
            case "read": Syscall.read(3, &byte, count: 1)
            default: Syscall.write(3, &byte, count: 1)
            }
        }
        #expect(outcome == .success(5))
        #expect(mock.records.count == 3, "two interrupted attempts, then the one that finished")
        #expect(Set(mock.records.map { "\($0)".prefix(while: { $0 != "(" }) }) == [Substring(call)])
    }

    /// A failing call returns its errno as `Errno`, not retried.
    @Test func errorsBecomeErrno() {
        let mock = SyscallMock { record, _ in
            switch record {
            case .open: .error(ENOENT)
            case .ioctl: .error(EINVAL)
            default: .error(EAGAIN)
            }
        }
        var byte: UInt8 = 0
        SyscallMock.$current.withValue(mock) {
            #expect(Syscall.open("/dev/xen/evtchn", O_RDWR) == .failure(Errno(ENOENT)))
            #expect(Syscall.ioctl(4, 2, &byte, size: 1) == .failure(Errno(EINVAL)))
            #expect(Syscall.read(4, &byte, count: 1) == .failure(Errno(EAGAIN)))
        }
        #expect(mock.records.count == 3)
        #expect(Errno(ENOENT).description == "No such file or directory")
        #expect(Errno(EAGAIN) != Errno(EINTR))
    }

    /// MappedMemory's anonymous reservation asks for private, anonymous,
    /// no-reserve, readable and writable memory and unmaps the same length
    /// when dropped; a refused mmap throws its errno and unmaps nothing.
    @Test func mappedMemoryMapsAndUnmapsThroughTheFunnel() throws {
        let mock = SyscallMock { _, _ in .result(0) }
        try SyscallMock.$current.withValue(mock) {
            let memory = try MappedMemory(anonymous: 3 * 4096)
            memory.base.storeBytes(of: 0x5A, toByteOffset: 3 * 4096 - 1, as: UInt8.self)
            _ = consume memory
        }
        #expect(mock.records == [
            .mmap(length: 3 * 4096, protection: PROT_READ | PROT_WRITE, flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, fd: -1, offset: 0),
            .munmap(length: 3 * 4096),
        ])
        let refusing = SyscallMock { _, _ in .error(ENOMEM) }
        SyscallMock.$current.withValue(refusing) {
            #expect(throws: Errno(ENOMEM)) { _ = try MappedMemory(file: 5, length: 4096, offset: 8192) }
        }
        #expect(refusing.records == [.mmap(length: 4096, protection: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: 5, offset: 8192)])
    }
}

// MARK: - The real kernel

/// Signals the EINTR test's handler has taken.
let interruptionsTaken = Atomic<Int>(0)

final class ThreadBody {
    let body: @Sendable () -> Void
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
}

/// Starts a pthread running `body`; returns its handle for pthread_join/kill.
func startThread(_ body: @escaping @Sendable () -> Void) -> pthread_t {
    var thread = pthread_t()
    let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    let rc = pthread_create(&thread, nil, { Unmanaged<ThreadBody>.fromOpaque($0!).takeRetainedValue().body(); return nil }, box)
    precondition(rc == 0)
    return thread
}

/// The calling thread's kernel id, from /proc/thread-self (PID/task/TID).
func currentThreadID() -> Int32 {
    var link = [CChar](repeating: 0, count: 64)
    let n = readlink("/proc/thread-self", &link, 63)
    let text = String(decoding: link.prefix(max(0, n)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return text.split(separator: "/").last.flatMap { Int32($0) } ?? 0
}

/// Reads /proc/self/task/TID/syscall: the number of the system call the
/// thread is blocked in, and its first argument ("running" otherwise).
func blockedSyscall(thread tid: Int32) -> (number: Int, firstArgument: Int)? {
    let fd = open("/proc/self/task/\(tid)/syscall", O_RDONLY)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 256)
    let n = read(fd, &buffer, 255)
    guard n > 0 else { return nil }
    let fields = String(decoding: buffer[..<n], as: UTF8.self).split(separator: " ")
    guard fields.count > 1, let number = Int(fields[0]), fields[1].hasPrefix("0x"), let argument = Int(fields[1].dropFirst(2), radix: 16) else {
        return nil
    }
    return (number, argument)
}

@Suite struct SyscallTests {
    /// A real EINTR: a thread blocked in read(2) on an empty pipe takes a
    /// signal whose handler has no SA_RESTART, so the kernel returns EINTR;
    /// the funnel reads again and returns the byte written afterwards.
    @Test func aSignalDuringARealReadIsRetried() throws {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in interruptionsTaken.add(1, ordering: .relaxed) }
        action.sa_flags = 0
        sigemptyset(&action.sa_mask)
        var previous = sigaction()
        try #require(sigaction(SIGUSR2, &action, &previous) == 0)
        defer { sigaction(SIGUSR2, &previous, nil) }
        interruptionsTaken.store(0, ordering: .relaxed)

        var fds: [Int32] = [0, 0]
        try #require(CXenShims_pipe_cloexec(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let readEnd = fds[0]
        let tid = Locked<Int32>(0)
        let outcome = Locked<Result<Int, Errno>?>(nil)
        let thread = startThread {
            // Threads inherit the signal mask of the test's (dispatch) thread, which blocks most signals.
            var unblock = sigset_t()
            sigemptyset(&unblock)
            sigaddset(&unblock, SIGUSR2)
            pthread_sigmask(SIG_UNBLOCK, &unblock, nil)
            tid.withLock { $0 = currentThreadID() }
            var byte: UInt8 = 0
            let r = Syscall.read(readEnd, &byte, count: 1)
            outcome.withLock { $0 = r.map { $0 == 1 && byte == 0x42 ? 1 : -1 } }
        }
        // Wait (bounded) until the thread is inside read(2) on our pipe, so
        // the signal interrupts that call and not the code before it.
        #if arch(x86_64)
        let readNumber = 0
        #else
        let readNumber = 63
        #endif
        let deadline = ContinuousClock.now + .seconds(10)
        var blocked = false
        while ContinuousClock.now < deadline {
            let t = tid.value
            if t != 0, let call = blockedSyscall(thread: t), call.number == readNumber, call.firstArgument == Int(readEnd) {
                blocked = true
                break
            }
            sched_yield()
        }
        try #require(blocked, "the reader never blocked in read(2)")
        pthread_kill(thread, SIGUSR2)
        // Once the handler has run the kernel has returned EINTR to the funnel.
        while interruptionsTaken.load(ordering: .relaxed) == 0 && ContinuousClock.now < deadline { sched_yield() }
        #expect(interruptionsTaken.load(ordering: .relaxed) == 1)
        var byte: UInt8 = 0x42
        #expect(write(fds[1], &byte, 1) == 1)
        pthread_join(thread, nil)
        #expect(outcome.value == .success(1), "the read went on after EINTR and got the byte")
    }

    /// Other failures come back as errno values: the caller decides.
    @Test func ordinaryFailuresAreReturned() throws {
        var fds: [Int32] = [0, 0]
        try #require(CXenShims_pipe_cloexec(&fds) == 0)
        _ = fcntl(fds[0], F_SETFL, O_NONBLOCK)
        defer { close(fds[0]); close(fds[1]) }
        var byte: UInt8 = 0
        #expect(Syscall.read(fds[0], &byte, count: 1) == .failure(Errno(EAGAIN)))
        #expect(Syscall.open("/nonexistent/xenback-\(getpid())", O_RDONLY) == .failure(Errno(ENOENT)))
        var data: [UInt8] = [1, 2, 3]
        #expect(Syscall.write(fds[1], &data, count: 3) == .success(3))
        #expect(Syscall.read(fds[0], &data, count: 3) == .success(3))
    }

    /// EBADF and EFAULT mean our own descriptor or pointer was wrong: the
    /// funnel stops the process rather than return them.
    @Test func aBadDescriptorStopsTheProcess() async {
        await #expect(processExitsWith: .failure) {
            var byte: UInt8 = 0
            _ = Syscall.read(-1, &byte, count: 1)
        }
    }

    @Test func aBadPointerStopsTheProcess() async {
        await #expect(processExitsWith: .failure) {
            var fds: [Int32] = [0, 0]
            guard pipe(&fds) == 0 else { return }
            var byte: UInt8 = 1
            _ = write(fds[1], &byte, 1)
            _ = Syscall.read(fds[0], UnsafeMutableRawPointer(bitPattern: 16)!, count: 1)
        }
    }

    /// memfd_create: a close-on-exec descriptor of anonymous memory, named.
    @Test func memfdCreate() throws {
        let fd = try Syscall.memfdCreate("xenback-test").get()
        defer { close(fd) }
        #expect(fcntl(fd, F_GETFD) & FD_CLOEXEC != 0)
        var link = [CChar](repeating: 0, count: 256)
        let n = readlink("/proc/self/fd/\(fd)", &link, 255)
        let target = String(decoding: link.prefix(max(0, n)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        #expect(target.hasPrefix("/memfd:xenback-test"), "\(target)")
        #expect(ftruncate(fd, 8192) == 0)
    }
}

@Suite struct MappedMemoryTests {
    /// Anonymous memory is zeroed, readable and writable; with
    /// MAP_NORESERVE only the pages written take memory; once the value is
    /// dropped the range is no longer mapped.
    @Test func anonymousMemoryIsZeroedWritableAndUnmapped() throws {
        let pages = 64
        var address: UInt = 0
        do {
            let memory = try MappedMemory(anonymous: pages * 4096)
            address = UInt(bitPattern: memory.base)
            #expect(memory.length == pages * 4096)
            var resident = [UInt8](repeating: 0xFF, count: pages)
            #expect(mincore(memory.base, memory.length, &resident) == 0)
            #expect(resident.allSatisfy { $0 & 1 == 0 }, "nothing touched, nothing resident")
            for page in [0, 5, 63] { memory.base.storeBytes(of: UInt8(page + 1), toByteOffset: page * 4096 + 17, as: UInt8.self) }
            #expect(mincore(memory.base, memory.length, &resident) == 0)
            #expect(resident.indices.filter { resident[$0] & 1 != 0 } == [0, 5, 63], "only the written pages take memory")
            let bytes = UnsafeRawBufferPointer(start: memory.base, count: memory.length)
            let nonZero = bytes.indices.filter { bytes[$0] != 0 }
            #expect(nonZero == [17, 5 * 4096 + 17, 63 * 4096 + 17])
            #expect(nonZero.map { bytes[$0] } == [1, 6, 64])
        }
        var resident = [UInt8](repeating: 0, count: pages)
        let rc = mincore(UnsafeMutableRawPointer(bitPattern: address), pages * 4096, &resident)
        let e = errno
        #expect(rc == -1 && e == ENOMEM, "unmapped when dropped")
    }

    /// A file mapping is shared: what is written through it is in the file.
    @Test func fileMappingsAreShared() throws {
        let fd = try Syscall.memfdCreate("xenback-mapped").get()
        defer { close(fd) }
        #expect(ftruncate(fd, 3 * 4096) == 0)
        let first = try MappedMemory(file: fd, length: 4096, offset: 4096)
        let second = try MappedMemory(file: fd, length: 2 * 4096)
        first.base.storeBytes(of: UInt32(0xC0FF_EE00), toByteOffset: 8, as: UInt32.self)
        #expect(second.base.load(fromByteOffset: 4096 + 8, as: UInt32.self) == 0xC0FF_EE00, "the other mapping sees it")
        var fromFile: UInt32 = 0
        #expect(pread(fd, &fromFile, 4, 4096 + 8) == 4)
        #expect(fromFile == 0xC0FF_EE00, "and so does the file")
        let readOnly = try MappedMemory(file: fd, length: 4096, protection: PROT_READ)
        #expect(readOnly.base.load(fromByteOffset: 0, as: UInt8.self) == 0)
    }

    /// A length the kernel refuses is an error, not a crash.
    @Test func aZeroLengthIsRefused() {
        #expect(throws: Errno(EINVAL)) { _ = try MappedMemory(anonymous: 0) }
    }
}

import CXenShims
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One system call as the funnel saw it; what the tests assert on.
public enum SyscallRecord: Equatable, Sendable, CustomStringConvertible {
    case open(path: String, flags: Int32)
    case close(fd: Int32)
    /// The argument struct's bytes as they were when the call was made.
    case ioctl(fd: Int32, request: UInt, argument: [UInt8])
    case mmap(length: Int, protection: Int32, flags: Int32, fd: Int32, offset: Int64)
    case munmap(length: Int)
    case read(fd: Int32, count: Int)
    case write(fd: Int32, bytes: [UInt8])
    /// The descriptors polled (their requested events in `argument`).
    case poll(fds: [Int32], timeout: Int32)

    public var description: String {
        switch self {
        case .open(let p, let f): "open(\(p), \(f))"
        case .close(let fd): "close(\(fd))"
        case .ioctl(let fd, let r, let a): "ioctl(\(fd), 0x\(String(r, radix: 16)), \(a.count) bytes)"
        case .mmap(let l, let p, let f, let fd, let o): "mmap(\(l), prot \(p), flags \(f), fd \(fd), offset 0x\(String(o, radix: 16)))"
        case .munmap(let l): "munmap(\(l))"
        case .read(let fd, let n): "read(\(fd), \(n))"
        case .write(let fd, let b): "write(\(fd), \(b))"
        case .poll(let fds, let t): "poll(\(fds), \(t))"
        }
    }
}

/// What a mocked call does.
public enum SyscallOutcome: Sendable {
    /// Succeed with this return value (mmap/munmap: done for real on anonymous memory).
    case result(Int)
    /// Fail with this errno.
    case error(Int32)
}

/// Plays the kernel for code under test (debug builds only): records every
/// call that goes through the funnel and decides its outcome; the handler
/// may also fill the argument (an ioctl's out fields, a read's buffer).
public final class SyscallMock: @unchecked Sendable {
    @TaskLocal public static var current: SyscallMock?

    public typealias Handler = @Sendable (SyscallRecord, UnsafeMutableRawPointer?) -> SyscallOutcome
    private let state: Mutex<[SyscallRecord]> = Mutex([])
    let handler: Handler

    public init(_ handler: @escaping Handler) { self.handler = handler }

    public var records: [SyscallRecord] { state.withLock { $0 } }

    func record(_ r: SyscallRecord, _ argument: UnsafeMutableRawPointer?) -> SyscallOutcome {
        state.withLock { $0.append(r) }
        return handler(r, argument)
    }
}

/// An errno value from a failed call.
public struct Errno: Error, Equatable, Sendable, CustomStringConvertible {
    public let code: Int32
    public init(_ code: Int32) { self.code = code }
    public var description: String { String(cString: strerror(code)) }
}

/// The one place the project calls the kernel on descriptors and memory it
/// owns: every call retries on EINTR and returns a Result carrying errno; in
/// debug builds a task-local `SyscallMock` can stand in for the kernel.
/// EFAULT and EBADF mean a bug in our own code (a pointer or descriptor we
/// got wrong), never a runtime condition, so they stop the process, naming
/// the call (as swift-nio's funnel does).
public enum Syscall {
    public static func open(_ path: String, _ flags: Int32) -> Result<Int32, Errno> {
        #if ENABLE_MOCKING
        if let mock = SyscallMock.current { return mocked(mock, .open(path: path, flags: flags), nil).map { Int32($0) } }
        #endif
        return retrying("open") { Glibc.open(path, flags) }
    }

    public static func close(_ fd: Int32) {
        #if ENABLE_MOCKING
        if let mock = SyscallMock.current { _ = mock.record(.close(fd: fd), nil); return }
        #endif
        CXenShims_count_syscall()
        if Glibc.close(fd) != 0 { failOnOwnBug("close", errno) }
    }

    /// `argument` points at a struct of `size` bytes that the kernel reads
    /// and may write; the caller owns it for the duration of the call.
    public static func ioctl(_ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?, size: Int) -> Result<Int32, Errno> {
        #if ENABLE_MOCKING
        if let mock = SyscallMock.current {
            // SAFETY: the caller owns `size` bytes at `argument` for the call
            // (this function's contract); they are copied before the handler runs.
            let bytes = argument.map { Array(UnsafeRawBufferPointer(start: $0, count: size)) } ?? []
            return mocked(mock, .ioctl(fd: fd, request: request, argument: bytes), argument).map { Int32($0) }
        }
        #endif
        return retrying("ioctl") { CXenShims_ioctl(fd, request, argument) }
    }

    /// Maps `length` bytes; the caller owns the mapping until it passes it
    /// to `munmap` (or wraps it in a `MappedMemory`, which does). `address`
    /// with MAP_FIXED replaces pages of a mapping the caller already owns
    /// (one slot of a reservation); the record does not show it.
    /// An ioctl whose argument is a plain integer, not a pointer (TUNSETOFFLOAD
    /// takes its flags so); the record shows the value's bytes.
    public static func ioctl(_ fd: Int32, _ request: UInt, value: UInt) -> Result<Int32, Errno> {
        #if ENABLE_MOCKING
        if let mock = SyscallMock.current {
            // SAFETY: a view of a local integer, copied at once.
            let bytes = withUnsafeBytes(of: value) { Array($0) }
            return mocked(mock, .ioctl(fd: fd, request: request, argument: bytes), nil).map { Int32($0) }
        }
        #endif
        // SAFETY: not a pointer: the kernel takes the argument word as the
        // value itself and dereferences nothing.
        return retrying("ioctl") { CXenShims_ioctl(fd, request, UnsafeMutableRawPointer(bitPattern: value)) }
    }

    public static func mmap(at address: UnsafeMutableRawPointer? = nil, length: Int, protection: Int32, flags: Int32,
                            fd: Int32, offset: Int64) -> Result<UnsafeMutableRawPointer, Errno> {
        #if ENABLE_MOCKING
        if let mock = SyscallMock.current {
            switch mock.record(.mmap(length: length, protection: protection, flags: flags, fd: fd, offset: offset), nil) {
            case .error(let e): return .failure(Errno(e))
            case .result:
                // SAFETY: stands in with private anonymous memory the caller
                // then owns exactly as it would the real mapping (MAP_FIXED
                // only over its own reservation).
                let fixed = address != nil ? flags & MAP_FIXED : 0
                CXenShims_count_syscall()
                let p = Glibc.mmap(address, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | fixed, -1, 0)
                return p == MAP_FAILED || p == nil ? .failure(Errno(errno)) : .success(p!)
            }
        }
        #endif
        CXenShims_count_syscall()
        let p = Glibc.mmap(address, length, protection, flags, fd, off_t(offset))
        guard let p, p != MAP_FAILED else {
            let e = errno
            failOnOwnBug("mmap", e)
            return .failure(Errno(e))
        }
        return .success(p)
    }

    /// SAFETY: the caller gives up a mapping it owns (from mmap); nothing
    /// may touch those pages afterwards.
    public static func munmap(_ address: UnsafeMutableRawPointer, length: Int) {
        #if ENABLE_MOCKING
        if let mock = SyscallMock.current { _ = mock.record(.munmap(length: length), address) }
        #endif
        CXenShims_count_syscall()
        if Glibc.munmap(address, length) != 0 { failOnOwnBug("munmap", errno) }
    }

    /// SAFETY: `buffer` is `count` writable bytes the caller owns for the call.
    public static func read(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, count: Int) -> Result<Int, Errno> {
        #if ENABLE_MOCKING
        if let mock = SyscallMock.current { return mocked(mock, .read(fd: fd, count: count), buffer) }
        #endif
        return retrying("read") { Glibc.read(fd, buffer, count) }
    }

    /// SAFETY: `buffer` is `count` readable bytes the caller owns for the call.
    public static func write(_ fd: Int32, _ buffer: UnsafeRawPointer, count: Int) -> Result<Int, Errno> {
        #if ENABLE_MOCKING
        if let mock = SyscallMock.current {
            return mocked(mock, .write(fd: fd, bytes: Array(UnsafeRawBufferPointer(start: buffer, count: count))), nil)
        }
        #endif
        return retrying("write") { Glibc.write(fd, buffer, count) }
    }

    /// poll(2) over the caller's descriptors. With `retryingInterrupts`
    /// false an EINTR comes back as a failure, for callers that re-check
    /// their state when a signal cuts the wait short; retried, the full
    /// timeout starts again. In a mock the handler gets the pollfd array as
    /// its argument (to set revents).
    /// SAFETY: `descriptors` is the caller's, written only during the call.
    public static func poll(_ descriptors: UnsafeMutableBufferPointer<pollfd>, timeoutMilliseconds: Int32,
                            retryingInterrupts: Bool = true) -> Result<Int32, Errno> {
        #if ENABLE_MOCKING
        if let mock = SyscallMock.current {
            let record = SyscallRecord.poll(fds: descriptors.map(\.fd), timeout: timeoutMilliseconds)
            return mocked(mock, record, UnsafeMutableRawPointer(descriptors.baseAddress), retryingInterrupts: retryingInterrupts)
                .map { Int32($0) }
        }
        #endif
        let (base, count) = (descriptors.baseAddress, nfds_t(descriptors.count))
        if retryingInterrupts { return retrying("poll") { Glibc.poll(base, count, timeoutMilliseconds) } }
        CXenShims_count_syscall()
        let r = Glibc.poll(base, count, timeoutMilliseconds)
        if r >= 0 { return .success(r) }
        let e = errno
        failOnOwnBug("poll", e)
        return .failure(Errno(e))
    }

    /// poll(2) on one descriptor; the number of ready descriptors (0 or 1).
    public static func poll(_ fd: Int32, events: Int16 = Int16(POLLIN), timeoutMilliseconds: Int32,
                            retryingInterrupts: Bool = true) -> Result<Int32, Errno> {
        var p = pollfd(fd: fd, events: events, revents: 0)
        // SAFETY: a local, lent to poll for the call.
        return withUnsafeMutablePointer(to: &p) {
            poll(UnsafeMutableBufferPointer(start: $0, count: 1), timeoutMilliseconds: timeoutMilliseconds,
                 retryingInterrupts: retryingInterrupts)
        }
    }

    /// Adds one to an eventfd's counter, making it readable. Nothing to
    /// report: a nonblocking eventfd at its maximum (EAGAIN) is readable anyway.
    public static func signalEventFD(_ fd: Int32) {
        var one: UInt64 = 1
        _ = write(fd, &one, count: 8)
    }

    /// Resets a nonblocking eventfd's counter (EAGAIN: it was zero already),
    /// so that it is readable again only after the next signal.
    public static func clearEventFD(_ fd: Int32) {
        var counter: UInt64 = 0
        _ = read(fd, &counter, count: 8)
    }

    static func retrying<T: BinaryInteger>(_ name: StaticString, _ call: () -> T) -> Result<T, Errno> {
        while true {
            CXenShims_count_syscall()
            let r = call()
            if r >= 0 { return .success(r) }
            let e = errno
            if e == EINTR { continue }
            failOnOwnBug(name, e)
            return .failure(Errno(e))
        }
    }

    /// System calls this thread made through the funnel so far (each EINTR
    /// retry counts). A worker adds its own to its statistics, which is how
    /// the benchmarks report system calls per request.
    public static var countOnThisThread: UInt64 { UInt64(CXenShims_syscalls_on_this_thread()) }

    /// Counts a system call made outside the funnel (the synchronous disk
    /// engine's pread/pwrite, which have no wrapper here).
    @inlinable public static func countCallMadeElsewhere() { CXenShims_count_syscall() }

    /// EFAULT and EBADF: our pointer or descriptor was wrong.
    static func failOnOwnBug(_ name: StaticString, _ e: Int32) {
        precondition(e != EFAULT && e != EBADF, "\(name) failed with \(e == EFAULT ? "EFAULT" : "EBADF"): a bug in xenback")
    }

    #if ENABLE_MOCKING
    /// A mocked call, retried on EINTR like a real one (unless the caller
    /// wants interruptions back).
    private static func mocked(_ mock: SyscallMock, _ record: SyscallRecord, _ argument: UnsafeMutableRawPointer?,
                               retryingInterrupts: Bool = true) -> Result<Int, Errno> {
        while true {
            switch mock.record(record, argument) {
            case .result(let r): return .success(r)
            case .error(let e) where e == EINTR && retryingInterrupts: continue
            case .error(let e): return .failure(Errno(e))
            }
        }
    }
    #endif
}

extension Syscall {
    /// memfd_create(2) with MFD_CLOEXEC: anonymous memory with a descriptor.
    public static func memfdCreate(_ name: String) -> Result<Int32, Errno> {
        retrying("memfd_create") { CXenShims_memfd_create(name, CXenShims_MFD_CLOEXEC) }
    }
}

import CXenAIO
import CXenShims
import XenSystem
#if canImport(Glibc)
import Glibc
#endif

/// How a block ring worker does its disk I/O.
public enum BlockEngineKind: String, Sendable, CaseIterable, CustomStringConvertible {
    /// pread/pwrite/fdatasync on the worker thread, one request at a time.
    case sync
    /// Linux AIO (io_submit/io_getevents), completions signalled on an eventfd.
    case libaio
    /// io_uring through liburing, completions signalled on an eventfd.
    case ioUring = "io_uring"

    /// Chosen by measurement: docs/block-backend.md has the figures.
    public static var `default`: BlockEngineKind { .libaio }

    public var description: String { rawValue }
}

public enum BlockIOError: Error, Equatable, Sendable, CustomStringConvertible {
    case setup(engine: BlockEngineKind, errno: Int32)
    case submit(engine: BlockEngineKind, errno: Int32)

    public var description: String {
        switch self {
        case .setup(let e, let n): "cannot set up the \(e) engine: \(String(cString: strerror(n)))"
        case .submit(let e, let n): "\(e) submission failed: \(String(cString: strerror(n)))"
        }
    }
}

/// One worker's I/O engine: operations are prepared, submitted in a batch,
/// and reaped as (tag, result) pairs, result being bytes moved or -errno.
/// Holds at most `depth` operations; owned by one thread. Dispatch is a
/// switch over the kind, not an existential, so the data path stays direct.
package final class BlockIOEngine {
    /// System calls this thread made on the engines (io_submit,
    /// io_getevents, io_uring_enter); the funnel counts the rest.
    package static var syscallsOnThisThread: UInt64 { UInt64(CXenAIO_syscalls_on_this_thread()) }

    /// readv/writev: `buffer` is an iovec array, `length` its count.
    package enum Operation: Int32 { case read = 0, write = 1, fdatasync = 2, readv = 3, writev = 4 }

    package let kind: BlockEngineKind
    package let depth: Int
    /// Readable when completions are waiting (-1 for sync: never needed).
    package let completionDescriptor: Int32
    /// Owns `completionDescriptor`, an eventfd (nil for sync).
    private let completions: OwnedDescriptor?
    private var aio: OpaquePointer?
    private var uring: OpaquePointer?
    /// Reap buffers, and for sync the completed-but-unreaped operations.
    /// SAFETY: `depth` entries each, allocated and initialised in init and
    /// freed in deinit: owned by this engine, never handed out.
    private let tags: UnsafeMutableBufferPointer<UInt64>
    private let results: UnsafeMutableBufferPointer<Int64>
    /// sync: a queue of completed operations in tags/results.
    private var syncHead = 0, syncCount = 0

    package init(kind: BlockEngineKind, depth: Int) throws(BlockIOError) {
        self.kind = kind
        self.depth = depth
        switch kind {
        case .sync:
            completionDescriptor = -1; completions = nil; aio = nil; uring = nil
        case .libaio, .ioUring:
            // Owned: a failed context below closes it on the way out.
            let fd: OwnedDescriptor
            do { fd = try OwnedDescriptor(eventfd: Int32(EFD_CLOEXEC | EFD_NONBLOCK)) } catch { throw .setup(engine: kind, errno: error.code) }
            if kind == .libaio {
                guard let c = CXenAIO_aio_create(UInt32(depth), fd.raw) else { throw .setup(engine: kind, errno: errno) }
                aio = c; uring = nil
            } else {
                guard let c = CXenAIO_uring_create(UInt32(depth), fd.raw) else { throw .setup(engine: kind, errno: errno) }
                aio = nil; uring = c
            }
            completionDescriptor = fd.raw
            completions = consume fd
        }
        // SAFETY: owned by this engine (see the properties), freed in deinit.
        tags = .allocate(capacity: depth)
        tags.initialize(repeating: 0)
        results = .allocate(capacity: depth)
        results.initialize(repeating: 0)
    }

    /// Tears the kernel context down: libaio waits for what is in flight,
    /// io_uring cancels it. Workers drain first; this is the backstop that
    /// runs before their buffers are freed. Idempotent.
    package func shutdown() {
        if let aio { CXenAIO_aio_destroy(aio) }
        if let uring { CXenAIO_uring_destroy(uring) }
        aio = nil
        uring = nil
    }

    deinit {
        // The eventfd closes after this, once the kernel context is gone.
        shutdown()
        tags.deallocate()
        results.deallocate()
    }

    /// Queues one operation; false if `depth` are already held (a caller bug:
    /// workers never hold more operations than slots).
    /// SAFETY: `buffer` must stay valid until the operation is reaped: the
    /// caller owns it (a bounce buffer or mapped grant pages, or an iovec
    /// array and what it points to for readv/writev) and keeps it until its
    /// tag comes back from `reap` or `shutdown` has run. Guest pages may be
    /// changed by the guest during the I/O; the disk gets whatever is there.
    @inline(__always)
    package func prepare(_ operation: Operation, fd: Int32, buffer: UnsafeMutableRawPointer?, length: Int, offset: UInt64, tag: UInt64) -> Bool {
        switch kind {
        case .sync:
            guard syncCount < depth else { return false }
            let i = (syncHead + syncCount) % depth
            tags[i] = tag
            results[i] = Self.performNow(operation, fd: fd, buffer: buffer, length: length, offset: offset)
            syncCount += 1
            return true
        case .libaio:
            return CXenAIO_aio_prepare(aio, operation.rawValue, fd, buffer, length, Int64(offset), tag) == 0
        case .ioUring:
            return CXenAIO_uring_prepare(uring, operation.rawValue, fd, buffer, length, Int64(offset), tag) == 0
        }
    }

    /// Hands everything prepared to the kernel.
    @inline(__always)
    package func submit() throws(BlockIOError) {
        let rc: Int32
        switch kind {
        case .sync: return
        case .libaio: rc = CXenAIO_aio_submit(aio)
        case .ioUring: rc = CXenAIO_uring_submit(uring)
        }
        if rc < 0 { throw .submit(engine: kind, errno: -rc) }
    }

    /// Whether a `reap` would find something, without a system call.
    @inline(__always)
    package var hasCompletions: Bool {
        switch kind {
        case .sync: syncCount > 0
        case .libaio: CXenAIO_aio_ready(aio) != 0
        case .ioUring: CXenAIO_uring_ready(uring) != 0
        }
    }

    /// Calls `body` for every finished operation, without blocking; returns
    /// how many. `body` may prepare new operations.
    @inline(__always)
    package func reap(_ body: (_ tag: UInt64, _ result: Int64) -> Void) -> Int {
        if completionDescriptor >= 0 {
            // Reset the counter before looking, so a completion after the
            // look makes the descriptor readable again.
            Syscall.clearEventFD(completionDescriptor)
        }
        var total = 0
        if kind == .sync {
            // body may queue more immediate completions: they are taken too.
            while syncCount > 0 {
                let (tag, result) = (tags[syncHead], results[syncHead])
                syncHead = (syncHead + 1) % depth
                syncCount -= 1
                body(tag, result)
                total += 1
            }
            return total
        }
        // Looked at in user space first: no io_getevents call to learn there is nothing.
        while hasCompletions {
            // SAFETY: the reap buffers hold `depth` entries; the C side
            // writes at most that many and keeps no pointer to them.
            let n = kind == .libaio
                ? Int(CXenAIO_aio_reap(aio, tags.baseAddress, results.baseAddress, Int32(depth)))
                : Int(CXenAIO_uring_reap(uring, tags.baseAddress, results.baseAddress, Int32(depth)))
            guard n > 0 else { return total }
            for i in 0..<n { body(tags[i], results[i]) }
            total += n
        }
        return total
    }

    private static func performNow(_ operation: Operation, fd: Int32, buffer: UnsafeMutableRawPointer?, length: Int, offset: UInt64) -> Int64 {
        switch operation {
        case .fdatasync:
            Syscall.countCallMadeElsewhere()
            return fdatasync(fd) == 0 ? 0 : -Int64(errno)
        case .readv, .writev:
            // One call: O_DIRECT on files and devices moves it all or fails;
            // a short read at the end of a shrunk file is handled by the caller.
            // SAFETY: for readv/writev the caller passes an array of `length`
            // iovecs (prepare's contract), valid until this call returns.
            let iov = UnsafePointer(buffer!.assumingMemoryBound(to: iovec.self))
            var n: Int
            repeat {
                Syscall.countCallMadeElsewhere()
                n = operation == .readv ? preadv(fd, iov, Int32(length), off_t(offset)) : pwritev(fd, iov, Int32(length), off_t(offset))
            } while n < 0 && errno == EINTR
            return n < 0 ? -Int64(errno) : Int64(n)
        case .read, .write:
            // SAFETY: `buffer` holds `length` bytes (prepare's contract);
            // buffer + done stays inside it.
            var done = 0
            while done < length {
                Syscall.countCallMadeElsewhere()
                let n = operation == .read
                    ? pread(fd, buffer! + done, length - done, off_t(offset) + off_t(done))
                    : pwrite(fd, buffer! + done, length - done, off_t(offset) + off_t(done))
                if n < 0 { if errno == EINTR { continue }; return -Int64(errno) }
                if n == 0 { break }
                done += n
            }
            return Int64(done)
        }
    }
}

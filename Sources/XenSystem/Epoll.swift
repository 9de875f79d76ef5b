import CXenShims
#if canImport(Glibc)
import Glibc
#endif

/// An epoll instance this value owns and closes when it ends. Each watched
/// descriptor carries a 64-bit token that `wait` hands back when it is ready.
/// Like the rest of the funnel, calls retry on EINTR and stop the process on
/// EBADF or EFAULT (a descriptor or buffer of ours that is wrong).
public struct Epoll: ~Copyable, Sendable {
    /// What to watch a descriptor for (EPOLLIN and friends).
    public struct Events: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let readable = Events(rawValue: EPOLLIN.rawValue)
        public static let writable = Events(rawValue: EPOLLOUT.rawValue)
        public static let error = Events(rawValue: EPOLLERR.rawValue)
        public static let hangUp = Events(rawValue: EPOLLHUP.rawValue)
    }

    public let descriptor: Int32

    /// epoll_create1(EPOLL_CLOEXEC).
    public init() throws(Errno) {
        descriptor = try Syscall.retrying("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }.get()
    }

    deinit { Syscall.close(descriptor) }

    /// EPOLL_CTL_ADD: watches `fd` (level-triggered) until `remove` or until
    /// its last duplicate is closed. EEXIST (already watched) and EPERM (a
    /// descriptor epoll cannot watch, such as a regular file) come back as
    /// errors.
    public func add(_ fd: Int32, for events: Events = .readable, token: UInt64) -> Result<Void, Errno> {
        var event = epoll_event()
        event.events = events.rawValue
        event.data.u64 = token
        return Syscall.retrying("epoll_ctl") { epoll_ctl(descriptor, EPOLL_CTL_ADD, fd, &event) }.map { _ in }
    }

    /// EPOLL_CTL_DEL. ENOENT: `fd` was not watched.
    public func remove(_ fd: Int32) -> Result<Void, Errno> {
        // Kernels before 2.6.9 wanted a non-null event even for DEL.
        var unused = epoll_event()
        return Syscall.retrying("epoll_ctl") { epoll_ctl(descriptor, EPOLL_CTL_DEL, fd, &unused) }.map { _ in }
    }

    /// Waits up to `timeoutMilliseconds` (-1: for ever) for at most
    /// `maximumEvents` ready descriptors and calls `body` with each one's
    /// token and events; returns how many there were (0 on timeout). A signal
    /// restarts the wait with the full timeout again. Allocates nothing.
    @discardableResult
    public func wait(timeoutMilliseconds: Int32 = -1, maximumEvents: Int = 64,
                     _ body: (_ token: UInt64, _ events: Events) -> Void) -> Result<Int, Errno> {
        precondition(maximumEvents > 0, "epoll_wait needs room for at least one event")
        // SAFETY: a stack buffer owned by this call; the kernel fills the
        // first n entries and nothing keeps the pointer after it returns.
        return withUnsafeTemporaryAllocation(of: epoll_event.self, capacity: maximumEvents) { events in
            let result = Syscall.retrying("epoll_wait") {
                epoll_wait(descriptor, events.baseAddress!, Int32(events.count), timeoutMilliseconds)
            }
            guard case .success(let n) = result else { return result.map { Int($0) } }
            for i in 0..<Int(n) { body(events[i].data.u64, Events(rawValue: events[i].events)) }
            return .success(Int(n))
        }
    }
}

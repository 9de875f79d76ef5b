import CXenShims
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Why a ring worker's `run` returned.
public enum WorkerExit: Sendable, Equatable {
    /// The stop descriptor fired: everything in flight was answered.
    case stopped
    /// Nothing happened for a while and nothing is in flight: the worker
    /// asked its peer for an event and may be parked until one of its
    /// descriptors becomes readable.
    case idle
}

/// One thread watching the wake descriptors of every parked worker, so an
/// idle ring costs no thread: when one of an entry's descriptors becomes
/// readable, the entry is removed and its `resume` runs (it starts a thread
/// for the worker again). Level-triggered: an event that came in while the
/// worker was parking wakes it at once.
public final class IdleReactor: Sendable {
    public static let shared = IdleReactor()

    private struct Parked {
        var descriptors: [Int32]
        var resume: @Sendable () -> Void
    }
    private let epoll: Int32
    private let state = Mutex<(next: UInt64, parked: [UInt64: Parked], started: Bool)>((1, [:], false))

    init() {
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        precondition(epoll >= 0, "epoll_create1 failed: errno \(errno)")
    }

    /// Entries waiting (tests and metrics).
    public var parkedCount: Int { state.withLock { $0.parked.count } }

    /// Watches `descriptors` (the reactor owns them from now on and closes
    /// them: pass duplicates of shared ones) and runs `resume` once, on the
    /// reactor's thread, when any of them is readable.
    public func park(descriptors: [Int32], resume: @escaping @Sendable () -> Void) {
        let (id, start) = state.withLock { s -> (UInt64, Bool) in
            let id = s.next
            s.next += 1
            s.parked[id] = Parked(descriptors: descriptors, resume: resume)
            defer { s.started = true }
            return (id, !s.started)
        }
        if start { JoinableThread { self.loop() }.detach() }
        for fd in descriptors {
            var event = epoll_event()
            event.events = EPOLLIN.rawValue
            event.data.u64 = id
            if epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) != 0 {
                // Cannot watch it: do not strand the worker, resume it now.
                wake(id)
                return
            }
        }
    }

    private func wake(_ id: UInt64) {
        guard let entry = state.withLock({ $0.parked.removeValue(forKey: id) }) else { return }
        for fd in entry.descriptors {
            var unused = epoll_event()
            _ = epoll_ctl(epoll, EPOLL_CTL_DEL, fd, &unused)
            close(fd)
        }
        entry.resume()
    }

    private func loop() {
        var events = [epoll_event](repeating: epoll_event(), count: 64)
        while true {
            let n = epoll_wait(epoll, &events, Int32(events.count), -1)
            if n < 0 { continue }  // EINTR
            for i in 0..<Int(n) { wake(events[i].data.u64) }
        }
    }
}

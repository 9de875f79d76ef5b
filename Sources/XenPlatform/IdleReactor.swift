import CXenShims
import Synchronization
import XenSystem
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

    /// A parked worker. A class because it owns its descriptors (closed when
    /// the entry goes, once woken) and a dictionary holds only copyable values.
    /// SAFETY: `arming` and `firedWhileArming` are read and written under
    /// `state`'s lock only; the rest is immutable.
    private final class Parked: @unchecked Sendable {
        let descriptors: OwnedDescriptors
        let resume: @Sendable () -> Void
        /// `park` is still adding descriptors: one that fires meanwhile is
        /// noted here instead of closing descriptors `park` is still using.
        var arming = true
        var firedWhileArming = false

        init(descriptors: consuming OwnedDescriptors, resume: @escaping @Sendable () -> Void) {
            self.descriptors = descriptors
            self.resume = resume
        }
    }
    private let epoll: Epoll
    private let state = Mutex<(next: UInt64, parked: [UInt64: Parked], started: Bool)>((1, [:], false))

    init() {
        do { epoll = try Epoll() } catch { preconditionFailure("epoll_create1 failed: \(error)") }
    }

    /// Entries waiting (tests and metrics).
    public var parkedCount: Int { state.withLock { $0.parked.count } }

    /// Watches `descriptors` (the reactor owns them from now on and closes
    /// them: pass duplicates of shared ones) and runs `resume` once, on the
    /// reactor's thread, when any of them is readable.
    public func park(descriptors: [Int32], resume: @escaping @Sendable () -> Void) {
        park(descriptors: OwnedDescriptors(adopting: descriptors), resume: resume)
    }

    /// Watches `descriptors`, closed once the entry is woken, and runs
    /// `resume` once, on the reactor's thread, when any of them is readable.
    public func park(descriptors: consuming OwnedDescriptors, resume: @escaping @Sendable () -> Void) {
        let watching = descriptors.raw
        var entry = Optional(Parked(descriptors: descriptors, resume: resume))
        let (id, start) = state.withLock { s -> (UInt64, Bool) in
            let id = s.next
            s.next += 1
            s.parked[id] = entry.take()  // the only reference: woken, the entry closes its descriptors
            defer { s.started = true }
            return (id, !s.started)
        }
        if start { JoinableThread { self.loop() }.detach() }
        // Cannot watch one (EPERM, EEXIST): do not strand the worker, resume it now.
        let watched = watching.allSatisfy { fd in
            if case .failure = epoll.add(fd, for: .readable, token: id) { return false }
            return true
        }
        let fireNow = state.withLock { s -> Bool in
            s.parked[id]!.arming = false
            return !watched || s.parked[id]!.firedWhileArming
        }
        if fireNow { wake(id) }
    }

    /// A descriptor of entry `id` is readable (the reactor's thread).
    private func fired(_ id: UInt64) {
        let armed = state.withLock { s -> Bool in
            guard s.parked[id]?.arming == true else { return true }
            s.parked[id]!.firedWhileArming = true
            return false
        }
        if armed { wake(id) }
    }

    private func wake(_ id: UInt64) {
        guard let resume = unpark(id) else { return }
        resume()
    }

    /// Takes entry `id` out; its descriptors close as it goes, on return.
    private func unpark(_ id: UInt64) -> (@Sendable () -> Void)? {
        guard let entry = state.withLock({ $0.parked.removeValue(forKey: id) }) else { return nil }
        for fd in entry.descriptors.raw { _ = epoll.remove(fd) }  // ENOENT if park never got to it
        return entry.resume
    }

    private func loop() {
        while true {
            // Level-triggered: an entry still arming is reported again until
            // `park` finishes and wakes it.
            _ = epoll.wait(timeoutMilliseconds: -1, maximumEvents: 64) { token, _ in fired(token) }
        }
    }
}

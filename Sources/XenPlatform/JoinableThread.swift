import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A joinable pthread running a closure (no Foundation on the data path).
public struct JoinableThread: ~Copyable {
    private var thread: pthread_t

    public init(_ body: @escaping @Sendable () -> Void) {
        thread = startThread(body)
    }

    /// Lets the thread run on its own; nobody will join it.
    public consuming func detach() {
        pthread_detach(thread)
        discard self
    }

    public consuming func join() {
        pthread_join(thread, nil)
        discard self
    }

    deinit { pthread_join(thread, nil) }
}


/// Threads started together and joined together (an array of
/// `JoinableThread` cannot exist: it is noncopyable).
public final class ThreadGroup {
    private var threads: [pthread_t] = []

    public init() {}

    public func spawn(_ body: @escaping () -> Void) {
        threads.append(startThread(body))
    }

    public func joinAll() {
        for t in threads { pthread_join(t, nil) }
        threads = []
    }

    deinit { joinAll() }
}

private final class ThreadBody {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}

/// pthread_create running `body`; the new thread owns the closure.
private func startThread(_ body: @escaping () -> Void) -> pthread_t {
    let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { arg in
        // SAFETY: arg is the retained ThreadBody passed below; this thread takes ownership.
        Unmanaged<ThreadBody>.fromOpaque(arg!).takeRetainedValue().run()
        return nil
    }, box)
    precondition(rc == 0, "pthread_create failed: \(rc)")
    return thread
}

/// A worker's own thread, awaitable from async code without blocking it.
/// The body (and what it captured: the ring worker) is released before
/// waiters resume, so a finished thread holds no mapping.
public final class WorkerThread: Sendable {
    private let state = Mutex<(done: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    private final class Body: @unchecked Sendable {
        // Touched only by the thread.
        var run: (@Sendable () -> Void)?
        init(_ run: @escaping @Sendable () -> Void) { self.run = run }
    }

    /// Starts `body` on a new detached thread; `onStart` runs first on it.
    public init(onStart: (@Sendable () -> Void)? = nil, _ body: @escaping @Sendable () -> Void) {
        let holder = Body(body)
        JoinableThread {
            onStart?()
            holder.run?()
            holder.run = nil
            self.markFinished()
        }.detach()
    }

    private func markFinished() {
        let waiters = state.withLock { s in
            s.done = true
            defer { s.waiters = [] }
            return s.waiters
        }
        for w in waiters { w.resume() }
    }

    /// Returns once the body has returned and been released.
    public func finished() async {
        await withCheckedContinuation { c in
            let done = state.withLock { s in
                if !s.done { s.waiters.append(c) }
                return s.done
            }
            if done { c.resume() }
        }
    }
}

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

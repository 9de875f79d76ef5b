#if canImport(Glibc)
import Glibc
#endif

/// A joinable pthread running a closure (no Foundation on the data path).
public struct JoinableThread: ~Copyable {
    private var thread: pthread_t

    private final class Box { let body: () -> Void; init(_ b: @escaping () -> Void) { body = b } }

    public init(_ body: @escaping @Sendable () -> Void) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { arg in
            // SAFETY: arg is the retained Box passed below; this thread takes ownership.
            Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue().body()
            return nil
        }, box)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        self.thread = thread
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
    private final class Box { let body: () -> Void; init(_ b: @escaping () -> Void) { body = b } }

    public init() {}

    public func spawn(_ body: @escaping () -> Void) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { arg in
            // SAFETY: arg is the retained Box passed below; this thread takes ownership.
            Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue().body()
            return nil
        }, box)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        threads.append(thread)
    }

    public func joinAll() {
        for t in threads { pthread_join(t, nil) }
        threads = []
    }

    deinit { joinAll() }
}

import CXenShims
import Synchronization
import XenSystem
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

/// A hook run at the start of every worker thread of one kind (benchmarks
/// turn on per-thread allocation counting with it); not for the data path.
public final class WorkerStartHook: Sendable {
    private let hook = Mutex<(@Sendable () -> Void)?>(nil)
    public init() {}
    public func set(_ body: (@Sendable () -> Void)?) { hook.withLock { $0 = body } }
    public func run() { hook.withLock { $0 }?() }
}

/// The workers serving one device's rings or queues, stopped together.
/// Each body gets its index and the descriptor that becomes readable on
/// stop. A body that returns `.idle` gives its thread back: the worker is
/// parked in the `IdleReactor` on its wake descriptors (and the stop
/// descriptor) and gets a new thread when one fires, so an idle device
/// holds no thread.
public final class RingWorkerGroup: Sendable {
    /// Owned by the group and closed when it goes (not at `stop`), so a
    /// late `requestStop` never writes to a closed descriptor.
    private let stopEvent: OwnedDescriptor
    public var stopDescriptor: Int32 { stopEvent.raw }
    private let body: @Sendable (_ index: Int, _ stopDescriptor: Int32) -> WorkerExit
    private let wakeDescriptors: @Sendable (_ index: Int) -> [Int32]
    private let onStart: WorkerStartHook?
    private let reactor: IdleReactor
    /// Workers not yet stopped, those on a thread now, and who waits for the last.
    private let state = Mutex<(active: Int, running: Int, waiters: [CheckedContinuation<Void, Never>])>((0, 0, []))

    public init(count: Int, onStart: WorkerStartHook? = nil, reactor: IdleReactor = .shared,
                wakeDescriptors: @escaping @Sendable (_ index: Int) -> [Int32] = { _ in [] },
                _ body: @escaping @Sendable (_ index: Int, _ stopDescriptor: Int32) -> WorkerExit) throws(EventChannelError) {
        do { stopEvent = try OwnedDescriptor(eventfd: Int32(EFD_CLOEXEC)) } catch {
            throw .system(operation: "eventfd", errno: error.code)
        }
        self.body = body
        self.wakeDescriptors = wakeDescriptors
        self.onStart = onStart
        self.reactor = reactor
        state.withLock { $0.active = count }
        for i in 0..<count { startThread(i) }
    }

    /// Workers on a thread right now (the rest are parked or stopped).
    public var runningThreads: Int { state.withLock { $0.running } }

    private func startThread(_ index: Int) {
        state.withLock { $0.running += 1 }
        let hook = onStart
        JoinableThread {
            hook?.run()
            let exit = self.body(index, self.stopDescriptor)
            self.state.withLock { $0.running -= 1 }
            switch exit {
            case .idle:
                // The reactor owns what it watches: our own copies (one that
                // cannot be made is left out), the stop descriptor's too.
                var wake = OwnedDescriptors()
                for fd in self.wakeDescriptors(index) + [self.stopDescriptor] where fd >= 0 {
                    if let copy = try? OwnedDescriptor(duplicating: fd) { wake.append(copy) }
                }
                self.reactor.park(descriptors: wake) { self.startThread(index) }
            case .stopped:
                let waiters = self.state.withLock { s -> [CheckedContinuation<Void, Never>] in
                    s.active -= 1
                    guard s.active == 0 else { return [] }
                    defer { s.waiters = [] }
                    return s.waiters
                }
                for w in waiters { w.resume() }
            }
        }.detach()
    }

    /// Asks every worker to stop (they answer what they have in flight
    /// first); parked ones are woken for it.
    public func requestStop() {
        Syscall.signalEventFD(stopDescriptor)
    }

    /// Stops the workers and waits until every body returned `.stopped`.
    public func stop() async {
        requestStop()
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let done = state.withLock { s -> Bool in
                if s.active > 0 { s.waiters.append(c) }
                return s.active == 0
            }
            if done { c.resume() }
        }
    }
}

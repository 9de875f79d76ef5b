import Synchronization
import XenPlatform

/// A ring (block) or queue (network) worker, as its device drives it from
/// the control side: run on a thread of its own, parked when idle.
public protocol ServedRing<Counter>: AnyObject, Sendable {
    associatedtype Counter: WorkerCounter
    associatedtype Failure: Error
    /// Serves until the stop descriptor fires (`.stopped`) or, with
    /// `parkAfterMilliseconds` > 0, until idle that long (`.idle`).
    func run(stopDescriptor: Int32, parkAfterMilliseconds: Int) throws(Failure) -> WorkerExit
    /// What wakes the worker once parked.
    var wakeDescriptors: [Int32] { get }
    var statistics: WorkerCounters<Counter> { get }
    /// Unbinds its ports and unmaps the guest's pages; safe to repeat.
    func releaseGuestResources()
}

/// The workers serving a device's current connection, one thread each
/// while busy (idle ones parked in the `IdleReactor`), and the counters of
/// the connections before it. The part block and network devices share;
/// what differs is how each makes its workers at connect.
public final class ServedRings<Counter: WorkerCounter>: Sendable {
    private struct State {
        var workers: [any ServedRing<Counter>] = []
        var threads: RingWorkerGroup?
        var retired = WorkerCounters<Counter>.Snapshot.zero
    }
    private let state = Mutex(State())

    public init() {}

    /// The device's counters: its workers' summed, past connections included.
    public var statistics: WorkerCounters<Counter>.Snapshot {
        state.withLock { s in s.workers.reduce(s.retired) { $0 + $1.statistics.snapshot } }
    }

    /// Workers on a thread now (idle ones are parked without one).
    public var runningThreads: Int { state.withLock { $0.threads?.runningThreads ?? 0 } }

    /// Starts a thread for each worker. A worker whose `run` throws (the
    /// frontend broke its ring) stops alone; `failed` is told which and why.
    /// A stopped worker gives the guest's pages back on its own thread,
    /// before the group counts it stopped.
    public func start(_ workers: [any ServedRing<Counter>], parkAfterMilliseconds: Int, onStart: WorkerStartHook?,
                      failed: @escaping @Sendable (_ index: Int, _ error: any Error) -> Void) throws(EventChannelError) {
        let threads = try RingWorkerGroup(count: workers.count, onStart: onStart,
                                          wakeDescriptors: { workers[$0].wakeDescriptors }) { index, stop in
            let exit: WorkerExit
            do { exit = try workers[index].run(stopDescriptor: stop, parkAfterMilliseconds: parkAfterMilliseconds) } catch {
                failed(index, error)
                exit = .stopped
            }
            // The group's closures hold the worker a moment longer: its
            // guest pages must not wait for the last reference to go.
            if exit == .stopped { workers[index].releaseGuestResources() }
            return exit
        }
        state.withLock {
            $0.workers = workers
            $0.threads = threads
        }
    }

    /// Asks every worker to stop without waiting (a fatal frontend error).
    public func requestStop() {
        state.withLock { $0.threads }?.requestStop()
    }

    /// Stops the workers (each answers what it has in flight first) and
    /// folds their counters into the device's. False if none were running.
    @discardableResult
    public func stop() async -> Bool {
        let threads = state.withLock { s -> RingWorkerGroup? in
            defer { s.threads = nil }
            return s.threads
        }
        guard let threads else { return false }
        await threads.stop()
        state.withLock { s in
            s.retired = s.workers.reduce(s.retired) { $0 + $1.statistics.snapshot }
            s.workers = []  // the last references: rings unmapped, ports unbound
        }
        return true
    }
}

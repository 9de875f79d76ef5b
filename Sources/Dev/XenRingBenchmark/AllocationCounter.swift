import CXenShims
import MallocInterposerSwift

/// Counts malloc calls in a window, through ordo-one's malloc-interposer
/// (linked into the process, so its malloc is found before libc's), on the
/// threads that call `measureThisThread()` only: other work in the process
/// (parallel tests, the main thread) does not count.
public enum AllocationCounter {
    /// Whether the interposer really sees this process's allocations; if not,
    /// counts are reported as unknown rather than as a false zero.
    public static let isActive: Bool = {
        MallocInterposerSwift.initialize()
        MallocInterposerSwift.reset()
        MallocInterposerSwift.hook()
        // SAFETY: allocated and freed on the spot, never touched: only the
        // interposer's count of it matters.
        let probe = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 16)
        probe.deallocate()
        MallocInterposerSwift.unhook()
        return MallocInterposerSwift.getStatistics().mallocCount > 0
    }()

    /// Counts this thread's allocations between `start()` and `stop()`.
    public static func measureThisThread() { CXenShims_count_allocations_on_this_thread(1) }

    /// Starts counting mallocs on the measured threads.
    public static func start() {
        guard isActive else { return }
        CXenShims_reset_counted_allocations()
        MallocInterposerSwift.setAllocationHook(CXenShims_allocation_hook)
        MallocInterposerSwift.hook()
    }

    /// Stops counting; the mallocs since `start()`, nil if the counter is inactive.
    public static func stop() -> Int? {
        guard isActive else { return nil }
        MallocInterposerSwift.unhook()
        MallocInterposerSwift.setAllocationHook(nil)
        return CXenShims_counted_allocations()
    }
}

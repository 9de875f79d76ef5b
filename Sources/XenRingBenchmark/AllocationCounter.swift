import MallocInterposerSwift

/// Counts malloc calls in a window, through ordo-one's malloc-interposer
/// (linked into the process, so its malloc is found before libc's).
public enum AllocationCounter {
    /// Whether the interposer really sees this process's allocations; if not,
    /// counts are reported as unknown rather than as a false zero.
    public static let isActive: Bool = {
        MallocInterposerSwift.initialize()
        MallocInterposerSwift.reset()
        MallocInterposerSwift.hook()
        let probe = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 16)
        probe.deallocate()
        MallocInterposerSwift.unhook()
        return MallocInterposerSwift.getStatistics().mallocCount > 0
    }()

    /// Starts counting mallocs on every thread.
    public static func start() {
        guard isActive else { return }
        MallocInterposerSwift.reset()
        MallocInterposerSwift.hook()
    }

    /// Stops counting; the mallocs since `start()`, nil if the counter is inactive.
    public static func stop() -> Int? {
        guard isActive else { return nil }
        MallocInterposerSwift.unhook()
        return MallocInterposerSwift.getStatistics().mallocCount
    }
}

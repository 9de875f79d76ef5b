#if canImport(Glibc)
import XenSystem
import Glibc
#endif

/// The child's side of ``ChildProcess``'s lifeline: a pipe whose only write
/// end is held by the parent, so end of file on our read end means the parent
/// is gone, however it died (a crashed test runner, SIGKILL).
///
/// Not PR_SET_PDEATHSIG: that fires when the *thread* that spawned us exits,
/// and the parent's Swift concurrency threads come and go.
public enum ParentLifeline {
    /// Names the inherited read end's descriptor number.
    public static let environmentVariable = "XENBACK_LIFELINE_FD"

    /// Seconds between SIGTERM and a forced exit once the parent is gone.
    static let graceSeconds: UInt32 = 10

    /// Call first thing in `main`. Without a lifeline, does nothing. With one,
    /// a thread waits on it; once the parent is gone it sends this process
    /// SIGTERM (its graceful shutdown) and, if that has not ended it within
    /// ten seconds, exits with status 70.
    public static func honour() {
        guard let value = getenv(environmentVariable) else { return }
        let text = String(cString: value)
        // Not for our own children: they get their own lifeline from us.
        unsetenv(environmentVariable)
        var status = stat()
        guard let fd = Int32(text), fd > 2, fstat(fd, &status) == 0, status.st_mode & S_IFMT == S_IFIFO else { return }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        var thread = pthread_t()
        // The descriptor travels in the context pointer (offset so that 0
        // is never a null pointer); the thread owns it from here on.
        // SAFETY: the pointer is never dereferenced: it only carries the number.
        let created = pthread_create(&thread, nil, { context in
            let fd = Int32(Int(bitPattern: context) - 1)
            var byte: UInt8 = 0
            // The parent never writes: only end of file or an error ends this
            // (the funnel retries EINTR).
            while case .success(let n) = Syscall.read(fd, &byte, count: 1), n > 0 {}
            kill(getpid(), SIGTERM)
            sleep(ParentLifeline.graceSeconds)
            _exit(70)
        }, UnsafeMutableRawPointer(bitPattern: Int(fd) + 1))
        if created == 0 { pthread_detach(thread) } else { Syscall.close(fd) }
    }
}

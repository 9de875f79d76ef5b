import CXenShims
import XenSystem
#if canImport(Glibc)
import Glibc
#endif

public struct ChildProcessError: Error, CustomStringConvertible {
    public var description: String
}

/// A program started with posix_spawn, its standard output on a pipe we
/// read line by line (standard error is inherited, or sent to a file).
///
/// Unless told otherwise the child does not outlive us: it gets the read end
/// of a lifeline pipe (see ``ParentLifeline``) whose only write end we hold,
/// so however we die, even by SIGKILL, xenback programs stop with us.
public final class ChildProcess: @unchecked Sendable {
    public let pid: pid_t
    /// SAFETY: the stdio stream fdopen made over our pipe end: owned by
    /// this object and closed by `wait`; `line`, `hasOutput` and
    /// `outputDescriptor` are for before `wait` only.
    private let output: UnsafeMutablePointer<FILE>
    public var outputDescriptor: Int32 { fileno(output) }
    private var exitStatus: Int32?
    /// Our end of the lifeline (nil without one). Closed once the child has
    /// been waited for, or when this object goes away: closing it tells the
    /// child to stop.
    private var lifeline: OwnedDescriptor?

    /// `diesWithParent: false` is for children meant to keep running after
    /// we exit (`xenback guest create` leaves its frontends behind).
    public init(_ arguments: [String], standardError: String? = nil, diesWithParent: Bool = true) throws {
        // Close-on-exec from birth, so no other child started meanwhile (by
        // any thread) inherits these ends and keeps a pipe open.
        // All four ends are owned: a throw below closes those still open.
        var fds: [Int32] = [0, 0]
        guard CXenShims_pipe_cloexec(&fds) == 0 else { throw ChildProcessError(description: "pipe: errno \(errno)") }
        let outputReadEnd = OwnedDescriptor(adopting: fds[0]), outputWriteEnd = OwnedDescriptor(adopting: fds[1])
        var lifelineReadEnd: OwnedDescriptor? = nil, lifelineWriteEnd: OwnedDescriptor? = nil
        if diesWithParent {
            var pair: [Int32] = [-1, -1]
            guard CXenShims_pipe_cloexec(&pair) == 0 else { throw ChildProcessError(description: "pipe2 for the lifeline: errno \(errno)") }
            lifelineReadEnd = OwnedDescriptor(adopting: pair[0])
            lifelineWriteEnd = OwnedDescriptor(adopting: pair[1])
        }
        let childLifeline = lifelineReadEnd?.raw ?? -1
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_adddup2(&actions, outputWriteEnd.raw, 1)
        // dup2 onto the same number clears close-on-exec in the child only
        // (POSIX 2024; glibc since 2.29), so the child keeps the read end.
        if diesWithParent { posix_spawn_file_actions_adddup2(&actions, childLifeline, childLifeline) }
        if let standardError { posix_spawn_file_actions_addopen(&actions, 2, standardError, O_WRONLY | O_CREAT | O_APPEND, 0o644) }
        var pid: pid_t = 0
        let argv = arguments.map { strdup($0) } + [nil]
        // The environment, with the lifeline's descriptor number in place of
        // any inherited from our own parent.
        // SAFETY: `environ` is the C library's NULL-terminated array, walked
        // up to its terminator and copied (strdup) before anything could
        // change it; the copies are ours and freed by the defer below.
        var environment = [UnsafeMutablePointer<CChar>?]()
        var entry: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?> = environ
        while let variable = entry.pointee {
            if !String(cString: variable).hasPrefix(ParentLifeline.environmentVariable + "=") { environment.append(strdup(variable)) }
            entry += 1
        }
        if diesWithParent { environment.append(strdup("\(ParentLifeline.environmentVariable)=\(childLifeline)")) }
        environment.append(nil)
        defer {
            argv.forEach { free($0) }
            environment.forEach { free($0) }
        }
        let rc = posix_spawn(&pid, arguments[0], &actions, nil, argv, environment)
        posix_spawn_file_actions_destroy(&actions)
        // The child's ends are the child's now.
        outputWriteEnd.close()
        lifelineReadEnd = nil
        guard rc == 0 else { throw ChildProcessError(description: "cannot start \(arguments[0]): \(String(cString: strerror(rc)))") }
        self.pid = pid
        output = fdopen(outputReadEnd.take(), "r")  // the stream owns it from here
        lifeline = lifelineWriteEnd
    }

    /// The next line the child prints, without its newline (nil at end of output).
    public func line() -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        guard fgets(&buffer, Int32(buffer.count), output) != nil else { return nil }
        var s = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if s.hasSuffix("\n") { s.removeLast() }
        return s
    }

    /// Whether a line can be read now (or the output ended) within `milliseconds`.
    public func hasOutput(milliseconds: Int32) -> Bool {
        // An interruption counts as nothing to read, as the caller asks again.
        if case .success(let n) = Syscall.poll(fileno(output), timeoutMilliseconds: milliseconds, retryingInterrupts: false) {
            return n > 0
        }
        return false
    }

    public func signal(_ s: Int32) { if exitStatus == nil { kill(pid, s) } }

    /// Waits for exit: the exit status, or 128 + the signal that ended it.
    @discardableResult
    public func wait() -> Int32 {
        if let exitStatus { return exitStatus }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        fclose(output)
        lifeline = nil
        let code = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        exitStatus = code
        return code
    }
}

/// The path of a program installed next to the running one (xenback finds
/// xenbackd this way).
public func siblingExecutable(_ name: String) -> String? {
    var exe = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &exe, exe.count - 1)
    guard n > 0 else { return nil }
    let me = String(decoding: exe.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    guard let slash = me.lastIndex(of: "/") else { return nil }
    let path = String(me[..<slash]) + "/" + name
    return access(path, X_OK) == 0 ? path : nil
}

/// Runs `command` with /bin/sh and returns its exit status and standard
/// output (add `2>&1` to the command for standard error too).
public func runShell(_ command: String) -> (Int32, String) {
    guard let pipe = popen(command, "r") else { return (-1, "") }
    var output = [UInt8]()
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&buffer, 1, buffer.count, pipe)
        if n == 0 { break }
        output += buffer[0..<n]
    }
    let status = pclose(pipe)
    return ((status >> 8) & 0xff, String(decoding: output, as: UTF8.self))
}

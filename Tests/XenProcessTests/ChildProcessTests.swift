#if canImport(Glibc)
import Glibc
#endif
import CXenShims
import Testing
import XenProcess
import XenProtocolTesting

/// Waits (up to `milliseconds`, a failure deadline) for `pid` to exit,
/// watching a pidfd; true if it did. Does not reap it.
func exits(_ pid: pid_t, withinMilliseconds milliseconds: Int32) async throws -> Bool {
    let fd = CXenShims_pidfd_open(pid)
    guard fd >= 0 else { return errno == ESRCH }
    defer { close(fd) }
    return try await offThePool { () -> Bool in
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, milliseconds) == 1
    }
}

/// Reaps `pid` (a child whose ChildProcess is gone): its exit status, or
/// 128 + the signal that ended it.
func reap(_ pid: pid_t) -> Int32 {
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
}

/// Reads what is left on `fd` until end of file (bounded by a deadline).
func readToEnd(_ fd: Int32) -> String {
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, 30_000) == 1 else { break }
        let n = read(fd, &buffer, buffer.count)
        if n <= 0 { break }
        out += buffer[..<n]
    }
    return String(decoding: out, as: UTF8.self)
}

@Suite struct ChildProcessTests {
    /// Output line by line without newlines, nil at its end; the exit status.
    @Test func linesAndExitStatus() throws {
        let child = try ChildProcess(["/bin/sh", "-c", "echo one; printf 'two\\n\\nlast'; exit 3"])
        #expect(child.line() == "one")
        #expect(child.line() == "two")
        #expect(child.line() == "")
        #expect(child.line() == "last", "a last line without a newline")
        #expect(child.line() == nil)
        #expect(child.wait() == 3)
        #expect(child.wait() == 3, "waiting again gives the same status")
    }

    /// A child ended by a signal reports 128 + the signal, as a shell does;
    /// `hasOutput` tells whether a line can be read without blocking.
    /// (SIGKILL: see the known issue below for SIGTERM.)
    @Test func signalsAndHasOutput() throws {
        let child = try ChildProcess(["/bin/sh", "-c", "echo ready; exec tail -f /dev/null"])
        #expect(child.hasOutput(milliseconds: 30_000))
        #expect(child.line() == "ready")
        #expect(!child.hasOutput(milliseconds: 0), "nothing more until it is stopped")
        child.signal(SIGKILL)
        #expect(child.wait() == 128 + SIGKILL)
        child.signal(SIGKILL)  // after wait: not sent to a pid that may be reused
    }

    /// A child should start with no signals blocked, whatever thread
    /// started it, so that SIGTERM stops a plain program. posix_spawn gives
    /// it the spawning thread's mask, and Swift's pool threads (libdispatch
    /// workers) block SIGTERM, SIGINT and SIGHUP; ChildProcess does not reset
    /// the mask (POSIX_SPAWN_SETSIGMASK). Spawned here from a thread that
    /// blocks SIGTERM; recorded as a known issue until ChildProcess resets it.
    @Test func aChildStartsWithNoSignalsBlocked() async throws {
        let line = try await offThePool { () -> String? in
            var term = sigset_t()
            sigemptyset(&term)
            sigaddset(&term, SIGTERM)
            pthread_sigmask(SIG_BLOCK, &term, nil)
            let child = try ChildProcess(["/bin/grep", "SigBlk", "/proc/self/status"])
            defer { child.wait() }
            return child.line()
        }
        let mask = try #require(line?.split(separator: "\t").last.flatMap { UInt64($0, radix: 16) }, "\(line ?? "no output")")
        withKnownIssue("ChildProcess passes on the spawning thread's blocked signals") {
            #expect(mask & (1 << (UInt64(SIGTERM) - 1)) == 0, "SIGTERM blocked in the child: \(line ?? "")")
        }
    }

    /// Standard error can go to a file (appended); a program that does not
    /// exist is an error naming it.
    @Test func standardErrorToAFileAndAMissingProgram() throws {
        let path = "/tmp/xenback-stderr-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { unlink(path) }
        for word in ["first", "second"] {
            let child = try ChildProcess(["/bin/sh", "-c", "echo \(word) >&2; echo out"], standardError: path)
            #expect(child.line() == "out")
            #expect(child.wait() == 0)
        }
        #expect(runShell("cat \(path)").1 == "first\nsecond\n")
        #expect(throws: ChildProcessError.self) { _ = try ChildProcess(["/nonexistent/xenback-program"]) }
        do {
            _ = try ChildProcess(["/nonexistent/xenback-program"])
        } catch {
            #expect("\(error)".contains("cannot start /nonexistent/xenback-program"), "\(error)")
        }
    }

    /// The lifeline: the child gets the read end of a pipe, named in
    /// XENBACK_LIFELINE_FD, whose only write end is ours; it reads end of
    /// file once we are gone (here: once the ChildProcess is released).
    @Test func theLifelineEndsWhenTheParentLetsGo() async throws {
        var child: ChildProcess? = try ChildProcess(["/bin/bash", "-c", """
            echo $XENBACK_LIFELINE_FD; readlink /proc/self/fd/$XENBACK_LIFELINE_FD; cat <&$XENBACK_LIFELINE_FD; echo parent gone
            """])
        let number = try #require(child!.line().flatMap { Int32($0) })
        #expect(number > 2)
        #expect(child!.line()?.hasPrefix("pipe:") == true, "the lifeline is a pipe")
        let pid = child!.pid
        let output = fcntl(child!.outputDescriptor, F_DUPFD_CLOEXEC, 0)
        defer { close(output) }
        #expect(!child!.hasOutput(milliseconds: 0), "the child is still waiting on its lifeline")
        child = nil
        let rest = try await offThePool { readToEnd(output) }
        #expect(rest == "parent gone\n")
        #expect(try await exits(pid, withinMilliseconds: 30_000))
        #expect(reap(pid) == 0)
    }

    /// `diesWithParent: false`: no lifeline, and a variable inherited from
    /// our own parent is not passed on to mislead the child.
    @Test func withoutALifeline() throws {
        let child = try ChildProcess(["/bin/sh", "-c", "echo ${XENBACK_LIFELINE_FD-none}"], diesWithParent: false)
        #expect(child.line() == "none")
        #expect(child.wait() == 0)
    }

    /// A real xenback program honours its lifeline: started as our child,
    /// it stops (SIGTERM to itself, its graceful shutdown) once we let go.
    /// The 30 s bound is only a failure deadline.
    @Test func aXenbackProgramStopsWhenItsParentGoes() async throws {
        let xenback = try #require(builtProduct("xenback"))
        let socket = "/tmp/xenback-lifeline-xs-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        defer { unlink(socket) }
        var child: ChildProcess? = try ChildProcess([xenback, "xenstored", "--socket", socket, "--log-level", "critical"])
        let pid = child!.pid
        child = nil
        #expect(try await exits(pid, withinMilliseconds: 30_000), "xenback xenstored outlived its parent")
        let status = reap(pid)
        #expect(status == 0 || status == 128 + SIGTERM, "stopped by the SIGTERM its lifeline sent, not killed otherwise: \(status)")
    }
}

@Suite struct ProcessHelperTests {
    /// The programs built next to the test binary are found; others are not.
    @Test func siblingExecutables() {
        let xenback = siblingExecutable("xenback")
        #expect(xenback?.hasSuffix("/xenback") == true)
        #expect(xenback.map { access($0, X_OK) == 0 } == true)
        #expect(siblingExecutable("xenback-no-such-program") == nil)
    }

    /// runShell: exit status and standard output (standard error when the
    /// command folds it in).
    @Test func runShellGivesStatusAndOutput() {
        let (status, output) = runShell("printf 'a\\nb'; exit 4")
        #expect(status == 4 && output == "a\nb")
        #expect(runShell("{ echo shown >&2; } 2>&1") == (0, "shown\n"))
    }
}

@Suite struct ParentLifelineTests {
    /// SIGKILL to `xenback demo` (as a crashed test runner would die): the
    /// sim, xenbackd and the guest's frontends it started stop too, through
    /// their lifelines, instead of running on as orphans.
    @Test func aKilledDemoTakesItsProcessesWithIt() async throws {
        let xenback = try #require(builtProduct("xenback"))
        let dir = "/tmp/xenback-lifeline-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(dir, 0o755)
        defer { _ = runShell("rm -rf \(dir)") }
        let demo = try ChildProcess([xenback, "demo", "--seconds", "600", "--directory", dir])
        // The demo prints each process it starts, then the table header.
        let lines = try await offThePool { () -> [String] in
            var lines: [String] = []
            while let line = demo.line() {
                lines.append(line)
                if line.hasPrefix("device") { break }
            }
            return lines
        }
        var namespace: String?
        if let nic = lines.first(where: { $0.contains("(namespace ") }),
           let start = nic.firstRange(of: "(namespace ")?.upperBound, let end = nic[start...].firstIndex(of: ")") {
            namespace = String(nic[start..<end])
        }
        defer {
            if let namespace { _ = runShell("ip netns del \(namespace); ip netns del xbp-\(namespace.dropFirst(4))") }
        }
        try #require(lines.last?.hasPrefix("device") == true, "the demo started everything:\n\(lines.joined(separator: "\n"))")
        let pids = lines.compactMap { line -> Int32? in
            guard let range = line.firstRange(of: " pid ") else { return nil }
            return Int32(line[range.upperBound...].prefix { $0.isNumber })
        }
        #expect(pids.count >= 3, "sim, xenbackd and a frontend at least:\n\(lines.joined(separator: "\n"))")
        let pidfds = pids.map { CXenShims_pidfd_open($0) }
        defer { pidfds.forEach { if $0 >= 0 { close($0) } } }
        #expect(pidfds.allSatisfy { $0 >= 0 }, "every child was running when the demo was killed")

        demo.signal(SIGKILL)
        #expect(demo.wait() == 128 + SIGKILL)
        // Each must exit: a pidfd turns readable then. The 30 s bound is only
        // a failure deadline (SIGTERM plus a 10 s grace at most).
        for (pid, fd) in zip(pids, pidfds) where fd >= 0 {
            let exited = try await offThePool { () -> Bool in
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                return poll(&p, 1, 30_000) == 1
            }
            #expect(exited, "pid \(pid) outlived the demo that started it")
            if !exited { kill(pid, SIGKILL) }
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
import CXenShims
import Synchronization
import Testing
import XenPlatform
import XenProtocolTesting

@Suite struct PlatformKindTests {
    @Test func autoPicksHostOnlyWhereTheXenDevicesAre() {
        #expect(PlatformKind.auto.resolved(xenDevicesPresent: true) == .host)
        #expect(PlatformKind.auto.resolved(xenDevicesPresent: false) == .sim)
        #expect(PlatformKind.sim.resolved(xenDevicesPresent: true) == .sim, "a flag overrides detection")
        #expect(PlatformKind.host.resolved(xenDevicesPresent: false) == .host)
        #expect(PlatformKind(rawValue: "kvm") == nil)
        #expect(PlatformKind.allCases.map(\.rawValue) == ["auto", "host", "sim"], "the --platform values")
        let devices = access("/dev/xen/gntdev", F_OK) == 0 && access("/dev/xen/evtchn", F_OK) == 0
        #expect(PlatformKind.xenDevicesPresent == devices)
        #expect(PlatformKind.auto.resolved() == (devices ? .host : .sim))
    }
}

/// An event channel device whose readiness is an eventfd: enough to drive
/// the protocol's shared `wait`.
final class EventFDDevice: EventChannelDevice {
    let fileDescriptor = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
    deinit { close(fileDescriptor) }
    func raise() { var one: UInt64 = 1; _ = write(fileDescriptor, &one, 8) }
    func bindInterdomain(remoteDomain: DomainID, remotePort: EventChannelPort) throws(EventChannelError) -> EventChannelPort { remotePort }
    func notify(_ port: EventChannelPort) throws(EventChannelError) {}
    func unmask(_ port: EventChannelPort) throws(EventChannelError) {}
    func unbind(_ port: EventChannelPort) throws(EventChannelError) {}
    func takePending(into ports: UnsafeMutableBufferPointer<EventChannelPort>) throws(EventChannelError) -> Int {
        var value: UInt64 = 0
        return read(fileDescriptor, &value, 8) == 8 ? 1 : 0
    }
}

/// Grant operations that record what reached them and set statuses.
final class RecordingGrants: GrantOperations, @unchecked Sendable {
    var mapped: [[GrantRef]] = []
    func map(_ refs: UnsafeBufferPointer<GrantRef>, of domain: DomainID, writable: Bool) throws(GrantError) -> GrantMapping {
        mapped.append(Array(refs))
        guard refs.allSatisfy({ $0.rawValue < 100 }) else {
            throw .mapFailed(domain: domain, refs: Array(refs), statuses: refs.map { $0.rawValue < 100 ? .okay : .badGrantRef })
        }
        return GrantMapping(base: UnsafeMutableRawPointer(bitPattern: 0x1000)!, pageCount: refs.count, domain: domain, writable: writable, handle: 1)
    }
    func unmap(_ mapping: GrantMapping) throws(GrantError) {}
    func copy(_ operations: UnsafeMutableBufferPointer<GrantCopyOperation>) throws(GrantError) {
        for i in operations.indices { operations[i].status = operations[i].length <= 4096 ? .okay : .badCopyArgument }
    }
    func setUnmapNotify(_ mapping: GrantMapping, clearingByteAt offset: Int?, notifying port: EventChannelPort?) throws(GrantError) {}
}

@Suite struct PlatformInterfaceTests {
    /// `wait` sleeps on the device's descriptor: false after the timeout
    /// with nothing pending, true as soon as an event is.
    @Test func waitFollowsTheDescriptor() throws {
        let device = EventFDDevice()
        #expect(!device.wait(timeoutMilliseconds: 0))
        #expect(!device.wait(timeoutMilliseconds: 20))
        device.raise()
        #expect(device.wait(timeoutMilliseconds: 0))
        var ports = [EventChannelPort](repeating: EventChannelPort(0), count: 4)
        #expect(try ports.withUnsafeMutableBufferPointer { try device.takePending(into: $0) } == 1)
        #expect(!device.wait(timeoutMilliseconds: 0), "taken: nothing pending again")
    }

    /// The array conveniences pass the refs through in order, and copy
    /// statuses come back into the caller's array.
    @Test func arrayConveniencesForwardToTheBufferCalls() throws {
        let grants = RecordingGrants()
        let mapping = try grants.map([GrantRef(8), GrantRef(9), GrantRef(10)], of: DomainID(5), writable: true)
        #expect(grants.mapped == [[GrantRef(8), GrantRef(9), GrantRef(10)]])
        #expect(mapping.pageCount == 3 && mapping.byteCount == 3 * 4096 && mapping.writable && mapping.domain == DomainID(5))
        #expect(throws: GrantError.mapFailed(domain: DomainID(5), refs: [GrantRef(8), GrantRef(200)], statuses: [.okay, .badGrantRef])) {
            _ = try grants.map([GrantRef(8), GrantRef(200)], of: DomainID(5), writable: false)
        }
        var local = [UInt8](repeating: 0, count: 8)
        try local.withUnsafeMutableBytes { buffer in
            var operations = [
                GrantCopyOperation(source: .grant(GrantRef(8), domain: DomainID(5), offset: 0), destination: .local(buffer.baseAddress!), length: 8),
                GrantCopyOperation(source: .local(buffer.baseAddress!), destination: .grant(GrantRef(9), domain: DomainID(5), offset: 0), length: 5000),
            ]
            #expect(operations.map(\.status) == [.generalError, .generalError], "unset until the copy runs")
            try grants.copy(&operations)
            #expect(operations.map(\.status) == [.okay, .badCopyArgument])
        }
    }

    /// A failed mapping names each bad ref with its position and status,
    /// so a log line says which segment of which request was wrong.
    @Test func errorsSayWhatFailed() {
        let error = GrantError.mapFailed(domain: DomainID(5), refs: [GrantRef(8), GrantRef(9), GrantRef(10)],
                                         statuses: [.okay, .badGrantRef, .permissionDenied])
        #expect("\(error)" == "mapping 3 grant(s) of dom5 failed: #1 gref 9: bad grant reference, #2 gref 10: permission denied")
        #expect("\(GrantStatus(rawValue: -10))" == "copy crosses a page boundary")
        #expect("\(GrantStatus(rawValue: -99))" == "GNTST -99")
        #expect("\(EventChannelError.cannotBind(remoteDomain: DomainID(3), remotePort: EventChannelPort(7), reason: "taken"))"
                == "cannot bind to dom3 port 7: taken")
    }
}

// MARK: - Threads

/// A counting semaphore on an eventfd: other threads signal, a test waits
/// with a deadline that is only there to fail instead of hanging.
final class Beacon: Sendable {
    let fd = eventfd(0, Int32(EFD_CLOEXEC | EFD_SEMAPHORE | EFD_NONBLOCK))
    deinit { close(fd) }
    func signal() { var one: UInt64 = 1; _ = write(fd, &one, 8) }
    /// Takes one signal, waiting up to `milliseconds`; false if none came.
    func wait(milliseconds: Int32 = 10_000) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, milliseconds) == 1 else { return false }
        var value: UInt64 = 0
        return read(fd, &value, 8) == 8
    }
}

/// A close-on-exec pipe: children other tests start must not hold an end.
func makePipe() throws -> (read: Int32, write: Int32) {
    var fds: [Int32] = [0, 0]
    try #require(CXenShims_pipe_cloexec(&fds) == 0)
    return (fds[0], fds[1])
}

/// True once nobody holds the read end of the pipe whose write end is `fd`.
func readEndClosed(_ fd: Int32) -> Bool {
    var p = pollfd(fd: fd, events: 0, revents: 0)
    return poll(&p, 1, 0) == 1 && p.revents & Int16(POLLERR) != 0
}

@Suite struct IdleReactorTests {
    /// A parked entry resumes once its descriptor is readable, and the
    /// reactor closes what it watched (it owns it from `park` on).
    @Test func resumesWhenADescriptorBecomesReadableAndClosesIt() throws {
        let beacon = Beacon()
        let pipe = try makePipe()
        defer { close(pipe.write) }
        IdleReactor.shared.park(descriptors: [pipe.read]) { beacon.signal() }
        #expect(!beacon.wait(milliseconds: 50), "nothing to read: still parked")
        #expect(!readEndClosed(pipe.write))
        var byte: UInt8 = 1
        #expect(write(pipe.write, &byte, 1) == 1)
        #expect(beacon.wait(), "resumed")
        #expect(readEndClosed(pipe.write), "the reactor closed the read end before resuming")
    }

    /// Level-triggered: an event that came before `park` (while the worker
    /// was deciding to park) wakes it at once. With two readable
    /// descriptors it still resumes once, and both are closed.
    @Test func anEarlierEventWakesAtOnceAndOnlyOnce() throws {
        let resumes = Locked(0)
        let beacon = Beacon()
        let (a, b) = (try makePipe(), try makePipe())
        defer { close(a.write); close(b.write) }
        var byte: UInt8 = 1
        #expect(write(a.write, &byte, 1) == 1 && write(b.write, &byte, 1) == 1)
        IdleReactor.shared.park(descriptors: [a.read, b.read]) {
            resumes.withLock { $0 += 1 }
            beacon.signal()
        }
        #expect(beacon.wait())
        #expect(readEndClosed(a.write) && readEndClosed(b.write))
        // An entry parked after that one resumed is woken by a later pass of
        // the reactor: by then any second wake of the first would have run.
        let later = try makePipe()
        defer { close(later.write) }
        IdleReactor.shared.park(descriptors: [later.read]) { beacon.signal() }
        #expect(write(later.write, &byte, 1) == 1)
        #expect(beacon.wait())
        #expect(resumes.value == 1)
    }

    /// A descriptor epoll cannot watch (a regular file) must not strand the
    /// worker: it resumes at once, on the caller's thread, before `park` returns.
    @Test func anUnwatchableDescriptorResumesAtOnce() throws {
        let resumed = Locked(false)
        let file = open("/proc/self/status", O_RDONLY | O_CLOEXEC)
        try #require(file >= 0)
        IdleReactor.shared.park(descriptors: [file]) { resumed.withLock { $0 = true } }
        #expect(resumed.value)
    }
}

@Suite struct RingWorkerGroupTests {
    /// Workers that find nothing to do return `.idle` and give their thread
    /// back; a worker's own wake descriptor brings only that worker back;
    /// `stop` wakes the parked ones, which see the stop descriptor and
    /// return `.stopped`, and returns when all have.
    @Test func idleWorkersParkAndComeBackForTheirDescriptorOrForStop() async throws {
        let wake = (0..<2).map { _ in eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK)) }
        defer { wake.forEach { close($0) } }
        let calls = Locked([0, 0])
        let exits = Locked<[WorkerExit]>([])
        let beacon = Beacon()
        let group = try RingWorkerGroup(count: 2, wakeDescriptors: { [wake[$0]] }) { index, stop in
            calls.withLock { $0[index] += 1 }
            var value: UInt64 = 0
            _ = read(wake[index], &value, 8)
            var p = pollfd(fd: stop, events: Int16(POLLIN), revents: 0)
            let exit: WorkerExit = poll(&p, 1, 0) == 1 ? .stopped : .idle
            exits.withLock { $0.append(exit) }
            beacon.signal()
            return exit
        }
        #expect(beacon.wait() && beacon.wait(), "both workers ran once")
        #expect(calls.value == [1, 1])
        var one: UInt64 = 1
        #expect(write(wake[0], &one, 8) == 8)
        #expect(beacon.wait(), "worker 0 came back for its descriptor")
        #expect(calls.value == [2, 1], "worker 1 stayed parked")
        await group.stop()
        #expect(calls.value == [3, 2], "each parked worker was woken once to stop")
        #expect(exits.value.filter { $0 == .stopped }.count == 2)
        #expect(group.runningThreads == 0)
    }

    /// The start hook runs on every worker thread before its body.
    @Test func theStartHookRunsFirstOnEveryThread() async throws {
        let hook = WorkerStartHook()
        let order = Locked<[String]>([])
        hook.set { order.withLock { $0.append("hook") } }
        let group = try RingWorkerGroup(count: 3, onStart: hook) { index, stop in
            order.withLock { $0.append("body") }
            var p = pollfd(fd: stop, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, -1)
            return .stopped
        }
        await group.stop()
        let seen = order.value
        #expect(seen.filter { $0 == "hook" }.count == 3 && seen.filter { $0 == "body" }.count == 3)
        #expect(seen.first == "hook")
        hook.set(nil)
        hook.run()
        #expect(order.withLock { $0.count } == 6, "a cleared hook does nothing")
    }
}

final class Token: Sendable {}

@Suite struct ThreadTests {
    /// `finished` returns once the body has returned and been released, so
    /// what it captured (a ring worker and its mappings) is gone by then.
    @Test func workerThreadReleasesItsBodyBeforeWaitersResume() async {
        weak var captured: Token?
        let order = Locked<[String]>([])
        let thread: WorkerThread = {
            let token = Token()
            captured = token
            return WorkerThread(onStart: { order.withLock { $0.append("start") } }) {
                withExtendedLifetime(token) { order.withLock { $0.append("body") } }
            }
        }()
        await thread.finished()
        #expect(captured == nil)
        #expect(order.value == ["start", "body"])
        await thread.finished()  // again: returns at once
    }

    /// join waits for the body; a group joins all its threads; dropping a
    /// JoinableThread joins it too.
    @Test func joiningWaitsForTheBody() throws {
        let go = Beacon()
        let done = Locked(0)
        let thread = JoinableThread {
            _ = go.wait()
            done.withLock { $0 += 1 }
        }
        go.signal()
        thread.join()
        #expect(done.value == 1)

        let group = ThreadGroup()
        for _ in 0..<4 { group.spawn { _ = go.wait(); done.withLock { $0 += 1 } } }
        for _ in 0..<4 { go.signal() }
        group.joinAll()
        #expect(done.value == 5)

        do {
            let dropped = JoinableThread { _ = go.wait(); done.withLock { $0 += 1 } }
            go.signal()
            _ = consume dropped
        }
        #expect(done.value == 6, "dropped, then joined")
    }
}

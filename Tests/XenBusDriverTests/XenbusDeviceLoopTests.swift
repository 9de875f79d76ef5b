import Logging
import Synchronization
import Testing
import XenBus
import XenBusClient
import XenBusDriver
import XenPlatform
import XenSim
import XenStore

/// What the loop did, in order: its connect and disconnect calls and the
/// messages it logged.
final class Journal: Sendable {
    private let entries = Mutex<[String]>([])
    private let waiters = Mutex<[(String, CheckedContinuation<Void, Never>)]>([])
    func add(_ entry: String) {
        entries.withLock { $0.append(entry) }
        let ready = waiters.withLock { w -> [CheckedContinuation<Void, Never>] in
            let (due, rest) = (w.filter { entry.contains($0.0) }, w.filter { !entry.contains($0.0) })
            w = rest
            return due.map(\.1)
        }
        for c in ready { c.resume() }
    }
    var all: [String] { entries.withLock { $0 } }
    var calls: [String] { all.filter { $0 == "connect" || $0 == "disconnect" } }
    /// Returns once an entry containing `text` has been added (or already
    /// was); false if none has after `timeout`, a failure deadline.
    func awaitEntry(containing text: String, timeout: Duration = .seconds(20)) async -> Bool {
        let deadline = Task {
            try await Task.sleep(for: timeout)
            self.add("timed out waiting for \(text)")
        }
        defer { deadline.cancel() }
        await withCheckedContinuation { c in
            let done = entries.withLock { e in
                if e.contains(where: { $0.contains(text) }) { return true }
                waiters.withLock { $0.append((text, c)) }
                return false
            }
            if done { c.resume() }
        }
        return !all.contains("timed out waiting for \(text)")
    }
}

/// Sends the loop's log lines to the journal.
struct JournalLogHandler: LogHandler {
    let journal: Journal
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) { journal.add("log \(event.level): \(event.message)") }
}

/// A device's two directories as a toolstack leaves them (keys only; the
/// loop needs no more), the sim's xenstored, and the loop on a task.
final class LoopRig: @unchecked Sendable {
    let host: SimGuestHost
    let journal = Journal()
    let backendPath = "/local/domain/0/backend/vif/3/0"
    let frontendPath = "/local/domain/3/device/vif/0"
    var store: XenStoreClient { host.backendStore }
    /// The frontend's side writes through its own connection.
    var guest: XenStoreClient { host.frontendStore }
    var loop: XenbusDeviceLoop!
    var task: Task<Void, Error>!

    init(backendState: XenbusState = .initialising, frontendState: XenbusState = .initialising) async throws {
        host = try await SimGuestHost(guestID: DomainID(3), guestPages: 1, grantEntries: 16)
        for (key, value) in ["frontend": frontendPath, "frontend-id": "3", "online": "1", "state": "\(backendState.rawValue)"] {
            try await store.write(backendPath + "/" + key, value)
        }
        try await store.write(frontendPath + "/backend", backendPath)
        try await store.write(frontendPath + "/state", "\(frontendState.rawValue)")
        let journal = journal
        loop = XenbusDeviceLoop(xenstore: store, backendPath: backendPath, frontendPath: frontendPath,
                                logger: Logger(label: "test") { _ in JournalLogHandler(journal: journal) })
    }

    /// Starts the loop; `connect` fails with `failure` if it is set.
    func start(failure: String? = nil) {
        let journal = journal
        task = Task { [loop] in
            try await loop!.run(connect: {
                journal.add("connect")
                if let failure { throw RigError(description: failure) }
            }, disconnect: { journal.add("disconnect") })
        }
    }

    func frontend(_ state: XenbusState) async throws { try await guest.write(frontendPath + "/state", "\(state.rawValue)") }

    @discardableResult
    func backendReaches(_ state: XenbusState) async throws -> XenbusState {
        try await awaitXenbusState(guest, backendPath, timeout: .seconds(20), "backend \(state)") { $0 == state }
    }

    func backendState() async throws -> XenbusState? {
        try await store.readIfPresent(backendPath + "/state").flatMap { UInt32($0) }.flatMap { XenbusState(rawValue: $0) }
    }

    func shutdown() async {
        task?.cancel()
        _ = try? await task?.value
        await host.shutdown()
    }
}

struct RigError: Error, CustomStringConvertible { var description: String }

@Suite struct XenbusDeviceLoopTests {
    /// Probe, connect, the toolstack's detach and the frontend's close, as
    /// blkback and netback go through them: InitWait; the frontend's
    /// Initialised makes the loop connect and go Connected; online = 0 asks
    /// the frontend to close (Closing); its Closed disconnects, goes Closed
    /// and ends the loop, which disconnects once more on the way out.
    @Test func aWholeLifecycle() async throws {
        let rig = try await LoopRig()
        rig.start()
        try await rig.backendReaches(.initWait)
        #expect(rig.journal.calls.isEmpty, "nothing to connect before the frontend is ready")
        try await rig.frontend(.initialised)
        try await rig.backendReaches(.connected)
        #expect(rig.journal.calls == ["connect"])
        try await rig.frontend(.connected)
        try await rig.store.write(rig.backendPath + "/online", "0")
        try await rig.backendReaches(.closing)
        #expect(rig.journal.calls == ["connect"], "still attached until the frontend closes")
        try await rig.frontend(.closing)
        try await rig.frontend(.closed)
        try await rig.task.value
        #expect(try await rig.backendState() == .closed)
        #expect(rig.journal.calls == ["connect", "disconnect", "disconnect"])
        #expect(rig.journal.all.contains { $0.contains("device removed") })
        await rig.shutdown()
    }

    /// A connect that fails is reported in the device's `error` key, undone
    /// (disconnect) and the backend goes Closing; the frontend closing then
    /// brings it to Closed, and a frontend starting over gets InitWait again
    /// and a new connect.
    @Test func aFailedConnectIsReportedAndUndone() async throws {
        let rig = try await LoopRig()
        rig.start(failure: "ring-ref 77 is not granted")
        try await rig.backendReaches(.initWait)
        try await rig.frontend(.initialised)
        try await rig.backendReaches(.closing)
        #expect(try await rig.store.readIfPresent(rig.backendPath + "/error") == "ring-ref 77 is not granted")
        #expect(rig.journal.calls == ["connect", "disconnect"])
        try await rig.frontend(.closed)
        try await rig.backendReaches(.closed)
        try await rig.frontend(.initialising)
        try await rig.backendReaches(.initWait)
        try await rig.frontend(.initialised)
        try await rig.backendReaches(.closing)
        #expect(rig.journal.calls == ["connect", "disconnect", "connect", "disconnect"])
        await rig.shutdown()
    }

    /// Connected in xenstore from a backend that died, and a frontend still
    /// connected to it: its rings cannot be resumed, so the loop neither
    /// connects nor writes InitWait until the frontend starts over.
    @Test func aStaleConnectionIsNotResumed() async throws {
        let rig = try await LoopRig(backendState: .connected, frontendState: .connected)
        rig.start()
        #expect(await rig.journal.awaitEntry(containing: "connected to a previous backend"))
        try await rig.frontend(.initialised)  // a stale frontend may still move between its ready states
        #expect(try await rig.backendState() == .connected)
        try await rig.frontend(.initialising)
        try await rig.backendReaches(.initWait)
        #expect(rig.journal.calls.isEmpty, "the stale rings were never mapped")
        try await rig.frontend(.initialised)
        try await rig.backendReaches(.connected)
        #expect(rig.journal.calls == ["connect"])
        await rig.shutdown()
    }

    /// The frontend's directory removed under a connected device: Closing,
    /// Closed, disconnect, and the loop ends.
    @Test func aVanishedFrontendEndsTheDevice() async throws {
        let rig = try await LoopRig()
        rig.start()
        try await rig.backendReaches(.initWait)
        try await rig.frontend(.initialised)
        try await rig.backendReaches(.connected)
        try await rig.store.rm(rig.frontendPath)
        try await rig.task.value
        #expect(try await rig.backendState() == .closed)
        #expect(rig.journal.calls == ["connect", "disconnect", "disconnect"])
        await rig.shutdown()
    }

    /// Cancelling the task (the daemon shutting down) ends the loop without
    /// an error, and the device is disconnected.
    @Test func cancellationDisconnects() async throws {
        let rig = try await LoopRig()
        rig.start()
        try await rig.backendReaches(.initWait)
        try await rig.frontend(.initialised)
        try await rig.backendReaches(.connected)
        rig.task.cancel()
        try await rig.task.value
        #expect(rig.journal.calls.last == "disconnect")
        await rig.shutdown()
    }

    /// A device the driver cannot set up is reported where libxl looks.
    @Test func setupErrorsGoWhereLibxlLooks() async throws {
        let rig = try await LoopRig()
        await rig.loop.reportSetupError(RigError(description: "cannot open /nonexistent/disk.img"))
        #expect(try await rig.store.readIfPresent(rig.backendPath + "/hotplug-error") == "cannot open /nonexistent/disk.img")
        #expect(try await rig.store.readIfPresent(rig.backendPath + "/hotplug-status") == "error")
        #expect(rig.journal.all.contains { $0.hasPrefix("log error") && $0.contains("/nonexistent/disk.img") })
        await rig.shutdown()
    }
}

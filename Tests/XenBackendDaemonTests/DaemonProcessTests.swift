#if canImport(Glibc)
import Glibc
#endif
import Testing
import XenBlockFrontend
import XenPlatform
import XenProtocolTesting
import XenSim
import XenStore
import XenProcess
import XenToolstack
import XenBusClient

typealias Child = ChildProcess

/// `xenback sim serve` and `xenbackd` as processes, a toolstack client and a
/// dom0 xenstore connection: the host the daemon tests run against.
final class SimProcesses {
    let xenback: String, xenbackd: String
    let simSocket: String, xsSocket: String
    let sim: Child
    var daemon: Child
    /// The daemon's "ready pid=... [metrics=URL]" line.
    var daemonReadyLine = ""
    let toolstack: SimClient
    let dom0: XenStoreClient

    init(daemonArguments: [String] = []) async throws {
        xenback = try #require(builtProduct("xenback"))
        xenbackd = try #require(builtProduct("xenbackd"))
        let tag = "\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        simSocket = "/tmp/xenback-sim-\(tag).sock"
        xsSocket = "/tmp/xenback-xs-\(tag).sock"
        sim = try Child([xenback, "sim", "serve", "--socket", simSocket, "--xenstore-socket", xsSocket, "--log-level", "warning"])
        try #require(sim.line()?.hasPrefix("ready") == true, "the sim started")
        (daemon, daemonReadyLine) = try Self.startDaemon(xenbackd, simSocket, daemonArguments)
        toolstack = try SimClient(socketPath: simSocket)
        dom0 = try await XenStoreClient.connect(socketPath: xsSocket)
    }

    static func startDaemon(_ xenbackd: String, _ simSocket: String, _ arguments: [String]) throws -> (Child, String) {
        let daemon = try Child([xenbackd, "--platform", "sim", "--sim-socket", simSocket, "--log-level", "critical"] + arguments)
        let ready = daemon.line() ?? ""
        try #require(ready.hasPrefix("ready"), "xenbackd started")
        return (daemon, ready)
    }

    /// A new xenbackd (after the old one died).
    func restartDaemon(_ arguments: [String] = []) throws { (daemon, daemonReadyLine) = try Self.startDaemon(xenbackd, simSocket, arguments) }

    /// A guest domain whose disk on `disk` the daemon serves, soaking it with
    /// verified writes and flushes (`xenback front blk --soak`) as a process.
    func soakingGuest(domain: UInt16, disk: TempDisk, xenstore: XenStoreClient, arguments: [String] = []) async throws -> (Child, LineReader) {
        _ = try toolstack.createDomain(DomainID(domain), pages: 2048, grantEntries: 8192)
        let attached = try await ToolstackDisk.create(xenstore: xenstore, frontend: DomainID(domain), target: disk.path)
        _ = try await awaitXenbusState(xenstore, attached.backendPath, "xenbackd probing") { $0 == .initWait }
        let guest = try Child([xenback, "front", "blk", "--sim", simSocket, "--domain", "\(domain)", "--soak", "120", "--iodepth", "8"] + arguments)
        return (guest, LineReader(guest))
    }

    /// Stops the daemon with SIGTERM; its exit status.
    func stopDaemon() -> Int32 {
        daemon.signal(SIGTERM)
        return daemon.wait()
    }

    func shutdown() async {
        await dom0.close()
        sim.signal(SIGTERM)
        sim.wait()
        // The daemon's default ring records for this sim.
        _ = runShell("rm -rf \(simSocket).state")
    }
}

@Suite struct DaemonProcessTests {
    /// Three processes, as on a host: the sim (hypervisor + xenstored),
    /// xenbackd serving backend/vbd, and a guest whose blkfront is
    /// `xenback front blk`. The test is the toolstack.
    @Test func xenbackdServesADiskTheToolstackAttaches() async throws {
        let metricsDir = "/tmp/xenback-metrics-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(metricsDir, 0o755)
        defer { _ = runShell("rm -rf \(metricsDir)") }
        let metricsFile = metricsDir + "/xenbackd.prom"
        let host = try await SimProcesses(daemonArguments: ["--metrics-file", metricsFile])
        let (xenback, simSocket, dom0) = (host.xenback, host.simSocket, host.dom0)
        // The toolstack: a guest domain and a disk for it.
        _ = try host.toolstack.createDomain(DomainID(7), pages: 4096, grantEntries: 4096)
        let file = TempDisk(megabytes: 32)
        let disk = try await ToolstackDisk.create(xenstore: dom0, frontend: DomainID(7), target: file.path)
        _ = try await awaitXenbusState(dom0, disk.backendPath, "xenbackd probing the disk") { $0 == .initWait }

        let (status, output) = try await offThePool { runShell("\(xenback) front blk --sim \(simSocket) --domain 7 --queues 2 --verify-mb 8 --seconds 1 --iodepth 8 2>&1") }
        #expect(status == 0, "the guest verified its disk through xenbackd:\n\(output)")
        #expect(output.contains("verified: ok"))
        #expect(file.read(0, 65536).contains { $0 != 0 }, "the guest's data is in the file")

        // The counters reach the metrics file within two updates (waited for
        // with inotify, not by sleeping), and `xenback status` shows them.
        let notify = inotify_init1(Int32(IN_CLOEXEC))
        _ = inotify_add_watch(notify, metricsDir, UInt32(IN_MOVED_TO))
        _ = try await offThePool {
            var events = [UInt8](repeating: 0, count: 4096)
            for _ in 0..<2 { _ = read(notify, &events, events.count) }
        }
        close(notify)
        let metrics = String(decoding: contents(of: metricsFile), as: UTF8.self)
        #expect(metrics.contains("xenback_block_requests_total{domid=\"7\",devid=\"51712\",op=\"write\"} 128"), "\(metrics)")
        let (statusCode, statusTable) = try await offThePool { runShell("\(xenback) status --sim \(simSocket) --metrics-file \(metricsFile) 2>&1") }
        #expect(statusCode == 0)
        let row = statusTable.split(separator: "\n").first { $0.hasPrefix("dom7/51712") }.map(String.init) ?? ""
        #expect(row.contains("Closed") && row.contains(" 2 ") && row.contains("x86_64-abi") && row.contains("128"), "\(statusTable)")

        // Detach, then stop the daemon: it exits cleanly.
        try await disk.setOffline(xenstore: dom0)
        _ = try await awaitXenbusState(dom0, disk.backendPath, "backend Closed") { $0 == .closed }
        try await disk.remove(xenstore: dom0)
        #expect(host.stopDaemon() == 0, "SIGTERM: exit 0")
        await host.shutdown()
    }
}

func contents(of path: String) -> [UInt8] {
    let fd = open(path, O_RDONLY)
    defer { close(fd) }
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fd, &buffer, buffer.count)
        if n <= 0 { break }
        out += buffer[0..<n]
    }
    return out
}

@Suite struct DemoTests {
    /// The README's main job, short: every process starts, the guest's data
    /// verifies, everything stops cleanly, exit 0.
    @Test func demoRunsAndVerifies() async throws {
        let xenback = try #require(builtProduct("xenback"))
        let (status, output) = try await offThePool { runShell("\(xenback) demo --seconds 3 < /dev/null 2>&1") }
        #expect(status == 0, "\(output)")
        #expect(output.contains("verified: ok") && output.contains("demo: ok"))
        #expect(output.contains("xenbackd       exit 0"), "the daemon stopped cleanly on SIGTERM")
        #expect(output.contains("mismatches=0 failed=0"), "no block read back differently, no request failed")
        if geteuid() == 0 {
            #expect(output.contains("ping 10.79.0.1: 3/3 replies") && output.contains("stream: ") && output.contains(" 3 received"),
                    "the NIC: the guest pinged and streamed to the peer, the peer pinged the guest:\n\(output)")
        }
    }
}

@Suite struct DaemonReloadTests {
    /// SIGHUP re-reads the configuration file; a bad file is refused with a
    /// log line and the daemon keeps running. (Log lines are waited for with
    /// inotify on the log file, not by sleeping.)
    @Test func sighupReloadsAndABadFileIsRefused() async throws {
        let xenback = try #require(builtProduct("xenback"))
        let xenbackd = try #require(builtProduct("xenbackd"))
        let tag = "\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let dir = "/tmp/xenback-reload-\(tag)"
        mkdir(dir, 0o755)
        defer { _ = runShell("rm -rf \(dir)") }
        let simSocket = dir + "/sim.sock", config = dir + "/xenbackd.json", log = dir + "/xenbackd.log"
        let sim = try Child([xenback, "sim", "serve", "--socket", simSocket, "--xenstore-socket", dir + "/xs.sock", "--log-level", "warning"])
        defer { sim.signal(SIGTERM); _ = sim.wait() }
        #expect(sim.line()?.hasPrefix("ready") == true)
        try write(config, #"{ "block": { "engine": "libaio" } }"#)
        let daemon = try Child([xenbackd, "--platform", "sim", "--sim-socket", simSocket, "--config", config], standardError: log)
        #expect(daemon.line()?.hasPrefix("ready") == true)

        try write(config, #"{ "block": { "engine": "io_uring", "maxQueues": 2 } }"#)
        daemon.signal(SIGHUP)
        let reloaded = try await offThePool { self.waitForLine(in: log, containing: "configuration reloaded") }
        #expect(reloaded?.contains("engine=io_uring") == true && reloaded?.contains("max-queues=2") == true, "\(reloaded ?? "no line")")

        try write(config, #"{ "block": { "engine": "posix" } }"#)
        daemon.signal(SIGHUP)
        let refused = try await offThePool { self.waitForLine(in: log, containing: "configuration not reloaded") }
        #expect(refused?.contains("block.engine") == true, "\(refused ?? "no line")")

        daemon.signal(SIGTERM)
        #expect(daemon.wait() == 0, "still running after the bad file, and stops cleanly")
    }

    func write(_ path: String, _ text: String) throws {
        let fd = open(path + ".tmp", O_CREAT | O_WRONLY | O_TRUNC, 0o644)
        _ = text.withCString { Glibc.write(fd, $0, strlen($0)) }
        close(fd)
        rename(path + ".tmp", path)
    }

    /// Blocks on inotify until a line containing `text` is in `path` (30 s at most).
    func waitForLine(in path: String, containing text: String) -> String? {
        let notify = inotify_init1(Int32(IN_CLOEXEC))
        defer { close(notify) }
        _ = inotify_add_watch(notify, path, UInt32(IN_MODIFY))
        var buffer = [UInt8](repeating: 0, count: 4096)
        for _ in 0..<1000 {
            let lines = String(decoding: contents(of: path), as: UTF8.self).split(separator: "\n")
            if let line = lines.first(where: { $0.contains(text) }) { return String(line) }
            var p = pollfd(fd: notify, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 30_000) > 0 else { return nil }
            _ = read(notify, &buffer, buffer.count)
        }
        return nil
    }
}

@Suite struct DaemonBadDeviceTests {
    /// Bad toolstack values for some devices (a path that does not exist,
    /// mode "x", no params at all) are reported in each device's
    /// hotplug-error; the daemon survives and serves the good device.
    @Test func badDevicesAreReportedAndTheGoodOneIsServed() async throws {
        let host = try await SimProcesses()
        let (xenback, simSocket, dom0) = (host.xenback, host.simSocket, host.dom0)
        _ = try host.toolstack.createDomain(DomainID(3), pages: 2048, grantEntries: 2048)
        let good = TempDisk(megabytes: 16)
        let base = ToolstackDisk.firstXenDisk
        let missing = try await ToolstackDisk.create(xenstore: dom0, frontend: DomainID(3), devid: base + 16, target: "/nonexistent/disk.img")
        let badMode = try await ToolstackDisk.create(xenstore: dom0, frontend: DomainID(3), devid: base + 32, target: good.path,
                                                     extraBackendKeys: ["mode": "x"])
        let noParams = try await ToolstackDisk.create(xenstore: dom0, frontend: DomainID(3), devid: base + 48, target: "")
        let disk = try await ToolstackDisk.create(xenstore: dom0, frontend: DomainID(3), devid: base, target: good.path)
        let expectations: [(ToolstackDisk, String)] = [(missing, "/nonexistent/disk.img"), (badMode, "mode"), (noParams, "params")]
        for (bad, word) in expectations {
            // hotplug-status is written last: wait for it with a watch.
            #expect(try await awaitKey(dom0, bad.backendPath + "/hotplug-status", equals: "error"))
            let error = try await dom0.readIfPresent(bad.backendPath + "/hotplug-error") ?? ""
            #expect(error.contains(word), "\(bad.devid): \(error)")
        }
        _ = try await awaitXenbusState(dom0, disk.backendPath, "the good disk probed") { $0 == .initWait }
        let (status, output) = try await offThePool { runShell("\(xenback) front blk --sim \(simSocket) --domain 3 --devid \(base) --verify-mb 4 --seconds 0 2>&1") }
        #expect(status == 0 && output.contains("verified: ok"), "\(output)")
        #expect(host.stopDaemon() == 0, "the daemon survived the bad devices and stops cleanly")
        await host.shutdown()
    }
}

/// Waits on a watch (30 s at most) until `path` reads `value`.
func awaitKey(_ xenstore: XenStoreClient, _ path: String, equals value: String) async throws -> Bool {
    do {
        return try await awaitXenstoreValue(xenstore, path, "\(path) = \(value)") { $0 == value } == value
    } catch is XenbusWaitTimeout {
        return false
    }
}

@Suite struct DaemonCrashTests {
    /// kill -9 of xenbackd while a guest writes, flushes and verifies; a new
    /// xenbackd without ring records finds the device, waits for the
    /// frontend to set up new rings, the guest resubmits, and every region
    /// whose writes and flush had been acknowledged reads back intact.
    @Test func killedDaemonWithoutRecordsWaitsForTheFrontendAndNoFlushedWriteIsLost() async throws {
        let host = try await SimProcesses(daemonArguments: ["--state-dir", "none"])
        let file = TempDisk(megabytes: 64)
        let (guest, output) = try await host.soakingGuest(domain: 4, disk: file, xenstore: host.dom0)
        func until(_ prefix: String) async throws -> Bool { try await offThePool { output.until(prefix) } }
        // Two passes done (regions committed), then the daemon dies mid-run.
        #expect(try await until("progress"))
        #expect(try await until("progress"))
        host.daemon.signal(SIGKILL)
        #expect(host.daemon.wait() == 128 + SIGKILL)
        try host.restartDaemon(["--state-dir", "none"])
        #expect(try await until("reconnected"), "the guest reconnected to the new daemon: \(output.lines)")
        #expect(output.lines.last?.contains(" 0 blocks lost") == true, "\(output.lines.last ?? "")")
        #expect(try await until("progress"), "I/O goes on after the restart")
        guest.signal(SIGTERM)
        #expect(try await until("verified:"))
        #expect(guest.wait() == 0)
        let verdict = output.lines.last ?? ""
        #expect(verdict.hasPrefix("verified: ok") && verdict.contains("recoveries=1") && verdict.contains("lost=0"), "\(verdict)")
        #expect(host.stopDaemon() == 0)
        await host.shutdown()
    }
}

@Suite struct DaemonTakeOverTests {
    /// kill -9 of xenbackd under a guest that, like Linux's blkfront, never
    /// sets up new rings: the new xenbackd takes the old rings over from
    /// their records, does again what the dead one owed, and the guest goes
    /// on with no error, no mismatch and no reconnection.
    @Test(arguments: [1, 2])
    func killedDaemonIsTakenOverWithoutTheGuestNoticing(queues: Int) async throws {
        let host = try await SimProcesses()
        let file = TempDisk(megabytes: 64)
        let (guest, output) = try await host.soakingGuest(domain: 5, disk: file, xenstore: host.dom0,
                                                          arguments: ["--never-reconnect", "--queues", "\(queues)"])
        func until(_ prefix: String) async throws -> Bool { try await offThePool { output.until(prefix) } }
        #expect(try await until("progress"))
        let records = try FileManagerless.list(host.simSocket + ".state")
        #expect(records.count == queues && records.allSatisfy { $0.hasPrefix("vbd-5-51712-q") }, "one record per ring: \(records)")
        for round in 1...3 {
            #expect(try await until("progress"), "round \(round): I/O before the kill")
            host.daemon.signal(SIGKILL)
            #expect(host.daemon.wait() == 128 + SIGKILL)
            try host.restartDaemon()
            #expect(try await until("progress"), "round \(round): I/O goes on after the restart: \(output.lines.suffix(3))")
        }
        guest.signal(SIGTERM)
        #expect(try await until("verified:"))
        #expect(guest.wait() == 0)
        let verdict = output.lines.last ?? ""
        #expect(verdict.hasPrefix("verified: ok") && verdict.contains("mismatches=0") && verdict.contains("failed=0")
                && verdict.contains("recoveries=0"), "\(verdict)")
        #expect(!output.lines.contains { $0.contains("errors=") && !$0.contains("errors=0") }, "no I/O error: \(output.lines)")
        #expect(host.stopDaemon() == 0)
        await host.shutdown()
    }
}

extension DaemonTakeOverTests {
    /// SIGTERM (systemctl stop or restart, a package upgrade) leaves the
    /// block device Connected with its records; the next daemon takes it
    /// over. SIGUSR2 closes every device before stopping.
    @Test func sigtermLeavesTheDiskConnectedAndSigusr2ClosesIt() async throws {
        let host = try await SimProcesses()
        let file = TempDisk(megabytes: 64)
        let (guest, output) = try await host.soakingGuest(domain: 6, disk: file, xenstore: host.dom0, arguments: ["--never-reconnect"])
        func until(_ prefix: String) async throws -> Bool { try await offThePool { output.until(prefix) } }
        let state = "/local/domain/0/backend/vbd/6/51712/state"
        #expect(try await until("progress"))
        #expect(host.stopDaemon() == 0, "SIGTERM: exit 0")
        #expect(try await host.dom0.readIfPresent(state) == "4", "the device is still Connected")
        try host.restartDaemon()
        #expect(try await until("progress"), "taken over after a clean stop: \(output.lines.suffix(3))")
        #expect(try await until("progress"))
        host.daemon.signal(SIGUSR2)
        #expect(host.daemon.wait() == 0, "SIGUSR2: every device closed, exit 0")
        #expect(try await host.dom0.readIfPresent(state) == "6", "the device was closed")
        guest.signal(SIGKILL)
        _ = guest.wait()
        let verdicts = output.lines.filter { $0.contains("recoveries=") }
        #expect(verdicts.allSatisfy { $0.contains("recoveries=0") && $0.contains("errors=0") }, "\(verdicts)")
        await host.shutdown()
    }
}

extension DaemonTakeOverTests {
    /// A record the new daemon cannot use (here: a future version) is not
    /// trusted: that device falls back to waiting for its frontend, which
    /// reconnects, and nothing acknowledged is lost.
    @Test func aRecordThatCannotBeUsedFallsBackToReconnecting() async throws {
        let host = try await SimProcesses()
        let file = TempDisk(megabytes: 64)
        let (guest, output) = try await host.soakingGuest(domain: 8, disk: file, xenstore: host.dom0)
        func until(_ prefix: String) async throws -> Bool { try await offThePool { output.until(prefix) } }
        #expect(try await until("progress"))
        host.daemon.signal(SIGKILL)
        #expect(host.daemon.wait() == 128 + SIGKILL)
        let record = host.simSocket + ".state/vbd-8-51712-q0.ring"
        let fd = open(record, O_RDWR)
        #expect(fd >= 0, "the dead daemon left its record")
        var version: UInt32 = 99
        #expect(pwrite(fd, &version, 4, 4) == 4)
        close(fd)
        try host.restartDaemon()
        #expect(try await until("reconnected"), "the guest reconnected instead: \(output.lines.suffix(3))")
        #expect(output.lines.last?.contains(" 0 blocks lost") == true, "\(output.lines.last ?? "")")
        guest.signal(SIGTERM)
        #expect(try await until("verified:"))
        #expect(guest.wait() == 0)
        #expect(host.stopDaemon() == 0)
        await host.shutdown()
    }

    /// A disk removed while no daemon ran leaves a record nobody will
    /// resume: the next daemon deletes it before it says ready.
    @Test func recordsOfDevicesRemovedMeanwhileAreDeleted() async throws {
        let host = try await SimProcesses()
        let file = TempDisk(megabytes: 64)
        let (guest, output) = try await host.soakingGuest(domain: 9, disk: file, xenstore: host.dom0, arguments: ["--never-reconnect"])
        #expect(try await offThePool { output.until("progress") })
        host.daemon.signal(SIGKILL)
        #expect(host.daemon.wait() == 128 + SIGKILL)
        guest.signal(SIGKILL)
        _ = guest.wait()
        let record = host.simSocket + ".state/vbd-9-51712-q0.ring"
        #expect(access(record, F_OK) == 0)
        try await host.dom0.rm("/local/domain/0/backend/vbd/9/51712")
        try host.restartDaemon()
        #expect(access(record, F_OK) != 0, "the orphaned record is gone")
        #expect(host.stopDaemon() == 0)
        await host.shutdown()
    }
}

extension DaemonTakeOverTests {
    /// A state directory that cannot be made is refused by name, once the
    /// platform answered; a daemon that cannot reach the platform leaves
    /// no directory behind.
    @Test func aStateDirectoryThatCannotBeMadeIsNamed() async throws {
        let host = try await SimProcesses()
        let xenbackd = host.xenbackd, sim = host.simSocket
        let (status, output) = try await offThePool { runShell("\(xenbackd) --platform sim --sim-socket \(sim) --state-dir /proc/xenback-records 2>&1") }
        #expect(status != 0 && output.contains("--state-dir /proc/xenback-records: cannot create it"), "\(output)")
        let unreachable = "/tmp/xenback-nosim-\(getpid())/sim.sock"
        let (missing, _) = try await offThePool { runShell("\(xenbackd) --platform sim --sim-socket \(unreachable) 2>&1") }
        #expect(missing != 0 && access(unreachable + ".state", F_OK) != 0)
        #expect(host.stopDaemon() == 0)
        await host.shutdown()
    }
}

/// Directory listing without Foundation.
enum FileManagerless {
    static func list(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }
}

@Suite struct XenStoredRestartTests {
    /// xenstored restarts (SIGUSR1 to the sim: every xenstore connection
    /// drops, the store stays) twice while a guest soaks a disk through
    /// xenbackd. The daemon and the guest reconnect and re-register their
    /// watches; I/O never stops (rings need no xenstore); a disk attached
    /// after the first restart is found and served, and detached after the
    /// second; nothing is lost and the daemon still exits cleanly.
    @Test func daemonAndGuestOutliveXenstoredRestarts() async throws {
        let host = try await SimProcesses()
        let (xenback, simSocket) = (host.xenback, host.simSocket)
        let dom0 = try await XenStoreClient.connect(reconnecting: XenStoreReconnection(.socket(path: host.xsSocket)))
        _ = try host.toolstack.createDomain(DomainID(5), pages: 2048, grantEntries: 8192)
        let soaked = TempDisk(megabytes: 64), attachedLater = TempDisk(megabytes: 32)
        let (guest, output) = try await host.soakingGuest(domain: 4, disk: soaked, xenstore: dom0)
        func until(_ prefix: String) async throws -> Bool { try await offThePool { output.until(prefix) } }
        #expect(try await until("progress"))

        host.sim.signal(SIGUSR1)
        #expect(try await until("progress"), "I/O goes on across the restart")
        #expect(try await until("progress"))

        // The daemon's tree watch works again: a new disk is found and served.
        let second = try await ToolstackDisk.create(xenstore: dom0, frontend: DomainID(5), target: attachedLater.path)
        _ = try await awaitXenbusState(dom0, second.backendPath, "xenbackd probing the disk added after the restart") { $0 == .initWait }
        let (status, verified) = try await offThePool {
            runShell("\(xenback) front blk --sim \(simSocket) --domain 5 --verify-mb 4 --seconds 1 --iodepth 4 2>&1")
        }
        #expect(status == 0 && verified.contains("verified: ok"), "\(verified)")

        // And the device loop's watches: the disk is detached after another restart.
        host.sim.signal(SIGUSR1)
        try await second.setOffline(xenstore: dom0)
        _ = try await awaitXenbusState(dom0, second.backendPath, "backend Closed after the second restart") { $0 == .closed }
        try await second.remove(xenstore: dom0)
        #expect(try await until("progress"))

        guest.signal(SIGTERM)
        #expect(try await until("verified:"))
        #expect(guest.wait() == 0)
        let verdict = output.lines.last ?? ""
        #expect(verdict.hasPrefix("verified: ok") && verdict.contains("recoveries=0") && verdict.contains("lost=0"), "\(verdict)")
        #expect(host.stopDaemon() == 0)
        await dom0.close()
        await host.shutdown()
    }
}

/// A child's output lines, read on whatever thread asks (one at a time).
final class LineReader: @unchecked Sendable {
    let child: Child
    private(set) var lines: [String] = []
    init(_ child: Child) { self.child = child }

    /// Reads until a line starting with `prefix` (true) or the end of output (false).
    func until(_ prefix: String) -> Bool {
        while let line = child.line() {
            lines.append(line)
            if line.hasPrefix(prefix) { return true }
        }
        return false
    }
}

import ArgumentParser
import Synchronization
import XenBlockFrontend
import XenNetTestbed
import XenPlatform
import XenProcess
import XenSim
import XenStore
import XenStoreProtocol
import XenSystem
#if canImport(Glibc)
import Glibc
import XenBusClient
import XenBus
#endif

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Everything at once on the software hypervisor: sim, xenbackd, a guest with a 1 GiB disk doing verified I/O and a NIC on a bridge.",
        discussion: """
        Starts `xenback sim serve`, `xenbackd --platform sim` and a guest whose blkfront \
        (`xenback front blk --soak`) writes, flushes, reads back and checks its disk while \
        doing random I/O, each in its own process. As root, the guest also gets a NIC: \
        xenbackd puts its VIF on a bridge in a private network namespace with a peer on a \
        veth, the guest's netfront (`xenback front net`) pings the peer, streams UDP to it and \
        answers the peer's pings. A live table shows each device's state, IOPS or packets/s \
        and MB/s. Ctrl-C or the end \
        tears everything down and prints a summary; the exit status is 0 only if every block \
        verified, every ping was answered and every process stopped cleanly.
        """)

    @Option(help: "How long the guest runs its workload.")
    var seconds: Int = 20

    @Option(help: "Where the sockets, the disk image and the logs go (default: a new directory in /tmp).")
    var directory: String?

    @Flag(help: "Keep the directory afterwards (disk image and logs).")
    var keep = false

    func validate() throws {
        guard (1...86_400).contains(seconds) else { throw ValidationError("--seconds must be 1...86400") }
    }

    func run() async throws {
        guard let xenback = siblingExecutable("xenback"), let xenbackd = siblingExecutable("xenbackd") else {
            throw ValidationError("xenback and xenbackd must be built side by side (swift build builds both)")
        }
        let dir = try directory ?? makeTemporaryDirectory()
        let simSocket = dir + "/sim.sock", xsSocket = dir + "/xenstored.sock", image = dir + "/disk.img"
        print("xenback demo: everything under \(dir)")

        // 1. The software hypervisor and its xenstored.
        let sim = try ChildProcess([xenback, "sim", "serve", "--socket", simSocket, "--xenstore-socket", xsSocket,
                                    "--log-level", "warning"], standardError: dir + "/sim.log")
        guard sim.line()?.hasPrefix("ready") == true else { throw ValidationError("the sim did not start; see \(dir)/sim.log") }
        print("  sim          pid \(sim.pid)   (hypervisor + xenstored, \(simSocket))")
        // A private network for the NIC (root only): a namespace with a bridge
        // for the VIF, a veth to a peer namespace.
        var lab: NetworkLab?
        var whyNoNetwork = "not root: the NIC needs a TAP and a bridge"
        if geteuid() == 0 {
            do { lab = try NetworkLab(subnet: 79) } catch { whyNoNetwork = "\(error)" }
        }
        defer { lab?.destroy() }
        var daemonArguments = [xenbackd, "--platform", "sim", "--sim-socket", simSocket, "--log-level", "info"]
        if let lab {
            let config = dir + "/xenbackd.json"
            let json = "{\"net\": {\"namespace\": \"/var/run/netns/\(lab.hostNamespace)\"}}"
            let fd = open(config, O_CREAT | O_WRONLY | O_TRUNC, 0o644)
            if fd >= 0 {
                _ = json.withCString { Syscall.write(fd, $0, count: strlen($0)) }
                Syscall.close(fd)
            }
            daemonArguments += ["--config", config]
        }
        // 2. The daemon, as dom0's backend.
        let daemon = try ChildProcess(daemonArguments, standardError: dir + "/xenbackd.log")
        guard daemon.line()?.hasPrefix("ready") == true else {
            sim.signal(SIGTERM); sim.wait()
            throw ValidationError("xenbackd did not start; see \(dir)/xenbackd.log")
        }
        print("  xenbackd     pid \(daemon.pid)   (log: \(dir)/xenbackd.log)")

        // 3. A guest with a 1 GiB disk.
        let fd = open(image, O_CREAT | O_RDWR | O_TRUNC, 0o644)
        guard fd >= 0, ftruncate(fd, 1 << 30) == 0 else { throw ValidationError("cannot create \(image)") }
        Syscall.close(fd)
        let toolstack = try await SimToolstack.connect(simSocket: simSocket)
        let guest = try await toolstack.create(name: "demo", disks: [try SimToolstack.Disk(parsing: image)],
                                               nics: lab.map { [SimToolstack.NIC(bridge: $0.bridge)] } ?? [])
        let disk = guest.disks[0]
        _ = try await awaitXenbusState(toolstack.xenstore, disk.backendPath, timeout: .seconds(10), "xenbackd to take the disk") {
            $0 == .initWait
        }
        let front = try toolstack.startFrontend(guest, disk: 0, seconds: seconds, logFile: dir + "/guest-\(guest.domain.rawValue).log")
        print("  guest demo   domain \(guest.domain.rawValue), blkfront pid \(front.pid), disk xvda = \(image) (1 GiB)")
        // The NIC: the guest pings the peer, the peer pings the guest.
        var netfront: ChildProcess?
        var peerPing: Task<(Int32, String), Never>?
        var startPeerPing: (() -> Void)?
        if let lab, let nic = guest.nics.first {
            _ = try await awaitXenbusState(toolstack.xenstore, nic.backendPath, timeout: .seconds(10), "xenbackd to take the NIC") { $0 == .initWait }
            let ip = lab.guestIP.map(String.init).joined(separator: "."), peer = lab.peerIP.map(String.init).joined(separator: ".")
            netfront = try toolstack.startNetFrontend(guest, nic: 0, ip: ip, ping: peer, serveSeconds: 3, streamSeconds: max(1, seconds - 2),
                                                      logFile: dir + "/netfront-\(guest.domain.rawValue).log")
            // Once the guest's netfront is connected: before that nobody
            // answers ARP, ping's echoes pile up behind it, and ping stops
            // at 3 replies with a 4th still in flight ("25% loss").
            startPeerPing = { peerPing = Task.detached { lab.inPeer("ping -c 3 -i 0.3 -w 20 \(ip)") } }
            print("  NIC          vif\(guest.domain.rawValue).0 on bridge \(lab.bridge) (namespace \(lab.hostNamespace)), guest \(ip), peer \(peer); netfront pid \(netfront!.pid)")
        } else {
            print("  network      skipped: \(whyNoNetwork)")
        }
        print("")

        // 4. Live display until the guest's frontends finish (or Ctrl-C):
        // one row per device, rewritten in place on a terminal.
        DemoSignal.install()
        let live = isatty(1) == 1
        var samples: [Double] = [], megabytes: [Double] = [], summary = "", verified = 0, mismatches = 0
        var diskRow = "xvda (dom\(guest.domain.rawValue))".padding(14) + "starting"
        var nicRow: String? = netfront.map { _ in "vif\(guest.domain.rawValue).0".padding(14) + "starting" }
        var netLines: [String] = [], packetRates: [Double] = []
        var printedRows = 0
        print("device        state        IOPS/pps   MB/s   verified blocks  mismatches")
        func redraw() {
            if live && printedRows > 0 { print(String(repeating: "\u{1B}[1A\u{1B}[2K", count: printedRows), terminator: "") }
            let rows = [diskRow] + (nicRow.map { [$0] } ?? [])
            for r in rows { print(r) }
            printedRows = live ? rows.count : 0
            fflush(nil)
        }
        func stateOf(_ path: String) async -> String {
            (try? await toolstack.xenstore.readIfPresent(path + "/state")).flatMap { $0 }.flatMap { UInt32($0) }
                .flatMap { XenbusState(rawValue: $0) }.map { "\($0)" } ?? "?"
        }
        var diskOpen = true, nicOpen = netfront != nil
        while diskOpen || nicOpen {
            // Relaxed: a flag guarding no data.
            if DemoSignal.interrupted.load(ordering: .relaxed) { front.signal(SIGTERM); netfront?.signal(SIGTERM) }
            var fds = [pollfd(fd: diskOpen ? front.outputDescriptor : -1, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: nicOpen ? netfront!.outputDescriptor : -1, events: Int16(POLLIN), revents: 0)]
            // SAFETY: the local array, lent to poll for the call. EINTR (Ctrl-C) goes round again.
            let ready = fds.withUnsafeMutableBufferPointer { Syscall.poll($0, timeoutMilliseconds: 250, retryingInterrupts: false) }
            guard case .success(let n) = ready, n > 0 else { continue }
            if diskOpen && fds[0].revents != 0 {
                guard let line = front.line() else { diskOpen = false; continue }
                if line.hasPrefix("progress") {
                    let f = fields(line)
                    samples.append(Double(f["iops"] ?? "") ?? 0)
                    megabytes.append(Double(f["mbps"] ?? "") ?? 0)
                    verified = Int(f["verified"] ?? "") ?? verified
                    mismatches = Int(f["mismatches"] ?? "") ?? mismatches
                    diskRow = "xvda (dom\(guest.domain.rawValue))".padding(14) + (await stateOf(disk.backendPath)).padding(13)
                        + (f["iops"] ?? "-").padding(11) + (f["mbps"] ?? "-").padding(7) + "\(verified)".padding(17) + "\(mismatches)"
                    redraw()
                } else if line.hasPrefix("verified:") {
                    summary = line
                }
            }
            if nicOpen && fds[1].revents != 0 {
                guard let line = netfront!.line() else { nicOpen = false; continue }
                netLines.append(line)
                if line.hasPrefix("connected:"), peerPing == nil { startPeerPing?() }
                if line.hasPrefix("progress"), let nic = guest.nics.first {
                    let f = fields(line)
                    packetRates.append(Double(f["pps"] ?? "") ?? 0)
                    nicRow = "vif\(guest.domain.rawValue).0".padding(14) + (await stateOf(nic.backendPath)).padding(13)
                        + (f["pps"] ?? "-").padding(11) + (f["mbps"] ?? "-")
                    redraw()
                }
            }
        }
        let frontStatus = front.wait()
        var networkLine = "skipped (\(whyNoNetwork))"
        var networkOK = true
        if let netfront {
            let guestPing = netLines.first { $0.hasPrefix("ping ") } ?? ""
            let streamLine = netLines.first { $0.hasPrefix("stream:") } ?? ""
            let netStatus = netfront.wait()
            let (peerStatus, peerOutput) = await peerPing?.value ?? (1, "the guest's netfront never connected")
            let peerReceived = peerOutput.split(separator: "\n").first { $0.contains("received") }.map(String.init) ?? "no reply"
            networkOK = netStatus == 0 && peerStatus == 0
            let meanPPS = packetRates.isEmpty ? 0 : packetRates.reduce(0, +) / Double(packetRates.count)
            networkLine = "guest → peer: \(guestPing.isEmpty ? "no result (exit \(netStatus))" : guestPing); \(streamLine) (mean \(fmt(meanPPS, 0)) pps); peer → guest: \(peerReceived)"
        }

        // 5. Tear down: detach, destroy the guest, stop the daemon and the sim.
        try? await toolstack.destroy(guest)
        await toolstack.xenstore.close()
        daemon.signal(SIGTERM)
        let daemonStatus = daemon.wait()
        sim.signal(SIGTERM)
        let simStatus = sim.wait()
        if !keep && directory == nil { _ = unlink(image); _ = unlink(dir + "/sim.log"); _ = unlink(dir + "/xenbackd.log")
            _ = unlink(dir + "/guest-\(guest.domain.rawValue).log"); _ = unlink(dir + "/netfront-\(guest.domain.rawValue).log")
            _ = unlink(dir + "/xenbackd.json"); _ = rmdir(dir) }

        let ok = frontStatus == 0 && summary.hasPrefix("verified: ok") && daemonStatus == 0 && simStatus == 0 && networkOK
        let meanIOPS = samples.isEmpty ? 0 : samples.reduce(0, +) / Double(samples.count)
        let meanMB = megabytes.isEmpty ? 0 : megabytes.reduce(0, +) / Double(megabytes.count)
        print("")
        print("summary")
        print("  disk xvda      \(samples.count) passes, mean \(fmt(meanIOPS, 0)) IOPS, \(fmt(meanMB, 1)) MB/s; \(verified) blocks of 64 KiB written, flushed, read back; \(mismatches) mismatches")
        print("  guest          \(summary.isEmpty ? "no result (exit \(frontStatus))" : summary)")
        print("  xenbackd       exit \(daemonStatus) after SIGTERM\(daemonStatus == 0 ? " (drained, devices closed)" : "")")
        print("  sim            exit \(simStatus)")
        print("  network        \(networkLine)")
        print(ok ? "demo: ok" : "demo: FAILED\(keep || directory != nil ? "" : " (rerun with --keep to look at the logs)")")
        if !ok { throw ExitCode.failure }
    }

    private func fields(_ line: String) -> [String: String] {
        var out: [String: String] = [:]
        for part in line.split(separator: " ") {
            let kv = part.split(separator: "=", maxSplits: 1)
            if kv.count == 2 { out[String(kv[0])] = String(kv[1]) }
        }
        return out
    }

    private func makeTemporaryDirectory() throws -> String {
        var template = Array("/tmp/xenback-demo-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw ValidationError("cannot create a directory in /tmp") }
        // The template is NUL-terminated; mkdtemp filled in its X's.
        // SAFETY: the local, NUL-terminated array, read within the closure.
        return template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }
}

/// Ctrl-C asks the guest to stop; the demo then tears everything down.
enum DemoSignal {
    /// Relaxed loads and stores throughout: a flag that guards no data.
    static let interrupted = Atomic<Bool>(false)
    static func install() {
        signal(SIGINT) { _ in DemoSignal.interrupted.store(true, ordering: .relaxed) }
        signal(SIGTERM) { _ in DemoSignal.interrupted.store(true, ordering: .relaxed) }
    }
}

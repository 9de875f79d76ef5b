#if canImport(Glibc)
import Glibc
#endif
import Testing
import XenNetFrontend
import XenNetTestbed
import XenPlatform
import XenProtocolTesting
import XenSim
import XenStore
import XenStoreProtocol
import XenToolstack
import XenBusClient

@Suite(.serialized) struct DaemonNetTests {
    /// xenbackd serves a VIF the toolstack attaches: its TAP joins the bridge
    /// named in the `bridge` key (in the namespace the configuration names),
    /// and a guest in another process (`xenback front net`) pings a peer on
    /// that bridge and is pinged by it.
    @Test func xenbackdServesAVIF() async throws {
        let lab = try NetworkLab(subnet: 78)
        defer { lab.destroy() }
        let dir = "/tmp/xenback-dnet-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(dir, 0o755)
        defer { _ = runShell("rm -rf \(dir)") }
        let config = dir + "/xenbackd.json"
        let json = "{\"net\": {\"namespace\": \"/var/run/netns/\(lab.hostNamespace)\", \"maxQueues\": 2}}"
        _ = runShell("printf '%s' '\(json)' > \(config)")
        let host = try await SimProcesses(daemonArguments: ["--config", config, "--metrics-file", dir + "/m.prom",
                                                            "--metrics-listen", "127.0.0.1:0"])
        let metricsURL = host.daemonReadyLine.split(separator: " ").first { $0.hasPrefix("metrics=http://127.0.0.1:") }
        let port = try #require(metricsURL.flatMap { Int($0.dropFirst("metrics=http://127.0.0.1:".count).prefix { $0.isNumber }) },
                                "the ready line names the metrics address: \(host.daemonReadyLine)")
        let (xenback, simSocket, dom0) = (host.xenback, host.simSocket, host.dom0)
        _ = try host.toolstack.createDomain(DomainID(7), pages: 4096, grantEntries: 4096)
        let nic = try await ToolstackNIC.create(xenstore: dom0, frontend: DomainID(7), handle: 0,
                                                mac: [0x00, 0x16, 0x3E, 0x07, 0x00, 0x01], bridge: lab.bridge)
        _ = try await awaitXenbusState(dom0, nic.backendPath, "xenbackd probing the VIF") { $0 == .initWait }
        let (linkStatus, link) = lab.inHost("ip link show vif7.0")
        #expect(linkStatus == 0 && link.contains("master \(lab.bridge)") == false, "made at probe, joins the bridge at connect: \(link)")

        // The peer pings the guest while the guest serves; then the guest pings the peer.
        let pinger = Task.detached { () -> (Int32, String) in
            // Waits for the guest to appear (ARP), bounded by ping's own deadline.
            lab.inPeer("ping -c 3 -i 0.3 -w 20 10.78.0.2")
        }
        let (status, output) = try await offThePool {
            runShell("\(xenback) front net --sim \(simSocket) --domain 7 --ip 10.78.0.2 --serve 4 --ping 10.78.0.1 --count 3 2>&1")
        }
        let (peerStatus, peerOutput) = await pinger.value
        #expect(status == 0, "\(output)")
        #expect(output.contains("ping 10.78.0.1: 3/3 replies"), "\(output)")
        #expect(peerStatus == 0 && peerOutput.contains("3 received"), "\(peerOutput)")
        let (_, after) = lab.inHost("ip link show vif7.0")
        #expect(after.contains("master \(lab.bridge)"), "\(after)")

        // The counters reach the metrics file (two updates, waited for with
        // inotify) and `xenback status` shows the interface with them.
        let notify = inotify_init1(Int32(IN_CLOEXEC))
        _ = inotify_add_watch(notify, dir, UInt32(IN_MOVED_TO))
        _ = try await offThePool {
            var events = [UInt8](repeating: 0, count: 4096)
            for _ in 0..<2 { _ = read(notify, &events, events.count) }
        }
        close(notify)
        let (statusCode, table) = try await offThePool { runShell("\(xenback) status --sim \(simSocket) --metrics-file \(dir)/m.prom 2>&1") }
        #expect(statusCode == 0)
        let row = table.split(separator: "\n").first { $0.hasPrefix("vif7.0") }.map(String.init) ?? ""
        let numbers = row.split(separator: " ").compactMap { Int($0) }
        #expect(row.contains(lab.bridge) && numbers.count >= 3 && numbers[1] >= 5 && numbers[2] >= 5, "tx and rx packets counted:\n\(table)")
        // The same series over HTTP, for a Prometheus server to scrape.
        let (_, scraped) = try await offThePool {
            runShell("timeout 10 bash -c 'exec 3<>/dev/tcp/127.0.0.1/\(port); printf \"GET /metrics HTTP/1.0\\r\\n\\r\\n\" >&3; cat <&3'")
        }
        #expect(scraped.hasPrefix("HTTP/1.0 200") && scraped.contains("xenback_net_packets_total{domid=\"7\",handle=\"0\",direction=\"tx\"}"), "\(scraped)")

        try await nic.setOffline(xenstore: dom0)
        _ = try await awaitXenbusState(dom0, nic.backendPath, "backend Closed") { $0 == .closed }
        #expect(host.stopDaemon() == 0, "SIGTERM: exit 0")
        let (_, gone) = lab.inHost("ip link show vif7.0 2>&1")
        #expect(gone.contains("does not exist"), "the TAP goes with the device: \(gone)")
        await host.shutdown()
    }

    /// The sim's toolstack: `xenback guest create --nic bridge=...,ip=...`
    /// lays out the VIF and starts its netfront process; the peer pings it;
    /// `guest destroy` stops the frontend, which closes, and removes it all.
    @Test func guestCreateWithANIC() async throws {
        let lab = try NetworkLab(subnet: 80)
        defer { lab.destroy() }
        let dir = "/tmp/xenback-gnet-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(dir, 0o755)
        defer { _ = runShell("rm -rf \(dir)") }
        let json = "{\"net\": {\"namespace\": \"/var/run/netns/\(lab.hostNamespace)\"}}"
        _ = runShell("printf '%s' '\(json)' > \(dir)/xenbackd.json")
        let host = try await SimProcesses(daemonArguments: ["--config", dir + "/xenbackd.json"])
        let (xenback, simSocket) = (host.xenback, host.simSocket)
        let (status, output) = try await offThePool {
            runShell("\(xenback) guest create --sim \(simSocket) --name web --nic bridge=\(lab.bridge),ip=10.80.0.2 2>&1")
        }
        #expect(status == 0 && output.contains("nic 0 (vif1.0) frontend pid"), "\(output)")
        let (pingStatus, ping) = lab.inPeer("ping -c 2 -i 0.3 -w 20 10.80.0.2")
        #expect(pingStatus == 0 && ping.contains("bytes from 10.80.0.2"), "\(ping)")
        let (destroyStatus, destroyed) = try await offThePool { runShell("\(xenback) guest destroy --sim \(simSocket) --name web 2>&1") }
        #expect(destroyStatus == 0 && destroyed.contains("destroyed"), "\(destroyed)")
        #expect(try await host.dom0.readIfPresent("/local/domain/0/backend/vif/1/0") == nil, "the backend directory is gone")
        let (_, gone) = lab.inHost("ip link show vif1.0 2>&1")
        #expect(gone.contains("does not exist"), "the TAP goes with the device: \(gone)")
        #expect(host.stopDaemon() == 0)
        await host.shutdown()
    }
}

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
        let host = try await SimProcesses(daemonArguments: ["--config", config, "--metrics-file", dir + "/m.prom"])
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

        try await nic.setOffline(xenstore: dom0)
        _ = try await awaitXenbusState(dom0, nic.backendPath, "backend Closed") { $0 == .closed }
        #expect(host.stopDaemon() == 0, "SIGTERM: exit 0")
        let (_, gone) = lab.inHost("ip link show vif7.0 2>&1")
        #expect(gone.contains("does not exist"), "the TAP goes with the device: \(gone)")
        await host.shutdown()
    }
}


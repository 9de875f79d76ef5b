#if canImport(Glibc)
import Glibc
#endif
import CXenNet
import Testing
import XenNetBackend
import XenNetFrontend
import XenNetProtocol
import XenNetTestbed
import XenPlatform
import XenProcess
import XenProtocolTesting
import XenSim
import XenStore
import XenStoreProtocol
import XenNetDevice
import XenBusClient
import XenBus

/// Frames as the peer's veth receives them, read with a packet socket in the
/// peer namespace (a capture on the far side of the bridge).
final class PeerCapture: @unchecked Sendable {
    let fd: Int32
    init(_ lab: NetworkLab) throws {
        let ns = NetworkNamespace.named(lab.peerNamespace)
        let name = lab.peerVeth
        fd = try ns.run { () throws(NetworkSetupError) -> Int32 in
            let s = CXenNet_packet_socket(name)
            if s < 0 { throw NetworkSetupError("packet socket", errno: -s) }
            return s
        }
    }
    deinit { close(fd) }

    /// Frames until `done` says stop or `timeoutMilliseconds` pass quietly.
    func frames(timeoutMilliseconds: Int32 = 3000, until done: ([[UInt8]]) -> Bool) -> [[UInt8]] {
        var out: [[UInt8]] = []
        var buffer = [UInt8](repeating: 0, count: 70_000)
        while !done(out) {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, timeoutMilliseconds) > 0 else { break }
            let n = recv(fd, &buffer, buffer.count, 0)
            if n > 0 { out.append(Array(buffer[0..<n])) }
        }
        return out
    }
}

import Synchronization
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }
}

func ipText(_ ip: [UInt8]) -> String { ip.map(String.init).joined(separator: ".") }

@Suite(.serialized) struct NetDeviceTests {
    /// The peer pings the guest (the frontend answers ARP and echo), and the
    /// guest pings the peer, across rings, netback, TAP, bridge and veth.
    @Test func pingsBothWays() async throws {
        try await withVIF { _, lab, device, front in
            #expect(device.interfaceName == "vif7.0")
            let negotiated = try #require(device.negotiation)
            #expect(negotiated.splitEventChannels && negotiated.options.gsoTCPv4 && negotiated.options.rxNotify)
            let queue = front.queues[0]
            let guestIP = lab.guestIP
            // The peer's ping runs in a child process while the guest answers.
            let done = Flag()
            let pinger = Task.detached {
                defer { done.set() }
                return lab.inPeer("ping -c 3 -i 0.2 -W 5 \(ipText(guestIP))")
            }
            let answered = try await offThePool { () throws -> Int in
                try queue.serve(mac: guestMAC, ip: guestIP, idleMilliseconds: 10_000, until: { done.isSet })
            }
            let (status, output) = await pinger.value
            #expect(status == 0, "peer ping: \(output)")
            #expect(output.contains("3 received"), "\(output)")
            #expect(answered >= 4, "ARP and three echo replies")

            let replies = try await offThePool { () throws -> Int in
                try queue.ping(from: guestMAC, ip: guestIP, to: lab.peerIP, count: 3)
            }
            #expect(replies == 3)
            let stats = device.statistics
            #expect(stats[.txPackets] >= 5 && stats[.rxPackets] >= 5 && stats[.txErrors] == 0)
        }
    }
}

@Suite(.serialized) struct NetParkingTests {
    /// Idle queues give their threads back and wake for the next frame from
    /// either side (a guest transmit kick, or a frame on the TAP).
    @Test func idleQueuesHoldNoThread() async throws {
        let configuration = NetBackendConfiguration(maximumQueues: 2, parkAfterMilliseconds: 50)
        try await withVIF(options: NetFrontendOptions(queues: 2), configuration: configuration) { _, lab, device, front in
            func awaitParked() async throws -> Int {
                try await offThePool { () -> Int in
                    for _ in 0..<500 where device.runningWorkerThreads > 0 { usleep(10_000) }
                    return device.runningWorkerThreads
                }
            }
            #expect(try await awaitParked() == 0, "both idle queues parked")
            let injector = try lab.injector()
            for round in 0..<2 {
                // Guest → host: each queue's kick wakes its worker.
                let before = device.statistics[.txPackets]
                for queue in front.queues {
                    try await offThePool {
                        queue.clearTxResponses()
                        try queue.send(hostFrame(lab, to: Frames.broadcast, sourcePort: 50 + round))
                        _ = try queue.awaitTxResponses(1)
                    }
                }
                #expect(device.statistics[.txPackets] == before + 2)
                #expect(try await awaitParked() == 0)
                // Host → guest: frames on the TAP wake whichever queue the kernel picks.
                let base = 40_000 + round * 100
                for i in 0..<16 { _ = injector.inject(hostFrame(lab, sourcePort: base + i)) }
                let counts = try await withThrowingTaskGroup(of: Int.self) { group in
                    for queue in front.queues {
                        group.addTask {
                            try await offThePool { () throws -> Int in
                                var n = 0
                                while let f = try queue.receive(timeoutMilliseconds: 500) {
                                    if let p = sourcePort(f.bytes), (base..<(base + 16)).contains(p) { n += 1 }
                                }
                                return n
                            }
                        }
                    }
                    var total = 0
                    for try await c in group { total += c }
                    return total
                }
                #expect(counts == 16, "every frame delivered after being parked")
                #expect(try await awaitParked() == 0)
            }
        }
    }
}

@Suite(.serialized) struct NetNegotiationTests {
    /// One event channel for both rings (no split), the frontend's MTU on
    /// the VIF, and the offloads the frontend declined left off the TAP.
    @Test func singleChannelMTUAndDeclinedOffloads() async throws {
        let options = NetFrontendOptions(splitEventChannels: false, gsoTCPv4: false, gsoTCPv6: false)
        try await withVIF(options: options, frontendKeys: ["mtu": "9000"]) { _, lab, device, front in
            let negotiated = try #require(device.negotiation)
            #expect(!negotiated.splitEventChannels && negotiated.mtu == 9000 && !negotiated.options.gsoTCPv4)
            let (_, link) = lab.inHost("ip link show vif7.0")
            #expect(link.contains("mtu 9000"), "\(link)")
            let (_, features) = lab.inHost("ethtool -k vif7.0")
            #expect(features.contains("tcp-segmentation-offload: off"), "\(features)")
            let queue = front.queues[0]
            let replies = try await offThePool { try queue.ping(from: guestMAC, ip: lab.guestIP, to: lab.peerIP, count: 2) }
            #expect(replies == 2)
        }
    }

    /// A `bridge` key naming no bridge: the connection fails, `error` says
    /// which bridge, and the device still closes and goes away cleanly.
    @Test func missingBridgeIsReported() async throws {
        let lab = try NetworkLab()
        defer { lab.destroy() }
        let host = try await SimNetHost()
        let nic = try await host.attachNIC(mac: guestMAC, bridge: "nosuchbr")
        let (_, task) = host.startBackend(nic, configuration: NetBackendConfiguration(maximumQueues: 1, namespace: lab.namespace))
        await #expect(throws: (any Error).self) { _ = try await host.connect(nic) }
        let error = try await host.frontendStore.readIfPresent(nic.backendPath + "/error") ?? ""
        #expect(error.contains("bridge nosuchbr"), "\(error)")
        try await nic.setOffline(xenstore: host.backendStore)
        try await host.frontendStore.write(nic.frontendPath + "/state", "\(XenbusState.closed.rawValue)")
        try await task.value
        await host.shutdown()
    }

    /// A frontend that does not request rx-copy (page flipping) is refused,
    /// and the error names the key.
    @Test func rxFlipIsRefused() async throws {
        let lab = try NetworkLab()
        defer { lab.destroy() }
        let host = try await SimNetHost()
        let nic = try await host.attachNIC(mac: guestMAC, bridge: lab.bridge)
        let (_, task) = host.startBackend(nic, configuration: NetBackendConfiguration(maximumQueues: 1, namespace: lab.namespace))
        _ = try await awaitXenbusState(host.frontendStore, nic.backendPath, "backend InitWait") { $0 == .initWait }
        try await host.frontendStore.write(nic.frontendPath + "/tx-ring-ref", "8")
        try await host.frontendStore.write(nic.frontendPath + "/rx-ring-ref", "9")
        try await host.frontendStore.write(nic.frontendPath + "/event-channel", "1")
        try await host.frontendStore.write(nic.frontendPath + "/state", "\(XenbusState.connected.rawValue)")
        _ = try await awaitXenbusState(host.frontendStore, nic.backendPath, "backend Closing") { $0 == .closing }
        let error = try await host.frontendStore.readIfPresent(nic.backendPath + "/error") ?? ""
        #expect(error.contains("request-rx-copy"), "\(error)")
        try await nic.setOffline(xenstore: host.backendStore)
        try await host.frontendStore.write(nic.frontendPath + "/state", "\(XenbusState.closed.rawValue)")
        try await task.value
        await host.shutdown()
    }
}

@Suite(.serialized) struct NetHotplugTests {
    /// With a `script` key (libxl's vif-bridge), the script attaches the VIF
    /// and says so in hotplug-status: Connected waits for it. Here the test
    /// plays the script; an error status fails the connection and says why.
    @Test(arguments: [true, false])
    func connectedWaitsForTheHotplugScript(succeeds: Bool) async throws {
        let lab = try NetworkLab()
        defer { lab.destroy() }
        let host = try await SimNetHost()
        let nic = try await host.attachNIC(mac: guestMAC, bridge: lab.bridge, extraBackendKeys: ["script": "/etc/xen/scripts/vif-bridge"])
        let (device, task) = host.startBackend(nic, configuration: NetBackendConfiguration(maximumQueues: 1, namespace: lab.namespace))
        let connecting = Task { try await host.connect(nic) }
        _ = try await awaitXenbusState(host.backendStore, nic.frontendPath, "the frontend Connected") { $0 == .connected }
        #expect(try await host.backendStore.readIfPresent(nic.backendPath + "/state") == "\(XenbusState.initWait.rawValue)",
                "no Connected before the script reports")
        if succeeds {
            let (status, output) = lab.inHost("ip link set \(try #require(device.interfaceName)) master \(lab.bridge)")
            #expect(status == 0, "\(output)")
            try await host.backendStore.write(nic.backendPath + "/hotplug-status", "connected")
            let front = try await connecting.value
            let queue = front.queues[0]
            let replies = try await offThePool { try queue.ping(from: guestMAC, ip: lab.guestIP, to: lab.peerIP, count: 2) }
            #expect(replies == 2)
            #expect(try await front.close())
        } else {
            try await host.backendStore.write(nic.backendPath + "/hotplug-error", "vif-bridge: no such bridge")
            try await host.backendStore.write(nic.backendPath + "/hotplug-status", "error")
            await #expect(throws: (any Error).self) { try await connecting.value }
            let error = try await host.backendStore.readIfPresent(nic.backendPath + "/error") ?? ""
            #expect(error.contains("vif-bridge: no such bridge"), "\(error)")
        }
        try await nic.setOffline(xenstore: host.backendStore)
        if !succeeds { try await host.frontendStore.write(nic.frontendPath + "/state", "\(XenbusState.closed.rawValue)") }
        try await task.value
        await host.shutdown()
    }
}

@Suite(.serialized) struct NetworkLabTests {
    /// A lab whose creator was killed before `destroy` (its pid is in the
    /// namespace names) is removed by the next lab; a live one is left alone.
    @Test func aKilledCreatorsLabIsRemovedByTheNext() async throws {
        let finished = try ChildProcess(["/bin/true"])
        let deadPID = finished.pid
        finished.wait()
        let leftover = "xbh-\(deadPID)-leftover", alive = "xbh-\(getpid())-alive"
        try #require(runShell("ip netns add \(leftover) && ip netns add \(alive)").0 == 0)
        defer { _ = runShell("ip netns del \(leftover) 2>/dev/null; ip netns del \(alive) 2>/dev/null") }
        let lab = try NetworkLab()
        defer { lab.destroy() }
        #expect(access("/var/run/netns/\(leftover)", F_OK) != 0, "the dead process's namespace is gone")
        #expect(access("/var/run/netns/\(alive)", F_OK) == 0, "a live process's namespace stays")
        #expect(access("/var/run/netns/\(lab.hostNamespace)", F_OK) == 0)
    }
}

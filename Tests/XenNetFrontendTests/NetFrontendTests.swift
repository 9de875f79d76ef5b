#if canImport(Glibc)
import Glibc
#endif
import Testing
import XenBus
import XenBusClient
import XenNetBackend
import XenNetChecksum
import XenNetDevice
import XenNetFrontend
import XenNetProtocol
import XenNetTestbed
import XenPlatform
import XenProtocolTesting
import XenSim
import XenStore
import XenToolstack

/// A NIC whose backend is the test itself, writing keys by hand: the
/// frontend's negotiation is seen exactly, with no TAP or bridge.
final class ScriptedBackend: @unchecked Sendable {
    let host: SimNetHost
    let nic: ToolstackNIC
    var store: XenStoreClient { host.backendStore }

    init(offering features: [String: String]) async throws {
        host = try await SimNetHost(guestPages: 2048)
        nic = try await host.attachNIC(bridge: nil)
        for (key, value) in features { try await store.write(nic.backendPath + "/" + key, value) }
        try await store.write(nic.backendPath + "/state", "\(XenbusState.initWait.rawValue)")
    }

    /// Starts the frontend's connect; returns its task and the keys it wrote
    /// once it went Connected (it then waits for us).
    func connect(_ options: NetFrontendOptions, frames: Range<UInt32> = 0..<2048) async throws
        -> (Task<NetFrontend, Error>, [String: String]) {
        let (domain, xenstore, path) = (host.guest, host.frontendStore, nic.frontendPath)
        let task = Task {
            try await NetFrontend.connect(domain: domain, xenstore: xenstore, frontendPath: path, frames: frames,
                                          options: options, timeout: .seconds(20))
        }
        _ = try await awaitXenbusState(store, nic.frontendPath, timeout: .seconds(20), "frontend Connected") { $0 == .connected }
        return (task, try await xenstoreKeys(store, nic.frontendPath))
    }

    func answer(_ state: XenbusState, error: String? = nil) async throws {
        if let error { try await store.write(nic.backendPath + "/error", error) }
        try await store.write(nic.backendPath + "/state", "\(state.rawValue)")
    }
}

/// What netback offers, all of it (Linux's and ours).
let everything = ["feature-rx-copy": "1", "feature-sg": "1", "feature-gso-tcpv4": "1", "feature-gso-tcpv6": "1",
                  "feature-split-event-channels": "1", "feature-multicast-control": "1", "feature-ctrl-ring": "1",
                  "multi-queue-max-queues": "2"]

@Suite struct NetFrontendNegotiationTests {
    /// The frontend uses a feature only if the backend offers it (as
    /// netfront does), caps its queues, and writes per-queue directories,
    /// split channels, the control ring and what it asks for, before going
    /// Connected with its receive buffers posted.
    @Test func asksForWhatTheBackendOffers() async throws {
        let backend = try await ScriptedBackend(offering: everything)
        let options = NetFrontendOptions(queues: 4, multicastControl: true, controlRing: true, mtu: 9000)
        let (task, written) = try await backend.connect(options)
        try await backend.answer(.connected)
        let front = try await task.value
        #expect(front.queues.count == 2 && front.options.queues == 2 && front.control != nil)
        var expected = ["backend": backend.nic.backendPath, "backend-id": "0", "handle": "0", "mac": "00:16:3e:12:34:56", "state": "4",
                        "multi-queue-num-queues": "2", "request-rx-copy": "1", "feature-rx-notify": "1", "feature-sg": "1",
                        "feature-gso-tcpv4": "1", "feature-gso-tcpv6": "1", "feature-ipv6-csum-offload": "1",
                        "request-multicast-control": "1", "mtu": "9000",
                        "ctrl-ring-ref": "\(front.control!.ringRef.rawValue)", "event-channel-ctrl": "\(front.control!.port.rawValue)"]
        for (q, queue) in front.queues.enumerated() {
            expected["queue-\(q)/tx-ring-ref"] = "\(queue.txRingRef.rawValue)"
            expected["queue-\(q)/rx-ring-ref"] = "\(queue.rxRingRef.rawValue)"
            expected["queue-\(q)/event-channel-tx"] = "\(queue.txPort.rawValue)"
            expected["queue-\(q)/event-channel-rx"] = "\(queue.rxPort.rawValue)"
            #expect(queue.txPort != queue.rxPort)
        }
        #expect(written == expected)
        await backend.host.shutdown()
    }

    /// A backend offering little: one queue, no split channels, no
    /// scatter-gather or GSO, no control ring; the frontend asks for none
    /// of them, and declining checksum offload is said explicitly.
    @Test func takesNothingTheBackendDoesNotOffer() async throws {
        let backend = try await ScriptedBackend(offering: ["feature-rx-copy": "1"])
        let options = NetFrontendOptions(queues: 4, checksumOffload: false, multicastControl: true, controlRing: true)
        let (task, written) = try await backend.connect(options)
        try await backend.answer(.connected)
        let front = try await task.value
        #expect(front.options == NetFrontendOptions(queues: 1, splitEventChannels: false, scatterGather: false, gsoTCPv4: false,
                                                    gsoTCPv6: false, checksumOffload: false, multicastControl: false, controlRing: false))
        let queue = front.queues[0]
        #expect(queue.txPort == queue.rxPort, "one channel for both rings")
        #expect(written == ["backend": backend.nic.backendPath, "backend-id": "0", "handle": "0", "mac": "00:16:3e:12:34:56", "state": "4",
                            "tx-ring-ref": "\(queue.txRingRef.rawValue)", "rx-ring-ref": "\(queue.rxRingRef.rawValue)",
                            "event-channel": "\(queue.txPort.rawValue)", "request-rx-copy": "1", "feature-rx-notify": "1",
                            "feature-sg": "0", "feature-gso-tcpv4": "0", "feature-gso-tcpv6": "0", "feature-ipv6-csum-offload": "1",
                            "feature-no-csum-offload": "1"])
        await backend.host.shutdown()
    }

    /// A backend that goes Closing instead of Connected: its `error` key is
    /// the reason the frontend reports.
    @Test func aRefusingBackendIsReported() async throws {
        let backend = try await ScriptedBackend(offering: everything)
        let (task, _) = try await backend.connect(NetFrontendOptions())
        try await backend.answer(.closing, error: "tx-ring-ref 9 is not granted")
        do {
            _ = try await task.value
            Issue.record("connected to a backend that refused")
        } catch NetFrontendError.backendRefused(let why) {
            #expect(why == "tx-ring-ref 9 is not granted")
        }
        await backend.host.shutdown()
    }

    /// Close follows the backend through Closing to Closed, then ends
    /// foreign access to every page it granted: rings, control ring and
    /// buffers can no longer be mapped.
    @Test func closeRevokesEveryGrant() async throws {
        let backend = try await ScriptedBackend(offering: everything)
        let (task, _) = try await backend.connect(NetFrontendOptions(queues: 2, controlRing: true))
        try await backend.answer(.connected)
        let front = try await task.value
        let (store, path, guest) = (backend.store, backend.nic.frontendPath, backend.host.guest.id)
        let grants = backend.host.hypervisor.platform(for: .dom0).grants
        let refs = front.queues.flatMap { [$0.txRingRef, $0.rxRingRef] + $0.txGrants } + [front.control!.ringRef]
        func mappable(_ ref: GrantRef) -> Bool {
            guard let mapping = try? grants.map([ref], of: guest, writable: false) else { return false }
            try? grants.unmap(mapping)
            return true
        }
        #expect(refs.count == 2 * (2 + 256) + 1 && refs.allSatisfy(mappable), "granted while connected")
        let closing = Task { try await front.close(timeout: .seconds(20)) }
        _ = try await awaitXenbusState(store, path, timeout: .seconds(20), "frontend Closing") { $0 == .closing }
        try await backend.answer(.closing)
        _ = try await awaitXenbusState(store, path, timeout: .seconds(20), "frontend Closed") { $0 == .closed }
        try await backend.answer(.closed)
        #expect(try await closing.value, "every grant revoked")
        #expect(refs.filter(mappable).isEmpty)
        await backend.host.shutdown()
    }

    /// What must fail before anything is written: a backend without
    /// rx-copy (page flipping is not spoken), too few guest frames, no
    /// backend named, no backend ever reaching InitWait.
    @Test func refusalsBeforeTheHandshake() async throws {
        let flipOnly = try await ScriptedBackend(offering: ["feature-rx-flip": "1"])
        let host = flipOnly.host, path = flipOnly.nic.frontendPath
        do {
            _ = try await NetFrontend.connect(domain: host.guest, xenstore: host.frontendStore, frontendPath: path, frames: 0..<2048)
            Issue.record("connected without rx-copy")
        } catch NetFrontendError.backendRefused(let why) {
            #expect(why.contains("feature-rx-copy"))
        }
        try await flipOnly.store.write(flipOnly.nic.backendPath + "/feature-rx-copy", "1")
        do {
            _ = try await NetFrontend.connect(domain: host.guest, xenstore: host.frontendStore, frontendPath: path, frames: 0..<100)
            Issue.record("connected with 100 frames")
        } catch NetFrontendError.notEnoughMemory(let needed, let given) {
            #expect(needed == 2 + 256 + 256 && given == 100)
        }
        #expect(try await xenstoreKeys(host.frontendStore, path)["tx-ring-ref"] == nil, "nothing written")
        try await flipOnly.store.write(flipOnly.nic.backendPath + "/state", "\(XenbusState.initialising.rawValue)")
        await #expect(throws: XenbusWaitTimeout(what: "backend InitWait")) {
            _ = try await NetFrontend.connect(domain: host.guest, xenstore: host.frontendStore, frontendPath: path, frames: 0..<2048,
                                              timeout: .milliseconds(300))
        }
        try await host.frontendStore.rm(path + "/backend-id")
        do {
            _ = try await NetFrontend.connect(domain: host.guest, xenstore: host.frontendStore, frontendPath: path, frames: 0..<2048)
            Issue.record("connected without a backend")
        } catch NetFrontendError.badKey(let why) {
            #expect(why.contains(path + "/backend"))
        }
        await host.shutdown()
        #expect(NetFrontendOptions(queues: 3, controlRing: true).framesNeeded == 3 * 514 + 2)
    }
}

// MARK: - Frames

let peerMAC: [UInt8] = [0x02, 0, 0, 0, 0, 0x99]
let peerIP: [UInt8] = [10, 9, 0, 1], ourIP: [UInt8] = [10, 9, 0, 2]

func be16(_ frame: [UInt8], _ at: Int) -> Int { Int(frame[at]) << 8 | Int(frame[at + 1]) }

@Suite struct FramesTests {
    /// ARP for our address is answered with our MAC, to the asker; ARP for
    /// anyone else is not.
    @Test func arpIsAnsweredForOurAddressOnly() throws {
        let request = Frames.arpRequest(senderMAC: peerMAC, senderIP: peerIP, targetIP: ourIP)
        #expect(request.count == 42 && Array(request[0..<6]) == Frames.broadcast && be16(request, 12) == 0x0806 && be16(request, 20) == 1)
        let reply = try #require(Frames.answer(request, mac: guestMAC, ip: ourIP))
        #expect(Array(reply[0..<6]) == peerMAC && Array(reply[6..<12]) == guestMAC && be16(reply, 20) == 2)
        #expect(Array(reply[22..<28]) == guestMAC && Array(reply[28..<32]) == ourIP, "sender: us")
        #expect(Array(reply[32..<38]) == peerMAC && Array(reply[38..<42]) == peerIP, "target: the asker")
        #expect(Frames.answer(Frames.arpRequest(senderMAC: peerMAC, senderIP: peerIP, targetIP: [10, 9, 0, 3]), mac: guestMAC, ip: ourIP) == nil)
        #expect(Frames.answer(reply, mac: peerMAC, ip: peerIP) == nil, "replies are not answered")
    }

    /// An echo request to us gets an echo reply with the same identifier,
    /// sequence and payload, and valid IPv4 and ICMP checksums.
    @Test func echoRequestsAreAnswered() throws {
        let payload = pattern(56, seed: 4)
        let request = Frames.icmpEcho(sourceMAC: peerMAC, destinationMAC: guestMAC, sourceIP: peerIP, destinationIP: ourIP,
                                      identifier: 0x1234, sequence: 7, payload: payload)
        let reply = try #require(Frames.answer(request, mac: guestMAC, ip: ourIP))
        #expect(reply.count == request.count && Array(reply[0..<6]) == peerMAC && Array(reply[26..<30]) == ourIP && Array(reply[30..<34]) == peerIP)
        #expect(reply[34] == 0 && be16(reply, 38) == 0x1234 && be16(reply, 40) == 7 && Array(reply[42...]) == payload)
        #expect(onesComplementSum(Array(reply[14..<34])) == 0xFFFF, "IPv4 header checksum")
        #expect(onesComplementSum(Array(reply[34...])) == 0xFFFF, "ICMP checksum")
        #expect(onesComplementSum(Array(request[34...])) == 0xFFFF)
        #expect(Frames.answer(reply, mac: peerMAC, ip: peerIP) == nil, "a reply is not answered")
        var elsewhere = request
        elsewhere[33] = 3
        #expect(Frames.answer(elsewhere, mac: guestMAC, ip: ourIP) == nil, "not for us")
        #expect(Frames.answer(Array(request.prefix(41)), mac: guestMAC, ip: ourIP) == nil, "truncated")
    }

    /// UDP and TCP frames carry checksums the packet parser accepts, or the
    /// partial (pseudo-header) sum when the backend is to finish them.
    @Test func udpAndTCPChecksums() throws {
        let udp = Frames.udp(sourceMAC: guestMAC, destinationMAC: peerMAC, sourceIP: ourIP, destinationIP: peerIP,
                             sourcePort: 4000, destinationPort: 53, payload: pattern(300, seed: 1))
        let layout = try #require(udp.withUnsafeBytes { PacketLayout(frame: $0) })
        #expect(layout.transportProtocol == 17 && layout.transportLength == 308)
        #expect(udp.withUnsafeBytes { layout.transportChecksumIsValid(frame: $0) })
        #expect(onesComplementSum(Array(udp[14..<34])) == 0xFFFF)
        let partial = Frames.udp(sourceMAC: guestMAC, destinationMAC: peerMAC, sourceIP: ourIP, destinationIP: peerIP,
                                 sourcePort: 4000, destinationPort: 53, payload: pattern(300, seed: 1), partialChecksum: true)
        #expect(UInt16(be16(partial, 40)) == partial.withUnsafeBytes { layout.pseudoHeaderSum(frame: $0) })
        let v6: [UInt8] = [0xFD] + [UInt8](repeating: 0, count: 14) + [1], w6: [UInt8] = [0xFD] + [UInt8](repeating: 0, count: 14) + [2]
        var tcp = Frames.tcpPartial(sourceMAC: guestMAC, destinationMAC: peerMAC, sourceIP: v6, destinationIP: w6, sourcePort: 5000,
                                    destinationPort: 80, sequence: 1, payload: pattern(1000, seed: 2))
        let tcpLayout = try #require(tcp.withUnsafeBytes { PacketLayout(frame: $0) })
        #expect(tcpLayout.isIPv6 && tcpLayout.transportProtocol == 6 && tcpLayout.transportLength == 1020)
        tcp.withUnsafeMutableBytes {
            InternetChecksum.complete(frame: $0, start: tcpLayout.transportOffset, offset: 16, end: tcpLayout.transportOffset + 1020)
        }
        #expect(tcp.withUnsafeBytes { tcpLayout.transportChecksumIsValid(frame: $0) }, "completing the partial sum gives a valid segment")
    }
}

// MARK: - Against the sim backend on a private network

@Suite(.serialized, .enabled(if: networkAvailable, "needs root, /dev/net/tun and iproute2"))
struct NetFrontendTrafficTests {
    /// Frames the frontend sends leave the VIF onto the bridge byte for
    /// byte, and frames put on the bridge for its MAC come out of `receive`.
    @Test func framesBothWays() async throws {
        try await withVIF(options: NetFrontendOptions(queues: 1)) { _, lab, _, front in
            let tap = try lab.injector()
            let fd = tap.queueDescriptors[0]
            let queue = front.queues[0]
            let toGuest = Frames.udp(sourceMAC: peerMAC, destinationMAC: guestMAC, sourceIP: peerIP, destinationIP: ourIP,
                                     sourcePort: 9, destinationPort: 7, payload: pattern(1200, seed: 6))
            // The bridge learns where the guest is from its first frame.
            let fromGuest = Frames.udp(sourceMAC: guestMAC, destinationMAC: Frames.broadcast, sourceIP: ourIP, destinationIP: [10, 9, 0, 255],
                                       sourcePort: 7, destinationPort: 9, payload: pattern(700, seed: 8))
            try queue.send(fromGuest)
            let seen = try await offThePool { () -> [UInt8]? in
                var buffer = [UInt8](repeating: 0, count: 4096)
                let deadline = ContinuousClock.now + .seconds(10)
                while ContinuousClock.now < deadline {
                    var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                    guard poll(&p, 1, 1000) == 1 else { continue }
                    let n = read(fd, &buffer, buffer.count)
                    if n > VirtioNetHeader.size, Array(buffer[VirtioNetHeader.size..<n]) == fromGuest { return fromGuest }
                }
                return nil
            }
            #expect(seen != nil, "the guest's broadcast reached the bridge unchanged")
            #expect(tap.inject(toGuest))
            let received = try await offThePool { () -> ReceivedFrame? in
                while let frame = try queue.receive(timeoutMilliseconds: 10_000) {
                    if frame.bytes == toGuest { return frame }
                }
                return nil
            }
            #expect(received?.slots == 1, "one frame, one slot")
        }
    }
}

import ArgumentParser
import Logging
import XenNetBackend
import XenNetFrontend
import XenNetTestbed
import XenPlatform
import XenSim
import XenStore
#if canImport(Glibc)
import Glibc
#endif

struct NetFrontCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "net",
        abstract: "A netfront: negotiate, then ping a peer and/or answer pings (ARP and ICMP echo) for an address.",
        discussion: """
        With --bridge, everything runs in this process: the software hypervisor, its xenstored, a \
        netback whose VIF (a TAP) joins BRIDGE, and this frontend. With --sim, this process is \
        guest DOMAIN of a running `xenback sim serve` and drives the VIF the toolstack attached \
        to it (HANDLE), served by xenbackd. Exit status 0 when every ping was answered.
        """)

    @Option(help: "In-process mode: the Linux bridge the VIF joins.")
    var bridge: String?

    @Option(help: "In-process mode: the network namespace the VIF and bridge live in (a name from `ip netns`).")
    var namespace: String?

    @Option(help: "In-process mode: capture the VIF's frames to DIR/<vif>.pcap (libpcap; tcpdump -r reads it).")
    var captureDirectory: String?

    @Option(help: "A running sim's control socket (the guest runs in this process).")
    var sim: String?

    @Option(help: "The guest's domain id (with --sim).")
    var domain: UInt16 = 1

    @Option(help: "The VIF's handle (device/vif/HANDLE).")
    var handle: Int = 0

    @Option(help: "The guest's IPv4 address.")
    var ip: String

    @Option(help: "The guest's MAC address (default: the toolstack's `mac` key, or 00:16:3e:00:00:01).")
    var mac: String?

    @Option(help: "Ping this IPv4 address.")
    var ping: String?

    @Option(help: "Echo requests to send.")
    var count: Int = 3

    @Option(help: "Answer ARP and pings for --ip until this many seconds pass without a frame.")
    var serve: Int = 0

    @Option(help: "After the pings, stream UDP to the --ping address for this many seconds (a burst each second), printing a progress line per second.")
    var stream: Int = 0

    @Option(help: "Queues to ask for.")
    var queues: Int = 1

    @Option(help: "First guest frame this frontend may use (with --sim).")
    var firstFrame: UInt32 = 0

    func validate() throws {
        guard (bridge == nil) != (sim == nil) else { throw ValidationError("give exactly one of --bridge BRIDGE or --sim SOCKET") }
        guard parseIPv4(ip) != nil else { throw ValidationError("--ip must be an IPv4 address, got \(ip)") }
        if let ping, parseIPv4(ping) == nil { throw ValidationError("--ping must be an IPv4 address, got \(ping)") }
        if let mac, parseMAC(mac) == nil { throw ValidationError("--mac must look like 00:16:3e:12:34:56, got \(mac)") }
        guard ping != nil || serve > 0 else { throw ValidationError("nothing to do: give --ping ADDRESS and/or --serve SECONDS") }
        guard stream == 0 || ping != nil else { throw ValidationError("--stream sends to the --ping address: give --ping too") }
        guard (0...86_400).contains(stream) else { throw ValidationError("--stream must be 0...86400 seconds") }
        guard (1...8).contains(queues) else { throw ValidationError("--queues must be 1...8") }
        if bridge != nil && getuid() != 0 { throw ValidationError("in-process mode makes a TAP on the bridge: run it as root") }
        if let captureDirectory {
            guard bridge != nil else { throw ValidationError("--capture-directory is for in-process mode (xenbackd has its own)") }
            guard access(captureDirectory, W_OK) == 0 else { throw ValidationError("--capture-directory \(captureDirectory) is not a writable directory") }
        }
    }

    func run() async throws {
        var logger = Logger(label: "xenback.front.net")
        logger.logLevel = .warning
        let options = NetFrontendOptions(queues: queues)
        let front: NetFrontend
        var cleanup: () async -> Void = {}
        var guestMAC = mac.flatMap(parseMAC) ?? [0x00, 0x16, 0x3E, 0, 0, 1]
        if let bridge {
            let host = try await SimNetHost(logger: logger)
            let nic = try await host.attachNIC(handle: handle, mac: guestMAC, bridge: bridge)
            var configuration = NetBackendConfiguration()
            if let namespace { configuration.namespace = .named(namespace) }
            configuration.captureDirectory = captureDirectory
            let (device, task) = host.startBackend(nic, configuration: configuration)
            front = try await host.connect(nic, options: options)
            print("connected: VIF \(device.interfaceName ?? "?") on \(bridge), \(front.queues.count) queue(s)")
            cleanup = {
                _ = try? await front.close()
                try? await nic.setOffline(xenstore: host.backendStore)
                _ = try? await task.value
                await host.shutdown()
            }
        } else {
            let client = try SimClient(socketPath: sim!)
            let guest = try client.attachDomain(DomainID(domain))
            let xenstore = try await client.xenstore(as: DomainID(domain), reconnectingWith: logger)
            let frontendPath = "/local/domain/\(domain)/device/vif/\(handle)"
            if mac == nil, let text = try await xenstore.readIfPresent(frontendPath + "/mac"), let m = parseMAC(text) { guestMAC = m }
            let frames = firstFrame..<UInt32(guest.pageCount)
            front = try await NetFrontend.connect(domain: guest, xenstore: xenstore, frontendPath: frontendPath, frames: frames,
                                                  options: options, openEventChannels: { try client.openEventChannels(domain: DomainID(self.domain)) })
            print("connected: \(frontendPath), \(front.queues.count) queue(s)")
            cleanup = { _ = try? await front.close() }
        }
        let queue = front.queues[0]
        let address = parseIPv4(ip)!
        let mac = guestMAC
        var ok = true
        if let ping {
            let peer = parseIPv4(ping)!
            let count = self.count
            let replies = try await onOwnThread { try queue.ping(from: mac, ip: address, to: peer, count: count) }
            print("ping \(ping): \(replies)/\(count) replies")
            fflush(nil)
            ok = replies == count
            if stream > 0 {
                let seconds = stream
                let sent = try await onOwnThread { () throws -> Int in
                    guard let peerMAC = try queue.resolve(from: mac, ip: address, peer: peer) else { return -1 }
                    let frame = Frames.udp(sourceMAC: mac, destinationMAC: peerMAC, sourceIP: address, destinationIP: peer,
                                           sourcePort: 40_000, destinationPort: 9, payload: [UInt8](repeating: 0x5A, count: 958))
                    var total = 0
                    // A quarter-second burst each second: a steady stream, not a CPU hog.
                    for _ in 0..<seconds {
                        let start = monotonicNanoseconds()
                        let n = try queue.blast(frame, until: start + 250_000_000)
                        total += n
                        print("progress pps=\(n) mbps=\(fmt(Double(n * frame.count) / 1e6, 1))")
                        fflush(nil)
                        // The rest of the second: answer ARP and pings meanwhile.
                        let end = start + 1_000_000_000
                        _ = try queue.serve(mac: mac, ip: address, idleMilliseconds: .max, until: { monotonicNanoseconds() >= end })
                    }
                    return total
                }
                print(sent < 0 ? "stream: \(ping) did not answer ARP" : "stream: \(sent) frames to \(ping)")
                ok = ok && sent > 0
            }
        }
        if serve > 0 {
            let idle = Int32(clamping: serve * 1000)
            // SIGTERM (guest destroy) ends the serving; the device is then closed properly.
            // Relaxed load: the flag guards no data.
            DemoSignal.install()
            let answered = try await onOwnThread {
                try queue.serve(mac: mac, ip: address, idleMilliseconds: idle, until: { DemoSignal.interrupted.load(ordering: .relaxed) })
            }
            print("answered \(answered) ARP/echo request(s)")
        }
        await cleanup()
        if !ok { throw ExitCode(1) }
    }
}

func parseIPv4(_ text: String) -> [UInt8]? {
    let parts = text.split(separator: ".").compactMap { UInt8($0) }
    return parts.count == 4 && text.split(separator: ".").count == 4 ? parts : nil
}

func parseMAC(_ text: String) -> [UInt8]? {
    let parts = text.split(separator: ":").compactMap { UInt8($0, radix: 16) }
    return parts.count == 6 ? parts : nil
}

/// Blocking frontend work on a thread of its own, awaited.
/// The cooperative pool stays free for the xenstore client and the backend.
func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        JoinableThread { continuation.resume(with: Result { try body() }) }.detach()
    }
}

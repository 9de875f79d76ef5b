import CXenShims
import Logging
import Synchronization
import XenBusDriver
import XenNetProtocol
import XenPlatform
import XenStore
#if canImport(Glibc)
import Glibc
import XenNetDevice
#endif

/// What an operator may tune per network backend.
public struct NetBackendConfiguration: Sendable, Equatable {
    /// Advertised as `multi-queue-max-queues` (Linux: 8 at most, one per CPU).
    public var maximumQueues: Int
    /// Where the VIFs' TAP interfaces and bridges live.
    public var namespace: NetworkNamespace
    /// Capture every VIF's frames to `<directory>/<vif name>.pcap`.
    public var captureDirectory: String?
    /// Host packets buffered per queue (XSA-392), and Linux's stall and drain timeouts.
    public var receiveQueueBytes: Int
    public var receiveStallMilliseconds: Int
    public var receiveDrainMilliseconds: Int
    /// With a `script` key, libxl's hotplug script attaches the VIF and
    /// writes `hotplug-status`; Connected waits for it this long.
    public var hotplugTimeoutMilliseconds: Int
    /// The host side's MAC (Linux netback: fe:ff:ff:ff:ff:ff, so bridges
    /// never take the VIF's address as their own).
    public var hostMAC: [UInt8]
    /// A queue idle this long gives its thread back until its next event or
    /// frame (0: never), so idle VIFs hold no threads.
    public var parkAfterMilliseconds: Int
    /// Guest transmit rate for VIFs whose toolstack gave no `rate` key.
    public var defaultRate: NetRate?

    public init(maximumQueues: Int = min(8, NetBackendConfiguration.onlineCPUs), namespace: NetworkNamespace = .current,
                captureDirectory: String? = nil, receiveQueueBytes: Int = 512 * 1024, receiveStallMilliseconds: Int = 60_000,
                receiveDrainMilliseconds: Int = 10_000, hotplugTimeoutMilliseconds: Int = 30_000,
                hostMAC: [UInt8] = [0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], parkAfterMilliseconds: Int = 1000) {
        self.parkAfterMilliseconds = parkAfterMilliseconds
        self.maximumQueues = maximumQueues
        self.namespace = namespace
        self.captureDirectory = captureDirectory
        self.receiveQueueBytes = receiveQueueBytes
        self.receiveStallMilliseconds = receiveStallMilliseconds
        self.receiveDrainMilliseconds = receiveDrainMilliseconds
        self.hotplugTimeoutMilliseconds = hotplugTimeoutMilliseconds
        self.hostMAC = hostMAC
    }

    public static var onlineCPUs: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    public func validate() throws(NetDeviceError) {
        guard (1...16).contains(maximumQueues) else { throw .configuration("maximum queues \(maximumQueues) is not in 1...16") }
        guard (65536...(64 << 20)).contains(receiveQueueBytes) else {
            throw .configuration("receive queue bytes \(receiveQueueBytes) is not in 65536...\(64 << 20)")
        }
        guard receiveStallMilliseconds > 0, receiveDrainMilliseconds > 0, hotplugTimeoutMilliseconds > 0 else {
            throw .configuration("timeouts must be positive")
        }
        guard hostMAC.count == 6 else { throw .configuration("host MAC must be 6 bytes") }
        guard (0...3_600_000).contains(parkAfterMilliseconds) else {
            throw .configuration("park-after \(parkAfterMilliseconds) ms is not in 0...3600000")
        }
        if let r = defaultRate, r.bytes <= 0 || r.microseconds <= 0 {
            throw .configuration("default rate must be positive bytes per positive microseconds")
        }
    }
}

public enum NetDeviceError: Error, Equatable, Sendable, CustomStringConvertible {
    case badKey(path: String, value: String?, why: String)
    case configuration(String)
    case host(NetworkSetupError)
    case backend(NetBackendError)
    case hotplug(String)

    public var description: String {
        switch self {
        case .badKey(let path, let value, let why): Self.describeBadKey(path: path, value: value, why: why)
        case .configuration(let why): "configuration: \(why)"
        case .host(let e): "\(e)"
        case .backend(let e): "\(e)"
        case .hotplug(let why): "hotplug: \(why)"
        }
    }
}

/// What was negotiated with the frontend (status displays and tests).
public struct NetNegotiation: Sendable, Equatable {
    public var queues: Int
    public var splitEventChannels: Bool
    public var controlRing: Bool
    public var options: NetQueueOptions
    public var mtu: Int
}

/// One virtual interface (a `backend/vif/<domid>/<handle>` directory): a
/// TAP named like Xen's `vif<domid>.<handle>` made at probe, the features
/// Linux netback publishes, the handshake, and one worker thread per queue
/// once the frontend connects.
public final class NetBackendDevice<Platform: XenPlatform>: Sendable {
    public let backendPath: String
    let platform: Platform
    let xenstore: XenStoreClient
    let configuration: NetBackendConfiguration
    let logger: Logger
    public let multicast = MulticastFilter()
    /// The guest transmit rate, shared by the queues and changed live.
    public let rateSetting = NetRateSetting()
    let hashState = HashState()

    let queues = ServedRings<NetCounter>()
    struct Running {
        var tap: TapDevice?
        var capture: PacketCapture?
        var negotiation: NetNegotiation?
        var stalledQueues = 0
        var disabledReason: String?
        /// Follows the frontend's request-multicast-control while connected.
        var multicastWatch: (path: String, token: String, task: Task<Void, Never>)?
    }
    private let running = Mutex(Running())

    public init(platform: Platform, xenstore: XenStoreClient, backendPath: String,
                configuration: NetBackendConfiguration = NetBackendConfiguration(), logger: Logger) {
        self.platform = platform
        self.xenstore = xenstore
        self.backendPath = backendPath
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "device"] = .string(backendPath)
        self.logger = logger
    }

    public var statistics: NetStatistics.Snapshot { queues.statistics }
    public var negotiation: NetNegotiation? { running.withLock { $0.negotiation } }
    /// Queue workers on a thread now (idle queues are parked without one).
    public var runningWorkerThreads: Int { queues.runningThreads }
    /// The host interface's name once made.
    public var interfaceName: String? { running.withLock { $0.tap?.name } }
    /// Why the VIF was disabled (a fatal frontend error), if it was.
    public var disabledReason: String? { running.withLock { $0.disabledReason } }

    struct Setup: Sendable {
        var keys: DeviceKeys<NetDeviceError>
        var handle: Int
        var bridge: String?
        var script: String?
        var rate: NetRate?
        var backendMTU: Int?
    }

    // MARK: Lifecycle

    public func run() async throws {
        try configuration.validate()
        let setup: Setup
        let tap: TapDevice
        do {
            setup = try await readSetup()
            let name = try await key("vifname").flatMap { $0.isEmpty ? nil : $0 } ?? "vif\(setup.keys.frontendID.rawValue).\(setup.handle)"
            do { tap = try TapDevice(name: name, queues: 1, multiQueue: configuration.maximumQueues > 1, namespace: configuration.namespace) }
            catch { throw NetDeviceError.host(error) }
        } catch {
            await XenbusDeviceLoop(xenstore: xenstore, backendPath: backendPath, frontendPath: "", logger: logger).reportSetupError(error)
            throw error
        }
        let capture = try configuration.captureDirectory.map { directory throws(NetworkSetupError) in
            try PacketCapture(path: directory + "/" + tap.name + ".pcap")
        }
        running.withLock {
            $0.tap = tap
            $0.capture = capture
        }
        defer {
            running.withLock {
                $0.capture?.close()
                $0.tap = nil
            }
        }
        try await publishProbeFeatures(tap: tap)
        logger.info("interface \(tap.name) created", metadata: ["bridge": "\(setup.bridge ?? "-")"])
        rateSetting.set(setup.rate)
        let rateFollower = try await BackendKeyFollower(xenstore: xenstore, backendPath: backendPath, keys: ["rate"], logger: logger) { values in
            await self.rateKeyChanged(values["rate"] ?? nil)
        }
        let loop = XenbusDeviceLoop(xenstore: xenstore, backendPath: backendPath, frontendPath: setup.keys.frontendPath, logger: logger)
        do {
            try await loop.run(connect: { try await self.connect(setup, tap: try self.liveTap(), capture: capture) },
                               disconnect: { await self.disconnect() })
        } catch {
            await rateFollower.stop()
            throw error
        }
        await rateFollower.stop()
    }

    /// Where the device says which transmit rate is in force.
    public static var rateStatusKey: String { "rate-status" }

    /// The rate `rate` asks for (absent or empty: the configured default);
    /// nil if the value is not "bytes,microseconds".
    private func rate(from text: String?) -> NetRate?? {
        guard let text, !text.isEmpty else { return .some(configuration.defaultRate) }
        return NetRate(xenstoreValue: text).map { .some($0) }
    }

    /// An operator changed `rate`: every queue takes it on its next pass,
    /// and `rate-status` says what is in force. A bad value leaves the rate
    /// as it was and is reported there, in the log and in `error`.
    private func rateKeyChanged(_ text: String?) async {
        let status: String
        if let new = rate(from: text) {
            if new != rateSetting.current {
                rateSetting.set(new)
                logger.info("transmit rate \(new.map { "\($0)" } ?? "unlimited")")
            }
            status = new.map { "\($0)" } ?? "unlimited"
        } else {
            let error = NetDeviceError.badKey(path: backendPath + "/rate", value: text, why: "expected \"bytes,microseconds\", both positive")
            logger.error("transmit rate refused: \(error)")
            try? await xenstore.writeIfDevicePresent(backendPath, "error", "\(error)")
            status = "refused (still \(rateSetting.current.map { "\($0)" } ?? "unlimited")): \(error)"
        }
        try? await xenstore.writeIfDevicePresent(backendPath, Self.rateStatusKey, status)
    }

    private func key(_ name: String) async throws -> String? {
        try await xenstore.readIfPresent(backendPath + "/" + name)
    }

    private func readSetup() async throws -> Setup {
        let keys = try await DeviceKeys<NetDeviceError>(xenstore: xenstore, backendPath: backendPath)
        let handleText = try await key("handle") ?? String(backendPath.split(separator: "/").last ?? "")
        guard let handle = Int(handleText), handle >= 0 else {
            throw NetDeviceError.badKey(path: backendPath + "/handle", value: handleText, why: "expected the device handle, a number")
        }
        var rate = configuration.defaultRate
        if let text = try await key("rate"), !text.isEmpty {
            guard let r = NetRate(xenstoreValue: text) else {
                throw NetDeviceError.badKey(path: backendPath + "/rate", value: text, why: "expected \"bytes,microseconds\", both positive")
            }
            rate = r
        }
        var mtu: Int?
        if let text = try await key("mtu") {
            guard let m = Int(text), (68...65535).contains(m) else {
                throw NetDeviceError.badKey(path: backendPath + "/mtu", value: text, why: "expected an MTU in 68...65535")
            }
            mtu = m
        }
        let bridge = try await key("bridge").flatMap { $0.isEmpty ? nil : $0 }
        let script = try await key("script").flatMap { $0.isEmpty ? nil : $0 }
        return Setup(keys: keys, handle: handle, bridge: bridge,
                     script: script, rate: rate, backendMTU: mtu)
    }

    /// What netfront reads before it sets up its rings (Linux writes these at probe).
    private func publishProbeFeatures(tap: TapDevice) async throws {
        let features: [(String, String)] = [
            ("feature-sg", "1"), ("feature-gso-tcpv4", "1"), ("feature-gso-tcpv6", "1"),
            ("feature-ipv6-csum-offload", "1"), ("feature-rx-copy", "1"), ("feature-rx-flip", "0"),
            ("feature-multicast-control", "1"), ("feature-dynamic-multicast-control", "1"), ("feature-split-event-channels", "1"),
            ("multi-queue-max-queues", "\(configuration.maximumQueues)"), ("feature-ctrl-ring", "1"),
        ]
        try await xenstore.withTransaction { t in
            for (k, v) in features { try await self.xenstore.write(self.backendPath + "/" + k, v, transaction: t) }
        }
    }

    // MARK: Connect / disconnect

    private func connect(_ setup: Setup, tap: TapDevice, capture: PacketCapture?) async throws {
        let keys = setup.keys
        guard try await keys.frontendFlag("request-rx-copy") else {
            throw NetDeviceError.badKey(path: keys.frontendPath + "/request-rx-copy", value: try await keys.frontend("request-rx-copy"),
                                        why: "receive by page flipping is not supported: the frontend must request rx-copy")
        }
        func flag(_ name: String) async throws -> Bool { try await keys.frontendFlag(name) }
        var options = NetQueueOptions()
        options.rxNotify = try await flag("feature-rx-notify")
        options.scatterGather = try await flag("feature-sg")
        options.gsoTCPv4 = try await flag("feature-gso-tcpv4") && options.scatterGather
        options.gsoTCPv6 = try await flag("feature-gso-tcpv6") && options.scatterGather
        options.checksumOffload = !(try await flag("feature-no-csum-offload"))
        options.ipv6ChecksumOffload = try await flag("feature-ipv6-csum-offload")
        options.multicastControl = try await flag("request-multicast-control")
        options.rate = setup.rate
        options.receiveQueueBytes = configuration.receiveQueueBytes
        options.receiveStallMilliseconds = configuration.receiveStallMilliseconds
        options.receiveDrainMilliseconds = configuration.receiveDrainMilliseconds

        let queues = Int(try await keys.frontendNumber("multi-queue-num-queues") ?? 1)
        guard (1...configuration.maximumQueues).contains(queues) else {
            throw NetDeviceError.badKey(path: keys.frontendPath + "/multi-queue-num-queues", value: "\(queues)",
                                        why: "must be 1...\(configuration.maximumQueues)")
        }
        let mtuText = try await keys.frontend("mtu")
        var mtu = setup.backendMTU ?? 1500
        if let mtuText {
            guard let m = Int(mtuText), (68...65535).contains(m) else {
                throw NetDeviceError.badKey(path: keys.frontendPath + "/mtu", value: mtuText, why: "expected an MTU in 68...65535")
            }
            mtu = m
        }
        var control: NetControlSetup?
        if let ref = try await keys.frontendNumber("ctrl-ring-ref") {
            let port = try await keys.requiredFrontendNumber("event-channel-ctrl", "the control ring's event channel")
            control = NetControlSetup(ringRef: GrantRef(ref), remotePort: EventChannelPort(port))
        }
        do { try tap.setQueueCount(queues) } catch { throw NetDeviceError.host(error) }
        do { try tap.setOffloads(checksum: options.checksumOffload, tcpv4: options.gsoTCPv4, tcpv6: options.gsoTCPv6) }
        catch { throw NetDeviceError.host(error) }

        var workers: [any ServedRing<NetCounter>] = []
        var split = false
        // With a control ring the guest may set a hash mapping table: frames go
        // to the queue it names, whichever TAP queue the kernel read them from.
        var steering: ReceiveSteering?
        if queues > 1 && control != nil {
            do { steering = try ReceiveSteering(queueCount: queues, frameBytes: NetQueueWorker<Platform>.packetStride) } catch {
                throw NetDeviceError.backend(.fatal("cannot set up receive steering: \(error)"))
            }
        }
        for q in 0..<queues {
            let prefix = queues == 1 ? "" : "queue-\(q)/"
            let tx = try await keys.requiredFrontendNumber(prefix + "tx-ring-ref", "the frontend grants its transmit ring here")
            let rx = try await keys.requiredFrontendNumber(prefix + "rx-ring-ref", "the frontend grants its receive ring here")
            let txPort: UInt32
            var rxPort: UInt32?
            if let single = try await keys.frontendNumber(prefix + "event-channel") {
                txPort = single
            } else {
                txPort = try await keys.requiredFrontendNumber(prefix + "event-channel-tx", "event-channel or event-channel-tx/-rx")
                rxPort = try await keys.requiredFrontendNumber(prefix + "event-channel-rx", "split event channels need both ports")
                split = true
            }
            do {
                workers.append(try NetQueueWorker(
                    platform: platform, frontend: keys.frontendID, txRingRef: GrantRef(tx), rxRingRef: GrantRef(rx),
                    txRemotePort: EventChannelPort(txPort), rxRemotePort: rxPort.map { EventChannelPort($0) },
                    tapDescriptor: tap.queueDescriptors[q], options: options, queueIndex: q, queueCount: queues,
                    multicast: multicast, capture: capture, control: q == 0 ? control : nil, hashSettings: hashState,
                    steering: steering, rateSetting: rateSetting, stallChanged: { [weak self] stalled in self?.queueStallChanged(stalled) }))
            } catch {
                throw NetDeviceError.backend(error)
            }
        }

        // libxl's hotplug script (vif-bridge) attaches the interface and
        // says so in hotplug-status; without one, we attach it ourselves.
        if let script = setup.script {
            try await awaitHotplug(script: script)
            do { try tap.configure(mtu: mtu, mac: configuration.hostMAC, up: true, bridge: nil) } catch { throw NetDeviceError.host(error) }
        } else {
            do { try tap.configure(mtu: mtu, mac: configuration.hostMAC, up: true, bridge: setup.bridge) } catch { throw NetDeviceError.host(error) }
            try await xenstore.write(backendPath + "/hotplug-status", "connected")
        }
        tap.setCarrier(true)

        let logger = self.logger
        do {
            try self.queues.start(workers, parkAfterMilliseconds: configuration.parkAfterMilliseconds,
                                  onStart: NetBackendInstrumentation.workerThreadStart) { [weak self] q, error in
                // Linux disables the whole VIF on these; others carry on.
                logger.error("\(error); VIF disabled until the frontend reconnects", metadata: ["queue": "\(q)"])
                self?.disable(reason: "\(error)")
            }
        } catch {
            throw NetDeviceError.backend(.eventChannel(error))
        }
        // feature-dynamic-multicast-control: the frontend may turn filtering
        // on or off while connected.
        let multicastPath = keys.frontendPath + "/request-multicast-control"
        let watch = try await xenstore.watch(multicastPath)
        let filter = multicast, xenstore = self.xenstore
        let follower = Task {
            for await _ in watch.events {
                guard let value = try? await xenstore.readIfPresent(multicastPath) else { continue }
                filter.setEnabled(value == "1")
            }
        }
        let negotiation = NetNegotiation(queues: queues, splitEventChannels: split, controlRing: control != nil, options: options, mtu: mtu)
        running.withLock {
            $0.negotiation = negotiation
            $0.disabledReason = nil
            $0.multicastWatch = (multicastPath, watch.token, follower)
        }
        logger.info("connected", metadata: ["queues": "\(queues)", "split": "\(split)", "ctrl": "\(control != nil)",
                                            "gso": "\(options.gsoTCPv4)/\(options.gsoTCPv6)", "mtu": "\(mtu)"])
    }

    /// The VIF's TAP, made again if someone deleted the interface (it then
    /// comes back for the next connection, without bridge or address).
    private func liveTap() throws -> TapDevice {
        guard let tap = running.withLock({ $0.tap }) else { throw NetDeviceError.configuration("the device has no TAP") }
        if tap.exists { return tap }
        logger.warning("interface \(tap.name) was deleted; making it again")
        let made: TapDevice
        do { made = try TapDevice(name: tap.name, queues: 1, multiQueue: tap.multiQueue, namespace: tap.namespace) } catch {
            throw NetDeviceError.host(error)
        }
        running.withLock { $0.tap = made }
        return made
    }

    private func awaitHotplug(script: String) async throws {
        let path = backendPath + "/hotplug-status"
        let watch = try await xenstore.watch(path)
        defer { Task { try? await self.xenstore.unwatch(path, token: watch.token) } }
        let timeout = configuration.hotplugTimeoutMilliseconds
        let status: String? = try await withThrowingTaskGroup(of: String?.self) { group in
            group.addTask {
                for await _ in watch.events {
                    if let s = try await self.xenstore.readIfPresent(path), s == "connected" || s == "error" { return s }
                }
                return nil
            }
            group.addTask {
                try await Task.sleep(for: .milliseconds(timeout))
                return nil
            }
            defer { group.cancelAll() }
            return try await group.next() ?? nil
        }
        switch status {
        case "connected": return
        case "error":
            let why = try await key("hotplug-error") ?? "no hotplug-error given"
            throw NetDeviceError.hotplug("\(script) failed: \(why)")
        default:
            throw NetDeviceError.hotplug("\(script) did not write \(path) = connected within \(timeout) ms")
        }
    }

    private func queueStallChanged(_ stalled: Bool) {
        let (tap, carrier) = running.withLock { r -> (TapDevice?, Bool) in
            r.stalledQueues += stalled ? 1 : -1
            return (r.tap, r.stalledQueues == 0)
        }
        tap?.setCarrier(carrier)
    }

    private func disable(reason: String) {
        let tap = running.withLock { r -> TapDevice? in
            if r.disabledReason == nil { r.disabledReason = reason }
            return r.tap
        }
        tap?.setCarrier(false)
        queues.requestStop()
    }

    /// Stops the queues, unmaps the rings, unbinds the channels; the
    /// interface stays (carrier off) until the device is removed.
    func disconnect() async {
        let (tap, watch) = running.withLock { r -> (TapDevice?, (path: String, token: String, task: Task<Void, Never>)?) in
            defer { r.multicastWatch = nil }
            return (r.tap, r.multicastWatch)
        }
        if let watch {
            watch.task.cancel()
            try? await xenstore.unwatch(watch.path, token: watch.token)
        }
        guard await queues.stop() else { return }
        tap?.setCarrier(false)
        running.withLock { r in
            r.negotiation = nil
            r.stalledQueues = 0
        }
        logger.info("disconnected")
    }
}

extension NetDeviceError: XenbusKeyError {}
extension NetQueueWorker: ServedRing {}

/// Hooks for benchmarks and tests; not for the data path.
public enum NetBackendInstrumentation {
    static let workerThreadStart = WorkerStartHook()

    /// Runs at the start of every queue worker thread started afterwards.
    public static func setWorkerThreadStartHook(_ hook: (@Sendable () -> Void)?) { workerThreadStart.set(hook) }
}

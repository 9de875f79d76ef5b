import XenBlockFrontend
import XenNetFrontend
import XenPlatform
import XenProcess
import XenSim
import XenStore
import XenStoreProtocol
#if canImport(Glibc)
import Glibc
import XenToolstack
import XenBusClient
import XenBus
#endif

/// The sim's stand-in for libxl: creates guest domains on a running
/// `xenback sim serve`, writes their device directories as libxl does, starts
/// each disk's frontend (`xenback front blk --soak`) as its own process, and
/// tears it all down. Guests are found by name under /local/domain/N/name,
/// where libxl keeps it too.
struct SimToolstack {
    let simSocket: String
    let client: SimClient
    let xenstore: XenStoreClient

    /// Guest frames per disk frontend: the soak's rings and request slots.
    static let framesPerDisk: UInt32 = 1024
    /// Guest frames per NIC frontend: two rings and a page per slot of each.
    static let framesPerNIC: UInt32 = 520

    static func connect(simSocket: String) async throws -> SimToolstack {
        let client = try SimClient(socketPath: simSocket)
        return SimToolstack(simSocket: simSocket, client: client, xenstore: try await client.xenstore(as: .dom0))
    }

    struct Disk: Sendable {
        var path: String
        var readOnly: Bool

        /// `PATH` or `PATH,ro` (`,rw` too), as --disk takes it.
        init(parsing text: String) throws(ToolstackError) {
            let parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            guard let first = parts.first, !first.isEmpty else { throw .badArgument("--disk needs a path: \(text)") }
            path = first
            readOnly = false
            for option in parts.dropFirst() {
                switch option {
                case "ro", "r": readOnly = true
                case "rw", "w": readOnly = false
                default: throw .badArgument("--disk option \"\(option)\" is not ro or rw (in \(text))")
                }
            }
            guard access(path, readOnly ? R_OK : R_OK | W_OK) == 0 else {
                throw .badArgument("--disk \(path) is not a \(readOnly ? "readable" : "readable and writable") file or device")
            }
        }
    }

    /// `bridge=BR[,mac=00:16:3e:..][,ip=A.B.C.D]`, as --nic takes it (ip: the
    /// address the guest's netfront answers pings on).
    struct NIC: Sendable {
        var bridge: String
        var mac: [UInt8]?
        var ip: String?

        init(bridge: String, mac: [UInt8]? = nil, ip: String? = nil) { self.bridge = bridge; self.mac = mac; self.ip = ip }

        init(parsing text: String) throws(ToolstackError) {
            var bridge: String?
            for part in text.split(separator: ",") {
                let kv = part.split(separator: "=", maxSplits: 1).map(String.init)
                guard kv.count == 2 else { throw .badArgument("--nic takes key=value pairs (bridge=, mac=, ip=): \(text)") }
                switch kv[0] {
                case "bridge": bridge = kv[1]
                case "mac":
                    guard let m = parseMAC(kv[1]) else { throw .badArgument("--nic mac=\(kv[1]) is not a MAC address like 00:16:3e:12:34:56") }
                    mac = m
                case "ip":
                    guard parseIPv4(kv[1]) != nil else { throw .badArgument("--nic ip=\(kv[1]) is not an IPv4 address") }
                    ip = kv[1]
                default: throw .badArgument("--nic key \"\(kv[0])\" is not bridge, mac or ip (in \(text))")
                }
            }
            guard let bridge, !bridge.isEmpty else { throw .badArgument("--nic needs bridge=NAME: \(text)") }
            self.bridge = bridge
        }
    }

    struct Guest: Sendable {
        var name: String
        var domain: DomainID
        var disks: [ToolstackDisk]
        var nics: [ToolstackNIC] = []
    }

    enum ToolstackError: Error, CustomStringConvertible {
        case badArgument(String)
        case noSuchGuest(String)
        case nameTaken(String)

        var description: String {
            switch self {
            case .badArgument(let why): why
            case .noSuchGuest(let name): "no guest named \(name)"
            case .nameTaken(let name): "a guest named \(name) exists already"
            }
        }
    }

    func domains() async throws -> [UInt16] {
        try await xenstore.directory("/local/domain").compactMap { UInt16($0) }
    }

    func find(_ name: String) async throws -> DomainID? {
        for d in try await domains() where d != 0 {
            if try await xenstore.readIfPresent("/local/domain/\(d)/name") == name { return DomainID(d) }
        }
        return nil
    }

    /// Creates the domain and its disks' directories (frontend processes are started separately).
    func create(name: String, disks: [Disk], nics: [NIC] = []) async throws -> Guest {
        guard try await find(name) == nil else { throw ToolstackError.nameTaken(name) }
        let taken = Set(try await domains())
        let id = DomainID((1...UInt16.max - 1).first { !taken.contains($0) }!)
        let pages = Int(Self.framesPerDisk) * max(1, disks.count) + Int(Self.framesPerNIC) * nics.count
        _ = try client.createDomain(id, pages: pages, grantEntries: UInt32(pages + 64))
        try await xenstore.write("/local/domain/\(id.rawValue)/name", name)
        try await xenstore.write("/local/domain/\(id.rawValue)/domid", "\(id.rawValue)")
        var made: [ToolstackDisk] = []
        for (i, disk) in disks.enumerated() {
            made.append(try await ToolstackDisk.create(xenstore: xenstore, frontend: id, devid: ToolstackDisk.firstXenDisk + 16 * i,
                                                       target: disk.path, readOnly: disk.readOnly))
        }
        var made2: [ToolstackNIC] = []
        for (handle, nic) in nics.enumerated() {
            // libxl's default MAC prefix 00:16:3e, then the domain and the handle.
            let mac = nic.mac ?? [0x00, 0x16, 0x3E, UInt8(id.rawValue >> 8), UInt8(id.rawValue & 0xFF), UInt8(handle)]
            made2.append(try await ToolstackNIC.create(xenstore: xenstore, frontend: id, handle: handle, mac: mac, bridge: nic.bridge))
        }
        return Guest(name: name, domain: id, disks: made, nics: made2)
    }

    /// `xenback front net` for NIC `index` of `guest`, in its own process:
    /// answers ARP and pings for `ip` and pings `ping`.
    func startNetFrontend(_ guest: Guest, nic index: Int, ip: String, ping: String?, serveSeconds: Int, streamSeconds: Int = 0,
                          logFile: String? = nil, diesWithUs: Bool = true) throws -> ChildProcess {
        guard let xenback = siblingExecutable("xenback") else { throw ToolstackError.badArgument("cannot find the xenback executable") }
        let first = UInt32(max(1, guest.disks.count)) * Self.framesPerDisk + UInt32(index) * Self.framesPerNIC
        return try ChildProcess([
            xenback, "front", "net", "--sim", simSocket, "--domain", "\(guest.domain.rawValue)", "--handle", "\(guest.nics[index].handle)",
            "--ip", ip, "--serve", "\(serveSeconds)", "--first-frame", "\(first)",
        ] + (ping.map { ["--ping", $0] } ?? []) + (streamSeconds > 0 ? ["--stream", "\(streamSeconds)"] : []), standardError: logFile,
           diesWithParent: diesWithUs)
    }

    /// `xenback front blk --soak` for disk `index` of `guest`, in its own process.
    func startFrontend(_ guest: Guest, disk index: Int, seconds: Int, logFile: String? = nil, diesWithUs: Bool = true) throws -> ChildProcess {
        guard let xenback = siblingExecutable("xenback") else { throw ToolstackError.badArgument("cannot find the xenback executable") }
        return try ChildProcess([
            xenback, "front", "blk", "--sim", simSocket, "--domain", "\(guest.domain.rawValue)",
            "--devid", "\(guest.disks[index].devid)", "--queues", "2", "--iodepth", "16", "--soak", "\(seconds)",
            "--first-frame", "\(UInt32(index) * Self.framesPerDisk)", "--frame-count", "\(Self.framesPerDisk)",
        ], standardError: logFile, diesWithParent: diesWithUs)
    }

    /// Detaches every disk (online = 0, wait for the backend to close),
    /// removes the directories and destroys the domain.
    func destroy(_ guest: Guest) async throws {
        for nic in guest.nics {
            try await nic.setOffline(xenstore: xenstore)
            let state = try await xenstore.readIfPresent(nic.backendPath + "/state")
            if state != nil && state != "\(XenbusState.closed.rawValue)" {
                _ = try? await awaitXenbusState(xenstore, nic.backendPath, timeout: .seconds(10), "backend Closed") {
                    $0 == .closed || $0 == .unknown
                }
            }
            try await nic.remove(xenstore: xenstore)
        }
        for disk in guest.disks {
            try await disk.setOffline(xenstore: xenstore)
            let state = try await xenstore.readIfPresent(disk.backendPath + "/state")
            if state != nil && state != "\(XenbusState.closed.rawValue)" {
                _ = try? await awaitXenbusState(xenstore, disk.backendPath, timeout: .seconds(10), "backend Closed") {
                    $0 == .closed || $0 == .unknown
                }
            }
            try await disk.remove(xenstore: xenstore)
        }
        try await xenstore.rm("/local/domain/\(guest.domain.rawValue)")
        try client.destroyDomain(guest.domain)
    }

    /// The guest named `name`, with its disks as found in xenstore.
    func guest(named name: String) async throws -> Guest {
        guard let id = try await find(name) else { throw ToolstackError.noSuchGuest(name) }
        let devids = (try? await xenstore.directory("/local/domain/\(id.rawValue)/device/vbd")) ?? []
        let disks = devids.compactMap(Int.init).sorted().map { devid in
            ToolstackDisk(frontendPath: "/local/domain/\(id.rawValue)/device/vbd/\(devid)",
                          backendPath: "/local/domain/0/backend/vbd/\(id.rawValue)/\(devid)", frontend: id, devid: devid)
        }
        let handles = (try? await xenstore.directory("/local/domain/\(id.rawValue)/device/vif")) ?? []
        var nics: [ToolstackNIC] = []
        for handle in handles.compactMap(Int.init).sorted() {
            let frontendPath = "/local/domain/\(id.rawValue)/device/vif/\(handle)"
            let mac = try await xenstore.readIfPresent(frontendPath + "/mac").flatMap(parseMAC) ?? []
            nics.append(ToolstackNIC(frontendPath: frontendPath, backendPath: "/local/domain/0/backend/vif/\(id.rawValue)/\(handle)",
                                     frontend: id, handle: handle, mac: mac))
        }
        return Guest(name: name, domain: id, disks: disks, nics: nics)
    }
}

import ArgumentParser
import CXenShims
import XenProcess
import XenSystem
#if canImport(Glibc)
import Glibc
#endif

struct GuestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "guest",
        abstract: "The sim's toolstack: create and destroy guests the way libxl lays them out in xenstore.",
        subcommands: [GuestCreateCommand.self, GuestDestroyCommand.self])
}

struct GuestCreateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Create a simulated guest with disks and NICs; each device's frontend runs as its own process.",
        discussion: "Prints the guest's domain id and its frontends' pids. The blkfronts soak their disks (verified I/O) and the netfronts answer ARP and pings on their ip= until `guest destroy`.")

    @Option(help: "A running sim's control socket.") var sim: String
    @Option(help: "The guest's name (unique).") var name: String
    @Option(help: "A disk: PATH or PATH,ro. Repeat for more.") var disk: [String] = []
    @Option(help: "A NIC: bridge=BR[,mac=00:16:3e:..][,ip=A.B.C.D] (with ip= its netfront answers pings there). Repeat for more.") var nic: [String] = []
    @Flag(help: "Write the directories only; start no frontend processes.") var noFrontends = false

    func validate() throws {
        guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
            throw ValidationError("--name must be letters, digits, - or _: \(name)")
        }
        do {
            _ = try disk.map { try SimToolstack.Disk(parsing: $0) }
            _ = try nic.map { try SimToolstack.NIC(parsing: $0) }
        } catch { throw ValidationError("\(error)") }
    }

    func run() async throws {
        let toolstack = try await SimToolstack.connect(simSocket: sim)
        let nics = try nic.map { try SimToolstack.NIC(parsing: $0) }
        let guest = try await toolstack.create(name: name, disks: try disk.map { try SimToolstack.Disk(parsing: $0) }, nics: nics)
        print("guest \(name) domain \(guest.domain.rawValue)")
        if !noFrontends {
            for i in guest.disks.indices {
                let front = try toolstack.startFrontend(guest, disk: i, seconds: 86_400 * 365, logFile: "/tmp/xenback-\(name)-\(guest.disks[i].devid).log",
                                                      diesWithUs: false)
                try await toolstack.xenstore.write("/local/domain/\(guest.domain.rawValue)/xenback/frontend-pid/\(guest.disks[i].devid)", "\(front.pid)")
                print("disk \(guest.disks[i].devid) frontend pid \(front.pid)")
            }
            for (i, spec) in nics.enumerated() {
                guard let ip = spec.ip else { continue }
                let front = try toolstack.startNetFrontend(guest, nic: i, ip: ip, ping: nil, serveSeconds: 86_400 * 365,
                                                           logFile: "/tmp/xenback-\(name)-vif\(i).log", diesWithUs: false)
                try await toolstack.xenstore.write("/local/domain/\(guest.domain.rawValue)/xenback/netfront-pid/\(i)", "\(front.pid)")
                print("nic \(i) (vif\(guest.domain.rawValue).\(i)) frontend pid \(front.pid)")
            }
        }
        await toolstack.xenstore.close()
    }
}

struct GuestDestroyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "destroy",
        abstract: "Stop a guest's frontends (they close their devices), detach its disks and NICs and destroy it.")

    @Option(help: "A running sim's control socket.") var sim: String
    @Option(help: "The guest's name.") var name: String

    func run() async throws {
        let toolstack = try await SimToolstack.connect(simSocket: sim)
        let guest = try await toolstack.guest(named: name)
        let pidKeys = guest.disks.map { "frontend-pid/\($0.devid)" } + guest.nics.map { "netfront-pid/\($0.handle)" }
        for key in pidKeys {
            if let pid = try await toolstack.xenstore.readIfPresent("/local/domain/\(guest.domain.rawValue)/xenback/\(key)").flatMap({ Int32($0) }) {
                // The frontend closes its device on SIGTERM; wait until it is gone
                // (not our child: a pidfd says when it exits).
                let pidfd = CXenShims_pidfd_open(pid)
                kill(pid, SIGTERM)
                if pidfd >= 0 {
                    _ = Syscall.poll(pidfd, timeoutMilliseconds: 30_000, retryingInterrupts: false)
                    Syscall.close(pidfd)
                }
            }
        }
        try await toolstack.destroy(guest)
        await toolstack.xenstore.close()
        print("guest \(name) destroyed")
    }
}

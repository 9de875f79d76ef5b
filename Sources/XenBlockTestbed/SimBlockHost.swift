import Logging
import XenBlockBackend
import XenBlockFrontend
import XenBlockProtocol
import XenPlatform
import XenRing
import XenSim
import XenStore
#if canImport(Glibc)
import Glibc
#endif

/// A simulated host for block devices, all in this process: the software
/// hypervisor with dom0 and one guest, the embedded xenstored on a private
/// socket, and a xenstore connection for each side. Tests, `bench blk` and
/// `front blk` build on it.
public final class SimBlockHost: @unchecked Sendable {
    public let hypervisor = SimHypervisor()
    public let guest: SimDomain
    public let server: XenStoreServer
    public let socketPath: String
    public let backendStore: XenStoreClient
    public let frontendStore: XenStoreClient
    let logger: Logger

    public init(guestID: DomainID = DomainID(5), guestPages: Int, grantEntries: UInt32, logger: Logger? = nil) async throws {
        var quiet = Logger(label: "xenback.testbed")
        quiet.logLevel = .critical  // expected errors are asserted, not printed
        self.logger = logger ?? quiet
        try hypervisor.createDomain(.dom0, pages: 1)
        guest = try hypervisor.createDomain(guestID, pages: guestPages, grantEntries: grantEntries)
        socketPath = "/tmp/xenback-xs-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        server = XenStoreServer(socketPath: socketPath, logger: self.logger)
        try await server.start()
        backendStore = try await XenStoreClient.connect(socketPath: socketPath)
        frontendStore = try await XenStoreClient.connect(socketPath: socketPath)
    }

    public func shutdown() async {
        await backendStore.close()
        await frontendStore.close()
        try? await server.stop()
        unlink(socketPath)
    }

    /// Writes the toolstack's directories for a disk on `target`.
    public func attachDisk(target: String, devid: Int = ToolstackDisk.firstXenDisk, readOnly: Bool = false,
                           cdrom: Bool = false, extraBackendKeys: [String: String] = [:]) async throws -> ToolstackDisk {
        try await ToolstackDisk.create(xenstore: backendStore, frontend: guest.id, devid: devid, target: target,
                                       readOnly: readOnly, cdrom: cdrom, extraBackendKeys: extraBackendKeys)
    }

    /// Starts a backend for `disk` in a task; returns the device and the task.
    public func startBackend(_ disk: ToolstackDisk, configuration: BlockBackendConfiguration = BlockBackendConfiguration())
        -> (BlockBackendDevice<SimPlatform>, Task<Void, Error>) {
        let device = BlockBackendDevice(platform: hypervisor.platform(for: .dom0), xenstore: backendStore,
                                        backendPath: disk.backendPath, configuration: configuration, logger: logger)
        return (device, Task { try await device.run() })
    }

    /// Connects the Swift frontend to `disk` using guest frames `frames` (all by default).
    public func connect<L: RingLayout>(_ disk: ToolstackDisk, _ layout: L.Type, options: BlockFrontendOptions,
                                       frames: Range<UInt32>? = nil) async throws -> BlockFrontend<L>
    where L.Request == BlockRequest, L.Response == BlockResponse {
        try await BlockFrontend<L>.connect(domain: guest, xenstore: frontendStore, frontendPath: disk.frontendPath,
                                           frames: frames ?? 0..<UInt32(guest.pageCount), options: options)
    }
}

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
import XenToolstack
#endif

/// The simulated host (`SimGuestHost`) with block-device helpers: tests,
/// `bench blk` and `front blk` build on it.
public final class SimBlockHost: SimGuestHost, @unchecked Sendable {
    public override init(guestID: DomainID = DomainID(5), guestPages: Int, grantEntries: UInt32, logger: Logger? = nil) async throws {
        try await super.init(guestID: guestID, guestPages: guestPages, grantEntries: grantEntries, logger: logger)
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

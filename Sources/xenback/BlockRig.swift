import Logging
import XenBlockBackend
import XenBlockFrontend
import XenBlockProtocol
import XenPlatform
import XenSim
import XenStore
#if canImport(Glibc)
import Glibc
#endif

/// One disk served end to end in this process: the software hypervisor, its
/// xenstored on a private socket, a guest, the block backend on `path` and
/// the Swift frontend connected to it. Used by `bench blk` and `front blk`.
final class BlockRig: @unchecked Sendable {
    let hypervisor = SimHypervisor()
    let guest: SimDomain
    let server: XenStoreServer
    let socketPath: String
    let backendStore: XenStoreClient
    let frontendStore: XenStoreClient
    let device: BlockBackendDevice<SimPlatform>
    let backendTask: Task<Void, Error>
    let frontend: BlockFrontend<BlockRingX86_64>

    init(path: String, readOnly: Bool = false, configuration: BlockBackendConfiguration,
         options: BlockFrontendOptions, logger: Logger) async throws {
        try hypervisor.createDomain(.dom0, pages: 1)
        let frames = options.framesNeeded
        guest = try hypervisor.createDomain(DomainID(1), pages: frames, grantEntries: UInt32(frames + 64))
        socketPath = "/tmp/xenback-rig-\(getpid()).sock"
        server = XenStoreServer(socketPath: socketPath, logger: logger)
        try await server.start()
        backendStore = try await XenStoreClient.connect(socketPath: socketPath)
        frontendStore = try await XenStoreClient.connect(socketPath: socketPath)
        let disk = try await ToolstackDisk.create(xenstore: backendStore, frontend: guest.id, target: path, readOnly: readOnly)
        let device = BlockBackendDevice(platform: hypervisor.platform(for: .dom0), xenstore: backendStore,
                                        backendPath: disk.backendPath, configuration: configuration, logger: logger)
        self.device = device
        backendTask = Task { try await device.run() }
        do {
            frontend = try await BlockFrontend<BlockRingX86_64>.connect(
                domain: guest, xenstore: frontendStore, frontendPath: disk.frontendPath,
                frames: 0..<UInt32(frames), options: options)
        } catch {
            backendTask.cancel()
            // The backend's own error (bad path, bad mode) says more than a timeout.
            if case .failure(let backendError) = await backendTask.result { throw backendError }
            throw error
        }
    }

    func shutdown() async {
        _ = try? await frontend.close()
        backendTask.cancel()
        _ = await backendTask.result
        await backendStore.close()
        await frontendStore.close()
        try? await server.stop()
        unlink(socketPath)
    }
}

/// Parses fio-style sizes: 512, 4k, 64K, 1m, 1G (powers of 1024).
func parseSize(_ text: String) -> UInt64? {
    let lower = text.lowercased()
    let units: [(String, UInt64)] = [("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30), ("t", 1 << 40)]
    for (suffix, scale) in units where lower.hasSuffix(suffix) || lower.hasSuffix(suffix + "b") || lower.hasSuffix(suffix + "ib") {
        let digits = lower.prefix { $0.isNumber }
        guard !digits.isEmpty, let n = UInt64(digits) else { return nil }
        let rest = lower.dropFirst(digits.count)
        guard rest == suffix || rest == suffix + "b" || rest == suffix + "ib" else { return nil }
        return n * scale
    }
    return UInt64(lower)
}

import Logging
import XenBlockBackend
import XenBlockFrontend
import XenBlockProtocol
import XenPlatform
import XenSim
import XenStore
import XenBlockTestbed
#if canImport(Glibc)
import Glibc
#endif

/// One disk served end to end in this process (a `SimBlockHost` with the
/// backend on `path` and the Swift frontend connected to it). Used by
/// `bench blk` and `front blk`.
final class BlockRig: @unchecked Sendable {
    let host: SimBlockHost
    let device: BlockBackendDevice<SimPlatform>
    let backendTask: Task<Void, Error>
    let frontend: BlockFrontend<BlockRingX86_64>

    init(path: String, readOnly: Bool = false, configuration: BlockBackendConfiguration,
         options: BlockFrontendOptions, logger: Logger) async throws {
        let frames = options.framesNeeded
        host = try await SimBlockHost(guestID: DomainID(1), guestPages: frames, grantEntries: UInt32(frames + 64), logger: logger)
        let disk = try await host.attachDisk(target: path, readOnly: readOnly)
        (device, backendTask) = host.startBackend(disk, configuration: configuration)
        do {
            frontend = try await host.connect(disk, BlockRingX86_64.self, options: options)
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
        await host.shutdown()
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

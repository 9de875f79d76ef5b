import Logging
import XenPlatform
import XenStore
#if canImport(Glibc)
import Glibc
#endif

/// A simulated host in this process: the software hypervisor with dom0 and
/// one guest, the embedded xenstored on a private socket, and a xenstore
/// connection for each side. The block and network testbeds build on it.
open class SimGuestHost: @unchecked Sendable {
    public let hypervisor = SimHypervisor()
    public let guest: SimDomain
    public let server: XenStoreServer
    public let socketPath: String
    public let backendStore: XenStoreClient
    public let frontendStore: XenStoreClient
    public let logger: Logger

    /// `logger`: where the backend logs; by default nothing below critical,
    /// since tests assert the errors they provoke rather than print them.
    public init(guestID: DomainID, guestPages: Int, grantEntries: UInt32, logger: Logger? = nil) async throws {
        var quiet = Logger(label: "xenback.testbed")
        quiet.logLevel = .critical
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
}

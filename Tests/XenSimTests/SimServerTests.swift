#if canImport(Glibc)
import Glibc
#endif
import Testing
import XenPlatform
import XenProtocolTesting
@testable import XenSim
import XenStore

/// The guest/backend exchange a frontend and a backend make at connect
/// time, each through its own `SimClient` (its own view of the domains, as
/// separate processes have), sharing only what the server passes.
func exerciseGuestAndBackend(simSocket: String, xenstoreSocket: String) async throws {
    let frontendSide = try SimClient(socketPath: simSocket)
    let backendSide = try SimClient(socketPath: simSocket)
    let guest = try frontendSide.createDomain(DomainID(5), pages: 32)
    let platform = backendSide.platform(backend: .dom0)

    // The toolstack (dom0, over xenstored's socket) gives the guest its home.
    let dom0 = try await XenStoreClient.connect(socketPath: xenstoreSocket)
    try await dom0.write("/local/domain/0/name", "Domain-0")
    try await dom0.mkdir("/local/domain/5")
    try await dom0.setPermissions("/local/domain/5", XenStorePermissions(owner: 5))
    let guestStore = try await frontendSide.xenstore(as: DomainID(5))

    // The guest grants a page and an event channel and publishes them.
    let greeting = Array("hello from domU".utf8)
    guest.page(3).copyMemory(from: greeting, byteCount: greeting.count)
    let ref = try guest.grantAccess(to: .dom0, frame: 3, readOnly: false)
    let guestEvents = try frontendSide.openEventChannels(domain: DomainID(5))
    let guestPort = try guestEvents.allocateUnbound(remoteDomain: .dom0)
    try await guestStore.write("device/vbd/768/ring-ref", String(ref.rawValue))
    try await guestStore.write("device/vbd/768/event-channel", String(guestPort.rawValue))
    await #expect(throws: XenStoreClientError.failed(.accessDenied, operation: .read, path: "/local/domain/0/name")) {
        try await guestStore.read("/local/domain/0/name")
    }

    // The backend reads them as dom0, maps the grant, binds the channel.
    let refValue = UInt32(try await dom0.readString("/local/domain/5/device/vbd/768/ring-ref"))!
    let portValue = UInt32(try await dom0.readString("/local/domain/5/device/vbd/768/event-channel"))!
    let mapping = try platform.grants.map([GrantRef(refValue)], of: DomainID(5), writable: true)
    #expect(Array(UnsafeRawBufferPointer(start: mapping.base, count: greeting.count)) == greeting)
    #expect(!guest.endForeignAccess(ref), "the guest sees the busy bit the backend's mapping set")
    let reply = Array("hello from dom0".utf8)
    mapping.base.copyMemory(from: reply, byteCount: reply.count)
    let events = try platform.openEventChannels()
    let local = try events.bindInterdomain(remoteDomain: DomainID(5), remotePort: EventChannelPort(portValue))

    // Kicks both ways.
    try guestEvents.notify(guestPort)
    #expect(events.wait(timeoutMilliseconds: 5000))
    var ports = [EventChannelPort](repeating: EventChannelPort(0), count: 4)
    #expect(try ports.withUnsafeMutableBufferPointer { try events.takePending(into: $0) } == 1 && ports[0] == local)
    try events.notify(local)
    #expect(guestEvents.wait(timeoutMilliseconds: 5000))
    #expect(try ports.withUnsafeMutableBufferPointer { try guestEvents.takePending(into: $0) } == 1 && ports[0] == guestPort)

    try platform.grants.unmap(mapping)
    #expect(Array(UnsafeRawBufferPointer(start: guest.page(3), count: reply.count)) == reply, "the backend wrote into the guest")
    #expect(guest.endForeignAccess(ref))

    #expect(throws: SimError.remote(operation: "attachDomain", errno: ENOENT)) { try backendSide.attachDomain(DomainID(99)) }
    #expect(throws: SimError.remote(operation: "createDomain", errno: EEXIST)) { try backendSide.createDomain(DomainID(5), pages: 1) }
    await guestStore.close()
    await dom0.close()
}

@Suite struct SimServerTests {
    func socketPath(_ tag: String) -> String { "/tmp/xenback-\(tag)-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock" }

    /// A sim server and its xenstored on fresh sockets for `body`, stopped after.
    func withSimServer(_ body: (SimServer, _ simPath: String, _ xsPath: String) async throws -> Void) async throws {
        let xsPath = socketPath("xs"), simPath = socketPath("sim")
        let xenstore = XenStoreServer(socketPath: xsPath)
        try await xenstore.start()
        let server = try SimServer(socketPath: simPath, xenstore: xenstore)
        server.start()
        do { try await body(server, simPath, xsPath) } catch {
            server.stop(); try await xenstore.stop()
            throw error
        }
        server.stop()
        try await xenstore.stop()
    }

    @Test func clientsShareTheHypervisorThroughTheSocket() async throws {
        try await withSimServer { _, simPath, xsPath in
            try await exerciseGuestAndBackend(simSocket: simPath, xenstoreSocket: xsPath)
        }
    }

    /// Two processes acting for one guest (a blkfront and a netfront, say)
    /// each keep their own free list over the shared grant table: an entry
    /// is claimed in the table itself, so they never hand out the same ref.
    @Test func twoAttachmentsOfAGuestNeverShareARef() async throws {
        try await withSimServer { _, simPath, _ in
            let toolstack = try SimClient(socketPath: simPath)
            _ = try toolstack.createDomain(DomainID(6), pages: 64, grantEntries: 128)
            let one = try SimClient(socketPath: simPath).attachDomain(DomainID(6))
            let two = try SimClient(socketPath: simPath).attachDomain(DomainID(6))
            var refs: [UInt32] = []
            for i in 0..<50 {
                refs.append(try one.grantAccess(to: .dom0, frame: UInt32(i % 64), readOnly: false).rawValue)
                refs.append(try two.grantAccess(to: .dom0, frame: UInt32(i % 64), readOnly: true).rawValue)
            }
            #expect(Set(refs).count == 100, "every ref handed out once")
            // A ref one side revoked may be taken by the other, and only by one.
            #expect(one.endForeignAccess(GrantRef(refs[0])))
            let again = try two.grantAccess(to: .dom0, frame: 1, readOnly: false)
            #expect(!refs.dropFirst().contains(again.rawValue))
        }
    }

    /// A backend process that dies holding grants (kill -9 of xenbackd)
    /// must not pin them for ever: the server drops a closed connection's
    /// pins, as Xen does when a dead process's gntdev closes, but keeps the
    /// busy bits another backend's pins still need. A frontend that gave up
    /// on those grants meanwhile gets the refs back when it runs short.
    @Test func aDeadBackendsGrantsAreReleased() async throws {
        try await withSimServer { server, simPath, _ in
            let (closed, closedSignal) = AsyncStream<Void>.makeStream()
            server.connectionClosed.withLock { $0 = { closedSignal.yield() } }
            var closedEvents = closed.makeAsyncIterator()

            // 12 entries: refs 8...11 are all the guest has.
            let toolstack = try SimClient(socketPath: simPath)
            let guest = try toolstack.createDomain(DomainID(7), pages: 8, grantEntries: 12)
            let refs = try (0..<4).map { try guest.grantAccess(to: .dom0, frame: UInt32($0), readOnly: $0 == 3) }
            #expect(throws: SimError.grantTableFull(7)) { try guest.grantAccess(to: .dom0, frame: 4, readOnly: false) }

            let doomed = try SimClient(socketPath: simPath)
            let survivor = try SimClient(socketPath: simPath)
            let doomedGrants = doomed.platform(backend: .dom0).grants
            let survivorGrants = survivor.platform(backend: .dom0).grants
            _ = try doomedGrants.map(refs[0...2].map { $0 }, of: DomainID(7), writable: true)
            _ = try doomedGrants.map([refs[3]], of: DomainID(7), writable: false)
            let kept = try survivorGrants.map([refs[1]], of: DomainID(7), writable: false)

            // The guest gives up on all four; none can be revoked yet.
            for ref in refs { #expect(!guest.endForeignAccessOrDefer(ref)) }
            #expect(guest.deferredRevocations == 4)

            // The doomed backend's connection goes (its process died).
            shutdown(doomed.socket, Int32(SHUT_RDWR))
            await closedEvents.next()
            // refs 0, 2, 3 are free again: the guest's next grants take them.
            var regained = try (0..<3).map { _ in try guest.grantAccess(to: .dom0, frame: 5, readOnly: false).rawValue }
            #expect(Set(regained) == Set([refs[0], refs[2], refs[3]].map(\.rawValue)))
            #expect(guest.deferredRevocations == 1, "ref 1 is still mapped by the other backend")
            #expect(throws: SimError.grantTableFull(7)) { try guest.grantAccess(to: .dom0, frame: 5, readOnly: false) }
            // Writing was dropped with the dead pins, reading is the survivor's.
            let flags = guest.flags(refs[1].rawValue).pointee.load(ordering: .relaxed)
            #expect(flags & GrantFlags.reading != 0 && flags & GrantFlags.writing == 0)

            try survivorGrants.unmap(kept)
            regained.append(try guest.grantAccess(to: .dom0, frame: 5, readOnly: false).rawValue)
            #expect(regained.last == refs[1].rawValue)
            withExtendedLifetime((toolstack, survivor)) {}
        }
    }

    /// `xenback sim serve` in its own process; this process is its client.
    @Test func simServeRunsAsItsOwnProcess() async throws {
        let xenback = try #require(builtProduct("xenback"), "xenback is built next to the tests (swift build --build-tests)")
        let xsPath = socketPath("xs"), simPath = socketPath("sim")
        let child = try #require(popen("exec \(xenback) sim serve --socket \(simPath) --xenstore-socket \(xsPath) --log-level warning", "r"))
        var line = [CChar](repeating: 0, count: 256)
        try #require(fgets(&line, 256, child) != nil, "the server printed its ready line")
        let ready = String(decoding: line.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let pid = try #require(ready.split(separator: "=").last.flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
        do {
            try await exerciseGuestAndBackend(simSocket: simPath, xenstoreSocket: xsPath)
        } catch {
            kill(pid, SIGTERM); pclose(child)
            throw error
        }
        kill(pid, SIGTERM)
        let status = pclose(child)
        #expect(status == 0, "SIGTERM ends the server cleanly")
        #expect(access(simPath, F_OK) != 0, "the control socket is removed")
    }
}

extension Substring {
    func trimmingCharacters(in set: Set<Character>) -> String { String(self.filter { !set.contains($0) }) }
}
extension Set where Element == Character {
    static var whitespacesAndNewlines: Set<Character> { [" ", "\n", "\t", "\r"] }
}

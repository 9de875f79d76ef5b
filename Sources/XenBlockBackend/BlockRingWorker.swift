import XenBlockProtocol
import XenPlatform
import XenRing
#if canImport(Glibc)
import Glibc
#endif

public enum BlockBackendError: Error, Equatable, Sendable, CustomStringConvertible {
    case ring(RingError)
    case grant(GrantError)
    case eventChannel(EventChannelError)

    public var description: String {
        switch self {
        case .ring(let e): "ring: \(e)"
        case .grant(let e): "grant: \(e)"
        case .eventChannel(let e): "event channel: \(e)"
        }
    }
}

/// Serves one blkif ring: copies each request out, validates the copy,
/// moves the data with grant copies through a private bounce buffer, does
/// the I/O on the backing, and answers. One worker per ring; nothing on its
/// data path is shared with other rings, and nothing is allocated per request.
/// Owned by one thread (the one that calls `run` or `processRing`); only
/// `statistics` may be read from others.
public final class BlockRingWorker<Platform: XenPlatform, Layout: RingLayout>: @unchecked Sendable
where Layout.Request == BlockRequest, Layout.Response == BlockResponse {
    public let frontend: DomainID
    public let geometry: DiskGeometry
    public let statistics = BlockStatistics()
    let platform: Platform
    let backing: FileBacking
    let ringMapping: GrantMapping
    var ring: BackRing<Layout>
    let events: Platform.Events
    public let port: EventChannelPort
    /// Owned here, freed in deinit: one request's data and its indirect pages.
    let bounce: UnsafeMutableRawPointer
    let indirect: UnsafeMutableRawPointer
    let copies: UnsafeMutableBufferPointer<GrantCopyOperation>
    let segments: UnsafeMutableBufferPointer<BlockSegment>
    let maximumSegments: Int

    /// Maps the ring (`ringRefs`: 1, 2, 4, 8 or 16 pages), binds the
    /// frontend's event channel port, and prepares the buffers.
    public init(platform: Platform, frontend: DomainID, ringRefs: [GrantRef], remotePort: EventChannelPort,
                backing: FileBacking, geometry: DiskGeometry? = nil) throws(BlockBackendError) {
        self.platform = platform
        self.frontend = frontend
        self.backing = backing
        let geometry = geometry ?? backing.geometry
        self.geometry = geometry
        let mapping: GrantMapping
        do { mapping = try platform.grants.map(ringRefs, of: frontend, writable: true) } catch { throw .grant(error) }
        do {
            ring = try BackRing(attaching: try SharedRingMemory(base: mapping.base, pageCount: ringRefs.count))
        } catch {
            try? platform.grants.unmap(mapping)
            throw .ring(error)
        }
        let events: Platform.Events
        let port: EventChannelPort
        do {
            events = try platform.openEventChannels()
            port = try events.bindInterdomain(remoteDomain: frontend, remotePort: remotePort)
        } catch {
            try? platform.grants.unmap(mapping)
            throw .eventChannel(error)
        }
        ringMapping = mapping
        self.events = events
        self.port = port
        // Never more than 8 indirect pages' worth, whatever was configured.
        maximumSegments = max(BlockLimits.maxSegmentsPerRequest,
                              min(geometry.maximumIndirectSegments, BlockLimits.maxIndirectPagesPerRequest * BlockLimits.segmentsPerIndirectPage))
        bounce = UnsafeMutableRawPointer.allocate(byteCount: maximumSegments * 4096, alignment: 4096)
        indirect = UnsafeMutableRawPointer.allocate(byteCount: BlockLimits.maxIndirectPagesPerRequest * 4096, alignment: 4096)
        copies = .allocate(capacity: maximumSegments)
        copies.initialize(repeating: GrantCopyOperation(source: .local(bounce), destination: .local(bounce), length: 0))
        segments = .allocate(capacity: maximumSegments)
        segments.initialize(repeating: BlockSegment(grant: 0, firstSector: 0, lastSector: 0))
    }

    deinit {
        try? events.unbind(port)
        try? platform.grants.unmap(ringMapping)
        bounce.deallocate()
        indirect.deallocate()
        copies.deallocate()
        segments.deallocate()
    }

    /// Answers everything the ring holds, then re-arms the event (final
    /// check). Returns how many requests were answered; throws if the
    /// frontend broke the ring protocol (the ring is halted).
    @discardableResult
    public func processRing() throws(RingError) -> Int {
        var handled = 0
        repeat {
            let producer = try ring.readRequestProducer()
            while let request = ring.nextRequest(before: producer) {
                let status = perform(request)
                if status != .okay { statistics.add(statistics.errors) }
                ring.produceResponse(BlockResponse(id: request.id, operation: request.operation, status: status))
                handled += 1
            }
            if ring.pushResponses() { try? events.notify(port) }
        } while ring.finalCheckForRequests()
        return handled
    }

    /// Serves the ring until `stopDescriptor` becomes readable: sleeps on the
    /// event channel between kicks.
    public func run(stopDescriptor: Int32) throws(BlockBackendError) {
        var fds = [pollfd(fd: events.fileDescriptor, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: stopDescriptor, events: Int16(POLLIN), revents: 0)]
        var pending = [EventChannelPort](repeating: EventChannelPort(0), count: 16)
        while true {
            do { try processRing() } catch { throw .ring(error) }
            fds[0].revents = 0; fds[1].revents = 0
            let n = poll(&fds, 2, -1)
            if n < 0 && errno == EINTR { continue }
            if fds[1].revents != 0 { return }
            // Take and re-enable the port before looking at the ring, so a
            // kick during processing is not lost.
            let taken: Int
            do { taken = try pending.withUnsafeMutableBufferPointer { (b) throws(EventChannelError) -> Int in try events.takePending(into: b) } }
            catch { throw .eventChannel(error) }
            if taken > 0 { try? events.unmask(port) }
        }
    }

    // MARK: One request

    func perform(_ request: BlockRequest) -> BlockStatus {
        switch BlockValidation.action(for: request, disk: geometry) {
        case .reject(let status, _):
            return status
        case .flush:
            statistics.add(statistics.flushRequests)
            do { try backing.flush() } catch { return .error }
            return .okay
        case .discard(let sector, let count, let secure):
            statistics.add(statistics.discardRequests)
            do { try backing.discard(offset: sector * 512, count: count * 512, secure: secure) } catch {
                if case .io(_, let e) = error, e == EOPNOTSUPP { return .notSupported }
                return .error
            }
            return .okay
        case .transfer(let write, let sector, let count, let indirectPages, let flushBefore, let flushAfter):
            let total: Int
            guard let sectors = gatherSegments(request, count: count, indirectPages: indirectPages) else { return .error }
            total = sectors
            if indirectPages > 0, BlockValidation.checkRange(sector: sector, count: UInt64(total), disk: geometry) != nil {
                return .error
            }
            if write {
                statistics.add(statistics.writeRequests)
                statistics.add(statistics.writeSectors, UInt64(total))
            } else {
                statistics.add(statistics.readRequests)
                statistics.add(statistics.readSectors, UInt64(total))
            }
            do {
                if flushBefore { try backing.flush() }
                if write {
                    guard copyData(count: count, intoGuest: false) else { return .error }
                    try backing.write(from: bounce, count: total * 512, offset: sector * 512)
                } else {
                    try backing.read(into: bounce, count: total * 512, offset: sector * 512)
                    guard copyData(count: count, intoGuest: true) else { return .error }
                }
                if flushAfter { try backing.flush() }
            } catch {
                return .error
            }
            return .okay
        }
    }

    /// Fills `segments` with the request's segments (copying indirect pages
    /// out of the guest first) and checks each; returns the sector total,
    /// nil if a page could not be copied or a segment is invalid.
    private func gatherSegments(_ request: BlockRequest, count: Int, indirectPages: Int) -> Int? {
        guard count <= maximumSegments else { return nil }
        if indirectPages == 0 {
            for i in 0..<count { segments[i] = request.segment(i) }
        } else {
            for p in 0..<indirectPages {
                copies[p] = GrantCopyOperation(
                    source: .grant(GrantRef(request.indirectGrant(p)), domain: frontend, offset: 0),
                    destination: .local(indirect + p * 4096), length: 4096)
            }
            let batch = UnsafeMutableBufferPointer(rebasing: copies[0..<indirectPages])
            do { try platform.grants.copy(batch) } catch { return nil }
            for p in 0..<indirectPages where !copies[p].status.isOkay { return nil }
            // The pages are a private copy now: read each segment from it once.
            for i in 0..<count { segments[i] = BlockSegment(wireWord: indirect.load(fromByteOffset: 8 * i, as: UInt64.self)) }
        }
        var total = 0
        for i in 0..<count {
            switch BlockValidation.check(segment: segments[i], disk: geometry) {
            case .failure: return nil
            case .success(let n): total += n
            }
        }
        return total
    }

    /// Grant-copies every segment between the guest and the bounce buffer,
    /// where the segments lie back to back.
    private func copyData(count: Int, intoGuest: Bool) -> Bool {
        var offset = 0
        for i in 0..<count {
            let s = segments[i]
            let length = (Int(s.lastSector) - Int(s.firstSector) + 1) * 512
            let guest = GrantCopyEndpoint.grant(GrantRef(s.grant), domain: frontend, offset: UInt16(Int(s.firstSector) * 512))
            let local = GrantCopyEndpoint.local(bounce + offset)
            copies[i] = intoGuest
                ? GrantCopyOperation(source: local, destination: guest, length: UInt16(length))
                : GrantCopyOperation(source: guest, destination: local, length: UInt16(length))
            offset += length
        }
        let batch = UnsafeMutableBufferPointer(rebasing: copies[0..<count])
        do { try platform.grants.copy(batch) } catch { return false }
        for i in 0..<count where !copies[i].status.isOkay { return false }
        return true
    }
}

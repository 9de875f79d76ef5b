import XenNetProtocol
import XenPlatform
import XenRing
#if canImport(Glibc)
import Glibc
#endif

/// Where the frontend's control ring is (`ctrl-ring-ref`, `event-channel-ctrl`).
public struct NetControlSetup: Sendable, Equatable {
    public var ringRef: GrantRef
    public var remotePort: EventChannelPort
    public init(ringRef: GrantRef, remotePort: EventChannelPort) { self.ringRef = ringRef; self.remotePort = remotePort }
}

/// The control ring (`feature-ctrl-ring`): receive-side hash algorithm,
/// types, key and mapping table. Every value is checked before it is used:
/// sizes against our limits, offsets without overflow, each mapping entry
/// against the queue count (XSA-270), and a table is only committed whole.
/// Grant mapping requests are not supported. Runs on queue 0's thread.
final class NetControlService<Platform: XenPlatform> {
    let platform: Platform
    let frontend: DomainID
    /// The guest's control ring page, mapped until `release`.
    var mapping: OwnedGrantMapping<Platform.Grants>
    var ring: BackRing<NetControlRing>
    let events: Platform.Events
    var binding: OwnedEventPort<Platform.Events>
    var port: EventChannelPort { binding.port }
    let queueCount: Int
    let settings: HashState
    /// One page for keys and tables copied from the guest.
    /// SAFETY: owned here (allocated in init, freed in deinit), used on
    /// queue 0's thread only; filled by grant copy, so reads see our copy.
    let scratch: UnsafeMutableRawPointer

    init(platform: Platform, frontend: DomainID, setup: NetControlSetup, events: Platform.Events,
         queueCount: Int, settings: HashState) throws(NetBackendError) {
        self.platform = platform
        self.frontend = frontend
        self.events = events
        self.queueCount = queueCount
        self.settings = settings
        // Owned values: a step that throws releases what earlier ones took.
        do { mapping = try OwnedGrantMapping([setup.ringRef], of: frontend, writable: true, through: platform.grants) } catch {
            throw .grant(error)
        }
        do { ring = try BackRing(attaching: SharedRingMemory(base: mapping.base, pageCount: 1)) } catch { throw .ring(error) }
        do { binding = try OwnedEventPort(bindingTo: setup.remotePort, of: frontend, on: events) } catch { throw .eventChannel(error) }
        scratch = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
    }

    /// Unbinds and unmaps now (the queue is stopping); safe to repeat.
    func release() {
        binding.release()
        mapping.release()
    }

    deinit {
        release()
        scratch.deallocate()
    }

    func finalCheck() -> Bool { ring.finalCheckForRequests() }

    func process() throws(NetBackendError) {
        let producer: RingIndex
        do { producer = try ring.readRequestProducer() } catch { throw .ring(error) }
        var answered = 0
        // Bounded by the ring size (the producer was checked against it).
        while let request = ring.nextRequest(before: producer) {
            let (status, data) = handle(request)
            ring.produceResponse(NetControlResponse(id: request.id, type: request.type, status: status, data: data))
            answered += 1
        }
        if answered > 0 && ring.pushResponses() { try? events.notify(port) }
    }

    /// Copies `length` bytes from the start of the guest's page `ref`.
    private func copyIn(_ ref: UInt32, length: Int) -> Bool {
        guard length > 0 else { return true }
        var op = GrantCopyOperation(source: .grant(GrantRef(ref), domain: frontend, offset: 0),
                                    destination: .local(scratch), length: UInt16(length))
        // SAFETY: `op` outlives the copy that reads and updates it.
        let ok: Bool = withUnsafeMutablePointer(to: &op) { p in
            (try? platform.grants.copy(UnsafeMutableBufferPointer(start: p, count: 1))) != nil
        }
        return ok && op.status.isOkay
    }

    private func handle(_ request: NetControlRequest) -> (UInt32, UInt32) {
        let (d0, d1, d2) = request.data
        switch request.type {
        case .getHashFlags:
            return (NetControlStatus.success, HashSettings.supportedTypes.rawValue)
        case .setHashFlags:
            let types = NetHashTypes(rawValue: d0)
            guard HashSettings.supportedTypes.isSuperset(of: types) else { return (NetControlStatus.invalidParameter, 0) }
            return settings.state.withLock { s in
                // A type needs an algorithm first.
                guard s.algorithm != NetHashAlgorithm.none || types.isEmpty else { return (NetControlStatus.invalidParameter, 0) }
                s.types = types
                return (NetControlStatus.success, 0)
            }
        case .setHashAlgorithm:
            guard d0 == NetHashAlgorithm.none || d0 == NetHashAlgorithm.toeplitz else { return (NetControlStatus.invalidParameter, 0) }
            settings.state.withLock { s in
                s.algorithm = d0
                if d0 == NetHashAlgorithm.none { s.types = [] }
            }
            return (NetControlStatus.success, 0)
        case .setHashKey:
            guard Int(d1) <= HashSettings.maximumKeyLength else { return (NetControlStatus.bufferOverflow, 0) }
            guard copyIn(d0, length: Int(d1)) else { return (NetControlStatus.invalidParameter, 0) }
            settings.state.withLock { s in
                // Octets not given are zero.
                for i in 0..<HashSettings.maximumKeyLength {
                    s.key[i] = i < Int(d1) ? scratch.load(fromByteOffset: i, as: UInt8.self) : 0
                }
            }
            return (NetControlStatus.success, 0)
        case .getHashMappingSize:
            return (NetControlStatus.success, UInt32(HashSettings.maximumMappingSize))
        case .setHashMappingSize:
            guard Int(d0) <= HashSettings.maximumMappingSize else { return (NetControlStatus.invalidParameter, 0) }
            settings.state.withLock { s in
                s.mappingSize = Int(d0)
                for i in 0..<HashSettings.maximumMappingSize { s.mapping[i] = 0 }
            }
            return (NetControlStatus.success, 0)
        case .setHashMapping:
            let length = Int(d1), offset = Int(d2)
            guard length <= HashSettings.maximumMappingSize else { return (NetControlStatus.bufferOverflow, 0) }
            let size = settings.state.withLock { $0.mappingSize }
            // Written as a subtraction: offset + length cannot overflow here, but
            // the check must not depend on it.
            guard offset <= size, length <= size - offset else { return (NetControlStatus.invalidParameter, 0) }
            guard copyIn(d0, length: length * 4) else { return (NetControlStatus.invalidParameter, 0) }
            for i in 0..<length where Int(scratch.load(fromByteOffset: i * 4, as: UInt32.self)) >= queueCount {
                return (NetControlStatus.invalidParameter, 0)
            }
            return settings.state.withLock { s in
                // The size may have changed meanwhile (only this thread writes it, but be exact).
                guard offset <= s.mappingSize, length <= s.mappingSize - offset else { return (NetControlStatus.invalidParameter, 0) }
                for i in 0..<length { s.mapping[offset + i] = scratch.load(fromByteOffset: i * 4, as: UInt32.self) }
                return (NetControlStatus.success, 0)
            }
        default:
            // Grant mapping (types 8–10) and anything unknown.
            return (NetControlStatus.notSupported, 0)
        }
    }
}

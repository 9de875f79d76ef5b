import XenBlockProtocol
import XenRing

/// How each end of a peer run waits for work.
public enum WaitMode: String, Sendable, CaseIterable {
    /// Spin on the indices; no event channel.
    case poll
    /// Final check, then sleep on an eventfd until kicked.
    case eventfd
}

public struct PeerStats: Sendable, Equatable {
    public var completed: UInt64 = 0
    public var notifications: UInt64 = 0
    public var sleeps: UInt64 = 0
    public var badResponses: UInt64 = 0
    public var error: PeerError?
    public init() {}
}

/// The Swift ends of the ring benchmark and of the interop tests. They do
/// exactly what the C loops in CXenRingReference do, with our rings:
/// the frontend issues one-segment READs (id = sequence number) and checks
/// every response in order; the backend answers each, OKAY if it is a valid
/// one-segment READ.
public enum RingPeer {
    public static func runFrontend(memory: SharedRingMemory, start: RingIndex, requests: UInt64, mode: WaitMode,
                                   kickFD: Int32, waitFD: Int32) -> PeerStats {
        var stats = PeerStats()
        do throws(PeerError) {
            try frontendLoop(memory: memory, start: start, requests: requests, mode: mode,
                             kickFD: kickFD, waitFD: waitFD, stats: &stats)
        } catch {
            stats.error = error
        }
        return stats
    }

    @inline(never)
    static func frontendLoop(memory: SharedRingMemory, start: RingIndex, requests: UInt64, mode: WaitMode,
                             kickFD: Int32, waitFD: Int32, stats: inout PeerStats) throws(PeerError) {
        var ring: FrontRing<BlockRingX86_64>
        do { ring = try FrontRing(attaching: memory, at: start) } catch { throw .overflow(error.description) }
        var sent: UInt64 = 0
        var received: UInt64 = 0
        while received < requests {
            var produced = false
            while sent < requests && !ring.isFull {
                ring.produceRequest(BlockRequest(
                    operation: .read, id: sent, sectorNumber: sent &* 8,
                    segment: BlockSegment(grant: UInt32(truncatingIfNeeded: sent), firstSector: 0, lastSector: 7)))
                sent += 1
                produced = true
            }
            if produced, ring.pushRequests(), mode == .eventfd {
                stats.notifications += 1
                try EventChannelSim.kick(kickFD)
            }
            let producer: RingIndex
            do { producer = try ring.readResponseProducer() } catch { throw .overflow(error.description) }
            var consumed = false
            while let response = ring.nextResponse(before: producer) {
                if response.id != received || response.operation != .read || response.status != .okay {
                    stats.badResponses += 1
                }
                received += 1
                consumed = true
            }
            if consumed || (sent < requests && !ring.isFull) { continue }
            if !ring.finalCheckForResponses() {
                switch mode {
                case .eventfd:
                    try EventChannelSim.wait(waitFD)
                    stats.sleeps += 1
                case .poll:
                    // Spin read-only on rsp_prod until it moves.
                    while ring.unconsumedResponses() == 0 {}
                }
            }
        }
        stats.completed = received
    }

    public static func runBackend(memory: SharedRingMemory, start: RingIndex, requests: UInt64, mode: WaitMode,
                                  kickFD: Int32, waitFD: Int32) -> PeerStats {
        var stats = PeerStats()
        do throws(PeerError) {
            try backendLoop(memory: memory, start: start, requests: requests, mode: mode,
                            kickFD: kickFD, waitFD: waitFD, stats: &stats)
        } catch {
            stats.error = error
        }
        return stats
    }

    @inline(never)
    static func backendLoop(memory: SharedRingMemory, start: RingIndex, requests: UInt64, mode: WaitMode,
                            kickFD: Int32, waitFD: Int32, stats: inout PeerStats) throws(PeerError) {
        var ring: BackRing<BlockRingX86_64>
        do { ring = try BackRing(attaching: memory, at: start) } catch { throw .overflow(error.description) }
        var answered: UInt64 = 0
        while answered < requests {
            let producer: RingIndex
            do { producer = try ring.readRequestProducer() } catch { throw .overflow(error.description) }
            var consumed = false
            while let request = ring.nextRequest(before: producer) {
                let valid = request.operation == .read && request.segmentCount == 1 && request.segment(0).sectorCount != nil
                ring.produceResponse(BlockResponse(id: request.id, operation: request.operation,
                                                   status: valid ? .okay : .error))
                answered += 1
                consumed = true
            }
            if consumed {
                if ring.pushResponses(), mode == .eventfd {
                    stats.notifications += 1
                    try EventChannelSim.kick(kickFD)
                }
                continue
            }
            if !ring.finalCheckForRequests() {
                switch mode {
                case .eventfd:
                    try EventChannelSim.wait(waitFD)
                    stats.sleeps += 1
                case .poll:
                    // Spin read-only on req_prod until it moves.
                    while ring.unconsumedRequests() == 0 {}
                }
            }
        }
        stats.completed = answered
    }
}

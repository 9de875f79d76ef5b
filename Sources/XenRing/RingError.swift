/// What can go wrong on a ring. Every case but `invalidGeometry` is the other
/// side breaking the protocol: the caller stops using the ring (Linux blkback
/// "halts ring processing") and may tear the device down.
public enum RingError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The shared area cannot hold a ring of these entries.
    case invalidGeometry(byteCount: Int, entrySize: Int, reason: String)
    /// The frontend published a request producer index that no honest frontend
    /// can reach: more than `size` requests beyond our responses
    /// (`RING_REQUEST_PROD_OVERFLOW`), or behind requests we already consumed.
    case requestProducerOverflow(producer: RingIndex, consumer: RingIndex, responsesProduced: RingIndex, size: UInt32)
    /// The backend published more responses than there are outstanding requests
    /// (stricter than `RING_RESPONSE_PROD_OVERFLOW`, which it implies).
    case responseProducerOverflow(producer: RingIndex, consumer: RingIndex, requestsProduced: RingIndex, size: UInt32)
    /// An earlier overflow halted this ring; it carries no more traffic.
    case halted

    public var description: String {
        switch self {
        case .invalidGeometry(let bytes, let entry, let reason):
            return "invalid ring geometry (\(bytes) bytes, \(entry)-byte entries): \(reason)"
        case .requestProducerOverflow(let prod, let cons, let rsp, let size):
            return "frontend published bogus req_prod \(prod) (req_cons \(cons), rsp_prod_pvt \(rsp), ring size \(size)); ring halted"
        case .responseProducerOverflow(let prod, let cons, let req, let size):
            return "backend published bogus rsp_prod \(prod) (rsp_cons \(cons), req_prod_pvt \(req), ring size \(size)); ring halted"
        case .halted:
            return "ring halted after a protocol violation"
        }
    }
}

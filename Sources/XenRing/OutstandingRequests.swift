/// A frontend's record of which request ids are waiting for an answer, so a
/// response from a backend that lies (XSA-391: frontends must not trust
/// their backend either) is caught instead of freeing a slot twice or one
/// that was never used. Ids are slot numbers 0..<capacity. Allocates only
/// when created.
public struct OutstandingRequests: Sendable {
    private var waiting: [Bool]
    public private(set) var count = 0

    public init(capacity: Int) {
        waiting = [Bool](repeating: false, count: capacity)
    }

    public var capacity: Int { waiting.count }

    /// Records that request `slot` was sent.
    public mutating func sent(_ slot: Int) {
        precondition(!waiting[slot], "slot \(slot) sent twice")
        waiting[slot] = true
        count += 1
    }

    /// Records the answer to `id`; throws if no request with that id is
    /// waiting (out of range, never sent, or already answered).
    public mutating func answered(_ id: UInt64) throws(UnexpectedResponse) {
        guard id < UInt64(waiting.count), waiting[Int(id)] else { throw UnexpectedResponse(id: id) }
        waiting[Int(id)] = false
        count -= 1
    }

    public func isWaiting(_ slot: Int) -> Bool { waiting[slot] }
}

/// A response naming an id no request is waiting under.
public struct UnexpectedResponse: Error, Sendable, Equatable, CustomStringConvertible {
    public var id: UInt64
    public init(id: UInt64) { self.id = id }
    public var description: String { "the backend answered id \(id), which no request is waiting under" }
}

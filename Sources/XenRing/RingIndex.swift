/// A free-running ring index (`RING_IDX` in io/ring.h).
///
/// Indices run from 0 to 2^32 - 1 and wrap; only the unsigned difference of two
/// indices means anything, so the type offers wrapping arithmetic and nothing else.
@frozen
public struct RingIndex: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32

    @inlinable
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    @inlinable
    public init(_ rawValue: UInt32) { self.rawValue = rawValue }

    /// The index `distance` slots after this one, wrapping at 2^32.
    @inlinable
    public static func &+ (index: RingIndex, distance: UInt32) -> RingIndex {
        RingIndex(index.rawValue &+ distance)
    }

    /// How far `later` is ahead of `earlier`, as the unsigned wrapped difference.
    @inlinable
    public static func &- (later: RingIndex, earlier: RingIndex) -> UInt32 {
        later.rawValue &- earlier.rawValue
    }

    public var description: String { String(rawValue) }
}

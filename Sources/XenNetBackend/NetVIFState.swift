import CXenNet
import Synchronization
import XenNetProtocol

/// The multicast addresses a frontend asked for (MCAST_ADD/DEL extras),
/// shared by the VIF's queues: any queue's transmit ring may change it,
/// every queue's receive path reads it. Bounded like Linux's (64).
public final class MulticastFilter: Sendable {
    public static var capacity: Int { 64 }
    /// Addresses as 48-bit integers (byte 0 lowest); fixed storage, no
    /// allocation on either path.
    private let state = Mutex<(count: Int, addresses: InlineArray<64, UInt64>)>((0, InlineArray(repeating: 0)))
    /// The frontend's `request-multicast-control`, which it may change while
    /// connected (feature-dynamic-multicast-control).
    private let enabled = Atomic<Bool>(false)

    public init() {}

    public var isEnabled: Bool {
        // Relaxed: a flag the data path samples; a packet either side of a change may go either way.
        enabled.load(ordering: .relaxed)
    }

    public func setEnabled(_ on: Bool) { enabled.store(on, ordering: .relaxed) }

    /// SAFETY: `p` points at a frame's first 6 bytes, in our own buffer.
    static func key(_ p: UnsafeRawPointer) -> UInt64 {
        var k: UInt64 = 0
        for i in 0..<6 { k |= UInt64(p.load(fromByteOffset: i, as: UInt8.self)) << UInt64(8 * i) }
        return k
    }

    /// False when the filter is full (the request is answered with an error).
    func add(_ address: UInt64) -> Bool {
        state.withLock { s in
            for i in 0..<s.count where s.addresses[i] == address { return true }
            guard s.count < MulticastFilter.capacity else { return false }
            s.addresses[s.count] = address
            s.count += 1
            return true
        }
    }

    func remove(_ address: UInt64) {
        state.withLock { s in
            for i in 0..<s.count where s.addresses[i] == address {
                s.addresses[i] = s.addresses[s.count - 1]
                s.count -= 1
                return
            }
        }
    }

    func contains(_ address: UInt64) -> Bool {
        state.withLock { s in
            for i in 0..<s.count where s.addresses[i] == address { return true }
            return false
        }
    }

    public var addresses: [[UInt8]] {
        state.withLock { s in (0..<s.count).map { i in (0..<6).map { UInt8(truncatingIfNeeded: s.addresses[i] >> UInt64(8 * $0)) } } }
    }
}

/// What the control ring set for receive-side hashing, shared by the
/// queues (written by queue 0's worker, read by all).
struct HashSettings: Sendable {
    static var maximumKeyLength: Int { 40 }
    static var maximumMappingSize: Int { 128 }
    static var supportedTypes: NetHashTypes { [.ipv4, .ipv4TCP, .ipv6, .ipv6TCP] }
    var algorithm: UInt32 = NetHashAlgorithm.none
    var types: NetHashTypes = []
    var key: InlineArray<40, UInt8> = InlineArray(repeating: 0)
    var mappingSize: Int = 0
    var mapping: InlineArray<128, UInt32> = InlineArray(repeating: 0)

    var enabled: Bool { algorithm == NetHashAlgorithm.toeplitz && !types.isEmpty }
}

/// The VIF's hash settings, one per VIF, shared by its queues.
public final class HashState: Sendable {
    let state = Mutex(HashSettings())
    public init() {}
}

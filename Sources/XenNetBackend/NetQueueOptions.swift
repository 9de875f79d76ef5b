import Synchronization
import XenNetProtocol
import XenPlatform
import XenRing

public enum NetBackendError: Error, Equatable, Sendable, CustomStringConvertible {
    case ring(RingError)
    case grant(GrantError)
    case eventChannel(EventChannelError)
    /// The frontend broke a rule Linux disables the VIF for.
    case fatal(String)

    public var description: String {
        switch self {
        case .ring(let e): "ring: \(e)"
        case .grant(let e): "grant: \(e)"
        case .eventChannel(let e): "event channel: \(e)"
        case .fatal(let why): why
        }
    }
}

/// The `rate` key: `bytes` of guest transmit credit every `microseconds`.
public struct NetRate: Sendable, Equatable, CustomStringConvertible {
    public var bytes: Int
    public var microseconds: Int
    public init(bytes: Int, microseconds: Int) { self.bytes = bytes; self.microseconds = microseconds }

    /// "bytes,usec" as libxl writes it.
    public init?(xenstoreValue: String) {
        let parts = xenstoreValue.split(separator: ",")
        guard parts.count == 2, let b = Int(parts[0]), let u = Int(parts[1]), b > 0, u > 0 else { return nil }
        bytes = b; microseconds = u
    }

    public var description: String { "\(bytes) bytes every \(microseconds) µs" }
}

/// What the frontend negotiated that a queue's data path needs.
public struct NetQueueOptions: Sendable, Equatable {
    /// The frontend notifies when it posts receive buffers (feature-rx-notify).
    public var rxNotify = true
    /// The frontend takes partial checksums (absent feature-no-csum-offload).
    public var checksumOffload = true
    public var ipv6ChecksumOffload = false
    public var gsoTCPv4 = false
    public var gsoTCPv6 = false
    /// The frontend takes packets spanning several receive slots (feature-sg).
    public var scatterGather = false
    /// The frontend filters multicast (request-multicast-control) at
    /// connect; the device follows later changes through the filter.
    public var multicastControl = false
    public var rate: NetRate?
    /// Host packets buffered per queue at most, in bytes (XSA-392).
    public var receiveQueueBytes = 512 * 1024
    /// A frontend that leaves too few receive buffers this long is stalled:
    /// carrier off until it posts again (Linux: rx_stall_timeout_msecs).
    public var receiveStallMilliseconds = 60_000
    /// Queued host packets older than this are dropped (rx_drain_timeout_msecs).
    public var receiveDrainMilliseconds = 10_000
    public init() {}
}

/// A VIF's guest transmit rate as it stands now, shared by its queues and
/// changed live when the `rate` key changes. Queues look at `generation`
/// once per pass and reload the rate (under the lock) when it moved.
public final class NetRateSetting: Sendable {
    private let rate: Mutex<NetRate?>
    /// Relaxed: the lock taken to read the new rate orders it; a pass that
    /// misses a change sees it on the next.
    private let changes = Atomic<UInt64>(0)

    public init(_ rate: NetRate? = nil) { self.rate = Mutex(rate) }

    public var current: NetRate? { rate.withLock { $0 } }
    public var generation: UInt64 { changes.load(ordering: .relaxed) }

    public func set(_ new: NetRate?) {
        rate.withLock { $0 = new }
        changes.add(1, ordering: .relaxed)
    }
}

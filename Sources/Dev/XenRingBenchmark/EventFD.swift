import CXenShims
import XenPlatform
import XenSystem
#if canImport(Glibc)
import Glibc
#endif

/// An eventfd standing in for an event channel: `notify` is
/// EVTCHNOP_send, `wait` is sleeping until the port is pending.
public struct EventFD: ~Copyable {
    private let descriptor: OwnedDescriptor
    public var fd: Int32 { descriptor.raw }

    public init() throws(PeerError) {
        do { descriptor = try OwnedDescriptor(eventfd: Int32(EFD_CLOEXEC)) } catch { throw .system("eventfd", error.code) }
    }
}

/// Why a peer run stopped early.
public enum PeerError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The other end published an impossible producer index.
    case overflow(String)
    /// Slept 10 s with no event: a lost wakeup, i.e. a notify-check bug.
    case lostWakeup
    case system(String, Int32)

    public var description: String {
        switch self {
        case .overflow(let s): "ring overflow: \(s)"
        case .lostWakeup: "no event for 10 s after a final check: lost wakeup"
        case .system(let call, let e): "\(call) failed: \(String(cString: strerror(e)))"
        }
    }
}

@usableFromInline
enum EventChannelSim {
    @usableFromInline
    static func kick(_ fd: Int32) throws(PeerError) {
        var one: UInt64 = 1
        guard write(fd, &one, 8) == 8 else { throw .system("write(eventfd)", errno) }
    }

    /// Waits up to 10 s for a kick, then drains it.
    @usableFromInline
    static func wait(_ fd: Int32) throws(PeerError) {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        var n: Int32
        repeat { n = poll(&p, 1, 10_000) } while n < 0 && errno == EINTR
        if n == 0 { throw .lostWakeup }
        guard n > 0 else { throw .system("poll", errno) }
        var count: UInt64 = 0
        guard read(fd, &count, 8) == 8 else { throw .system("read(eventfd)", errno) }
    }
}

/// Page-aligned anonymous memory standing in for a granted ring area.
public final class RingPages: @unchecked Sendable {
    /// SAFETY: owned by this object and unmapped when it goes; rings made
    /// over `base` borrow it and must not outlive it. Zeroed when mapped.
    private let memory: MappedMemory
    public var base: UnsafeMutableRawPointer { memory.base }
    public var byteCount: Int { memory.length }

    public init(pageCount: Int) {
        do {
            memory = try MappedMemory(anonymous: pageCount * 4096)
        } catch {
            preconditionFailure("mmap of \(pageCount) ring pages failed: \(error)")
        }
    }
}

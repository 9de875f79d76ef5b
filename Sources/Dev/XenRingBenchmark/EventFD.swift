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
        switch Syscall.write(fd, &one, count: 8) {
        case .success(8): return
        case .success: throw .system("write(eventfd)", EIO)
        case .failure(let failure): throw .system("write(eventfd)", failure.code)
        }
    }

    /// Waits up to 10 s for a kick, then drains it.
    @usableFromInline
    static func wait(_ fd: Int32) throws(PeerError) {
        switch Syscall.poll(fd, timeoutMilliseconds: 10_000) {  // EINTR is retried there
        case .success(0): throw .lostWakeup
        case .success: break
        case .failure(let failure): throw .system("poll", failure.code)
        }
        var count: UInt64 = 0
        switch Syscall.read(fd, &count, count: 8) {
        case .success(8): return
        case .success: throw .system("read(eventfd)", EIO)
        case .failure(let failure): throw .system("read(eventfd)", failure.code)
        }
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

#if canImport(Glibc)
import XenSystem
import Glibc
#endif

/// The descriptors a ring worker sleeps on: its event channel device, the
/// stop descriptor of its group, and its own (an I/O engine's completions,
/// a TAP queue, frames other queues steered to it). Made once per `run`.
public struct WorkerPollSet {
    public enum Wake: Equatable {
        /// The timeout passed with nothing readable.
        case timedOut
        /// The stop descriptor fired.
        case stop
        /// Something else is readable, or a signal interrupted the wait
        /// (then nothing is: the caller just looks again).
        case ready
    }

    private var descriptors: [pollfd]
    private static var eventChannelSlot: Int { 0 }
    private static var stopSlot: Int { 1 }

    /// `others` are watched for input as well; a negative one is ignored.
    public init(eventChannel: Int32, stop: Int32, others: [Int32] = []) {
        descriptors = ([eventChannel, stop] + others).map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
    }

    /// Stops or resumes watching `others[index]` (a queue with no room
    /// stops reading its TAP, so the kernel's queue bounds what waits).
    public mutating func watch(other index: Int, _ enabled: Bool) {
        descriptors[2 + index].events = enabled ? Int16(POLLIN) : 0
    }

    /// Sleeps until a descriptor is readable or `timeoutMilliseconds` pass
    /// (-1: no timeout).
    public mutating func wait(timeoutMilliseconds: Int32) -> Wake {
        for i in descriptors.indices { descriptors[i].revents = 0 }
        // SAFETY: our own array, lent to poll for the call.
        let result = descriptors.withUnsafeMutableBufferPointer {
            Syscall.poll($0, timeoutMilliseconds: timeoutMilliseconds, retryingInterrupts: false)
        }
        switch result {
        case .success(0): return .timedOut
        case .failure: return .ready  // EINTR (or ENOMEM): the caller looks again
        case .success: return descriptors[Self.stopSlot].revents != 0 ? .stop : .ready
        }
    }

    /// The event channel device has events pending (after `wait`).
    public var eventsPending: Bool { descriptors[Self.eventChannelSlot].revents != 0 }

    /// What `poll` reported for `others[index]` (after `wait`).
    public func returnedEvents(other index: Int) -> Int16 { descriptors[2 + index].revents }
}

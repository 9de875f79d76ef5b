#if canImport(Glibc)
import Glibc
#endif
import CXenShims
import Synchronization
import XenNetProtocol
import XenSystem

/// A frame queued for the guest, prepared once (offloads, filter, hash).
struct ReceiveEntry {
    var length = 0
    var rxFlags = NetRxFlags()
    var gsoType: UInt8 = 0
    var gsoSize: UInt16 = 0
    var hash: UInt32 = 0
    var hashType: UInt8 = 0
    var hasHash = false
    var slotsNeeded = 0
    var enqueued = 0
}

/// Received frames that the guest's hash mapping table (control ring)
/// sends to another queue than the TAP queue the kernel read them from, as
/// Linux netback steers by `mapping[hash % size]`. One bounded inbox per
/// queue, shared by the VIF's workers: the reading worker copies the frame
/// in under the inbox's lock and wakes the owner through an eventfd; the
/// owner moves it into its own receive queue. A full inbox drops the frame
/// (counted), as a full receive queue does.
public final class ReceiveSteering: @unchecked Sendable {  // each inbox's storage is touched only under its lock
    final class Inbox: @unchecked Sendable {
        static var capacity: Int { 64 }
        let stride: Int
        /// `capacity` frames of `stride` bytes, reserved (pages used only
        /// when touched); `frames` is its base, valid while the inbox lives.
        let memory: MappedMemory
        let frames: UnsafeMutableRawPointer
        let entries: UnsafeMutableBufferPointer<ReceiveEntry>
        let state = Mutex<(head: Int, count: Int)>((0, 0))
        /// Readable while frames may be waiting; the owner reads it to clear.
        let wakeDescriptor: OwnedDescriptor
        var wake: Int32 { wakeDescriptor.raw }

        init(stride: Int) throws(Errno) {
            self.stride = stride
            memory = reservePacketMemory(Self.capacity * stride)
            frames = memory.base
            entries = .allocate(capacity: Self.capacity)
            entries.initialize(repeating: ReceiveEntry())
            wakeDescriptor = try OwnedDescriptor(eventfd: Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        }

        deinit {
            entries.deallocate()
        }

        /// Copies the frame in; false if the inbox is full.
        func push(_ entry: ReceiveEntry, frame: UnsafeRawPointer) -> Bool {
            let queued = state.withLock { s -> Bool in
                guard s.count < Self.capacity else { return false }
                let index = (s.head + s.count) % Self.capacity
                // SAFETY: slot `index` of this inbox's own frames, under its
                // lock; entry.length ≤ stride (a frame the TAP read).
                (frames + index * stride).copyMemory(from: frame, byteCount: entry.length)
                entries[index] = entry
                s.count += 1
                return true
            }
            if queued { Syscall.signalEventFD(wake) }
            return queued
        }

        /// Moves frames out while `room` says there is space; `take` copies
        /// one (its entry and bytes) into the caller's queue.
        func drain(while room: () -> Bool, _ take: (ReceiveEntry, UnsafeRawPointer) -> Void) {
            state.withLock { s in
                while s.count > 0 && room() {
                    // SAFETY: lent to `take` for the call, under the lock.
                    take(entries[s.head], frames + s.head * stride)
                    s.head = (s.head + 1) % Self.capacity
                    s.count -= 1
                }
            }
        }

        func clearWake() {
            Syscall.clearEventFD(wake)
        }
    }

    let inboxes: [Inbox]

    /// One inbox per queue; `frameBytes` is the largest frame.
    public init(queueCount: Int, frameBytes: Int) throws(Errno) {
        let stride = (frameBytes + 4095) & ~4095
        var inboxes: [Inbox] = []
        for _ in 0..<queueCount { inboxes.append(try Inbox(stride: stride)) }
        self.inboxes = inboxes
    }
}

import CXenShims
import XenSystem
#if canImport(Glibc)
import Glibc
#endif

/// The sim's control protocol (protocols/sim.md): SOCK_SEQPACKET messages of
/// little-endian u32 words, file descriptors passed as SCM_RIGHTS.
/// A request is [op, a, b, c, d]; a reply is [status, values...] where
/// status is 0 or a negative errno.
enum SimOp: UInt32 {
    case createDomain = 1    // a=domid b=pages c=grant entries → [pages, entries] + fds [memory, grants]
    case attachDomain = 2    // a=domid → [pages, entries] + fds [memory, grants]
    case destroyDomain = 3   // a=domid
    case xenstoreConnect = 4 // a=domid → fd [stream socket speaking xenstore as that domain]
    case eventsOpen = 5      // a=domid + fd [eventfd] → [device]
    case allocUnbound = 6    // a=device b=remote domid → [port]
    case bind = 7            // a=device b=remote domid c=remote port → [port]
    case notify = 8          // a=device b=port
    case unmask = 9          // a=device b=port
    case unbind = 10         // a=device b=port
    case pending = 11        // a=device b=max → [n, ports...]
    case eventsClose = 12    // a=device
}

/// One packet's words and the descriptors that came with it (SCM_RIGHTS),
/// owned by whoever holds the message: those nobody takes close with it.
struct SimMessage: ~Copyable {
    var words: [UInt32]
    var fds: OwnedDescriptors

    init(_ words: [UInt32], fds: consuming OwnedDescriptors = OwnedDescriptors()) {
        self.words = words
        self.fds = fds
    }
}

enum SimWire {
    /// A `sockaddr_un` for `path`, passed to `body` as the generic sockaddr.
    static func withAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) throws(SimError) -> R {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw .system("socket path too long: \(path)", ENAMETOOLONG) }
        // SAFETY: `address` is a local; the path fits with its NUL (checked
        // above), and the sockaddr view lives only for `body`, which the
        // kernel calls (bind, connect) do not outlast.
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    static let maximumWords = 64

    /// Sends words and fds as one packet; the fds stay ours.
    static func send(_ socket: Int32, _ words: [UInt32], fds: [Int32] = []) -> Bool {
        var bytes = [UInt8]()
        bytes.reserveCapacity(words.count * 4)
        // SAFETY: views of local arrays, borrowed for the sendmsg call only.
        for w in words { withUnsafeBytes(of: w.littleEndian) { bytes.append(contentsOf: $0) } }
        let sent = bytes.withUnsafeBytes { b in
            fds.withUnsafeBufferPointer { CXenShims_send_with_fds(socket, b.baseAddress, UInt(b.count), $0.baseAddress, Int32(fds.count)) }
        }
        return sent == bytes.count
    }

    /// One packet: its words and any fds (owned by the message); nil at end
    /// of stream or on error.
    static func receive(_ socket: Int32) -> SimMessage? {
        var buffer = [UInt8](repeating: 0, count: maximumWords * 4)
        var fds = [Int32](repeating: -1, count: 8)
        var count: Int32 = 0
        // SAFETY: local arrays, borrowed for the recvmsg call only; it writes
        // at most b.count bytes and 8 descriptors.
        let n = buffer.withUnsafeMutableBytes { b in
            fds.withUnsafeMutableBufferPointer { CXenShims_receive_with_fds(socket, b.baseAddress, UInt(b.count), $0.baseAddress, 8, &count) }
        }
        // Owned from here: a bad packet closes what it carried.
        let received = OwnedDescriptors(adopting: Array(fds.prefix(Int(count))))
        guard n > 0, n % 4 == 0 else { return nil }
        let words = stride(from: 0, to: n, by: 4).map { i in
            UInt32(buffer[i]) | UInt32(buffer[i + 1]) << 8 | UInt32(buffer[i + 2]) << 16 | UInt32(buffer[i + 3]) << 24
        }
        return SimMessage(words, fds: received)
    }
}

import CXenNet
import Synchronization

/// A pcap file that a VIF's queues write their frames to (both directions),
/// as `tcpdump -i vifN.M -w` would see them: GSO frames unsegmented.
public final class PacketCapture: Sendable {
    public let path: String
    /// libpcap's dumper, owned here until `close`.
    /// SAFETY: an opaque C handle: freed exactly once, by close, under the
    /// lock; nil afterwards so no later write can use it.
    private struct Handle: @unchecked Sendable { var pointer: UnsafeMutableRawPointer? }
    private let handle: Mutex<Handle>

    public init(path: String) throws(NetworkSetupError) {
        // SAFETY: `error` is the 256 bytes CXenNet_pcap_open may write, a
        // local that outlives the call.
        var error = [CChar](repeating: 0, count: 256)
        guard let h = CXenNet_pcap_open(path, 65535, &error) else {
            let message = String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw NetworkSetupError("opening capture file \(path) (\(message))", errno: 0)
        }
        self.path = path
        handle = Mutex(Handle(pointer: h))
    }

    /// SAFETY: `frame` is `length` readable bytes the caller owns for the
    /// call (its private packet buffer); libpcap copies them out.
    package func write(_ frame: UnsafeRawPointer, length: Int) {
        handle.withLock { h in
            guard let p = h.pointer else { return }
            CXenNet_pcap_write(p, frame, UInt32(length), UInt32(length))
        }
    }

    /// Flushes to the file; later writes are dropped.
    public func close() {
        handle.withLock { h in
            if let open = h.pointer { CXenNet_pcap_close(open) }
            h.pointer = nil
        }
    }

    deinit { close() }
}

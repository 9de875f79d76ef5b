import XenSystem

/// Packet buffers reserved, not committed: only pages a packet touched take
/// memory. Fails only when the address space is full.
func reservePacketMemory(_ bytes: Int) -> MappedMemory {
    do { return try MappedMemory(anonymous: bytes) } catch {
        preconditionFailure("cannot reserve \(bytes) bytes of packet buffers: \(error)")
    }
}

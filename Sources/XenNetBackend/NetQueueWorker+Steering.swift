import XenNetProtocol
import XenPlatform
#if canImport(Glibc)
import XenNetDevice
#endif

/// Receive-side hashing (Toeplitz over the types the frontend enabled
/// through the control ring) and steering by the guest's mapping table.
extension NetQueueWorker {
    /// The queue the guest's mapping table names for a hashed frame
    /// (entries were checked against the queue count when set, XSA-270).
    func steeringTarget(_ entry: RxEntry) -> Int? {
        guard steering != nil, entry.hasHash, hashCache.mappingSize > 0 else { return nil }
        let target = Int(hashCache.mapping[Int(entry.hash % UInt32(hashCache.mappingSize))])
        return target < queueCount ? target : nil
    }

    /// The Toeplitz hash of the flow, for the types the frontend enabled
    /// (TCP over the 4-tuple when asked, else the addresses).
    func receiveHash(frame: UnsafeRawBufferPointer, layout: PacketLayout) -> (UInt32, UInt8)? {
        let types = hashCache.types
        let tcp = layout.transportProtocol == 6
        let addressBytes = layout.isIPv6 ? 32 : 8
        let addressStart = layout.networkOffset + (layout.isIPv6 ? 8 : 12)
        let withPorts: Bool
        let type: UInt8
        if layout.isIPv6 {
            if tcp && types.contains(.ipv6TCP) { withPorts = true; type = 3 }
            else if types.contains(.ipv6) { withPorts = false; type = 2 }
            else { return nil }
        } else {
            if tcp && types.contains(.ipv4TCP) { withPorts = true; type = 1 }
            else if types.contains(.ipv4) { withPorts = false; type = 0 }
            else { return nil }
        }
        var input = InlineArray<36, UInt8>(repeating: 0)
        for i in 0..<addressBytes { input[i] = frame[addressStart + i] }
        var count = addressBytes
        if withPorts {
            for i in 0..<4 { input[addressBytes + i] = frame[layout.transportOffset + i] }
            count += 4
        }
        let key = hashCache.key
        // SAFETY: both are locals, borrowed for the hash alone.
        return withUnsafeBytes(of: key) { k in
            withUnsafeBytes(of: input) { inp in
                (ToeplitzHash.hash(key: k, input: UnsafeRawBufferPointer(rebasing: inp[0..<count])), type)
            }
        }
    }

}

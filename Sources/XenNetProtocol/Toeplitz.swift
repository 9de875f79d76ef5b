/// The Toeplitz hash that `XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ` names (the
/// Microsoft RSS hash): for each set bit of the input, XOR in the 32-bit
/// window of the key that starts at that bit.
public enum ToeplitzHash {
    /// Hashes `input` with `key`. Key bits past its end count as zero, as in
    /// netif.h's description, so any key length is valid.
    public static func hash(key: some Collection<UInt8>, input: some Collection<UInt8>) -> UInt32 {
        // SAFETY: both views borrow temporary arrays for the call only.
        Array(key).withUnsafeBytes { k in Array(input).withUnsafeBytes { hash(key: k, input: $0) } }
    }

    /// The same over raw bytes, without allocating (the receive path).
    public static func hash(key: UnsafeRawBufferPointer, input: UnsafeRawBufferPointer) -> UInt32 {
        func keyByte(_ i: Int) -> UInt8 { i < key.count ? key[i] : 0 }
        var window = UInt64(keyByte(0)) << 56 | UInt64(keyByte(1)) << 48 | UInt64(keyByte(2)) << 40
            | UInt64(keyByte(3)) << 32 | UInt64(keyByte(4)) << 24
        var result: UInt32 = 0
        var nextKeyByte = 5
        for byte in input {
            for bit in 0..<8 {
                if byte & (0x80 >> UInt8(bit)) != 0 { result ^= UInt32(truncatingIfNeeded: window >> 32) }
                window <<= 1
            }
            window |= UInt64(keyByte(nextKeyByte)) << 24
            nextKeyByte += 1
        }
        return result
    }
}

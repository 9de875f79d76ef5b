/// RFC 1071 arithmetic.
public enum InternetChecksum {
    /// Adds `bytes` as big-endian 16-bit words (odd tail padded) to `sum`.
    /// SAFETY: `bytes` is borrowed for the call; pass private memory, since
    /// a sum over a page the guest can change proves nothing.
    public static func add(_ bytes: UnsafeRawBufferPointer, to sum: UInt32) -> UInt32 {
        var wide = UInt64(sum)
        var i = 0
        let n = bytes.count
        while i + 1 < n {
            wide &+= UInt64(bytes[i]) << 8 | UInt64(bytes[i + 1])
            i += 2
        }
        if i < n { wide &+= UInt64(bytes[i]) << 8 }
        while wide >> 32 != 0 { wide = (wide & 0xFFFF_FFFF) &+ (wide >> 32) }
        return UInt32(wide)
    }

    public static func fold(_ sum: UInt32) -> UInt16 {
        var s = sum
        while s >> 16 != 0 { s = (s & 0xFFFF) &+ (s >> 16) }
        return UInt16(s)
    }

    /// Completes a partial checksum: sums from `start` to the end of the
    /// transport data (`end`) and stores the complement at start+offset.
    public static func complete(frame: UnsafeMutableRawBufferPointer, start: Int, offset: Int, end: Int) {
        // SAFETY: a slice of the caller's private frame (the slice traps if
        // start..<end or the checksum field lies outside it), for the call.
        let sum = add(UnsafeRawBufferPointer(rebasing: frame[start..<end]), to: 0)
        var value = ~fold(sum)
        // UDP sends a computed 0 as 0xFFFF (0 means "no checksum").
        if value == 0 && offset == 6 { value = 0xFFFF }
        frame[start + offset] = UInt8(value >> 8)
        frame[start + offset + 1] = UInt8(value & 0xFF)
    }
}

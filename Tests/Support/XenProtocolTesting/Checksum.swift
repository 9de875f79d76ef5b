/// RFC 1071's definition, one 16-bit big-endian word at a time with the
/// carry folded back in after every addition (an odd tail padded with a
/// zero byte): the reference the checksum code and packet parsers are held to.
public func onesComplementSum(_ bytes: [UInt8]) -> UInt16 {
    var sum: UInt32 = 0
    var i = 0
    while i < bytes.count {
        sum += UInt32(bytes[i]) << 8 | (i + 1 < bytes.count ? UInt32(bytes[i + 1]) : 0)
        sum = (sum & 0xFFFF) + (sum >> 16)
        i += 2
    }
    return UInt16(sum)
}

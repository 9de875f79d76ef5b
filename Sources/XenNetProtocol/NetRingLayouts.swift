import XenRing

/// The guest-transmit ring: 12-byte slots, 256 per page.
public enum NetTxRing: RingLayout {
    public static var entrySize: Int { 12 }
    public static var requestSize: Int { 12 }
    public static var responseSize: Int { 4 }
    // SAFETY: for all four coders below, `slot` is never the shared page but a
    // private RingEntryBuffer (8-aligned, 12 bytes used: every offset fits),
    // copied in or out once by XenRing, so a peer cannot change a field
    // between decoding and use.
    @inlinable
    public static func decodeRequest(from slot: UnsafeRawPointer) -> NetTxSlot {
        NetTxSlot(low: slot.load(as: UInt64.self), high: slot.load(fromByteOffset: 8, as: UInt32.self))
    }
    @inlinable
    public static func encodeRequest(_ request: NetTxSlot, into slot: UnsafeMutableRawPointer) {
        slot.storeBytes(of: request.low, as: UInt64.self)
        slot.storeBytes(of: request.high, toByteOffset: 8, as: UInt32.self)
    }
    @inlinable
    public static func decodeResponse(from slot: UnsafeRawPointer) -> NetTxResponse {
        NetTxResponse(id: slot.load(as: UInt16.self), status: slot.load(fromByteOffset: 2, as: Int16.self))
    }
    @inlinable
    public static func encodeResponse(_ response: NetTxResponse, into slot: UnsafeMutableRawPointer) {
        slot.storeBytes(of: response.id, as: UInt16.self)
        slot.storeBytes(of: response.status, toByteOffset: 2, as: Int16.self)
    }
}

/// The guest-receive ring: 8-byte slots, 256 per page.
public enum NetRxRing: RingLayout {
    public static var entrySize: Int { 8 }
    public static var requestSize: Int { 8 }
    public static var responseSize: Int { 8 }
    // SAFETY: for all four coders below, `slot` is never the shared page but a
    // private RingEntryBuffer (8-aligned, 8 bytes used: every offset fits),
    // copied in or out once by XenRing, so a peer cannot change a field
    // between decoding and use.
    @inlinable
    public static func decodeRequest(from slot: UnsafeRawPointer) -> NetRxRequest {
        NetRxRequest(id: slot.load(as: UInt16.self), grant: slot.load(fromByteOffset: 4, as: UInt32.self))
    }
    @inlinable
    public static func encodeRequest(_ request: NetRxRequest, into slot: UnsafeMutableRawPointer) {
        slot.storeBytes(of: request.id, as: UInt16.self)
        slot.storeBytes(of: request.grant, toByteOffset: 4, as: UInt32.self)
    }
    @inlinable
    public static func decodeResponse(from slot: UnsafeRawPointer) -> NetRxSlot {
        NetRxSlot(word: slot.load(as: UInt64.self))
    }
    @inlinable
    public static func encodeResponse(_ response: NetRxSlot, into slot: UnsafeMutableRawPointer) {
        slot.storeBytes(of: response.word, as: UInt64.self)
    }
}

/// The control ring (`feature-ctrl-ring`): 16-byte slots, 128 per page.
public enum NetControlRing: RingLayout {
    public static var entrySize: Int { 16 }
    public static var requestSize: Int { 16 }
    public static var responseSize: Int { 12 }
    // SAFETY: for all four coders below, `slot` is never the shared page but a
    // private RingEntryBuffer (8-aligned, 16 bytes used: every offset fits),
    // copied in or out once by XenRing, so a peer cannot change a field
    // between decoding and use.
    @inlinable
    public static func decodeRequest(from slot: UnsafeRawPointer) -> NetControlRequest {
        NetControlRequest(id: slot.load(as: UInt16.self),
                          type: NetControlType(rawValue: slot.load(fromByteOffset: 2, as: UInt16.self)),
                          data: (slot.load(fromByteOffset: 4, as: UInt32.self),
                                 slot.load(fromByteOffset: 8, as: UInt32.self),
                                 slot.load(fromByteOffset: 12, as: UInt32.self)))
    }
    @inlinable
    public static func encodeRequest(_ request: NetControlRequest, into slot: UnsafeMutableRawPointer) {
        slot.storeBytes(of: request.id, as: UInt16.self)
        slot.storeBytes(of: request.type.rawValue, toByteOffset: 2, as: UInt16.self)
        slot.storeBytes(of: request.data.0, toByteOffset: 4, as: UInt32.self)
        slot.storeBytes(of: request.data.1, toByteOffset: 8, as: UInt32.self)
        slot.storeBytes(of: request.data.2, toByteOffset: 12, as: UInt32.self)
    }
    @inlinable
    public static func decodeResponse(from slot: UnsafeRawPointer) -> NetControlResponse {
        NetControlResponse(id: slot.load(as: UInt16.self),
                           type: NetControlType(rawValue: slot.load(fromByteOffset: 2, as: UInt16.self)),
                           status: slot.load(fromByteOffset: 4, as: UInt32.self),
                           data: slot.load(fromByteOffset: 8, as: UInt32.self))
    }
    @inlinable
    public static func encodeResponse(_ response: NetControlResponse, into slot: UnsafeMutableRawPointer) {
        slot.storeBytes(of: response.id, as: UInt16.self)
        slot.storeBytes(of: response.type.rawValue, toByteOffset: 2, as: UInt16.self)
        slot.storeBytes(of: response.status, toByteOffset: 4, as: UInt32.self)
        slot.storeBytes(of: response.data, toByteOffset: 8, as: UInt32.self)
    }
}

import NIOCore
import XenStoreProtocol

/// Frames xenstore messages on a byte stream: a 16-byte header, then `len`
/// bytes. A header announcing more than 4096 bytes cannot be resynchronised
/// after, so it is an error and the connection closes (as xenstored does).
struct XenStoreFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = XenStoreMessage

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard buffer.readableBytes >= XenStoreLimits.headerSize,
              let length = buffer.getInteger(at: buffer.readerIndex + 12, endianness: .little, as: UInt32.self) else {
            return .needMoreData
        }
        guard Int(length) <= XenStoreLimits.payloadMax else { throw XenStoreWireError.payloadTooLong(Int(length)) }
        guard buffer.readableBytes >= XenStoreLimits.headerSize + Int(length) else { return .needMoreData }
        let type = buffer.readInteger(endianness: .little, as: UInt32.self)!
        let requestID = buffer.readInteger(endianness: .little, as: UInt32.self)!
        let transactionID = buffer.readInteger(endianness: .little, as: UInt32.self)!
        buffer.moveReaderIndex(forwardBy: 4)
        let payload = buffer.readBytes(length: Int(length))!
        context.fireChannelRead(wrapInboundOut(XenStoreMessage(
            type: XenStoreMessageType(rawValue: type), requestID: requestID, transactionID: transactionID, payload: payload)))
        return .continue
    }
}

extension ByteBuffer {
    mutating func writeXenStoreMessage(_ m: XenStoreMessage) {
        writeInteger(m.type.rawValue, endianness: .little)
        writeInteger(m.requestID, endianness: .little)
        writeInteger(m.transactionID, endianness: .little)
        writeInteger(UInt32(m.payload.count), endianness: .little)
        writeBytes(m.payload)
    }
}

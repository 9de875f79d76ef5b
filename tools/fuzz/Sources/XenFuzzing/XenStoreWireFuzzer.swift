import XenStoreProtocol
import XenBus

/// Any bytes from a xenstore peer: the decoder yields messages or a
/// payload-too-long error, never a crash, and never buffers more than one
/// message's worth beyond what it was given.
public enum XenStoreWireFuzzer {
    public static func run(_ data: UnsafeRawBufferPointer) {
        var input = FuzzInput(data)
        var decoder = XenStoreMessageDecoder()
        while !input.isAtEnd {
            let chunk = input.take(Int(input.byte()) + 1)
            decoder.append(chunk)
            do {
                while let message = try decoder.next() {
                    precondition(message.payload.count <= XenStoreLimits.payloadMax)
                    _ = message.strings
                    _ = message.errorCode
                    _ = message.type.description
                    if let encoded = try? message.encoded() {
                        var again = XenStoreMessageDecoder()
                        again.append(encoded)
                        precondition((try? again.next()) == message, "re-encoding changed a message")
                    }
                }
            } catch {
                return  // the connection would be closed here
            }
        }
        if let text = String(validating: data, as: UTF8.self) { _ = try? XenbusState(xenstoreValue: text) }
    }
}

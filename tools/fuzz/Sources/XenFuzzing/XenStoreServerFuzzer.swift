import XenStoreCore
import XenStoreProtocol

/// Any bytes from up to four xenstore clients (dom0 and guests) against the
/// xenstored engine: every complete request gets exactly one reply, a stream
/// that breaks framing is disconnected, and nothing traps.
public enum XenStoreServerFuzzer {
    public static func run(_ data: UnsafeRawBufferPointer) {
        var input = FuzzInput(data)
        var quotas = XenStoreQuotas()
        quotas.maximumNodesPerDomain = 64
        let engine = XenStoreEngine(quotas: quotas)
        var connections: [(id: XenStoreEngine.ConnectionID, decoder: XenStoreMessageDecoder)] = [
            (engine.connect(domain: 0), XenStoreMessageDecoder()),
            (engine.connect(domain: 0), XenStoreMessageDecoder()),
            (engine.connect(domain: 5), XenStoreMessageDecoder()),
            (engine.connect(domain: 7), XenStoreMessageDecoder()),
        ]
        var live = [true, true, true, true]
        var steps = 0
        while !input.isAtEnd && steps < 2_000 {
            steps += 1
            let which = Int(input.byte() % 4)
            guard live[which] else { continue }
            // Either a well-formed message built from the input, or raw bytes.
            if input.byte() & 1 == 0 {
                let type = XenStoreMessageType(rawValue: UInt32(input.byte() % 24))
                let tx = UInt32(input.byte() % 4)
                let body = Array(input.take(Int(input.byte())))
                let message = XenStoreMessage(type: type, requestID: UInt32(steps), transactionID: tx, payload: body)
                let out = engine.handle(message, from: connections[which].id)
                let replies = out.filter { $0.connection == connections[which].id && $0.message.type != .watchEvent }
                precondition(replies.count == 1, "one reply per request")
                precondition(replies[0].message.requestID == message.requestID)
                for o in out { precondition(o.message.payload.count <= XenStoreLimits.payloadMax) }
            } else {
                connections[which].decoder.append(input.take(Int(input.byte())))
                do {
                    while let message = try connections[which].decoder.next() {
                        _ = engine.handle(message, from: connections[which].id)
                    }
                } catch {
                    engine.disconnect(connections[which].id)
                    live[which] = false
                }
            }
        }
    }
}

import Testing
import XenNetBackend
import XenNetFrontend
import XenNetProtocol
import XenNetTestbed
import XenProtocolTesting
import XenNetDevice

/// The Microsoft RSS verification key and one of its published vectors:
/// 66.9.149.187:2794 → 161.142.100.80:1766 hashes to 0x323e8fc2 over the
/// addresses and 0x51ccc178 with the ports.
let rssKey: [UInt8] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
]

@Suite(.serialized) struct NetControlTests {
    /// XSA-270: every control value is checked (sizes, offsets, queue
    /// numbers) and a bad one changes nothing; the hash then set arrives
    /// with each received frame as a HASH extra.
    @Test func controlRingValidatesAndHashes() async throws {
        try await withVIF(options: NetFrontendOptions(queues: 2, controlRing: true)) { _, lab, device, front in
            #expect(device.negotiation?.controlRing == true)
            let control = try #require(front.control)
            let invalid = NetControlStatus.invalidParameter
            let ok = NetControlStatus.success
            let grant = control.scratchGrant.rawValue
            let results = try await offThePool { () throws -> [String: UInt32] in
                var r: [String: UInt32] = [:]
                let scratch = control.scratch  // the guest page behind `grant`
                r["flags?"] = try control.request(.getHashFlags).1
                r["flags before algorithm"] = try control.request(.setHashFlags, (NetHashTypes.ipv4.rawValue, 0, 0)).0
                r["algorithm 5"] = try control.request(.setHashAlgorithm, (5, 0, 0)).0
                r["algorithm toeplitz"] = try control.request(.setHashAlgorithm, (NetHashAlgorithm.toeplitz, 0, 0)).0
                r["flags unknown bit"] = try control.request(.setHashFlags, (1 << 7, 0, 0)).0
                for (i, b) in rssKey.enumerated() { scratch.storeBytes(of: b, toByteOffset: i, as: UInt8.self) }
                r["key 41"] = try control.request(.setHashKey, (grant, 41, 0)).0
                r["key bad grant"] = try control.request(.setHashKey, (0x7FFF_0000, 40, 0)).0
                r["key"] = try control.request(.setHashKey, (grant, 40, 0)).0
                r["mapping size?"] = try control.request(.getHashMappingSize).1
                r["mapping size 129"] = try control.request(.setHashMappingSize, (129, 0, 0)).0
                r["mapping size 8"] = try control.request(.setHashMappingSize, (8, 0, 0)).0
                for i in 0..<8 { scratch.storeBytes(of: UInt32(i % 2), toByteOffset: 4 * i, as: UInt32.self) }
                r["mapping past end"] = try control.request(.setHashMapping, (grant, 8, 1)).0
                r["mapping offset wraps"] = try control.request(.setHashMapping, (grant, 2, 0xFFFF_FFFF)).0
                r["mapping too long"] = try control.request(.setHashMapping, (grant, 1025, 0)).0
                scratch.storeBytes(of: UInt32(2), toByteOffset: 12, as: UInt32.self)
                r["mapping queue 2 of 2"] = try control.request(.setHashMapping, (grant, 8, 0)).0
                scratch.storeBytes(of: UInt32(1), toByteOffset: 12, as: UInt32.self)
                r["mapping"] = try control.request(.setHashMapping, (grant, 8, 0)).0
                r["grant mapping"] = try control.request(.addGrantMapping, (grant, 0, 0)).0
                r["unknown type"] = try control.request(NetControlType(rawValue: 99)).0
                r["flags"] = try control.request(.setHashFlags, ((NetHashTypes.ipv4.rawValue | NetHashTypes.ipv4TCP.rawValue), 0, 0)).0
                return r
            }
            #expect(results["flags?"] == 0xF)
            #expect(results["flags before algorithm"] == invalid)
            #expect(results["algorithm 5"] == invalid)
            #expect(results["algorithm toeplitz"] == ok)
            #expect(results["flags unknown bit"] == invalid)
            #expect(results["key 41"] == NetControlStatus.bufferOverflow)
            #expect(results["key bad grant"] == invalid)
            #expect(results["key"] == ok)
            #expect(results["mapping size?"] == 128)
            #expect(results["mapping size 129"] == invalid)
            #expect(results["mapping size 8"] == ok)
            #expect(results["mapping past end"] == invalid)
            #expect(results["mapping offset wraps"] == invalid)
            #expect(results["mapping too long"] == NetControlStatus.bufferOverflow)
            #expect(results["mapping queue 2 of 2"] == invalid)
            #expect(results["mapping"] == ok)
            #expect(results["grant mapping"] == NetControlStatus.notSupported)
            #expect(results["unknown type"] == NetControlStatus.notSupported)
            #expect(results["flags"] == ok)

            // Frames with the vector's addresses and ports: UDP hashes the
            // addresses (type IPv4), TCP the four-tuple (type IPv4+TCP).
            let injector = try lab.injector()
            let source: [UInt8] = [66, 9, 149, 187], destination: [UInt8] = [161, 142, 100, 80]
            let udp = Frames.udp(sourceMAC: [2, 0, 0, 0, 0, 9], destinationMAC: guestMAC, sourceIP: source, destinationIP: destination,
                                 sourcePort: 2794, destinationPort: 1766, payload: [1, 2, 3])
            let tcp = Frames.tcpPartial(sourceMAC: [2, 0, 0, 0, 0, 9], destinationMAC: guestMAC, sourceIP: source, destinationIP: destination,
                                        sourcePort: 2794, destinationPort: 1766, sequence: 1, payload: [4, 5, 6])
            _ = injector.inject(udp)
            var header = VirtioNetHeader()
            header.flags = VirtioNetHeader.needsChecksum
            header.checksumStart = 34
            header.checksumOffset = 16
            _ = injector.inject(tcp, header: header)
            let received = try await withThrowingTaskGroup(of: [ReceivedFrame].self) { group in
                for queue in front.queues {
                    group.addTask {
                        try await offThePool { () throws -> [ReceivedFrame] in
                            var got: [ReceivedFrame] = []
                            while let f = try queue.receive(timeoutMilliseconds: 500) {
                                if f.bytes.count > 34 && Array(f.bytes[26..<30]) == source { got.append(f) }
                            }
                            return got
                        }
                    }
                }
                var all: [ReceivedFrame] = []
                for try await g in group { all += g }
                return all
            }
            let udpFrame = try #require(received.first { $0.bytes[23] == 17 })
            let tcpFrame = try #require(received.first { $0.bytes[23] == 6 })
            #expect(udpFrame.hash?.hashValue32 == 0x323e_8fc2 && udpFrame.hash?.hashType == 0, "\(String(describing: udpFrame.hash))")
            #expect(tcpFrame.hash?.hashValue32 == 0x51cc_c178 && tcpFrame.hash?.hashType == 1, "\(String(describing: tcpFrame.hash))")
            #expect(udpFrame.hash?.hashAlgorithm == 1 && udpFrame.flags.contains(.extraInfo) && udpFrame.slots == 2)
            #expect(udpFrame.bytes == udp)
        }
    }

    /// The guest's mapping table steers received frames: every flow goes to
    /// the queue its hash maps to, whichever TAP queue the kernel picked,
    /// and a new table moves them.
    @Test func theMappingTableSteersReceivedFrames() async throws {
        try await withVIF(options: NetFrontendOptions(queues: 2, controlRing: true)) { _, lab, _, front in
            let control = try #require(front.control)
            let grant = control.scratchGrant.rawValue
            func mapEverything(to queue: UInt32) async throws -> [UInt32] {
                try await offThePool { () throws -> [UInt32] in
                    let scratch = control.scratch
                    for (i, b) in rssKey.enumerated() { scratch.storeBytes(of: b, toByteOffset: i, as: UInt8.self) }
                    var statuses = [try control.request(.setHashAlgorithm, (NetHashAlgorithm.toeplitz, 0, 0)).0,
                                    try control.request(.setHashFlags, (NetHashTypes.ipv4.rawValue, 0, 0)).0,
                                    try control.request(.setHashKey, (grant, 40, 0)).0,
                                    try control.request(.setHashMappingSize, (8, 0, 0)).0]
                    for i in 0..<8 { scratch.storeBytes(of: queue, toByteOffset: 4 * i, as: UInt32.self) }
                    statuses.append(try control.request(.setHashMapping, (grant, 8, 0)).0)
                    return statuses
                }
            }
            let injector = try lab.injector()
            /// Sends 32 flows (32 source addresses) and counts, per queue, the frames that arrive.
            func flowsPerQueue(round: UInt8) async throws -> [Int] {
                for flow in 0..<32 {
                    let frame = Frames.udp(sourceMAC: [2, 0, 0, 0, 0, 9], destinationMAC: guestMAC, sourceIP: [10, round, 1, UInt8(flow + 1)],
                                           destinationIP: [10, 77, 0, 2], sourcePort: 4000, destinationPort: 5000, payload: [round, UInt8(flow)])
                    _ = injector.inject(frame)
                }
                return try await withThrowingTaskGroup(of: (Int, Int).self) { group in
                    for (index, queue) in front.queues.enumerated() {
                        group.addTask {
                            try await offThePool { () throws -> (Int, Int) in
                                var got = 0
                                while let f = try queue.receive(timeoutMilliseconds: 500) {
                                    if f.bytes.count > 30 && f.bytes[26] == 10 && f.bytes[27] == round { got += 1 }
                                }
                                return (index, got)
                            }
                        }
                    }
                    var counts = [0, 0]
                    for try await (index, got) in group { counts[index] = got }
                    return counts
                }
            }
            #expect(try await mapEverything(to: 1) == Array(repeating: NetControlStatus.success, count: 5))
            #expect(try await flowsPerQueue(round: 1) == [0, 32], "every flow on queue 1")
            #expect(try await mapEverything(to: 0) == Array(repeating: NetControlStatus.success, count: 5))
            #expect(try await flowsPerQueue(round: 2) == [32, 0], "every flow on queue 0")
        }
    }
}

import XenNetProtocol
import XenNetChecksum

/// Builds and recognises the few frames the test frontend speaks: ARP,
/// ICMP echo, UDP and TCP over IPv4 and IPv6 (TCP only for GSO tests).
public enum Frames {
    public static let broadcast: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]

    static func be16(_ v: Int) -> [UInt8] { [UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }
    static func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }

    static func checksum(_ bytes: [UInt8], initial: UInt32 = 0) -> UInt16 {
        // SAFETY: a view of the local array for the call only.
        bytes.withUnsafeBytes { ~InternetChecksum.fold(InternetChecksum.add($0, to: initial)) }
    }

    static func ethernet(_ destination: [UInt8], _ source: [UInt8], _ type: Int) -> [UInt8] {
        destination + source + be16(type)
    }

    static func ipv4Header(source: [UInt8], destination: [UInt8], protocol proto: UInt8, payloadLength: Int, identification: Int = 0) -> [UInt8] {
        var h: [UInt8] = [0x45, 0] + be16(20 + payloadLength) + be16(identification) + [0x40, 0, 64, proto, 0, 0] + source + destination
        let c = checksum(h)
        h[10] = UInt8(c >> 8); h[11] = UInt8(c & 0xFF)
        return h
    }

    public static func arpRequest(senderMAC: [UInt8], senderIP: [UInt8], targetIP: [UInt8]) -> [UInt8] {
        ethernet(broadcast, senderMAC, 0x0806) + [0, 1, 8, 0, 6, 4, 0, 1] + senderMAC + senderIP + [0, 0, 0, 0, 0, 0] + targetIP
    }

    public static func arpReply(senderMAC: [UInt8], senderIP: [UInt8], targetMAC: [UInt8], targetIP: [UInt8]) -> [UInt8] {
        ethernet(targetMAC, senderMAC, 0x0806) + [0, 1, 8, 0, 6, 4, 0, 2] + senderMAC + senderIP + targetMAC + targetIP
    }

    public static func icmpEcho(sourceMAC: [UInt8], destinationMAC: [UInt8], sourceIP: [UInt8], destinationIP: [UInt8],
                                identifier: Int, sequence: Int, payload: [UInt8], reply: Bool = false) -> [UInt8] {
        var icmp: [UInt8] = [reply ? 0 : 8, 0, 0, 0] + be16(identifier) + be16(sequence) + payload
        let c = checksum(icmp)
        icmp[2] = UInt8(c >> 8); icmp[3] = UInt8(c & 0xFF)
        return ethernet(destinationMAC, sourceMAC, 0x0800) + ipv4Header(source: sourceIP, destination: destinationIP, protocol: 1, payloadLength: icmp.count) + icmp
    }

    /// A UDP/IPv4 datagram. `partialChecksum` leaves the pseudo-header sum
    /// in the field, as a guest does before asking the backend to finish it.
    public static func udp(sourceMAC: [UInt8], destinationMAC: [UInt8], sourceIP: [UInt8], destinationIP: [UInt8],
                           sourcePort: Int, destinationPort: Int, payload: [UInt8], partialChecksum: Bool = false) -> [UInt8] {
        var udp = be16(sourcePort) + be16(destinationPort) + be16(8 + payload.count) + [0, 0] + payload
        let pseudo = sourceIP + destinationIP + [0, 17] + be16(udp.count)
        // SAFETY: a view of the local array for the call only.
        let sum = pseudo.withUnsafeBytes { InternetChecksum.add($0, to: 0) }
        let c: UInt16 = partialChecksum ? InternetChecksum.fold(sum) : { let v = checksum(udp, initial: sum); return v == 0 ? 0xFFFF : v }()
        udp[6] = UInt8(c >> 8); udp[7] = UInt8(c & 0xFF)
        return ethernet(destinationMAC, sourceMAC, 0x0800) + ipv4Header(source: sourceIP, destination: destinationIP, protocol: 17, payloadLength: udp.count) + udp
    }

    /// A TCP segment (IPv4 or IPv6 by address length) with a partial
    /// checksum, as a guest hands a GSO packet to its netfront.
    public static func tcpPartial(sourceMAC: [UInt8], destinationMAC: [UInt8], sourceIP: [UInt8], destinationIP: [UInt8],
                                  sourcePort: Int, destinationPort: Int, sequence: UInt32, payload: [UInt8]) -> [UInt8] {
        var tcp = be16(sourcePort) + be16(destinationPort) + be32(sequence) + be32(1) + [0x50, 0x18] + be16(65535) + [0, 0, 0, 0] + payload
        let v6 = sourceIP.count == 16
        let pseudo = sourceIP + destinationIP + (v6 ? be32(UInt32(tcp.count)) + [0, 0, 0, 6] : [0, 6] + be16(tcp.count))
        // SAFETY: a view of the local array for the call only.
        let sum = InternetChecksum.fold(pseudo.withUnsafeBytes { InternetChecksum.add($0, to: 0) })
        tcp[16] = UInt8(sum >> 8); tcp[17] = UInt8(sum & 0xFF)
        if v6 {
            let ip: [UInt8] = [0x60, 0, 0, 0] + be16(tcp.count) + [6, 64] + sourceIP + destinationIP
            return ethernet(destinationMAC, sourceMAC, 0x86DD) + ip + tcp
        }
        return ethernet(destinationMAC, sourceMAC, 0x0800) + ipv4Header(source: sourceIP, destination: destinationIP, protocol: 6, payloadLength: tcp.count) + tcp
    }

    /// The answer a host at (`mac`, `ip`) gives `frame`: an ARP reply to a
    /// request for `ip`, an echo reply to an echo request to `ip`; else nil.
    public static func answer(_ frame: [UInt8], mac: [UInt8], ip: [UInt8]) -> [UInt8]? {
        guard frame.count >= 42 else { return nil }
        let type = Int(frame[12]) << 8 | Int(frame[13])
        if type == 0x0806 && frame[20] == 0 && frame[21] == 1 && Array(frame[38..<42]) == ip {
            return arpReply(senderMAC: mac, senderIP: ip, targetMAC: Array(frame[22..<28]), targetIP: Array(frame[28..<32]))
        }
        if type == 0x0800 && frame[23] == 1 && Array(frame[30..<34]) == ip {
            let ihl = Int(frame[14] & 0xF) * 4
            let total = Int(frame[16]) << 8 | Int(frame[17])
            let icmp = 14 + ihl
            guard frame.count >= icmp + 8, frame[icmp] == 8, 14 + total <= frame.count else { return nil }
            return icmpEcho(sourceMAC: mac, destinationMAC: Array(frame[6..<12]), sourceIP: ip, destinationIP: Array(frame[26..<30]),
                            identifier: Int(frame[icmp + 4]) << 8 | Int(frame[icmp + 5]),
                            sequence: Int(frame[icmp + 6]) << 8 | Int(frame[icmp + 7]),
                            payload: Array(frame[(icmp + 8)..<(14 + total)]), reply: true)
        }
        return nil
    }
}

extension NetFrontendQueue {
    /// Answers ARP and echo requests for (`mac`, `ip`) until `until`
    /// returns true or nothing arrives for `idleMilliseconds`; returns the
    /// number of answers sent. Other frames go to `other`.
    @discardableResult
    public func serve(mac: [UInt8], ip: [UInt8], idleMilliseconds: Int32 = 10_000, until: () -> Bool = { false },
                      other: ([UInt8]) -> Void = { _ in }) throws -> Int {
        var answered = 0
        var idle: Int32 = 0
        while !until() && idle < idleMilliseconds {
            // Short waits, so `until` is looked at often.
            guard let frame = try receive(timeoutMilliseconds: 50) else {
                idle = idle &+ 50 < 0 ? Int32.max : idle + 50
                continue
            }
            idle = 0
            if let reply = Frames.answer(frame.bytes, mac: mac, ip: ip) {
                try send(reply)
                answered += 1
            } else {
                other(frame.bytes)
            }
        }
        return answered
    }

    /// `peerIP`'s MAC address by ARP (answering ARP and pings for `ip`
    /// meanwhile), or nil after `timeoutMilliseconds` without a reply.
    public func resolve(from mac: [UInt8], ip: [UInt8], peer peerIP: [UInt8], timeoutMilliseconds: Int32 = 5_000) throws -> [UInt8]? {
        try send(Frames.arpRequest(senderMAC: mac, senderIP: ip, targetIP: peerIP))
        while let frame = try receive(timeoutMilliseconds: timeoutMilliseconds)?.bytes {
            if let reply = Frames.answer(frame, mac: mac, ip: ip) { try send(reply); continue }
            if frame.count >= 42 && frame[12] == 8 && frame[13] == 6 && frame[21] == 2 && Array(frame[28..<32]) == peerIP {
                return Array(frame[22..<28])
            }
        }
        return nil
    }

    /// Pings `peerIP` from (`mac`, `ip`): resolves it with ARP, sends
    /// `count` echo requests, returns how many replies came back. Answers
    /// the peer's own ARP requests meanwhile.
    public func ping(from mac: [UInt8], ip: [UInt8], to peerIP: [UInt8], count: Int = 3, timeoutMilliseconds: Int32 = 5_000) throws -> Int {
        var peerMAC: [UInt8]?
        try send(Frames.arpRequest(senderMAC: mac, senderIP: ip, targetIP: peerIP))
        var replies = 0
        var sequence = 0
        func handle(_ frame: [UInt8]) throws {
            if let reply = Frames.answer(frame, mac: mac, ip: ip) { try send(reply); return }
            guard frame.count >= 42 else { return }
            let type = Int(frame[12]) << 8 | Int(frame[13])
            if type == 0x0806 && frame[21] == 2 && Array(frame[28..<32]) == peerIP { peerMAC = Array(frame[22..<28]) }
            if type == 0x0800 && frame[23] == 1 && Array(frame[26..<30]) == peerIP && frame[34] == 0 { replies += 1 }
        }
        while peerMAC == nil {
            guard let frame = try receive(timeoutMilliseconds: timeoutMilliseconds) else { return 0 }
            try handle(frame.bytes)
        }
        while sequence < count {
            sequence += 1
            try send(Frames.icmpEcho(sourceMAC: mac, destinationMAC: peerMAC!, sourceIP: ip, destinationIP: peerIP,
                                     identifier: 0x7862, sequence: sequence, payload: Array(repeating: UInt8(sequence), count: 56)))
            let want = replies + 1
            while replies < want {
                guard let frame = try receive(timeoutMilliseconds: timeoutMilliseconds) else { return replies }
                try handle(frame.bytes)
            }
        }
        return replies
    }
}

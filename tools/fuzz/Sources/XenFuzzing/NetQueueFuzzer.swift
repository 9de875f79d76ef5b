import XenNetBackend
import XenNetDevice
import XenNetProtocol
import XenPlatform
import XenRing
import XenSim
#if canImport(Glibc)
import Glibc
#endif

/// A hostile frontend (and an arbitrary host) against the real netback
/// queue worker over the in-process sim, with a datagram socket pair as the
/// TAP. The bytes pick the negotiated options, then script: raw and
/// plausible transmit slots (extras, fragments, sizes, offsets), guest page
/// contents, hostile grant entries, receive buffers, frames from the host
/// with any virtio-net header, arbitrary ring indices, and the worker's
/// passes. After each pass: transmit statuses are netif's, receive
/// responses stay inside their page or are valid extras, frames handed to
/// the host fit a TAP and say where their checksum is; a pass may end the
/// VIF (a fatal error) but never crash. At the end nothing stays mapped.
public enum NetQueueFuzzer {
    static let dataFrames: Range<UInt32> = 2..<18

    public static func run(_ data: UnsafeRawBufferPointer) {
        var input = FuzzInput(data)
        let flags = input.byte()
        var options = NetQueueOptions()
        options.scatterGather = flags & 1 != 0
        options.gsoTCPv4 = flags & 2 != 0
        options.gsoTCPv6 = flags & 4 != 0
        options.checksumOffload = flags & 8 != 0
        options.ipv6ChecksumOffload = flags & 16 != 0
        options.multicastControl = flags & 32 != 0
        options.rxNotify = flags & 64 != 0
        options.receiveQueueBytes = 256 * 1024
        let split = flags & 128 != 0

        let hv = SimHypervisor()
        guard (try? hv.createDomain(.dom0, pages: 1)) != nil,
              let guest = try? hv.createDomain(DomainID(3), pages: 20, grantEntries: 64),
              let control = try? FrontRing<NetControlRing>(initializing: SharedRingMemory(base: guest.page(18), pageCount: 1)),
              let controlRef = try? guest.grantAccess(to: .dom0, frame: 18, readOnly: false),
              let tx = try? FrontRing<NetTxRing>(initializing: SharedRingMemory(base: guest.page(0), pageCount: 1)),
              let rx = try? FrontRing<NetRxRing>(initializing: SharedRingMemory(base: guest.page(1), pageCount: 1)),
              let txRef = try? guest.grantAccess(to: .dom0, frame: 0, readOnly: false),
              let rxRef = try? guest.grantAccess(to: .dom0, frame: 1, readOnly: false),
              let events = try? guest.openEventChannels() else { return }
        var txRing = tx, rxRing = rx, controlRing = control
        let txPort = events.allocateUnbound(remoteDomain: .dom0)
        let controlPort = events.allocateUnbound(remoteDomain: .dom0)
        let rxPort = split ? events.allocateUnbound(remoteDomain: .dom0) : txPort
        var pool: [UInt32] = []
        for f in dataFrames { if let r = try? guest.grantAccess(to: .dom0, frame: f, readOnly: f % 5 == 0) { pool.append(r.rawValue) } }
        guard !pool.isEmpty else { return }
        var pair: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &pair) == 0 else { return }
        defer { close(pair[0]); close(pair[1]) }
        let host = pair[1]
        do {
            let worker = try NetQueueWorker(platform: hv.platform(for: .dom0), frontend: guest.id, txRingRef: txRef, rxRingRef: rxRef,
                                            txRemotePort: txPort, rxRemotePort: split ? rxPort : nil, tapDescriptor: pair[0], options: options,
                                            queueCount: 2, control: NetControlSetup(ringRef: controlRef, remotePort: controlPort))
            let txPage = guest.page(0), rxPage = guest.page(1)
            var frame = [UInt8](repeating: 0, count: 70_000)
            var steps = 0
            var ringsExposed = false
            // Refs a receive request may name to have the backend write over a ring.
            let ringRefs = [txRef.rawValue, rxRef.rawValue, controlRef.rawValue]
            script: while !input.isAtEnd && steps < 1_000 {
                steps += 1
                switch input.byte() % 10 {
                case 9:  // control requests: any type, sizes, offsets and grants
                    for _ in 0..<Int(input.byte() % 8) where !controlRing.isFull {
                        // The backend only copies from a control request's grant, so
                        // naming a ring's own grant here exposes nothing.
                        let grant = input.byte() & 1 == 0 ? pool[Int(input.byte()) % pool.count] : input.u32()
                        controlRing.produceRequest(NetControlRequest(id: input.u16(), type: NetControlType(rawValue: UInt16(input.byte() % 12)),
                                                                     data: (input.byte() & 1 == 0 ? grant : input.u32(), input.u32() % 300, input.u32())))
                    }
                    _ = controlRing.pushRequests()
                    if let p = try? controlRing.readResponseProducer() {
                        while let r = controlRing.nextResponse(before: p) {
                            precondition(r.status <= NetControlStatus.bufferOverflow, "control status \(r.status)")
                        }
                    }
                case 0:  // any bytes in the next transmit slot
                    if txRing.isFull { continue }
                    txRing.produceRequest(NetTxSlot(NetTxRequest(grant: 0, offset: 0, flags: [], id: 0, size: 0)))
                    let slot = Int((txRing.requestProducerPrivate.rawValue &- 1) & (txRing.size - 1))
                    let raw = input.take(12)
                    (txPage + 64 + slot * 12).copyMemory(from: raw.baseAddress ?? UnsafeRawPointer(txPage), byteCount: raw.count)
                    _ = txRing.pushRequests()
                case 1:  // a plausible packet: first slot, extras, fragments
                    for slot in plausiblePacket(&input, pool: pool) where !txRing.isFull { txRing.produceRequest(slot) }
                    _ = txRing.pushRequests()
                case 2:  // page contents (a frame template or raw bytes)
                    let page = guest.page(dataFrames.lowerBound + UInt32(input.byte()) % UInt32(dataFrames.count))
                    if input.byte() & 1 == 0 {
                        let template = plausibleFrame(&input)
                        template.withUnsafeBytes { page.copyMemory(from: $0.baseAddress!, byteCount: min($0.count, 4096)) }
                    } else {
                        let offset = Int(input.u16()) % 4096
                        let raw = input.take(Int(input.byte()))
                        (page + offset).copyMemory(from: raw.baseAddress ?? UnsafeRawPointer(page), byteCount: min(raw.count, 4096 - offset))
                    }
                case 3:  // a hostile grant entry (its frame may be a ring page: the backend must survive that too)
                    let ref = pool[Int(input.byte()) % pool.count]
                    let frame = UInt32(input.u16()) % 32
                    if frame < 2 || frame == 18 { ringsExposed = true }
                    guest.writeEntry(ref, domain: input.byte() & 1 == 0 ? 0 : UInt16(input.byte()), frame: frame, flags: input.u16())
                case 4:  // receive buffers (ids and grants from the pool, or anything)
                    for _ in 0..<Int(input.byte() % 32) where !rxRing.isFull {
                        let grant = input.byte() & 3 == 0 ? input.u32() : pool[Int(input.byte()) % pool.count]
                        // Any ref may be a ring's own grant: the guest then
                        // has the backend copy packets over that ring.
                        if ringRefs.contains(grant) { ringsExposed = true }
                        rxRing.produceRequest(NetRxRequest(id: input.u16(), grant: grant))
                    }
                    _ = rxRing.pushRequests()
                case 5:  // a frame from the host, any virtio-net header
                    let header = input.take(VirtioNetHeader.size)
                    let body = input.byte() & 1 == 0 ? plausibleFrame(&input) : Array(input.take(Int(input.u16()) % 2048))
                    var bytes = [UInt8](repeating: 0, count: VirtioNetHeader.size)
                    for (i, b) in header.enumerated() { bytes[i] = b }
                    bytes += body
                    _ = write(host, bytes, bytes.count)
                case 6:  // arbitrary req_prod, req_event or rsp_event (rsp_prod is
                    // the backend's; scribbling it only confuses this script's checks)
                    let page = input.byte() & 1 == 0 ? txPage : rxPage
                    page.storeBytes(of: input.u32(), toByteOffset: [0, 4, 12][Int(input.byte() % 3)], as: UInt32.self)
                case 7:  // the frontend takes what was answered
                    if let p = try? txRing.readResponseProducer() { while txRing.nextResponse(before: p) != nil {} }
                    if let p = try? rxRing.readResponseProducer() { while rxRing.nextResponse(before: p) != nil {} }
                default:
                    if !pass(worker, txPage: txPage, rxPage: rxPage, host: host, frame: &frame, ringsExposed: ringsExposed) { break script }
                }
            }
            _ = pass(worker, txPage: txPage, rxPage: rxPage, host: host, frame: &frame, ringsExposed: ringsExposed)
        } catch {
            return
        }
        // The worker is gone: its ring mappings are too.
        precondition(hv.mappingCount == 0, "a grant stayed mapped after the queue worker went")
    }

    /// One pass and its checks; false once the VIF is disabled.
    static func pass(_ worker: NetQueueWorker<SimPlatform>, txPage: UnsafeMutableRawPointer, rxPage: UnsafeMutableRawPointer,
                     host: Int32, frame: inout [UInt8], ringsExposed: Bool) -> Bool {
        let txBefore = txPage.load(fromByteOffset: 8, as: UInt32.self)
        let rxBefore = rxPage.load(fromByteOffset: 8, as: UInt32.self)
        let alive: Bool
        do { try worker.process(); alive = true } catch { alive = false }
        _ = worker.prepareToSleep(now: monotonicNanoseconds())
        let txAfter = txPage.load(fromByteOffset: 8, as: UInt32.self)
        let rxAfter = rxPage.load(fromByteOffset: 8, as: UInt32.self)
        // A guest that granted its own ring pages as buffers has the backend
        // copy packet bytes over them: what the rings say is then the
        // guest's doing, not the backend's, and is not checked.
        guard !ringsExposed else { drainHost(host, &frame); return alive }
        precondition(txAfter &- txBefore <= 256 && rxAfter &- rxBefore <= 256, "more responses than the ring holds in one pass")
        var i = txBefore
        while i != txAfter {
            let status = (txPage + 64 + Int(i & 255) * 12).load(fromByteOffset: 2, as: Int16.self)
            precondition((-2...1).contains(status), "transmit status \(status) is not netif's")
            i &+= 1
        }
        i = rxBefore
        var extras = false
        while i != rxAfter {
            let slot = NetRxRing.decodeResponse(from: rxPage + 64 + Int(i & 255) * 8)
            if extras {
                let extra = slot.extraInfo
                precondition(extra.type == .gso || extra.type == .hash, "receive extra of type \(extra.type.rawValue)")
                extras = extra.hasMore
            } else {
                let r = slot.response
                precondition(r.status == NetStatus.error || (r.status >= 0 && Int(r.offset) + Int(r.status) <= 4096),
                             "receive response of \(r.status) bytes at \(r.offset) leaves its page")
                extras = r.flags.contains(.extraInfo)
            }
            i &+= 1
        }
        drainHost(host, &frame)
        return alive
    }

    /// Frames for the host: each fits a TAP write and, if its checksum is
    /// left to the host, says where inside the frame it is.
    static func drainHost(_ host: Int32, _ frame: inout [UInt8]) {
        while true {
            let n = read(host, &frame, frame.count)
            if n <= 0 { break }
            precondition(n >= VirtioNetHeader.size + 14 && n <= VirtioNetHeader.size + 65535, "a \(n)-byte frame for the host")
            let header = frame.withUnsafeBytes { VirtioNetHeader(from: $0.baseAddress!) }
            if header.flags & VirtioNetHeader.needsChecksum != 0 {
                precondition(Int(header.checksumStart) + Int(header.checksumOffset) + 2 <= n - VirtioNetHeader.size, "checksum outside the frame")
            }
            if header.gsoType != 0 {
                precondition(header.gsoSize > 0 && Int(header.headerLength) <= n - VirtioNetHeader.size, "GSO header beyond the frame")
            }
        }
    }

    /// Ethernet + IPv4/IPv6 + TCP/UDP headers with fuzzed fields, then payload.
    static func plausibleFrame(_ input: inout FuzzInput) -> [UInt8] {
        let v6 = input.byte() & 1 == 1
        let tcp = input.byte() & 1 == 1
        let payload = Int(input.u16()) % 3000
        let l4 = tcp ? 20 : 8
        var f = [UInt8](repeating: 0, count: 14) + (v6 ? [0x60] + [UInt8](repeating: 0, count: 39) : [0x45] + [UInt8](repeating: 0, count: 19))
        f[12] = v6 ? 0x86 : 0x08; f[13] = v6 ? 0xDD : 0x00
        let ipLength = (v6 ? 0 : 20) + l4 + payload
        if v6 {
            f[18] = UInt8(truncatingIfNeeded: (l4 + payload) >> 8); f[19] = UInt8(truncatingIfNeeded: l4 + payload); f[20] = tcp ? 6 : 17
        } else {
            f[16] = UInt8(truncatingIfNeeded: ipLength >> 8); f[17] = UInt8(truncatingIfNeeded: ipLength); f[23] = tcp ? 6 : 17
        }
        f += [UInt8](repeating: 0, count: l4)
        if tcp { f[f.count - 8] = 0x50 }
        f += [UInt8](repeating: 0x5A, count: payload)
        // A few fuzzed bytes anywhere in the headers.
        for _ in 0..<Int(input.byte() % 4) { f[Int(input.byte()) % min(f.count, 80)] = input.byte() }
        return f
    }

    static func plausiblePacket(_ input: inout FuzzInput, pool: [UInt32]) -> [NetTxSlot] {
        let fragments = Int(input.byte() % 24)
        var flags = NetTxFlags(rawValue: UInt16(input.byte() & 0x3))
        let extra = input.byte() % 5
        if extra != 0 { flags.insert(.extraInfo) }
        if fragments > 0 { flags.insert(.moreData) }
        var slots = [NetTxSlot(NetTxRequest(grant: pool[Int(input.byte()) % pool.count], offset: input.u16() % 4200,
                                            flags: flags, id: input.u16(), size: input.u16() % 9000))]
        switch extra {
        case 1: slots.append(NetTxSlot(NetExtraInfo.gso(size: input.u16(), type: input.byte() % 4)))
        case 2: slots.append(NetTxSlot(NetExtraInfo.multicast(add: input.byte() & 1 == 0, address: [1, 0, 0x5E, 0, 0, input.byte()])))
        case 3: slots.append(NetTxSlot(NetExtraInfo(type: NetExtraType(rawValue: input.byte() % 6), flags: input.byte() & 1, payload: UInt64(input.u32()))))
        case 4: slots.append(NetTxSlot(NetExtraInfo.hash(type: input.byte(), algorithm: 1, value: input.u32())))
        default: break
        }
        for i in 0..<fragments {
            let more: NetTxFlags = i + 1 < fragments ? [.moreData] : []
            slots.append(NetTxSlot(NetTxRequest(grant: input.byte() & 7 == 0 ? input.u32() : pool[Int(input.byte()) % pool.count],
                                                offset: input.u16() % 4200, flags: more, id: input.u16(), size: input.u16() % 5000)))
        }
        return slots
    }
}

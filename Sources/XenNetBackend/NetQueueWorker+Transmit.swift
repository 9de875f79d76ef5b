import XenSystem
import XenNetProtocol
import XenPlatform
import XenRing
#if canImport(Glibc)
import Glibc
import XenNetDevice
#endif

/// Guest transmit: each packet's slots copied out once and checked with
/// Linux netback's rules, its data gathered by one batched grant copy, the
/// frame written to the TAP behind a virtio-net header.
extension NetQueueWorker {
    func transmitFatal(_ why: String) -> NetBackendError {
        .fatal("queue \(queueIndex) transmit: \(why)")
    }

    /// Rate limiting as Linux's tx_credit_exceeded: `bytes` of credit per
    /// interval, bursts capped at max(128 KiB, bytes). Unlike Linux, a late
    /// wakeup does not lose credit: every interval that passed adds its share
    /// (still capped), and intervals stay on their grid, so a busy host keeps
    /// the configured rate instead of falling below it.
    func creditAllows(_ size: Int, now: Int) -> Bool {
        guard let rate else { return true }
        if size <= txCredit { return true }
        let interval = rate.microseconds * 1000
        if txCreditRefill == 0 { txCreditRefill = now + interval }
        if now >= txCreditRefill {
            let intervals = 1 + (now - txCreditRefill) / interval
            let burst = max(131_072, rate.bytes)
            txCredit = min(txCredit + rate.bytes * min(intervals, burst / rate.bytes + 1), burst)
            txCreditRefill += intervals * interval
            if size <= txCredit { return true }
        }
        return false
    }

    func recordTx(id: UInt16, status: Int16) {
        txResponses[txResponseCount] = NetTxResponse(id: id, status: status)
        txResponseCount += 1
    }

    func failTx(from first: Int, extras: Int, count: Int) {
        // The packet's first slot and its fragments get ERROR; extras stay NULL.
        for i in first..<(first + count) where i == first || i > first + extras {
            txResponses[i].status = NetStatus.error
        }
    }

    func processTransmit(now: Int) throws(NetBackendError) {
        if rateSetting.generation != rateGeneration {
            // The operator changed `rate`: the new one starts with a full interval's credit.
            rateGeneration = rateSetting.generation
            rate = rateSetting.current
            txCredit = rate?.bytes ?? 0
            txCreditRefill = 0
        }
        txRateBlocked = false
        guard !txRing.isHalted else { return }
        var producer: RingIndex
        do { producer = try txRing.readRequestProducer() } catch { throw .ring(error) }
        var packets = 0
        var copies = 0
        var bytes = 0
        txResponseCount = 0
        var fatal: NetBackendError?
        // Bounded: at most `transmitBatch` packets, each at most the slots
        // published, which readRequestProducer checked against the ring size.
        // Large packets end a batch early: their buffers then stay in cache
        // between the copy in and the write out.
        while packets < Self.transmitBatch, bytes < Self.transmitBatchBytes, fatal == nil {
            guard let peek = txRing.peekRequest(before: producer) else {
                // Requests published since the pass began join this batch.
                if txRing.unconsumedRequests() > 0, let p = try? txRing.readRequestProducer(), p != producer {
                    producer = p
                    continue
                }
                break
            }
            if rate != nil {
                if !creditAllows(Int(peek.request.size), now: now) {
                    txRateBlocked = true
                    statistics.add(.txCreditWaits)
                    break
                }
            }
            // Room for the worst case: every remaining slot one copy.
            if copies + NetLimits.fatalSlotsPerPacket + 2 > txCopies.count { break }
            switch takePacket(producer: producer, slot: packets, copyStart: copies) {
            case .packet(let packet):
                txPackets[packets] = packet
                packets += 1
                copies += packet.copyCount
                bytes += packet.length
                if rate != nil { txCredit -= packet.length }
            case .answered:
                break
            case .fatal(let why):
                fatal = transmitFatal(why)
            }
        }
        if copies > 0 {
            // SAFETY: the batch's first `copies` operations, in our own table.
            do { try platform.grants.copy(UnsafeMutableBufferPointer(rebasing: txCopies[0..<copies])) } catch {
                // The batch could not run at all: every packet in it fails.
                for i in 0..<copies { txCopies[i].status = .generalError }
            }
        }
        for i in 0..<packets { finishPacket(txPackets[i], buffer: txBuffers + i * Self.packetStride) }
        for i in 0..<txResponseCount { txRing.produceResponse(txResponses[i]) }
        txResponseCount = 0
        if txRing.pushResponses() {
            try? events.notify(txPort)
            statistics.add(.notifications)
        }
        if let fatal { throw fatal }
    }

    enum TakeOutcome {
        case packet(TxPacket)
        /// Consumed and answered (dropped, or a multicast control request).
        case answered
        case fatal(String)
    }

    /// Consumes one packet's slots (first, extras, fragments), validating
    /// each private copy, and queues its grant copies. Linux netback's
    /// rules: more fragments than the published slots, more than 20
    /// fragments, bad extras and page-crossing slots are fatal; 19–20
    /// fragments, a fragment larger than what remains and a first slot
    /// shorter than an Ethernet header drop the packet.
    func takePacket(producer: RingIndex, slot: Int, copyStart: Int) -> TakeOutcome {
        guard let firstSlot = txRing.nextRequest(before: producer) else { return .fatal("no request") }
        let first = firstSlot.request
        let firstResponse = txResponseCount
        recordTx(id: first.id, status: NetStatus.okay)
        var packet = TxPacket(firstResponse: firstResponse, length: Int(first.size), flags: first.flags, copyStart: copyStart)

        var extras = 0
        var multicastAdd: UInt64?
        var multicastDelete: UInt64?
        if first.flags.contains(.extraInfo) {
            var more = true
            while more {
                guard let slot = txRing.nextRequest(before: producer) else {
                    return .fatal("missing extra info after request \(first.id)")
                }
                let extra = slot.extraInfo
                extras += 1
                recordTx(id: 0, status: NetStatus.null)
                guard extra.type != .none, extra.type.rawValue < NetExtraType.limit.rawValue else {
                    return .fatal("invalid extra type \(extra.type.rawValue)")
                }
                switch extra.type {
                case .gso:
                    guard extra.gsoSize != 0 else { return .fatal("GSO size must not be zero") }
                    guard extra.gsoType == NetGSOType.tcpv4 || extra.gsoType == NetGSOType.tcpv6 else {
                        return .fatal("bad GSO type \(extra.gsoType)")
                    }
                    packet.gsoSize = extra.gsoSize
                    packet.gsoType = extra.gsoType
                case .multicastAdd:
                    multicastAdd = extra.payload
                case .multicastDelete:
                    multicastDelete = extra.payload
                default:
                    break  // HASH: the guest's own hash; nothing to do with it on TAP.
                }
                more = extra.hasMore
            }
        }
        if let address = multicastAdd {
            let ok = multicast.isEnabled && multicast.add(address)
            if !ok { txResponses[firstResponse].status = NetStatus.error }
            return .answered
        }
        if let address = multicastDelete {
            if multicast.isEnabled { multicast.remove(address) } else { txResponses[firstResponse].status = NetStatus.error }
            return .answered
        }

        var remaining = Int(first.size)
        var fragments = 0
        var dropWhy: StaticString?
        var more = first.flags.contains(.moreData)
        // SAFETY: packet `slot` (< transmitBatch) of our own buffers; the
        // copies below land at offsets summed from sizes checked to total at
        // most 64 KiB, inside the packet's stride.
        let buffer = txBuffers + slot * Self.packetStride + VirtioNetHeader.size
        var copies = 0
        // Fragment data follows the first slot's, which is sized at the end.
        var fragmentBytes = 0
        while more {
            if fragments >= NetLimits.fatalSlotsPerPacket { return .fatal("malicious frontend using more than \(fragments) slots") }
            if dropWhy == nil && fragments >= NetLimits.minimumSlotsPerPacket { dropWhy = "too many slots" }
            guard let slot = txRing.nextRequest(before: producer) else {
                return .fatal("packet continues past the \(fragments + 1 + extras) slots published")
            }
            let fragment = slot.request
            recordTx(id: fragment.id, status: NetStatus.okay)
            fragments += 1
            if dropWhy == nil && Int(fragment.size) > remaining { dropWhy = "fragment larger than the packet" }
            remaining = max(0, remaining - Int(fragment.size))
            if Int(fragment.offset) + Int(fragment.size) > NetLimits.pageSize {
                return .fatal("slot crosses a page: offset \(fragment.offset) size \(fragment.size)")
            }
            more = fragment.flags.contains(.moreData)
            // Zero-length fragments are answered without touching their grant (XSA-448).
            if dropWhy == nil && fragment.size > 0 {
                txCopies[copyStart + 1 + copies] = GrantCopyOperation(
                    source: .grant(GrantRef(fragment.grant), domain: frontend, offset: fragment.offset),
                    destination: .local(buffer + 0), length: fragment.size)
                // Destination fixed below once the first slot's length is known.
                copies += 1
                fragmentBytes += Int(fragment.size)
            }
        }
        if dropWhy == nil && remaining < PacketLayout.ethernetHeaderLength { dropWhy = "first slot shorter than an Ethernet header" }
        if dropWhy != nil {
            failTx(from: firstResponse, extras: extras, count: txResponseCount - firstResponse)
            statistics.add(.txErrors)
            return .answered
        }
        if Int(first.offset) + remaining > NetLimits.pageSize {
            return .fatal("first slot crosses a page: offset \(first.offset) size \(remaining)")
        }
        txCopies[copyStart] = GrantCopyOperation(source: .grant(GrantRef(first.grant), domain: frontend, offset: first.offset),
                                                 destination: .local(buffer), length: UInt16(remaining))
        var at = remaining
        for i in 0..<copies {
            txCopies[copyStart + 1 + i].destination = .local(buffer + at)
            at += Int(txCopies[copyStart + 1 + i].length)
        }
        packet.copyCount = copies + 1
        packet.length = remaining + fragmentBytes
        packet.extras = extras
        packet.responseCount = txResponseCount - firstResponse
        return .packet(packet)
    }

    /// After the copies: checks them, sets the offload header, hands the
    /// frame to the TAP.
    func finishPacket(_ packet: TxPacket, buffer: UnsafeMutableRawPointer) {
        for i in packet.copyStart..<(packet.copyStart + packet.copyCount) where !txCopies[i].status.isOkay {
            // A grant that failed (revoked, wrong domain, read-only misuse): drop, answer ERROR (XSA-367).
            failPacket(packet)
            return
        }
        // SAFETY: the packet's bytes in our own buffer, filled by the copies
        // just checked; the guest can no longer change them.
        let frame = UnsafeMutableRawBufferPointer(start: buffer + VirtioNetHeader.size, count: packet.length)
        var header = VirtioNetHeader()
        if packet.flags.contains(.checksumBlank) || packet.gsoSize != 0 {
            guard let layout = PacketLayout(frame: UnsafeRawBufferPointer(frame)) else {
                failPacket(packet)  // a partial checksum we cannot locate
                return
            }
            if packet.gsoSize != 0 {
                let v6 = packet.gsoType == NetGSOType.tcpv6
                guard layout.transportProtocol == 6, layout.isIPv6 == v6 else {
                    failPacket(packet)
                    return
                }
                header.gsoType = v6 ? VirtioNetHeader.gsoTCPv6 : VirtioNetHeader.gsoTCPv4
                header.gsoSize = packet.gsoSize
                header.headerLength = UInt16(layout.headerLength)
            }
            // The guest may have left anything in the field (Linux recalculates too).
            layout.preparePartialChecksum(frame: frame)
            header.flags = VirtioNetHeader.needsChecksum
            header.checksumStart = UInt16(layout.transportOffset)
            header.checksumOffset = UInt16(layout.checksumOffset)
        } else if packet.flags.contains(.dataValidated) {
            header.flags = VirtioNetHeader.dataValid
        }
        header.write(to: buffer)
        capture?.write(buffer + VirtioNetHeader.size, length: packet.length)
        let total = VirtioNetHeader.size + packet.length
        // EINTR is retried in the funnel; any other failure or a short write drops the frame.
        if case .success(total) = Syscall.write(tapDescriptor, buffer, count: total) {
            statistics.add(.txPackets)
            statistics.add(.txBytes, UInt64(packet.length))
        } else {
            statistics.add(.txDropped)
        }
    }

    func failPacket(_ packet: TxPacket) {
        failTx(from: packet.firstResponse, extras: packet.extras, count: packet.responseCount)
        statistics.add(.txErrors)
    }

}

import XenSystem
import XenNetChecksum
import XenNetProtocol
import XenPlatform
import XenRing
#if canImport(Glibc)
import Glibc
import XenNetDevice
#endif

/// Guest receive: frames read from the TAP (or steered here by another
/// queue) are prepared once and queued, bounded; then copied into the
/// frontend's posted buffers by batched grant copy, the response for a
/// request in that request's own slot; Linux's stall and drain rules.
extension NetQueueWorker {
    var rxRoom: Bool { rxCount < Self.receiveQueueCapacity && rxQueuedBytes < options.receiveQueueBytes }

    /// SAFETY: queue entry `index` (< receiveQueueCapacity) of our own buffers.
    func rxBuffer(_ index: Int) -> UnsafeMutableRawPointer { rxBuffers + index * Self.packetStride }

    /// Reads what the TAP has into the queue, while it has room; prepares
    /// each frame (offloads, filter, hash) once, on our copy.
    func readTap(now: Int) {
        // Frames other queues read for us first: they waited longer.
        steering?.inboxes[queueIndex].drain(while: { rxRoom }) { entry, frame in
            if stalled { statistics.add(.rxDropped); return }
            let index = (rxHead + rxCount) % Self.receiveQueueCapacity
            // SAFETY: the inbox lends its frame for this call; entry.length
            // was checked against the stride when the frame was read.
            (rxBuffer(index) + VirtioNetHeader.size).copyMemory(from: frame, byteCount: entry.length)
            var entry = entry
            entry.enqueued = now
            rxEntries[index] = entry
            rxCount += 1
            rxQueuedBytes += entry.length
        }
        while rxRoom {
            let index = (rxHead + rxCount) % Self.receiveQueueCapacity
            let buffer = rxBuffer(index)
            let n: Int
            switch Syscall.read(tapDescriptor, buffer, count: Self.packetStride) {  // EINTR is retried there
            case .success(0): return
            case .success(let count): n = count
            case .failure(let failure):
                if failure.code != EAGAIN { tapGone = true }  // EBADFD, EIO: the interface is gone
                return
            }
            if stalled {
                statistics.add(.rxDropped)
                continue
            }
            guard var entry = prepare(buffer: buffer, count: n) else {
                statistics.add(.rxDropped)
                continue
            }
            if let target = steeringTarget(entry), target != queueIndex {
                // The guest's mapping table wants it on another queue.
                if !steering!.inboxes[target].push(entry, frame: buffer + VirtioNetHeader.size) { statistics.add(.rxDropped) }
                continue
            }
            entry.enqueued = now
            rxEntries[index] = entry
            rxCount += 1
            rxQueuedBytes += entry.length
        }
    }

    func prepare(buffer: UnsafeMutableRawPointer, count n: Int) -> RxEntry? {
        guard n >= VirtioNetHeader.size + PacketLayout.ethernetHeaderLength else { return nil }
        let length = n - VirtioNetHeader.size
        // SAFETY: the bytes the TAP just wrote into our own buffer (n ≤ stride).
        let frame = UnsafeMutableRawBufferPointer(start: buffer + VirtioNetHeader.size, count: length)
        let header = VirtioNetHeader(from: buffer)
        var entry = RxEntry(length: length)
        // Multicast (not broadcast) frames pass only if the frontend asked for them.
        if frame[0] & 1 == 1 && multicast.isEnabled {
            let key = MulticastFilter.key(frame.baseAddress!)
            if key != 0xFFFF_FFFF_FFFF && !multicast.contains(key) { return nil }
        }
        var layout: PacketLayout?
        if header.flags & VirtioNetHeader.needsChecksum != 0 {
            layout = PacketLayout(frame: UnsafeRawBufferPointer(frame))
            let partialOK = options.checksumOffload && (layout?.isIPv6 != true || options.ipv6ChecksumOffload)
            if partialOK {
                entry.rxFlags = [.checksumBlank, .dataValidated]
            } else {
                let start = Int(header.checksumStart), offset = Int(header.checksumOffset)
                guard start + offset + 2 <= length else { return nil }
                InternetChecksum.complete(frame: frame, start: start, offset: offset, end: length)
                entry.rxFlags = [.dataValidated]
            }
        } else if header.flags & VirtioNetHeader.dataValid != 0 {
            entry.rxFlags = [.dataValidated]
        }
        switch header.gsoType & ~VirtioNetHeader.gsoECN {
        case VirtioNetHeader.gsoNone: break
        case VirtioNetHeader.gsoTCPv4 where options.gsoTCPv4:
            entry.gsoType = NetGSOType.tcpv4
            entry.gsoSize = header.gsoSize
        case VirtioNetHeader.gsoTCPv6 where options.gsoTCPv6:
            entry.gsoType = NetGSOType.tcpv6
            entry.gsoSize = header.gsoSize
        default:
            return nil  // an offload the frontend did not ask for
        }
        if hashCache.enabled {
            if layout == nil { layout = PacketLayout(frame: UnsafeRawBufferPointer(frame)) }
            if let layout, let (hash, type) = receiveHash(frame: UnsafeRawBufferPointer(frame), layout: layout) {
                entry.hash = hash
                entry.hashType = type
                entry.hasHash = true
            }
        }
        let dataSlots = (length + NetLimits.pageSize - 1) / NetLimits.pageSize
        guard dataSlots == 1 || options.scatterGather else { return nil }
        entry.slotsNeeded = dataSlots + (entry.gsoType != 0 ? 1 : 0) + (entry.hasHash ? 1 : 0)
        capture?.write(frame.baseAddress!, length: length)
        return entry
    }

    /// Before sleeping with packets queued: asks the frontend for an event
    /// once the head packet's buffers are posted, then looks once more (a
    /// pass may end on its budget with req_event left behind).
    func receiveFinalCheck() -> Bool {
        guard rxCount > 0, !rxRing.isHalted else { return false }
        if receiveCanProgress() { return true }
        rxRing.requestEvent(after: UInt32(rxEntries[rxHead].slotsNeeded))
        return receiveCanProgress()
    }

    /// Until the head packet's drain or stall deadline, whichever is first.
    func receiveDeadlineMilliseconds(now: Int) -> Int32 {
        let drain = rxEntries[rxHead].enqueued + options.receiveDrainMilliseconds * 1_000_000
        let stall = (stalledSince == 0 ? now : stalledSince) + options.receiveStallMilliseconds * 1_000_000
        return Int32(clamping: max(1, (min(drain, stall) - now + 999_999) / 1_000_000))
    }

    /// Whether the head packet could be delivered now.
    func receiveCanProgress() -> Bool {
        guard rxCount > 0, !rxRing.isHalted else { return false }
        return Int(rxRing.unconsumedRequests()) >= rxEntries[rxHead].slotsNeeded
    }

    func processReceive(now: Int) throws(NetBackendError) {
        // Uncontended; the control ring may have changed it since the last pass.
        hashCache = hashSettings.state.withLock { $0 }
        defer { checkStall(now: now) }
        readTap(now: now)
        guard rxCount > 0, !rxRing.isHalted else { return }
        var producer: RingIndex
        do { producer = try rxRing.readRequestProducer() } catch { throw .ring(error) }
        var delivered = 0
        // Bounded: each packet is dequeued or the loop ends; at most a ring's worth.
        while rxCount > 0 && delivered < Int(rxRing.size) {
            let entry = rxEntries[rxHead]
            var available = Int(producer &- rxRing.requestConsumer)
            if available < entry.slotsNeeded {
                // Ask to be told when enough buffers are posted, then look again.
                rxRing.requestEvent(after: UInt32(entry.slotsNeeded))
                do { producer = try rxRing.readRequestProducer() } catch { throw .ring(error) }
                available = Int(producer &- rxRing.requestConsumer)
                if available < entry.slotsNeeded { break }
            }
            if rxCopyCount + entry.slotsNeeded > rxCopies.count || rxPendingCount + entry.slotsNeeded > rxPending.count {
                flushReceive()
            }
            deliver(entry, buffer: rxBuffer(rxHead) + VirtioNetHeader.size, producer: producer)
            dequeueHead()
            delivered += 1
            if rxCount == 0 { readTap(now: now) }
        }
        flushReceive()
    }

    func dequeueHead() {
        rxQueuedBytes -= rxEntries[rxHead].length
        rxHead = (rxHead + 1) % Self.receiveQueueCapacity
        rxCount -= 1
    }

    /// Consumes the packet's requests and queues its copies; the responses
    /// go in the same slots as the requests (netfront reads them there).
    func deliver(_ entry: RxEntry, buffer: UnsafeMutableRawPointer, producer: RingIndex) {
        var offset = 0
        var first = true
        while offset < entry.length || first {
            guard let request = rxRing.nextRequest(before: producer) else { return }
            let chunk = min(NetLimits.pageSize, entry.length - offset)
            var flags: NetRxFlags = []
            if offset + chunk < entry.length { flags.insert(.moreData) }
            if first {
                flags.formUnion(entry.rxFlags)
                if entry.gsoType != 0 || entry.hasHash { flags.insert(.extraInfo) }
            }
            rxCopies[rxCopyCount] = GrantCopyOperation(source: .local(buffer + offset),
                                                       destination: .grant(GrantRef(request.grant), domain: frontend, offset: 0),
                                                       length: UInt16(chunk))
            rxPending[rxPendingCount] = RxPending(
                slot: NetRxSlot(NetRxResponse(id: request.id, offset: 0, flags: flags, status: Int16(chunk))),
                copyIndex: rxCopyCount)
            rxCopyCount += 1
            rxPendingCount += 1
            offset += chunk
            if first {
                first = false
                // Extras follow the first slot, each in a request slot of its own.
                if entry.gsoType != 0 {
                    guard rxRing.nextRequest(before: producer) != nil else { return }
                    rxPending[rxPendingCount] = RxPending(
                        slot: NetRxSlot(NetExtraInfo.gso(size: entry.gsoSize, type: entry.gsoType, more: entry.hasHash)), copyIndex: -1)
                    rxPendingCount += 1
                }
                if entry.hasHash {
                    guard rxRing.nextRequest(before: producer) != nil else { return }
                    rxPending[rxPendingCount] = RxPending(
                        slot: NetRxSlot(NetExtraInfo.hash(type: entry.hashType, algorithm: UInt8(NetHashAlgorithm.toeplitz), value: entry.hash)),
                        copyIndex: -1)
                    rxPendingCount += 1
                }
            }
        }
        statistics.add(.rxPackets)
        statistics.add(.rxBytes, UInt64(entry.length))
    }

    func flushReceive() {
        guard rxPendingCount > 0 else { return }
        if rxCopyCount > 0 {
            // SAFETY: the batch's first rxCopyCount operations, in our own table;
            // their sources are queued frames, which stay until the flush.
            do { try platform.grants.copy(UnsafeMutableBufferPointer(rebasing: rxCopies[0..<rxCopyCount])) } catch {
                for i in 0..<rxCopyCount { rxCopies[i].status = .generalError }
            }
        }
        for i in 0..<rxPendingCount {
            var slot = rxPending[i].slot
            let c = rxPending[i].copyIndex
            if c >= 0 && !rxCopies[c].status.isOkay {
                var response = slot.response
                response.status = NetStatus.error
                slot = NetRxSlot(response)
                statistics.add(.rxErrors)
            }
            rxRing.produceResponse(slot)
        }
        rxPendingCount = 0
        rxCopyCount = 0
        if rxRing.pushResponses() {
            try? events.notify(rxPort)
            statistics.add(.notifications)
        }
    }

    /// Linux's rx stall and drain rules: a head packet waiting past the
    /// drain timeout is dropped with everything queued; a ring without
    /// enough buffers past the stall timeout turns the carrier off, and
    /// packets arriving meanwhile are dropped, until the frontend posts a
    /// buffer again.
    func checkStall(now: Int) {
        if stalled {
            guard rxRing.unconsumedRequests() > 0 else {
                // Be told of the next buffer posted.
                rxRing.requestEvent(after: 1)
                return
            }
            stalled = false
            stalledSince = 0
            stallChanged(false)
        }
        if rxCount == 0 || receiveCanProgress() {
            stalledSince = 0
            return
        }
        if stalledSince == 0 { stalledSince = now }
        if now - stalledSince >= options.receiveStallMilliseconds * 1_000_000 {
            stalled = true
            statistics.add(.rxStalls)
            stallChanged(true)
            dropQueue()
            rxRing.requestEvent(after: 1)
        } else if now - rxEntries[rxHead].enqueued >= options.receiveDrainMilliseconds * 1_000_000 {
            dropQueue()
        }
    }

    func dropQueue() {
        statistics.add(.rxDropped, UInt64(rxCount))
        while rxCount > 0 { dequeueHead() }
    }
}

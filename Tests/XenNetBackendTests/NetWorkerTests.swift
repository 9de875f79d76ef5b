#if canImport(Glibc)
import Glibc
#endif
import Testing
import XenNetBackend
import XenNetFrontend
import XenNetProtocol
import XenPlatform
import XenSim
import XenNetDevice

/// A queue worker wired straight to a frontend queue in a sim guest, with a
/// datagram socket pair standing in for the TAP: each pass is driven by the
/// test, so ring-level decisions can be checked exactly.
final class WorkerRig {
    let hypervisor = SimHypervisor()
    let guest: SimDomain
    let front: NetFrontendQueue
    let worker: NetQueueWorker<SimPlatform>
    /// Our end of the "TAP": frames to the guest are written here.
    let host: Int32
    let tapEnd: Int32

    init(options: NetQueueOptions = NetQueueOptions()) throws {
        try hypervisor.createDomain(.dom0, pages: 1)
        guest = try hypervisor.createDomain(DomainID(7), pages: 600, grantEntries: 700)
        front = try NetFrontendQueue.standalone(domain: guest, backend: .dom0)
        var pair: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &pair) == 0 else {
            throw NetworkSetupError("socketpair", errno: errno)
        }
        (tapEnd, host) = (pair[0], pair[1])
        var big: Int32 = 8 << 20
        setsockopt(host, SOL_SOCKET, SO_SNDBUF, &big, 4)
        setsockopt(tapEnd, SOL_SOCKET, SO_RCVBUF, &big, 4)
        worker = try NetQueueWorker(platform: hypervisor.platform(for: .dom0), frontend: guest.id, txRingRef: front.txRingRef,
                                    rxRingRef: front.rxRingRef, txRemotePort: front.txPort, rxRemotePort: front.rxPort,
                                    tapDescriptor: tapEnd, options: options)
    }

    deinit {
        close(host)
        close(tapEnd)
    }

    /// Writes a frame "from the host" with a plain virtio-net header.
    func fromHost(_ frame: [UInt8]) {
        let bytes = [UInt8](repeating: 0, count: VirtioNetHeader.size) + frame
        #expect(write(host, bytes, bytes.count) == bytes.count)
    }
}

@Suite struct NetWorkerTests {
    /// A pass that fills every posted buffer and stops on its budget with
    /// packets still queued must leave req_event at the next buffer, so the
    /// frontend's repost notifies. (A lost wakeup the rx benchmark found:
    /// the queue then waited for a timer.)
    @Test func budgetExitAsksForTheNextBuffer() throws {
        let rig = try WorkerRig()
        try rig.front.postBuffers()
        for i in 0..<300 { rig.fromHost(Frames.udp(sourceMAC: [2, 0, 0, 0, 0, 9], destinationMAC: [0, 0x16, 0x3E, 0, 0, 1],
                                                   sourceIP: [10, 0, 0, 1], destinationIP: [10, 0, 0, 2], sourcePort: i, destinationPort: 9,
                                                   payload: [UInt8](repeating: UInt8(i & 0xFF), count: 40))) }
        try rig.worker.process()
        #expect(rig.worker.statistics[.rxPackets] == 256)
        #expect(rig.worker.queuedReceivePackets > 0)
        #expect(rig.worker.prepareToSleep(now: monotonicNanoseconds()) != nil, "nothing to do until buffers come back")
        #expect(rig.worker.receiveRequestEvent == 257, "asks for an event on buffer 257")
        // The guest takes its frames and reposts: that notifies the backend.
        var taken = 0
        while taken < 256, let f = try rig.front.receive(timeoutMilliseconds: 1000) {
            #expect(f.bytes.count == 82 && f.bytes[42] == UInt8((Int(f.bytes[34]) << 8 | Int(f.bytes[35])) & 0xFF))
            taken += 1
        }
        #expect(taken == 256)
        try rig.worker.process()
        #expect(rig.worker.statistics[.rxPackets] == 300)
    }
}

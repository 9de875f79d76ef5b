import Testing
import XenNetProtocol
import XenProtocolTesting
import XenRing

@Suite struct NetLayoutTests {
    @Test func sizesAndOffsetsMatchHeaders() throws {
        let p = try ABIProbe.x86_64.get()
        #expect(p.int("sizeof.netif_tx_sring_entry") == NetTxRing.entrySize)
        #expect(p.int("sizeof.netif_rx_sring_entry") == NetRxRing.entrySize)
        #expect(p.int("sizeof.xen_netif_ctrl_sring_entry") == NetControlRing.entrySize)
        #expect(p.int("sizeof.netif_tx_request") == NetTxRequest.wireSize)
        #expect(p.int("sizeof.netif_tx_response") == NetTxResponse.wireSize)
        #expect(p.int("sizeof.netif_rx_request") == NetRxRequest.wireSize)
        #expect(p.int("sizeof.netif_rx_response") == NetRxResponse.wireSize)
        #expect(p.int("sizeof.netif_extra_info") == NetExtraInfo.wireSize)
        #expect(p.int("sizeof.xen_netif_ctrl_request") == NetControlRequest.wireSize)
        #expect(p.int("sizeof.xen_netif_ctrl_response") == NetControlResponse.wireSize)
        let expected: [String: Int] = [
            "offsetof.netif_tx_request.gref": 0, "offsetof.netif_tx_request.offset": 4, "offsetof.netif_tx_request.flags": 6,
            "offsetof.netif_tx_request.id": 8, "offsetof.netif_tx_request.size": 10,
            "offsetof.netif_tx_response.id": 0, "offsetof.netif_tx_response.status": 2,
            "offsetof.netif_rx_request.id": 0, "offsetof.netif_rx_request.gref": 4,
            "offsetof.netif_rx_response.id": 0, "offsetof.netif_rx_response.offset": 2,
            "offsetof.netif_rx_response.flags": 4, "offsetof.netif_rx_response.status": 6,
            "offsetof.netif_extra_info.type": 0, "offsetof.netif_extra_info.flags": 1, "offsetof.netif_extra_info.u": 2,
            "offsetof.netif_extra_info.u.gso.size": 2, "offsetof.netif_extra_info.u.gso.type": 4,
            "offsetof.netif_extra_info.u.gso.features": 6, "offsetof.netif_extra_info.u.mcast.addr": 2,
            "offsetof.netif_extra_info.u.hash.type": 2, "offsetof.netif_extra_info.u.hash.algorithm": 3,
            "offsetof.netif_extra_info.u.hash.value": 4,
            "offsetof.xen_netif_ctrl_request.id": 0, "offsetof.xen_netif_ctrl_request.type": 2,
            "offsetof.xen_netif_ctrl_request.data": 4,
            "offsetof.xen_netif_ctrl_response.id": 0, "offsetof.xen_netif_ctrl_response.type": 2,
            "offsetof.xen_netif_ctrl_response.status": 4, "offsetof.xen_netif_ctrl_response.data": 8,
        ]
        for (key, value) in expected { #expect(p.int(key) == value, "\(key)") }
        for pages in [1, 2, 16] {
            #expect(p.int("ringsize.netif_tx.\(pages)") == Int(SharedRingMemory.ringSize(byteCount: pages * 4096, entrySize: NetTxRing.entrySize)))
            #expect(p.int("ringsize.netif_rx.\(pages)") == Int(SharedRingMemory.ringSize(byteCount: pages * 4096, entrySize: NetRxRing.entrySize)))
            #expect(p.int("ringsize.xen_netif_ctrl.\(pages)") == Int(SharedRingMemory.ringSize(byteCount: pages * 4096, entrySize: NetControlRing.entrySize)))
        }
        #expect(p.int("ringsize.netif_tx.1") == 256 && p.int("ringsize.netif_rx.1") == 256 && p.int("ringsize.xen_netif_ctrl.1") == 128)
    }

    @Test func x86_32LayoutIsTheSame() throws {
        // netif has no 64-bit fields: both ABIs must agree byte for byte.
        let p64 = try ABIProbe.x86_64.get(), p32 = try ABIProbe.x86_32.get()
        for key in p64.facts.keys where key.contains("netif") {
            #expect(p32.facts[key] == p64.facts[key], "\(key)")
        }
    }

    @Test func constantsMatchHeaders() throws {
        let p = try ABIProbe.x86_64.get()
        let values: [(String, Int)] = [
            ("NETTXF_csum_blank", Int(NetTxFlags.checksumBlank.rawValue)), ("NETTXF_data_validated", Int(NetTxFlags.dataValidated.rawValue)),
            ("NETTXF_more_data", Int(NetTxFlags.moreData.rawValue)), ("NETTXF_extra_info", Int(NetTxFlags.extraInfo.rawValue)),
            ("NETRXF_data_validated", Int(NetRxFlags.dataValidated.rawValue)), ("NETRXF_csum_blank", Int(NetRxFlags.checksumBlank.rawValue)),
            ("NETRXF_more_data", Int(NetRxFlags.moreData.rawValue)), ("NETRXF_extra_info", Int(NetRxFlags.extraInfo.rawValue)),
            ("NETRXF_gso_prefix", Int(NetRxFlags.gsoPrefix.rawValue)),
            ("XEN_NETIF_MAX_TX_SIZE", NetLimits.maximumPacketSize), ("XEN_NETIF_NR_SLOTS_MIN", NetLimits.minimumSlotsPerPacket),
            ("XEN_NETIF_EXTRA_TYPE_NONE", Int(NetExtraType.none.rawValue)), ("XEN_NETIF_EXTRA_TYPE_GSO", Int(NetExtraType.gso.rawValue)),
            ("XEN_NETIF_EXTRA_TYPE_MCAST_ADD", Int(NetExtraType.multicastAdd.rawValue)),
            ("XEN_NETIF_EXTRA_TYPE_MCAST_DEL", Int(NetExtraType.multicastDelete.rawValue)),
            ("XEN_NETIF_EXTRA_TYPE_HASH", Int(NetExtraType.hash.rawValue)), ("XEN_NETIF_EXTRA_TYPE_MAX", Int(NetExtraType.limit.rawValue)),
            ("XEN_NETIF_EXTRA_FLAG_MORE", Int(NetLimits.extraFlagMore)),
            ("XEN_NETIF_GSO_TYPE_NONE", Int(NetGSOType.none)), ("XEN_NETIF_GSO_TYPE_TCPV4", Int(NetGSOType.tcpv4)),
            ("XEN_NETIF_GSO_TYPE_TCPV6", Int(NetGSOType.tcpv6)),
            ("NETIF_RSP_DROPPED", Int(NetStatus.dropped)), ("NETIF_RSP_ERROR", Int(NetStatus.error)),
            ("NETIF_RSP_OKAY", Int(NetStatus.okay)), ("NETIF_RSP_NULL", Int(NetStatus.null)),
            ("XEN_NETIF_CTRL_TYPE_INVALID", 0), ("XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS", Int(NetControlType.getHashFlags.rawValue)),
            ("XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS", Int(NetControlType.setHashFlags.rawValue)),
            ("XEN_NETIF_CTRL_TYPE_SET_HASH_KEY", Int(NetControlType.setHashKey.rawValue)),
            ("XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE", Int(NetControlType.getHashMappingSize.rawValue)),
            ("XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE", Int(NetControlType.setHashMappingSize.rawValue)),
            ("XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING", Int(NetControlType.setHashMapping.rawValue)),
            ("XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM", Int(NetControlType.setHashAlgorithm.rawValue)),
            ("XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE", Int(NetControlType.getGrantMappingSize.rawValue)),
            ("XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING", Int(NetControlType.addGrantMapping.rawValue)),
            ("XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING", Int(NetControlType.deleteGrantMapping.rawValue)),
            ("XEN_NETIF_CTRL_STATUS_SUCCESS", Int(NetControlStatus.success)),
            ("XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED", Int(NetControlStatus.notSupported)),
            ("XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER", Int(NetControlStatus.invalidParameter)),
            ("XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW", Int(NetControlStatus.bufferOverflow)),
            ("XEN_NETIF_CTRL_HASH_TYPE_IPV4", Int(NetHashTypes.ipv4.rawValue)),
            ("XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP", Int(NetHashTypes.ipv4TCP.rawValue)),
            ("XEN_NETIF_CTRL_HASH_TYPE_IPV6", Int(NetHashTypes.ipv6.rawValue)),
            ("XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP", Int(NetHashTypes.ipv6TCP.rawValue)),
            ("XEN_NETIF_CTRL_HASH_ALGORITHM_NONE", Int(NetHashAlgorithm.none)),
            ("XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ", Int(NetHashAlgorithm.toeplitz)),
        ]
        for (name, value) in values { #expect(p.int("const.\(name)") == value, "\(name)") }
    }
}

@Suite struct NetVectorTests {
    func encodeRequest<L: RingLayout>(_: L.Type, _ r: L.Request) -> [UInt8] {
        var slot = [UInt8](repeating: 0, count: L.entrySize)
        slot.withUnsafeMutableBytes { L.encodeRequest(r, into: $0.baseAddress!) }
        return slot
    }
    func encodeResponse<L: RingLayout>(_: L.Type, _ r: L.Response) -> [UInt8] {
        var slot = [UInt8](repeating: 0, count: L.entrySize)
        slot.withUnsafeMutableBytes { L.encodeResponse(r, into: $0.baseAddress!) }
        return slot
    }
    func decodeRequest<L: RingLayout>(_: L.Type, _ b: [UInt8]) -> L.Request {
        var slot = b + [UInt8](repeating: 0, count: L.entrySize - b.count)
        return slot.withUnsafeMutableBytes { L.decodeRequest(from: $0.baseAddress!) }
    }
    func decodeResponse<L: RingLayout>(_: L.Type, _ b: [UInt8]) -> L.Response {
        var slot = b + [UInt8](repeating: 0, count: L.entrySize - b.count)
        return slot.withUnsafeMutableBytes { L.decodeResponse(from: $0.baseAddress!) }
    }
    func prefix(_ a: [UInt8], _ n: Int) -> [UInt8] { Array(a.prefix(n)) }

    @Test func vectorsMatchProbeAndEncoders() throws {
        let golden = try GoldenVectors("netif")
        let probe = try ABIProbe.x86_64.get()
        for (name, bytes) in golden.vectors { #expect(probe.bytes("vector.\(name)") == bytes, "\(name)") }

        let tx = NetTxRequest(grant: 0xabcd, offset: 0x0e, flags: [.checksumBlank, .moreData, .extraInfo], id: 77, size: 1514)
        #expect(encodeRequest(NetTxRing.self, NetTxSlot(tx)) == golden["netif_tx_request_first"])
        #expect(decodeRequest(NetTxRing.self, golden["netif_tx_request_first"]!).request == tx)

        let gso = NetExtraInfo.gso(size: 1448, type: NetGSOType.tcpv4, more: true)
        #expect(prefix(encodeRequest(NetTxRing.self, NetTxSlot(gso)), 8) == golden["netif_extra_gso_tcpv4"])
        let gsoBack = decodeRequest(NetTxRing.self, golden["netif_extra_gso_tcpv4"]!).extraInfo
        #expect(gsoBack == gso && gsoBack.gsoSize == 1448 && gsoBack.gsoType == 1 && gsoBack.hasMore)

        let mcast = NetExtraInfo.multicast(add: true, address: [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb])
        #expect(prefix(encodeRequest(NetTxRing.self, NetTxSlot(mcast)), 8) == golden["netif_extra_mcast_add"])
        #expect(decodeRequest(NetTxRing.self, golden["netif_extra_mcast_add"]!).extraInfo.multicastAddress == [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb])

        let hash = NetExtraInfo.hash(type: 1, algorithm: 1, value: 0x51cc_c178)
        #expect(encodeResponse(NetRxRing.self, NetRxSlot(hash)) == golden["netif_extra_hash"])
        #expect(decodeResponse(NetRxRing.self, golden["netif_extra_hash"]!).extraInfo.hashValue32 == 0x51cc_c178)

        let rx = NetRxResponse(id: 5, offset: 0, flags: [.checksumBlank, .dataValidated, .moreData], status: 4096)
        #expect(encodeResponse(NetRxRing.self, NetRxSlot(rx)) == golden["netif_rx_response_more"])
        #expect(decodeResponse(NetRxRing.self, golden["netif_rx_response_more"]!).response == rx)

        #expect(prefix(encodeResponse(NetTxRing.self, NetTxResponse(id: 9, status: NetStatus.null)), 4) == golden["netif_tx_response_null"])
        #expect(encodeRequest(NetRxRing.self, NetRxRequest(id: 255, grant: 0x1234)) == golden["netif_rx_request"])

        let cq = NetControlRequest(id: 3, type: .setHashMapping, data: (0x99, 16, 4))
        #expect(encodeRequest(NetControlRing.self, cq) == golden["ctrl_request_set_mapping"])
        #expect(decodeRequest(NetControlRing.self, golden["ctrl_request_set_mapping"]!) == cq)
        let cr = NetControlResponse(id: 3, type: .setHashMapping, status: NetControlStatus.invalidParameter, data: 0)
        #expect(prefix(encodeResponse(NetControlRing.self, cr), 12) == golden["ctrl_response_invalid"])
    }

    /// The verification suite of Microsoft's RSS specification (Toeplitz with
    /// its sample key), IPv4 with and without TCP ports.
    @Test(arguments: [
        ([66, 9, 149, 187], [161, 142, 100, 80], 2794, 1766, UInt32(0x323e_8fc2), UInt32(0x51cc_c178)),
        ([199, 92, 111, 2], [65, 69, 140, 83], 14230, 4739, UInt32(0xd718_262a), UInt32(0xc626_b0ea)),
        ([24, 19, 198, 95], [12, 22, 207, 184], 12898, 38024, UInt32(0xd2d0_a5de), UInt32(0x5c2b_394a)),
    ] as [([UInt8], [UInt8], UInt16, UInt16, UInt32, UInt32)])
    func toeplitzReferenceVectors(source: [UInt8], destination: [UInt8], sourcePort: UInt16, destinationPort: UInt16,
                                  ipv4Hash: UInt32, tcpHash: UInt32) {
        let key: [UInt8] = [
            0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
            0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
            0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
        ]
        let addresses = source + destination
        #expect(ToeplitzHash.hash(key: key, input: addresses) == ipv4Hash)
        let ports: [UInt8] = [UInt8(sourcePort >> 8), UInt8(sourcePort & 0xff), UInt8(destinationPort >> 8), UInt8(destinationPort & 0xff)]
        #expect(ToeplitzHash.hash(key: key, input: addresses + ports) == tcpHash)
    }
}

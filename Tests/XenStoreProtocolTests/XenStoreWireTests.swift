import Testing
import XenProtocolTesting
import XenStoreProtocol
import XenBus

@Suite struct XenStoreWireTests {
    @Test func headerAndConstantsMatchXsWire() throws {
        let p = try ABIProbe.x86_64.get()
        #expect(p.int("sizeof.xsd_sockmsg") == XenStoreLimits.headerSize)
        for (field, offset) in [("type", 0), ("req_id", 4), ("tx_id", 8), ("len", 12)] {
            #expect(p.int("offsetof.xsd_sockmsg.\(field)") == offset)
        }
        let types: [(String, XenStoreMessageType)] = [
            ("CONTROL", .control), ("DIRECTORY", .directory), ("READ", .read), ("GET_PERMS", .getPermissions),
            ("WATCH", .watch), ("UNWATCH", .unwatch), ("TRANSACTION_START", .transactionStart),
            ("TRANSACTION_END", .transactionEnd), ("INTRODUCE", .introduce), ("RELEASE", .release),
            ("GET_DOMAIN_PATH", .getDomainPath), ("WRITE", .write), ("MKDIR", .mkdir), ("RM", .rm),
            ("SET_PERMS", .setPermissions), ("WATCH_EVENT", .watchEvent), ("ERROR", .error),
            ("IS_DOMAIN_INTRODUCED", .isDomainIntroduced), ("RESUME", .resume), ("SET_TARGET", .setTarget),
            ("RESET_WATCHES", .resetWatches), ("DIRECTORY_PART", .directoryPart), ("TYPE_COUNT", .typeCount),
            ("INVALID", .invalid),
        ]
        for (name, type) in types {
            #expect(p.int("const.XS_\(name)") == Int(type.rawValue), "XS_\(name)")
            if type != .typeCount && type != .invalid { #expect(type.description == "XS_\(name)") }
        }
        #expect(!XenStoreMessageType(rawValue: 20).isKnown)
        #expect(p.int("const.XENSTORE_PAYLOAD_MAX") == XenStoreLimits.payloadMax)
        #expect(p.int("const.XENSTORE_ABS_PATH_MAX") == XenStoreLimits.absolutePathMax)
        #expect(p.int("const.XENSTORE_REL_PATH_MAX") == XenStoreLimits.relativePathMax)
        #expect(p.int("const.XENSTORE_RING_SIZE") == XenStoreLimits.domainRingSize)
    }

    @Test func errorNamesAreXenstoredsList() throws {
        let p = try ABIProbe.x86_64.get()
        let names = p.facts.keys.filter { $0.hasPrefix("xsd_error.") }.map { String($0.dropFirst(10)) }
        #expect(Set(names) == Set(XenStoreErrorCode.allCases.map(\.rawValue)))
        for code in XenStoreErrorCode.allCases {
            #expect(p.int("xsd_error.\(code.rawValue)") == Int(code.errno), "\(code.rawValue)")
        }
    }

    @Test func xenbusStatesMatchHeader() throws {
        let p = try ABIProbe.x86_64.get()
        for state in XenbusState.allCases {
            #expect(p.int("const.XenbusState\(state.description)") == Int(state.rawValue), "\(state)")
            #expect(try XenbusState(xenstoreValue: state.xenstoreValue) == state)
        }
        #expect(try XenbusState(xenstoreValue: " 4\n") == .connected)
        for bad in ["", "9", "-1", "connected", "4x", "99999999999"] {
            #expect(throws: XenbusStateError.invalidValue(bad)) { try XenbusState(xenstoreValue: bad) }
        }
    }

    @Test func encodingMatchesGoldenHeader() throws {
        let golden = try GoldenVectors("xenstore")
        let probe = try ABIProbe.x86_64.get()
        #expect(probe.bytes("vector.xsd_sockmsg_watch") == golden["xsd_sockmsg_watch"])
        let message = XenStoreMessage(type: .watch, requestID: 0x0102_0304, transactionID: 7, strings: ["backend", "tok"])
        let bytes = try message.encoded()
        #expect(Array(bytes.prefix(16)) == golden["xsd_sockmsg_watch"])
        #expect(Array(bytes.dropFirst(16)) == Array("backend\0tok\0".utf8))
    }

    @Test func decoderReassemblesSplitAndBatchedMessages() throws {
        let a = XenStoreMessage(type: .read, requestID: 1, strings: ["/local/domain/0/name"])
        let b = XenStoreMessage.write(path: "/x", value: Array("value".utf8), requestID: 2, transactionID: 9)
        let c = XenStoreMessage(type: .transactionStart, requestID: 3, strings: [""])
        let stream = try a.encoded() + b.encoded() + c.encoded()
        // Every split point, byte by byte and in two chunks.
        for split in 0...stream.count {
            var d = XenStoreMessageDecoder()
            var got: [XenStoreMessage] = []
            d.append(stream[..<split])
            while let m = try d.next() { got.append(m) }
            d.append(stream[split...])
            while let m = try d.next() { got.append(m) }
            #expect(got == [a, b, c], "split at \(split)")
            #expect(d.bufferedByteCount == 0)
        }
        #expect(b.strings == ["/x", "value"])
        #expect(a.strings == ["/local/domain/0/name"])
    }

    /// XS_DIRECTORY of a node without children answers an empty body: no
    /// names (as libxenstore counts them), not one empty name that would
    /// make a caller read `parent//key`.
    @Test func anEmptyBodyHoldsNoStrings() {
        let empty = XenStoreMessage(type: .directory, requestID: 1, transactionID: 0, payload: [])
        #expect(empty.strings.isEmpty)
        let one = XenStoreMessage(type: .directory, requestID: 1, transactionID: 0, payload: [0])
        #expect(one.strings == [""], "a lone NUL is one empty string (an empty value)")
    }

    @Test func oversizedBodyIsAnError() throws {
        var header: [UInt8] = []
        for v: UInt32 in [2, 1, 0, 4097] { withUnsafeBytes(of: v.littleEndian) { header += $0 } }
        var d = XenStoreMessageDecoder()
        d.append(header)
        #expect(throws: XenStoreWireError.payloadTooLong(4097)) { try d.next() }
        let big = XenStoreMessage(type: .write, requestID: 1, payload: [UInt8](repeating: 65, count: 4097))
        #expect(throws: XenStoreWireError.payloadTooLong(4097)) { try big.encoded() }
        // Exactly the limit is fine.
        let max = XenStoreMessage(type: .write, requestID: 1, payload: [UInt8](repeating: 65, count: 4096))
        var ok = XenStoreMessageDecoder()
        ok.append(try max.encoded())
        #expect(try ok.next() == max)
    }

    @Test func errorReplies() {
        let request = XenStoreMessage(type: .read, requestID: 77, transactionID: 5, strings: ["/nope"])
        let reply = XenStoreMessage.errorReply(.noEntry, to: request)
        #expect(reply.type == .error && reply.requestID == 77 && reply.transactionID == 5)
        #expect(reply.payload == Array("ENOENT\0".utf8))
        #expect(reply.errorCode == .noEntry)
        #expect(XenStoreMessage(type: .error, requestID: 1, strings: ["EWHAT"]).errorCode == nil)
    }
}

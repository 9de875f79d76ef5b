import Testing
import XenStoreCore
import XenStoreProtocol

/// A client of the engine, for tests: sends requests, returns the reply,
/// keeps the watch events that reached it.
final class TestClient {
    let engine: XenStoreEngine
    let id: XenStoreEngine.ConnectionID
    var requestID: UInt32 = 0
    var events: [[String]] = []

    init(_ engine: XenStoreEngine, domain: UInt32 = 0) {
        self.engine = engine
        id = engine.connect(domain: domain)
    }

    @discardableResult
    func send(_ type: XenStoreMessageType, _ strings: [String], tx: UInt32 = 0, peers: [TestClient] = []) -> XenStoreMessage {
        requestID += 1
        return deliver(XenStoreMessage(type: type, requestID: requestID, transactionID: tx, strings: strings), peers: peers)
    }

    @discardableResult
    func write(_ path: String, _ value: String, tx: UInt32 = 0, peers: [TestClient] = []) -> XenStoreMessage {
        requestID += 1
        return deliver(.write(path: path, value: Array(value.utf8), requestID: requestID, transactionID: tx), peers: peers)
    }

    func deliver(_ m: XenStoreMessage, peers: [TestClient]) -> XenStoreMessage {
        var reply: XenStoreMessage?
        for out in engine.handle(m, from: id) {
            if out.connection == id && out.message.type != .watchEvent {
                reply = out.message
            } else if out.connection == id {
                events.append(out.message.strings)
            } else if let peer = peers.first(where: { $0.id == out.connection }) {
                peer.events.append(out.message.strings)
            }
        }
        return reply!
    }

    func read(_ path: String, tx: UInt32 = 0) -> String? {
        let r = send(.read, [path], tx: tx)
        return r.type == .read ? String(decoding: r.payload, as: UTF8.self) : nil
    }

    func error(_ r: XenStoreMessage) -> XenStoreErrorCode? { r.errorCode }
}

@Suite struct XenStoreEngineTests {
    @Test func writeReadDirectoryRemove() {
        let e = XenStoreEngine(), c = TestClient(e)
        #expect(c.write("/a/b/c", "hello").payload == Array("OK\0".utf8))
        #expect(c.read("/a/b/c") == "hello")
        #expect(c.read("/a/b") == "", "parents are created empty")
        #expect(c.send(.directory, ["/a"]).strings == ["b"])
        c.write("/a/d", "")
        #expect(c.send(.directory, ["/a"]).strings == ["b", "d"])
        #expect(c.send(.mkdir, ["/a/b"]).type == .mkdir, "mkdir of an existing node is fine")
        #expect(c.send(.rm, ["/a/b"]).type == .rm)
        #expect(c.error(c.send(.read, ["/a/b/c"])) == .noEntry, "subtree removed")
        #expect(c.send(.rm, ["/a/zzz"]).type == .rm, "removing a missing node under an existing parent is fine")
        #expect(c.error(c.send(.rm, ["/nope/zzz"])) == .noEntry)
        #expect(c.error(c.send(.rm, ["/"])) == .invalidArgument)
        #expect(c.write("/a/bin", "").type == .write)
        c.write("/a/bin", "\u{0}\u{1}")
        #expect(c.send(.read, ["/a/bin"]).payload == [0, 1], "values are bytes, NULs included")
    }

    @Test func malformedRequests() {
        let e = XenStoreEngine(), c = TestClient(e)
        #expect(c.error(c.deliver(XenStoreMessage(type: .read, requestID: 1, payload: Array("/a".utf8)), peers: [])) == .invalidArgument, "missing NUL")
        #expect(c.error(c.send(.read, ["/a", "extra"])) == .invalidArgument)
        #expect(c.error(c.send(XenStoreMessageType(rawValue: 20), [""])) == .invalidArgument, "removed type")
        #expect(c.error(c.send(XenStoreMessageType(rawValue: 999), ["x"])) == .invalidArgument)
        #expect(c.error(c.send(.read, ["/a b"])) == .invalidArgument, "space in path")
        #expect(c.error(c.send(.read, ["/a//b"])) == .invalidArgument)
        #expect(c.error(c.send(.read, ["/a/"])) == .invalidArgument)
        #expect(c.error(c.send(.read, [""])) == .invalidArgument)
        #expect(c.error(c.send(.read, ["/" + String(repeating: "x", count: 3100)])) == .invalidArgument)
        #expect(c.error(c.send(.read, ["/local"], tx: 77)) == .noEntry, "unknown transaction")
        #expect(c.error(c.deliver(XenStoreMessage(type: .write, requestID: 1, payload: Array("/nonul".utf8)), peers: [])) == .invalidArgument)
    }

    @Test func permissionsAndOwnership() {
        let e = XenStoreEngine(), dom0 = TestClient(e), guest = TestClient(e, domain: 5)
        dom0.write("/local/domain/5/name", "guest")
        dom0.send(.setPermissions, ["/local/domain/5", "n5"])
        dom0.write("/secret", "x")
        #expect(guest.error(guest.send(.read, ["/secret"])) == .accessDenied, "default n for others")
        #expect(guest.error(guest.send(.read, ["/secret/missing"])) == .accessDenied, "cannot learn absence under an unreadable node")
        dom0.send(.setPermissions, ["/secret", "n0", "r5"])
        #expect(guest.read("/secret") == "x")
        #expect(guest.error(guest.write("/secret", "y")) == .accessDenied, "read-only grant")
        #expect(guest.error(guest.send(.setPermissions, ["/secret", "b5"])) == .accessDenied, "only the owner sets permissions")
        // A guest writes under its home with a relative path; it owns what it creates.
        #expect(guest.write("device/vbd/768/state", "1").type == .write)
        #expect(dom0.read("/local/domain/5/device/vbd/768/state") == "1")
        #expect(dom0.send(.getPermissions, ["/local/domain/5/device/vbd/768/state"]).strings == ["n5"])
        #expect(guest.error(guest.send(.read, ["/local/domain/5/nothing"])) == .noEntry)
        #expect(guest.send(.setPermissions, ["device/vbd/768/state", "n5", "r0"]).type == .setPermissions)
        #expect(guest.error(guest.send(.introduce, ["7", "1234", "3"])) == .accessDenied)
        #expect(dom0.send(.getPermissions, ["/secret"]).strings == ["n0", "r5"])
        #expect(dom0.error(dom0.send(.setPermissions, ["/secret", "x5"])) == .invalidArgument)
    }

    @Test func watchesFireOnChangesBelowThemWithInitialEvent() {
        let e = XenStoreEngine(), a = TestClient(e), b = TestClient(e)
        #expect(a.send(.watch, ["/backend", "tok"]).payload == Array("OK\0".utf8))
        #expect(a.events == [["/backend", "tok"]], "initial event on registration")
        a.events.removeAll()
        b.write("/backend/vbd/1/768/state", "2", peers: [a])
        #expect(a.events.contains(["/backend/vbd/1/768/state", "tok"]))
        #expect(a.events.allSatisfy { $0[0].hasPrefix("/backend") })
        a.events.removeAll()
        b.write("/backendx", "no", peers: [a])
        #expect(a.events.isEmpty, "a sibling sharing a prefix is not below the watch")
        a.send(.watch, ["/backend/vbd/1/768/state", "deep"])
        a.events.removeAll()
        b.send(.rm, ["/backend/vbd"], peers: [a])
        #expect(a.events.contains(["/backend/vbd", "tok"]))
        #expect(a.events.contains(["/backend/vbd/1/768/state", "deep"]), "watches inside a removed subtree fire")
        #expect(a.error(a.send(.watch, ["/backend", "tok"])) == .alreadyExists)
        #expect(a.send(.unwatch, ["/backend", "tok"]).type == .unwatch)
        #expect(a.error(a.send(.unwatch, ["/backend", "tok"])) == .noEntry)
        a.send(.resetWatches, [""].dropLast().map { $0 })
        a.events.removeAll()
        b.write("/backend/x", "1", peers: [a])
        #expect(a.events.isEmpty, "reset removed every watch")
    }

    @Test func relativeWatchesReportRelativePaths() {
        let e = XenStoreEngine(), dom0 = TestClient(e), guest = TestClient(e, domain: 3)
        dom0.send(.mkdir, ["/local/domain/3"])
        dom0.send(.setPermissions, ["/local/domain/3", "n3"])
        guest.send(.watch, ["device", "d"])
        #expect(guest.events == [["device", "d"]])
        dom0.write("/local/domain/3/device/vif/0/state", "1", peers: [guest])
        #expect(guest.events.last == ["device/vif/0/state", "d"])
    }

    @Test func transactionsCommitAbortAndConflict() {
        let e = XenStoreEngine(), a = TestClient(e), b = TestClient(e)
        a.write("/t/x", "0")
        a.send(.watch, ["/t", "w"])
        a.events.removeAll()
        let tx = UInt32(a.send(.transactionStart, [""]).strings[0])!
        #expect(tx != 0)
        a.write("/t/x", "1", tx: tx)
        a.write("/t/new", "n", tx: tx)
        #expect(a.read("/t/x", tx: tx) == "1", "a transaction sees its own writes")
        #expect(b.read("/t/x") == "0", "others do not, before commit")
        #expect(a.events.isEmpty, "no watch fires before commit")
        #expect(a.send(.transactionEnd, ["T"], tx: tx).type == .transactionEnd)
        #expect(b.read("/t/x") == "1" && b.read("/t/new") == "n")
        #expect(a.events.contains(["/t/x", "w"]) && a.events.contains(["/t/new", "w"]))

        let aborted = UInt32(a.send(.transactionStart, [""]).strings[0])!
        a.write("/t/x", "lost", tx: aborted)
        a.send(.transactionEnd, ["F"], tx: aborted)
        #expect(b.read("/t/x") == "1")
        #expect(a.error(a.send(.read, ["/t/x"], tx: aborted)) == .noEntry, "an ended transaction is gone")

        // A conflicting write by someone else between read and commit.
        let t1 = UInt32(a.send(.transactionStart, [""]).strings[0])!
        let seen = a.read("/t/x", tx: t1)!
        b.write("/t/x", "theirs")
        a.write("/t/x", seen + "+mine", tx: t1)
        #expect(a.error(a.send(.transactionEnd, ["T"], tx: t1)) == .tryAgain)
        #expect(b.read("/t/x") == "theirs")
        // Disjoint changes do not conflict.
        let t2 = UInt32(a.send(.transactionStart, [""]).strings[0])!
        a.write("/t/mine", "m", tx: t2)
        b.write("/u/other", "o")
        #expect(a.send(.transactionEnd, ["T"], tx: t2).type == .transactionEnd)
        #expect(a.error(a.send(.transactionEnd, ["X"], tx: 0)) == .invalidArgument)
    }

    @Test func quotasApplyToGuestsNotDom0() {
        var q = XenStoreQuotas()
        q.maximumValueSize = 16; q.maximumNodesPerDomain = 4; q.maximumWatchesPerDomain = 2; q.maximumTransactionsPerDomain = 1
        let e = XenStoreEngine(quotas: q), dom0 = TestClient(e), guest = TestClient(e, domain: 9)
        dom0.send(.mkdir, ["/local/domain/9"])
        dom0.send(.setPermissions, ["/local/domain/9", "n9"])
        #expect(guest.error(guest.write("big", String(repeating: "x", count: 17))) == .noSpace)
        #expect(dom0.write("/tool/big", String(repeating: "x", count: 5000)).type == .write)
        // The home node it owns counts: 3 more make 4.
        for i in 0..<3 { #expect(guest.write("n\(i)", "v").type == .write) }
        #expect(guest.error(guest.write("n3", "v")) == .noSpace, "node quota")
        guest.send(.watch, ["a", "1"]); guest.send(.watch, ["b", "2"])
        #expect(guest.error(guest.send(.watch, ["c", "3"])) == .tooBig, "watch quota")
        #expect(guest.send(.transactionStart, [""]).type == .transactionStart)
        #expect(guest.error(guest.send(.transactionStart, [""])) == .noSpace, "transaction quota")
    }

    @Test func domains() {
        let e = XenStoreEngine(), dom0 = TestClient(e)
        dom0.send(.watch, ["@introduceDomain", "i"])
        dom0.send(.watch, ["@releaseDomain", "r"])
        dom0.events.removeAll()
        #expect(dom0.send(.getDomainPath, ["7"]).strings == ["/local/domain/7"])
        #expect(dom0.send(.isDomainIntroduced, ["7"]).strings == ["F"])
        #expect(dom0.send(.introduce, ["7", "4660", "3"]).type == .introduce)
        #expect(dom0.events == [["@introduceDomain", "i"]])
        #expect(dom0.send(.isDomainIntroduced, ["7"]).strings == ["T"])
        #expect(dom0.send(.release, ["7"]).type == .release)
        #expect(dom0.events.last == ["@releaseDomain", "r"])
        #expect(dom0.error(dom0.send(.release, ["7"])) == .noEntry)
        #expect(dom0.error(dom0.send(.introduce, ["x", "1", "1"])) == .invalidArgument)
    }

    @Test func directoryPartListsInChunks() {
        let e = XenStoreEngine(), c = TestClient(e)
        for i in 0..<400 { c.send(.mkdir, ["/many/child-with-a-longish-name-\(i)"]) }
        var names: [String] = []
        var offset = 0
        for _ in 0..<20 {
            let r = c.send(.directoryPart, ["/many", String(offset)])
            var parts = r.payload.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
            parts.removeFirst()  // generation
            let done = r.payload.suffix(2) == [0, 0]
            let chunk = parts.filter { !$0.isEmpty }
            names += chunk
            offset += chunk.reduce(0) { $0 + $1.utf8.count + 1 }
            if done { break }
        }
        #expect(names.count == 400 && Set(names).count == 400)
    }
}

@Suite struct XenStoreOwnershipTests {
    /// A node dom0 creates under a guest's directory keeps the directory's
    /// owner (the guest), as xenstored does; a guest owns what it creates.
    @Test func newNodesInheritTheOwnerUnlessAGuestCreatesThem() {
        let e = XenStoreEngine(), dom0 = TestClient(e), guest = TestClient(e, domain: 9)
        dom0.send(.mkdir, ["/local/domain/9/device"])
        dom0.send(.setPermissions, ["/local/domain/9/device", "n9", "r0"])
        dom0.write("/local/domain/9/device/vbd/51712/state", "1")
        #expect(dom0.send(.getPermissions, ["/local/domain/9/device/vbd/51712/state"]).strings == ["n9", "r0"])
        #expect(guest.write("/local/domain/9/device/vbd/51712/state", "3").type == .write, "the guest may write its own frontend keys")
        dom0.send(.mkdir, ["/shared"])
        dom0.send(.setPermissions, ["/shared", "n0", "b9"])
        guest.write("/shared/x", "1")
        #expect(dom0.send(.getPermissions, ["/shared/x"]).strings.first == "n9", "a guest owns what it creates")
    }
}

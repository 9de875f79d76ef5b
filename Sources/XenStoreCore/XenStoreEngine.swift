import XenStoreProtocol

/// Per-domain limits xenstored enforces on unprivileged domains.
public struct XenStoreQuotas: Sendable, Equatable {
    /// Longest value a domain may store.
    public var maximumValueSize = 2048
    /// Nodes a domain may own.
    public var maximumNodesPerDomain = 1000
    /// Watches a domain may hold.
    public var maximumWatchesPerDomain = 128
    /// Transactions a domain may have open.
    public var maximumTransactionsPerDomain = 10
    /// Longest path (in its absolute form) a domain may use.
    public var maximumPathLength = XenStoreLimits.relativePathMax
    public init() {}
}

/// The xenstored protocol engine: the tree, connections, transactions,
/// watches, permissions and quotas, with no I/O. One thread owns it; the
/// socket server feeds it messages and delivers what it returns.
public final class XenStoreEngine {
    public struct ConnectionID: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: UInt64
        public var description: String { "conn\(rawValue)" }
    }

    /// A message for a connection: a reply or a watch event.
    public struct Outgoing: Sendable, Equatable {
        public var connection: ConnectionID
        public var message: XenStoreMessage
    }

    struct Watch: Equatable {
        var given: String     // as registered (maybe relative, maybe @special)
        var absolute: String  // canonical
        var token: String
    }

    struct Transaction {
        var tree: XenStoreTree
        /// Generation each accessed path had in the snapshot (nil: absent).
        var observed: [String: UInt64?] = [:]
        /// Changes to replay on commit, and the paths to fire watches for.
        var log: [Change] = []
    }

    enum Change {
        case write(String, [UInt8], creator: UInt32)
        case mkdir(String, creator: UInt32)
        case remove(String)
        case permissions(String, XenStorePermissions)
    }

    struct Connection {
        var domain: UInt32
        var watches: [Watch] = []
        var transactions: [UInt32: Transaction] = [:]
    }

    public let quotas: XenStoreQuotas
    var tree = XenStoreTree()
    var connections: [ConnectionID: Connection] = [:]
    var introduced: Set<UInt32> = [0]
    var nextConnection: UInt64 = 1
    var nextTransaction: UInt32 = 1

    public init(quotas: XenStoreQuotas = XenStoreQuotas()) {
        self.quotas = quotas
        tree.create("/local/domain/0", creator: 0)
        tree.create("/tool", creator: 0)
    }

    /// A new client acting as `domain` (0: privileged, as socket clients are).
    public func connect(domain: UInt32 = 0) -> ConnectionID {
        let id = ConnectionID(rawValue: nextConnection)
        nextConnection += 1
        connections[id] = Connection(domain: domain)
        return id
    }

    /// Drops the connection's watches and open transactions.
    public func disconnect(_ id: ConnectionID) { connections[id] = nil }

    /// Handles one request; returns the reply and any watch events it caused.
    public func handle(_ message: XenStoreMessage, from id: ConnectionID) -> [Outgoing] {
        guard connections[id] != nil else { return [] }
        var events: [Outgoing] = []
        let reply: XenStoreMessage
        do {
            let body = try dispatch(message, from: id, events: &events)
            reply = XenStoreMessage(type: message.type, requestID: message.requestID,
                                    transactionID: message.transactionID, payload: body)
        } catch {
            reply = .errorReply(error, to: message)
        }
        var out = [Outgoing(connection: id, message: reply)]
        out += events
        return out
    }

    // MARK: Dispatch

    private static let ok: [UInt8] = Array("OK\0".utf8)

    private func dispatch(_ m: XenStoreMessage, from id: ConnectionID,
                          events: inout [Outgoing]) throws(XenStoreErrorCode) -> [UInt8] {
        let domain = connections[id]!.domain
        let tx = m.transactionID
        if tx != 0 && connections[id]!.transactions[tx] == nil { throw .noEntry }
        switch m.type {
        case .read:
            let path = try canonical(try Self.arguments(m, 1)[0], domain)
            let node = try readable(path, domain, tx, id)
            return node.value

        case .directory:
            let path = try canonical(try Self.arguments(m, 1)[0], domain)
            let node = try readable(path, domain, tx, id)
            return node.children.flatMap { (name: String) -> [UInt8] in Array(name.utf8) + [0] }

        case .directoryPart:
            let args = try Self.arguments(m, 2)
            let path = try canonical(args[0], domain)
            guard let offset = Int(args[1]), offset >= 0 else { throw .invalidArgument }
            let node = try readable(path, domain, tx, id)
            let all: [UInt8] = node.children.flatMap { Array($0.utf8) + [0] }
            guard offset <= all.count else { throw .invalidArgument }
            var body = Array("\(node.generation)".utf8) + [0]
            let room = XenStoreLimits.payloadMax - body.count - 1
            var chunk: [UInt8] = Array(all[offset...].prefix(room))
            if offset + chunk.count < all.count, let lastNul = chunk.lastIndex(of: 0) {
                chunk = Array(chunk[...lastNul])  // whole names only
                body += chunk
            } else {
                body += chunk + [0]  // the empty name ends the listing
            }
            return body

        case .getPermissions:
            let path = try canonical(try Self.arguments(m, 1)[0], domain)
            let node = try readable(path, domain, tx, id)
            return node.permissions.strings.flatMap { Array($0.utf8) + [0] }

        case .write:
            guard let nul = m.payload.firstIndex(of: 0) else { throw .invalidArgument }
            let path = try canonical(String(decoding: m.payload[..<nul], as: UTF8.self), domain)
            let value = Array(m.payload[(nul + 1)...])
            if domain != 0 && value.count > quotas.maximumValueSize { throw .noSpace }
            try apply(.write(path, value, creator: domain), domain, tx, id, &events)
            return Self.ok

        case .mkdir:
            let path = try canonical(try Self.arguments(m, 1)[0], domain)
            try apply(.mkdir(path, creator: domain), domain, tx, id, &events)
            return Self.ok

        case .rm:
            let path = try canonical(try Self.arguments(m, 1)[0], domain)
            guard path != "/" else { throw .invalidArgument }
            try apply(.remove(path), domain, tx, id, &events)
            return Self.ok

        case .setPermissions:
            let strings = m.strings
            guard strings.count >= 2 else { throw .invalidArgument }
            let path = try canonical(strings[0], domain)
            let permissions = try XenStorePermissions(parsing: Array(strings.dropFirst()))
            try apply(.permissions(path, permissions), domain, tx, id, &events)
            return Self.ok

        case .watch:
            let args = try Self.arguments(m, 2)
            let watch = Watch(given: args[0], absolute: try canonical(args[0], domain, allowSpecial: true), token: args[1])
            if domain != 0 && connections[id]!.watches.count >= quotas.maximumWatchesPerDomain { throw .tooBig }
            if connections[id]!.watches.contains(where: { $0.given == watch.given && $0.token == watch.token }) {
                throw .alreadyExists
            }
            connections[id]!.watches.append(watch)
            // xenstored fires every new watch once, straight after the reply.
            events.append(Outgoing(connection: id, message: Self.event(watch.given, watch.token)))
            return Self.ok

        case .unwatch:
            let args = try Self.arguments(m, 2)
            guard let i = connections[id]!.watches.firstIndex(where: { $0.given == args[0] && $0.token == args[1] }) else {
                throw .noEntry
            }
            connections[id]!.watches.remove(at: i)
            return Self.ok

        case .resetWatches:
            connections[id]!.watches.removeAll()
            return Self.ok

        case .transactionStart:
            guard tx == 0 else { throw .busy }
            if domain != 0 && connections[id]!.transactions.count >= quotas.maximumTransactionsPerDomain { throw .noSpace }
            let txid = nextTransaction
            nextTransaction = nextTransaction == UInt32.max ? 1 : nextTransaction + 1
            connections[id]!.transactions[txid] = Transaction(tree: tree)
            return Array("\(txid)".utf8) + [0]

        case .transactionEnd:
            let arg = try Self.arguments(m, 1)[0]
            guard tx != 0, arg == "T" || arg == "F" else { throw .invalidArgument }
            let transaction = connections[id]!.transactions.removeValue(forKey: tx)!
            if arg == "T" { try commit(transaction, &events) }
            return Self.ok

        case .getDomainPath:
            guard let d = UInt32(try Self.arguments(m, 1)[0]) else { throw .invalidArgument }
            return Array("/local/domain/\(d)".utf8) + [0]

        case .introduce:
            guard domain == 0 else { throw .accessDenied }
            let args = try Self.arguments(m, 3)
            guard let d = UInt32(args[0]), d != 0, UInt64(args[1]) != nil, UInt32(args[2]) != nil else { throw .invalidArgument }
            introduced.insert(d)
            fire(["@introduceDomain"], removed: [], &events)
            return Self.ok

        case .release:
            guard domain == 0 else { throw .accessDenied }
            guard let d = UInt32(try Self.arguments(m, 1)[0]), d != 0 else { throw .invalidArgument }
            guard introduced.remove(d) != nil else { throw .noEntry }
            fire(["@releaseDomain"], removed: [], &events)
            return Self.ok

        case .isDomainIntroduced:
            guard let d = UInt32(try Self.arguments(m, 1)[0]) else { throw .invalidArgument }
            return Array((introduced.contains(d) ? "T" : "F").utf8) + [0]

        case .resume, .setTarget:
            guard domain == 0 else { throw .accessDenied }
            return Self.ok

        default:
            throw .invalidArgument
        }
    }

    // MARK: Paths

    /// Validates and makes absolute (relative paths are under the domain's home).
    func canonical(_ path: String, _ domain: UInt32, allowSpecial: Bool = false) throws(XenStoreErrorCode) -> String {
        if allowSpecial && (path == "@introduceDomain" || path == "@releaseDomain") { return path }
        guard !path.isEmpty else { throw .invalidArgument }
        let absolute = path.hasPrefix("/") ? path : "/local/domain/\(domain)/" + path
        guard absolute.utf8.count <= XenStoreLimits.absolutePathMax else { throw .invalidArgument }
        if domain != 0 && absolute.utf8.count > quotas.maximumPathLength { throw .invalidArgument }
        guard absolute == "/" || !absolute.hasSuffix("/"), !absolute.contains("//") else { throw .invalidArgument }
        for c in absolute.utf8 {
            let ok = (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122)
                || c == UInt8(ascii: "-") || c == UInt8(ascii: "/") || c == UInt8(ascii: "_") || c == UInt8(ascii: "@")
            guard ok else { throw .invalidArgument }
        }
        return absolute
    }

    /// The `count` NUL-terminated strings of a request body, exactly.
    static func arguments(_ m: XenStoreMessage, _ count: Int) throws(XenStoreErrorCode) -> [String] {
        guard m.payload.last == 0 else { throw .invalidArgument }
        let parts = m.payload.dropLast().split(separator: 0, omittingEmptySubsequences: false)
        guard parts.count == count else { throw .invalidArgument }
        return parts.map { String(decoding: $0, as: UTF8.self) }
    }

    // MARK: Reading and changing, in or out of a transaction

    private func readable(_ path: String, _ domain: UInt32, _ tx: UInt32, _ id: ConnectionID) throws(XenStoreErrorCode) -> XenStoreTree.Node {
        let view = tx == 0 ? tree : connections[id]!.transactions[tx]!.tree
        if tx != 0 { observe(path, tx, id) }
        guard let node = view[path] else {
            throw canRead(nearestAncestor(of: path, in: view), domain, view) ? .noEntry : .accessDenied
        }
        guard node.permissions.access(for: domain).allowsRead else { throw .accessDenied }
        return node
    }

    private func canRead(_ path: String, _ domain: UInt32, _ view: XenStoreTree) -> Bool {
        view[path]?.permissions.access(for: domain).allowsRead ?? false
    }

    private func nearestAncestor(of path: String, in view: XenStoreTree) -> String {
        var p = XenStoreTree.parent(of: path)
        while view[p] == nil { p = XenStoreTree.parent(of: p) }
        return p
    }

    private func observe(_ path: String, _ tx: UInt32, _ id: ConnectionID) {
        guard connections[id]!.transactions[tx]!.observed[path] == nil else { return }
        let generation = connections[id]!.transactions[tx]!.tree.generation(of: path)
        connections[id]!.transactions[tx]!.observed[path] = .some(generation)
    }

    /// Checks permissions and quotas against `view`, applies the change to
    /// it, and returns the paths changed and removed.
    private func perform(_ change: Change, on view: inout XenStoreTree, _ domain: UInt32) throws(XenStoreErrorCode) -> (changed: [String], removed: [String]) {
        func writable(_ path: String) throws(XenStoreErrorCode) {
            let target = view[path] != nil ? path : nearestAncestor(of: path, in: view)
            guard view[target]!.permissions.access(for: domain).allowsWrite else { throw .accessDenied }
        }
        func checkNodeQuota(_ path: String) throws(XenStoreErrorCode) {
            guard domain != 0, view[path] == nil else { return }
            var missing = 0
            var p = path
            while view[p] == nil { missing += 1; p = XenStoreTree.parent(of: p) }
            if view.count(ownedBy: domain) + missing > quotas.maximumNodesPerDomain { throw .noSpace }
        }
        switch change {
        case .write(let path, let value, let creator):
            try writable(path)
            try checkNodeQuota(path)
            let created = view.create(path, creator: creator)
            view.setValue(path, value)
            return (created.isEmpty ? [path] : created, [])
        case .mkdir(let path, let creator):
            if view[path] != nil { return ([], []) }
            try writable(path)
            try checkNodeQuota(path)
            return (view.create(path, creator: creator), [])
        case .remove(let path):
            if view[path] == nil {
                // Removing what is not there is fine if the parent exists.
                if view[XenStoreTree.parent(of: path)] != nil { return ([], []) }
                throw .noEntry
            }
            try writable(path)
            return ([], view.remove(path))
        case .permissions(let path, let permissions):
            guard let node = view[path] else { throw .noEntry }
            guard domain == 0 || node.permissions.owner == domain else { throw .accessDenied }
            view.setPermissions(path, permissions)
            return ([path], [])
        }
    }

    private func apply(_ change: Change, _ domain: UInt32, _ tx: UInt32, _ id: ConnectionID,
                       _ events: inout [Outgoing]) throws(XenStoreErrorCode) {
        if tx == 0 {
            let (changed, removed) = try perform(change, on: &tree, domain)
            fire(changed, removed: removed, &events)
            return
        }
        // In a transaction: record what the change depends on, apply it to the
        // private copy, and keep it for the commit.
        let path: String
        switch change {
        case .write(let p, _, _), .mkdir(let p, _), .remove(let p), .permissions(let p, _): path = p
        }
        // Depend on the node, any missing ancestors it creates, and the first
        // existing ancestor (its children and permissions are involved); a
        // removal also changes the parent's children.
        var view = connections[id]!.transactions[tx]!.tree
        observe(path, tx, id)
        var p = path
        if case .remove = change { observe(XenStoreTree.parent(of: path), tx, id) }
        while view[p] == nil && p != "/" {
            p = XenStoreTree.parent(of: p)
            observe(p, tx, id)
        }
        _ = try perform(change, on: &view, domain)
        connections[id]!.transactions[tx]!.tree = view
        connections[id]!.transactions[tx]!.log.append(change)
    }

    /// Commits if nothing the transaction looked at changed since it began
    /// (EAGAIN otherwise, and the caller retries it all), firing the watches.
    private func commit(_ transaction: Transaction, _ events: inout [Outgoing]) throws(XenStoreErrorCode) {
        for (path, generation) in transaction.observed where tree.generation(of: path) != generation {
            throw .tryAgain
        }
        var changed: [String] = [], removed: [String] = []
        for change in transaction.log {
            let domain: UInt32
            switch change {
            case .write(_, _, let c), .mkdir(_, let c): domain = c
            case .remove, .permissions: domain = 0  // checked when first applied
            }
            let result = try perform(change, on: &tree, domain)
            changed += result.changed
            removed += result.removed
        }
        fire(changed, removed: removed, &events)
    }

    // MARK: Watches

    static func event(_ path: String, _ token: String) -> XenStoreMessage {
        XenStoreMessage(type: .watchEvent, requestID: 0, strings: [path, token])
    }

    /// A change to P fires every watch on P or an ancestor of P, reporting
    /// P; removing a subtree also fires watches inside it, reporting their
    /// own path.
    private func fire(_ changed: [String], removed: [String], _ events: inout [Outgoing]) {
        let all = changed + removed
        guard !all.isEmpty else { return }
        for (id, connection) in connections.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            for watch in connection.watches {
                var reported: Set<String> = []
                for path in all where Self.isWithin(path, watch.absolute) {
                    reported.insert(path)
                }
                for path in removed where Self.isWithin(watch.absolute, path) {
                    reported.insert(watch.absolute)
                }
                for path in reported.sorted() {
                    events.append(Outgoing(connection: id, message: Self.event(Self.relativize(path, like: watch, domain: connection.domain), watch.token)))
                }
            }
        }
    }

    /// `path` is `ancestor` or lies under it.
    static func isWithin(_ path: String, _ ancestor: String) -> Bool {
        if path == ancestor { return true }
        if ancestor == "/" { return path.hasPrefix("/") }
        return path.hasPrefix(ancestor) && path.utf8.dropFirst(ancestor.utf8.count).first == UInt8(ascii: "/")
    }

    /// Events for a relative watch carry relative paths.
    static func relativize(_ path: String, like watch: Watch, domain: UInt32) -> String {
        guard !watch.given.hasPrefix("/"), !watch.given.hasPrefix("@") else { return path }
        let home = "/local/domain/\(domain)/"
        return path.hasPrefix(home) ? String(path.dropFirst(home.count)) : path
    }
}

import XenStoreProtocol

/// The store's nodes, keyed by canonical absolute path. A value type: a
/// transaction works on a copy and its changes are replayed on commit.
struct XenStoreTree: Sendable {
    struct Node: Sendable {
        var value: [UInt8]
        var children: [String]
        var permissions: XenStorePermissions
        /// Bumped on every change to this node (value, permissions, children).
        var generation: UInt64
    }

    private(set) var nodes: [String: Node]
    private var nextGeneration: UInt64 = 1

    init() {
        nodes = ["/": Node(value: [], children: [], permissions: XenStorePermissions(owner: 0), generation: 0)]
    }

    subscript(path: String) -> Node? { nodes[path] }

    func generation(of path: String) -> UInt64? { nodes[path]?.generation }

    static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/"), path != "/" else { return "/" }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    static func name(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return path }
        return String(path[path.index(after: slash)...])
    }

    private mutating func bump() -> UInt64 {
        defer { nextGeneration += 1 }
        return nextGeneration
    }

    /// Creates `path` and any missing ancestors; new nodes take their
    /// parent's permissions, and an unprivileged creator (not dom0) becomes
    /// the owner, as with xenstored: a toolstack writing under a directory it
    /// gave to a guest leaves the guest owning the keys. Returns the created paths.
    @discardableResult
    mutating func create(_ path: String, creator: UInt32) -> [String] {
        if nodes[path] != nil { return [] }
        let parent = Self.parent(of: path)
        var created = create(parent, creator: creator)
        var permissions = nodes[parent]!.permissions
        if creator != 0 { permissions.entries[0].domain = creator }
        let generation = bump()
        nodes[path] = Node(value: [], children: [], permissions: permissions, generation: generation)
        nodes[parent]!.children.append(Self.name(of: path))
        let parentGeneration = bump()
        nodes[parent]!.generation = parentGeneration
        created.append(path)
        return created
    }

    mutating func setValue(_ path: String, _ value: [UInt8]) {
        let generation = bump()
        nodes[path]!.value = value
        nodes[path]!.generation = generation
    }

    mutating func setPermissions(_ path: String, _ permissions: XenStorePermissions) {
        let generation = bump()
        nodes[path]!.permissions = permissions
        nodes[path]!.generation = generation
    }

    /// Removes `path` and its subtree; returns the removed paths.
    @discardableResult
    mutating func remove(_ path: String) -> [String] {
        guard let node = nodes[path], path != "/" else { return [] }
        var removed: [String] = []
        for child in node.children {
            removed += remove(path == "/" ? "/" + child : path + "/" + child)
        }
        nodes[path] = nil
        let parent = Self.parent(of: path)
        let name = Self.name(of: path)
        nodes[parent]?.children.removeAll { $0 == name }
        let generation = bump()
        nodes[parent]?.generation = generation
        removed.append(path)
        return removed
    }

    /// Nodes owned by `domain` (the per-domain node quota).
    func count(ownedBy domain: UInt32) -> Int {
        nodes.values.reduce(0) { $0 + ($1.permissions.owner == domain ? 1 : 0) }
    }
}

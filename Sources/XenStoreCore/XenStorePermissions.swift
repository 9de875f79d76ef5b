import XenStoreProtocol

/// One access right of a node's permission list.
public enum XenStoreAccess: Character, Sendable, Equatable {
    case none = "n", read = "r", write = "w", both = "b"

    var allowsRead: Bool { self == .read || self == .both }
    var allowsWrite: Bool { self == .write || self == .both }
}

/// A node's permissions: the first entry names the owner and the access of
/// every domain not listed; later entries grant listed domains their access.
/// Wire form: "n0\0r5\0" (access letter, then the domain id).
public struct XenStorePermissions: Sendable, Equatable, CustomStringConvertible {
    public struct Entry: Sendable, Equatable {
        public var domain: UInt32
        public var access: XenStoreAccess
        public init(domain: UInt32, access: XenStoreAccess) { self.domain = domain; self.access = access }
    }
    public var entries: [Entry]

    public init(owner: UInt32, others: XenStoreAccess = .none, grants: [Entry] = []) {
        entries = [Entry(domain: owner, access: others)] + grants
    }

    public var owner: UInt32 { entries[0].domain }

    /// Parses one "r5"-style entry per string.
    public init(parsing strings: [String]) throws(XenStoreErrorCode) {
        guard !strings.isEmpty else { throw .invalidArgument }
        entries = try strings.map { s throws(XenStoreErrorCode) in
            guard let letter = s.first, let access = XenStoreAccess(rawValue: letter),
                  let domain = UInt32(s.dropFirst()), domain <= 0xFFFF else { throw .invalidArgument }
            return Entry(domain: domain, access: access)
        }
    }

    public var strings: [String] { entries.map { "\($0.access.rawValue)\($0.domain)" } }
    public var description: String { strings.joined(separator: ",") }

    /// What `domain` may do: dom0 anything, the owner anything, a listed
    /// domain its entry, everyone else the first entry's access.
    func access(for domain: UInt32) -> XenStoreAccess {
        if domain == 0 || domain == owner { return .both }
        return entries.dropFirst().first(where: { $0.domain == domain })?.access ?? entries[0].access
    }
}

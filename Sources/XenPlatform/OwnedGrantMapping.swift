/// Guest pages mapped for as long as this value lives. Made by mapping,
/// undone by `release()` or when the value is dropped, so no error path
/// between a map and the code that would have unmapped it can leak it.
///
/// The pages belong to the granting domain, which may change them at any
/// moment; `base` is valid for `byteCount` bytes until the release.
public struct OwnedGrantMapping<Grants: GrantOperations>: ~Copyable {
    public let mapping: GrantMapping
    private let grants: Grants
    private var isMapped = true

    /// Maps `refs` of `domain` as one contiguous area (all or nothing).
    public init(_ refs: [GrantRef], of domain: DomainID, writable: Bool, through grants: Grants) throws(GrantError) {
        mapping = try grants.map(refs, of: domain, writable: writable)
        self.grants = grants
    }

    public var base: UnsafeMutableRawPointer { mapping.base }
    public var byteCount: Int { mapping.byteCount }

    /// Unmaps now, before the value ends: the guest may end foreign access
    /// once this returns. Later calls do nothing. An unmap the platform
    /// refuses leaves the pages mapped; there is nothing better to do with
    /// them than to stop using them, which the owner does from here on.
    public mutating func release() {
        guard isMapped else { return }
        isMapped = false
        try? grants.unmap(mapping)
    }

    deinit {
        if isMapped { try? grants.unmap(mapping) }
    }
}

/// A guest's own event channel device: what a frontend needs besides the
/// backend's operations, EVTCHNOP_alloc_unbound for its peer to bind to.
public protocol GuestEventChannelDevice: EventChannelDevice {
    func allocateUnbound(remoteDomain: DomainID) throws(EventChannelError) -> EventChannelPort
}

/// The guest side of the platform: what a frontend needs to share pages with
/// a backend (its own memory and grant table, gnttab_grant_foreign_access and
/// its end) and to open event channels. The software hypervisor's domains
/// implement it; so can a real domU (gntalloc, evtchn). Frontends hold it as
/// an existential: they are test drivers, not the data path being measured.
public protocol GuestDomain: AnyObject, Sendable {
    var id: DomainID { get }
    /// Pages of guest memory the frontend may use, numbered from 0.
    var pageCount: Int { get }
    /// The guest's own view of page `frame`.
    /// SAFETY: valid while the domain lives; once granted, the backend may
    /// write it at any time.
    func page(_ frame: UInt32) -> UnsafeMutableRawPointer
    /// Lets `domain` map or copy page `frame`.
    func grantAccess(to domain: DomainID, frame: UInt32, readOnly: Bool) throws -> GrantRef
    /// Revokes a grant unless a backend still holds it (false then).
    func endForeignAccess(_ ref: GrantRef) -> Bool
    /// Revokes now, or keeps the ref to retry when the guest runs short.
    @discardableResult func endForeignAccessOrDefer(_ ref: GrantRef) -> Bool
    /// A new event channel device for this guest.
    func openGuestEventChannels() throws -> any GuestEventChannelDevice
}

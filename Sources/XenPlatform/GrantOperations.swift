/// Foreign pages mapped into our address space as one contiguous area.
///
/// The memory belongs to the granting domain and stays mapped until the
/// mapping is unmapped through the `GrantOperations` that made it; the
/// guest may change its contents at any moment.
public struct GrantMapping: @unchecked Sendable {
    /// First byte of the first page.
    /// SAFETY: valid for `byteCount` bytes until unmapped through the
    /// `GrantOperations` that made it; the granting domain may write them
    /// at any time, so read what matters once, into memory of our own.
    public let base: UnsafeMutableRawPointer
    public let pageCount: Int
    public let domain: DomainID
    public let writable: Bool
    /// The implementation's handle (gntdev index, or the sim's mapping id).
    public let handle: UInt64

    public init(base: UnsafeMutableRawPointer, pageCount: Int, domain: DomainID, writable: Bool, handle: UInt64) {
        self.base = base; self.pageCount = pageCount; self.domain = domain; self.writable = writable; self.handle = handle
    }

    public var byteCount: Int { pageCount * 4096 }
}

/// Why a grant operation failed.
public enum GrantError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Mapping failed; `statuses[i]` is ref i's own outcome and nothing
    /// stayed mapped.
    case mapFailed(domain: DomainID, refs: [GrantRef], statuses: [GrantStatus])
    /// A batch had an invalid shape (empty, too large, misaligned pointer).
    case invalidArgument(String)
    /// The platform call itself failed (an errno from gntdev, for example).
    case system(operation: String, errno: Int32)

    public var description: String {
        switch self {
        case .mapFailed(let domain, let refs, let statuses):
            let bad = zip(refs, statuses).enumerated().filter { !$0.element.1.isOkay }
                .map { "#\($0.offset) \($0.element.0): \($0.element.1)" }
            return "mapping \(refs.count) grant(s) of \(domain) failed: " + bad.joined(separator: ", ")
        case .invalidArgument(let why): return "invalid grant operation: \(why)"
        case .system(let op, let e): return "\(op) failed with errno \(e)"
        }
    }
}

/// One side of a grant copy.
public enum GrantCopyEndpoint: @unchecked Sendable, Equatable {
    /// Our own memory; the caller keeps it valid until the copy returns.
    case local(UnsafeMutableRawPointer)
    /// `offset` bytes into the page granted as `ref` by `domain`.
    case grant(GrantRef, domain: DomainID, offset: UInt16)
}

/// One copy of a batch (GNTTABOP_copy): at most one page, not crossing a
/// page boundary on a granted side; `status` is set by the copy.
public struct GrantCopyOperation: @unchecked Sendable, Equatable {
    public var source: GrantCopyEndpoint
    public var destination: GrantCopyEndpoint
    public var length: UInt16
    public var status: GrantStatus

    public init(source: GrantCopyEndpoint, destination: GrantCopyEndpoint, length: UInt16) {
        self.source = source; self.destination = destination; self.length = length; status = .generalError
    }
}

/// Mapping and copying other domains' granted pages, as a backend does.
public protocol GrantOperations: AnyObject, Sendable {
    /// Maps `refs` of `domain` as one contiguous area (read-only unless
    /// `writable`). All or nothing: if any ref fails, nothing stays mapped
    /// and the error gives each ref's status.
    func map(_ refs: UnsafeBufferPointer<GrantRef>, of domain: DomainID, writable: Bool) throws(GrantError) -> GrantMapping
    /// Unmaps what `map` returned; the guest may then end foreign access.
    func unmap(_ mapping: GrantMapping) throws(GrantError)
    /// Runs a batch of copies, setting each operation's status. Throws only
    /// when the batch as a whole could not be run.
    func copy(_ operations: UnsafeMutableBufferPointer<GrantCopyOperation>) throws(GrantError)
    /// When `mapping` goes away, however that happens (unmap, or the backend
    /// process dying on real Xen), zero the byte at `clearingByteAt` in it
    /// and/or notify `port` (one of our bound ports), so the guest learns its
    /// backend is gone (gntdev's unmap notification).
    func setUnmapNotify(_ mapping: GrantMapping, clearingByteAt offset: Int?, notifying port: EventChannelPort?) throws(GrantError)
}

extension GrantOperations {
    public func map(_ refs: [GrantRef], of domain: DomainID, writable: Bool) throws(GrantError) -> GrantMapping {
        // SAFETY: the array is borrowed for the call only; map copies the refs.
        let result: Result<GrantMapping, GrantError> = refs.withUnsafeBufferPointer { buffer in
            Result { () throws(GrantError) in try map(buffer, of: domain, writable: writable) }
        }
        return try result.get()
    }

    public func copy(_ operations: inout [GrantCopyOperation]) throws(GrantError) {
        // SAFETY: the array is borrowed for the copy, which updates its statuses.
        let result: Result<Void, GrantError> = operations.withUnsafeMutableBufferPointer { buffer in
            Result { () throws(GrantError) in try copy(buffer) }
        }
        try result.get()
    }
}

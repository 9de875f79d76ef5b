/// A Xen domain id (`domid_t`).
@frozen
public struct DomainID: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: UInt16) { self.rawValue = rawValue }
    public static var dom0: DomainID { DomainID(0) }
    public var description: String { "dom\(rawValue)" }
}

/// A grant reference: an index into the granting domain's grant table.
@frozen
public struct GrantRef: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: UInt32) { self.rawValue = rawValue }
    public var description: String { "gref \(rawValue)" }
}

/// An event channel port, local to one domain.
@frozen
public struct EventChannelPort: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: UInt32) { self.rawValue = rawValue }
    public var description: String { "port \(rawValue)" }
}

/// `GNTST_*`: the outcome of one grant operation.
@frozen
public struct GrantStatus: RawRepresentable, Hashable, Sendable, Error, CustomStringConvertible {
    public var rawValue: Int16
    @inlinable public init(rawValue: Int16) { self.rawValue = rawValue }
    @inlinable public static var okay: GrantStatus { GrantStatus(rawValue: 0) }
    @inlinable public static var generalError: GrantStatus { GrantStatus(rawValue: -1) }
    @inlinable public static var badDomain: GrantStatus { GrantStatus(rawValue: -2) }
    @inlinable public static var badGrantRef: GrantStatus { GrantStatus(rawValue: -3) }
    @inlinable public static var badHandle: GrantStatus { GrantStatus(rawValue: -4) }
    @inlinable public static var permissionDenied: GrantStatus { GrantStatus(rawValue: -8) }
    @inlinable public static var badPage: GrantStatus { GrantStatus(rawValue: -9) }
    @inlinable public static var badCopyArgument: GrantStatus { GrantStatus(rawValue: -10) }
    @inlinable public static var tryAgain: GrantStatus { GrantStatus(rawValue: -12) }
    @inlinable public static var noSpace: GrantStatus { GrantStatus(rawValue: -13) }

    public var isOkay: Bool { rawValue == 0 }

    public var description: String {
        switch rawValue {
        case 0: "okay"
        case -1: "general error"
        case -2: "bad domain"
        case -3: "bad grant reference"
        case -4: "bad handle"
        case -5: "bad virtual address"
        case -6: "bad device address"
        case -7: "no device space"
        case -8: "permission denied"
        case -9: "bad page"
        case -10: "copy crosses a page boundary"
        case -11: "address too big"
        case -12: "try again"
        case -13: "no space"
        default: "GNTST \(rawValue)"
        }
    }
}

import XenPlatform
import XenStore

/// A device error that can name the xenstore key it could not use.
/// Enum cases satisfy the requirement: `case badKey(path:value:why:)`.
public protocol XenbusKeyError: Error {
    static func badKey(path: String, value: String?, why: String) -> Self
}

extension XenbusKeyError {
    /// How a bad key reads in the log and in `hotplug-error`: the full
    /// path, the value found (or that there was none), and why.
    public static func describeBadKey(path: String, value: String?, why: String) -> String {
        value.map { "\(path) = \"\($0)\": \(why)" } ?? "\(path) is missing: \(why)"
    }
}

/// One device's keys: the toolstack's in the backend directory, the
/// frontend's in its own. A value that cannot be used is thrown as
/// `Failure.badKey`, naming the full path and the value found.
public struct DeviceKeys<Failure: XenbusKeyError>: Sendable {
    public let xenstore: XenStoreClient
    public let backendPath: String
    public let frontendPath: String
    public let frontendID: DomainID

    /// Reads `frontend` and `frontend-id`, which the toolstack writes for
    /// every device before the backend sees it.
    public init(xenstore: XenStoreClient, backendPath: String) async throws {
        self.xenstore = xenstore
        self.backendPath = backendPath
        guard let path = try await xenstore.readIfPresent(backendPath + "/frontend"), !path.isEmpty else {
            throw Failure.badKey(path: backendPath + "/frontend", value: nil, why: "the toolstack names the frontend directory here")
        }
        let idText = try await xenstore.readIfPresent(backendPath + "/frontend-id")
        guard let idText, let id = UInt16(idText) else {
            throw Failure.badKey(path: backendPath + "/frontend-id", value: idText, why: "expected a domain id")
        }
        frontendPath = path
        frontendID = DomainID(id)
    }

    /// A key of the backend directory, nil if absent.
    public func backend(_ name: String) async throws -> String? {
        try await xenstore.readIfPresent(backendPath + "/" + name)
    }

    /// A key of the frontend directory, nil if absent.
    public func frontend(_ name: String) async throws -> String? {
        try await xenstore.readIfPresent(frontendPath + "/" + name)
    }

    /// A frontend key holding an unsigned number; nil if absent.
    public func frontendNumber(_ name: String) async throws -> UInt32? {
        guard let text = try await frontend(name) else { return nil }
        guard let value = UInt32(text) else {
            throw Failure.badKey(path: frontendPath + "/" + name, value: text, why: "expected an unsigned number")
        }
        return value
    }

    /// A frontend number that must be there; `why` says what it is for.
    public func requiredFrontendNumber(_ name: String, _ why: String) async throws -> UInt32 {
        guard let value = try await frontendNumber(name) else {
            throw Failure.badKey(path: frontendPath + "/" + name, value: nil, why: why)
        }
        return value
    }

    /// A frontend flag (`feature-*`, `request-*`): on only when it reads 1.
    public func frontendFlag(_ name: String) async throws -> Bool {
        try await frontendNumber(name) == 1
    }
}

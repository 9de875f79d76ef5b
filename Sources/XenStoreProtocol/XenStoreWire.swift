/// `enum xsd_sockmsg_type`: the type of a xenstore message.
@frozen
public struct XenStoreMessageType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Also `XS_DEBUG`.
    @inlinable public static var control: Self { Self(rawValue: 0) }
    @inlinable public static var directory: Self { Self(rawValue: 1) }
    @inlinable public static var read: Self { Self(rawValue: 2) }
    @inlinable public static var getPermissions: Self { Self(rawValue: 3) }
    @inlinable public static var watch: Self { Self(rawValue: 4) }
    @inlinable public static var unwatch: Self { Self(rawValue: 5) }
    @inlinable public static var transactionStart: Self { Self(rawValue: 6) }
    @inlinable public static var transactionEnd: Self { Self(rawValue: 7) }
    @inlinable public static var introduce: Self { Self(rawValue: 8) }
    @inlinable public static var release: Self { Self(rawValue: 9) }
    @inlinable public static var getDomainPath: Self { Self(rawValue: 10) }
    @inlinable public static var write: Self { Self(rawValue: 11) }
    @inlinable public static var mkdir: Self { Self(rawValue: 12) }
    @inlinable public static var rm: Self { Self(rawValue: 13) }
    @inlinable public static var setPermissions: Self { Self(rawValue: 14) }
    @inlinable public static var watchEvent: Self { Self(rawValue: 15) }
    @inlinable public static var error: Self { Self(rawValue: 16) }
    @inlinable public static var isDomainIntroduced: Self { Self(rawValue: 17) }
    @inlinable public static var resume: Self { Self(rawValue: 18) }
    @inlinable public static var setTarget: Self { Self(rawValue: 19) }
    // 20 was XS_RESTRICT, removed from the protocol.
    @inlinable public static var resetWatches: Self { Self(rawValue: 21) }
    @inlinable public static var directoryPart: Self { Self(rawValue: 22) }
    /// `XS_TYPE_COUNT`: one past the last valid type.
    @inlinable public static var typeCount: Self { Self(rawValue: 23) }
    /// `XS_INVALID`: guaranteed never to be valid.
    @inlinable public static var invalid: Self { Self(rawValue: 0xFFFF) }

    static let names: [UInt32: String] = [
        0: "CONTROL", 1: "DIRECTORY", 2: "READ", 3: "GET_PERMS", 4: "WATCH", 5: "UNWATCH",
        6: "TRANSACTION_START", 7: "TRANSACTION_END", 8: "INTRODUCE", 9: "RELEASE",
        10: "GET_DOMAIN_PATH", 11: "WRITE", 12: "MKDIR", 13: "RM", 14: "SET_PERMS",
        15: "WATCH_EVENT", 16: "ERROR", 17: "IS_DOMAIN_INTRODUCED", 18: "RESUME",
        19: "SET_TARGET", 21: "RESET_WATCHES", 22: "DIRECTORY_PART",
    ]

    /// The type is one xenstored knows.
    public var isKnown: Bool { Self.names[rawValue] != nil }

    public var description: String { Self.names[rawValue].map { "XS_\($0)" } ?? "XS_<\(rawValue)>" }
}

/// The error strings xenstored sends in an `XS_ERROR` reply (`xsd_errors`),
/// with Linux's errno numbers.
public enum XenStoreErrorCode: String, Error, Sendable, CaseIterable {
    case invalidArgument = "EINVAL"
    case accessDenied = "EACCES"
    case alreadyExists = "EEXIST"
    case isDirectory = "EISDIR"
    case noEntry = "ENOENT"
    case outOfMemory = "ENOMEM"
    case noSpace = "ENOSPC"
    case ioError = "EIO"
    case notEmpty = "ENOTEMPTY"
    case notImplemented = "ENOSYS"
    case readOnly = "EROFS"
    case busy = "EBUSY"
    /// Transaction conflict: retry the whole transaction.
    case tryAgain = "EAGAIN"
    case alreadyConnected = "EISCONN"
    case tooBig = "E2BIG"
    case notPermitted = "EPERM"

    public var errno: Int32 {
        switch self {
        case .invalidArgument: 22
        case .accessDenied: 13
        case .alreadyExists: 17
        case .isDirectory: 21
        case .noEntry: 2
        case .outOfMemory: 12
        case .noSpace: 28
        case .ioError: 5
        case .notEmpty: 39
        case .notImplemented: 38
        case .readOnly: 30
        case .busy: 16
        case .tryAgain: 11
        case .alreadyConnected: 106
        case .tooBig: 7
        case .notPermitted: 1
        }
    }
}

/// Limits of the wire protocol (xs_wire.h).
public enum XenStoreLimits {
    /// `XENSTORE_PAYLOAD_MAX`: no message body may be longer.
    @inlinable public static var payloadMax: Int { 4096 }
    /// `XENSTORE_ABS_PATH_MAX`.
    @inlinable public static var absolutePathMax: Int { 3072 }
    /// `XENSTORE_REL_PATH_MAX`.
    @inlinable public static var relativePathMax: Int { 2048 }
    /// `sizeof(struct xsd_sockmsg)`.
    @inlinable public static var headerSize: Int { 16 }
    /// The guest's xenstore ring page: `req[1024]`, `rsp[1024]`, then indices.
    @inlinable public static var domainRingSize: Int { 1024 }
}

/// `struct xsd_sockmsg` and its body.
public struct XenStoreMessage: Hashable, Sendable {
    public var type: XenStoreMessageType
    /// Echoed in the daemon's reply.
    public var requestID: UInt32
    /// 0 outside a transaction.
    public var transactionID: UInt32
    public var payload: [UInt8]

    public init(type: XenStoreMessageType, requestID: UInt32, transactionID: UInt32 = 0, payload: [UInt8]) {
        self.type = type
        self.requestID = requestID
        self.transactionID = transactionID
        self.payload = payload
    }

    /// A body of strings, each followed by NUL (`WATCH path token`,
    /// `DIRECTORY path`, …). Use `write` for XS_WRITE, whose value carries no NUL.
    public init(type: XenStoreMessageType, requestID: UInt32, transactionID: UInt32 = 0, strings: [String]) {
        var body: [UInt8] = []
        for s in strings { body.append(contentsOf: s.utf8); body.append(0) }
        self.init(type: type, requestID: requestID, transactionID: transactionID, payload: body)
    }

    /// XS_WRITE: `path NUL value`, the value unterminated.
    public static func write(path: String, value: [UInt8], requestID: UInt32, transactionID: UInt32 = 0) -> XenStoreMessage {
        XenStoreMessage(type: .write, requestID: requestID, transactionID: transactionID,
                        payload: Array(path.utf8) + [0] + value)
    }

    /// The error reply xenstored sends: `XS_ERROR` with the name and a NUL.
    public static func errorReply(_ code: XenStoreErrorCode, to request: XenStoreMessage) -> XenStoreMessage {
        XenStoreMessage(type: .error, requestID: request.requestID, transactionID: request.transactionID,
                        strings: [code.rawValue])
    }

    /// The body split at NULs. A trailing NUL ends the last string; without
    /// one the last string is the unterminated rest (an XS_WRITE value).
    public var strings: [String] {
        // A directory with no children is an empty payload: no strings at
        // all (libxenstore counts NULs), not one empty one.
        guard !payload.isEmpty else { return [] }
        var parts = payload.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        if payload.last == 0 { parts.removeLast() }
        return parts
    }

    /// The error code of an XS_ERROR reply, if this is one and names a known code.
    public var errorCode: XenStoreErrorCode? {
        guard type == .error, let name = strings.first else { return nil }
        return XenStoreErrorCode(rawValue: name)
    }

    /// Header then payload, little-endian.
    public func encoded() throws(XenStoreWireError) -> [UInt8] {
        guard payload.count <= XenStoreLimits.payloadMax else { throw .payloadTooLong(payload.count) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(XenStoreLimits.headerSize + payload.count)
        for field in [type.rawValue, requestID, transactionID, UInt32(payload.count)] {
            // SAFETY: a view of a local integer's bytes, used only to copy them.
            withUnsafeBytes(of: field.littleEndian) { bytes.append(contentsOf: $0) }
        }
        bytes.append(contentsOf: payload)
        return bytes
    }
}

public enum XenStoreWireError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A header announced a body longer than `XENSTORE_PAYLOAD_MAX`.
    case payloadTooLong(Int)
    public var description: String {
        switch self {
        case .payloadTooLong(let n): "xenstore message body of \(n) bytes exceeds the \(XenStoreLimits.payloadMax)-byte limit"
        }
    }
}

/// Reassembles messages from a byte stream (a socket or the domain ring).
/// A length over the limit is an error: the stream cannot be resynchronised,
/// so the connection must be closed, as xenstored does.
public struct XenStoreMessageDecoder: Sendable {
    private var buffer: [UInt8] = []
    private var start = 0

    public init() {}

    public mutating func append(_ bytes: some Sequence<UInt8>) { buffer.append(contentsOf: bytes) }

    /// Bytes received but not yet part of a whole message.
    public var bufferedByteCount: Int { buffer.count - start }

    /// The next complete message, nil if more bytes are needed.
    public mutating func next() throws(XenStoreWireError) -> XenStoreMessage? {
        guard buffer.count - start >= XenStoreLimits.headerSize else { return nil }
        func field(_ i: Int) -> UInt32 {
            let o = start + 4 * i
            return UInt32(buffer[o]) | UInt32(buffer[o + 1]) << 8 | UInt32(buffer[o + 2]) << 16 | UInt32(buffer[o + 3]) << 24
        }
        let length = Int(field(3))
        guard length <= XenStoreLimits.payloadMax else { throw .payloadTooLong(length) }
        guard buffer.count - start >= XenStoreLimits.headerSize + length else { return nil }
        let bodyStart = start + XenStoreLimits.headerSize
        let message = XenStoreMessage(type: XenStoreMessageType(rawValue: field(0)), requestID: field(1),
                                      transactionID: field(2), payload: Array(buffer[bodyStart..<bodyStart + length]))
        start = bodyStart + length
        if start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        } else if start > 65536 {
            buffer.removeFirst(start)
            start = 0
        }
        return message
    }
}

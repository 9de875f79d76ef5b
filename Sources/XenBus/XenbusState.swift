/// `enum xenbus_state`: the device state each end writes to its `state` key.
public enum XenbusState: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case unknown = 0
    case initialising = 1
    /// Backend: probed, features published, waiting for the frontend's details.
    case initWait = 2
    /// Frontend: ring(s) and event channel(s) published.
    case initialised = 3
    case connected = 4
    /// The device is being shut down.
    case closing = 5
    case closed = 6
    case reconfiguring = 7
    case reconfigured = 8

    /// Parses a `state` key's value: a decimal number, surrounding spaces and a
    /// trailing newline tolerated (as Linux's `xenbus_read_driver_state`).
    public init(xenstoreValue value: String) throws(XenbusStateError) {
        let trimmed = value.trimmingWhitespace()
        guard let number = UInt32(trimmed), let state = XenbusState(rawValue: number) else {
            throw .invalidValue(value)
        }
        self = state
    }

    /// The value to write to a `state` key.
    public var xenstoreValue: String { String(rawValue) }

    public var description: String {
        switch self {
        case .unknown: "Unknown"
        case .initialising: "Initialising"
        case .initWait: "InitWait"
        case .initialised: "Initialised"
        case .connected: "Connected"
        case .closing: "Closing"
        case .closed: "Closed"
        case .reconfiguring: "Reconfiguring"
        case .reconfigured: "Reconfigured"
        }
    }
}

public enum XenbusStateError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidValue(String)
    public var description: String {
        switch self {
        case .invalidValue(let v): "xenbus state \"\(v)\" is not a number from 0 to 8"
        }
    }
}

extension String {
    func trimmingWhitespace() -> Substring {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" }
        guard let first = firstIndex(where: { !isSpace($0) }) else { return "" }
        let last = lastIndex(where: { !isSpace($0) })!
        return self[first...last]
    }
}

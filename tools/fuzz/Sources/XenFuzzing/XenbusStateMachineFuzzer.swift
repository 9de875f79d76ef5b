import XenBus

/// Any sequence of xenbus events against the backend state machine (each
/// `.connect` answered, as a driver does, with an outcome the input picks):
/// never connect while attached, never Connected → Closed without Closing,
/// nothing after removal, never removed while attached.
public enum XenbusStateMachineFuzzer {
    public static func run(_ data: UnsafeRawBufferPointer) {
        var input = FuzzInput(data)
        var machine = BackendStateMachine()
        var attached = false, removed = false, last = XenbusState.initialising
        var pending: [BackendEvent] = []
        var steps = 0
        while (!input.isAtEnd || !pending.isEmpty) && steps < 10_000 {
            steps += 1
            let event: BackendEvent
            if !pending.isEmpty {
                event = pending.removeFirst()
            } else {
                let b = input.byte()
                switch b % 13 {
                case 0: event = .probed
                case 1: event = .frontendVanished
                case 2: event = .online(b & 0x80 != 0)
                default: event = .frontendState(XenbusState(rawValue: UInt32(b % 13 - 3)) ?? .unknown)
                }
            }
            let actions = machine.handle(event)
            precondition(!removed || actions.isEmpty, "acted after removal")
            for action in actions {
                switch action {
                case .connect:
                    precondition(!attached, "connect while attached")
                    attached = true
                    pending.append(input.byte() & 3 == 0 ? .connectFailed("fuzz") : .connectSucceeded)
                case .disconnect: attached = false
                case .switchState(let s):
                    precondition(!(last == .connected && s == .closed), "Connected to Closed without Closing")
                    last = s
                case .removeDevice:
                    precondition(!attached, "removed while attached")
                    removed = true
                case .reportError: break
                }
            }
            precondition(machine.state == last)
        }
    }
}

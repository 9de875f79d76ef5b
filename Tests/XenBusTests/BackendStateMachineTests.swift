import Testing
import XenBus

/// One row: an event and the actions it must produce, in order.
typealias Step = (BackendEvent, [BackendAction])

@Suite struct BackendStateMachineTests {
    static let scenarios: [(String, [Step])] = [
        ("normal connect", [
            (.probed, [.switchState(.initWait)]),
            (.frontendState(.initialising), []),
            (.frontendState(.initialised), [.connect]),
            (.connectSucceeded, [.switchState(.connected)]),
            (.frontendState(.connected), []),
        ]),
        ("Initialised and Connected coalesced into one watch", [
            (.probed, [.switchState(.initWait)]),
            (.frontendState(.connected), [.connect]),
            (.connectSucceeded, [.switchState(.connected)]),
        ]),
        ("frontend skips Initialising", [
            (.probed, [.switchState(.initWait)]),
            (.frontendState(.initialised), [.connect]),
            (.connectSucceeded, [.switchState(.connected)]),
        ]),
        ("orderly close and reconnect", [
            (.probed, [.switchState(.initWait)]),
            (.frontendState(.initialised), [.connect]),
            (.connectSucceeded, [.switchState(.connected)]),
            (.frontendState(.closing), [.switchState(.closing)]),
            (.frontendState(.closed), [.disconnect, .switchState(.closed)]),
            (.frontendState(.initialising), [.switchState(.initWait)]),
            (.frontendState(.initialised), [.connect]),
            (.connectSucceeded, [.switchState(.connected)]),
        ]),
        ("Windows-style Closing/Closed cycle before the first connect", [
            (.probed, [.switchState(.initWait)]),
            (.frontendState(.closing), [.switchState(.closing)]),
            (.frontendState(.closed), [.switchState(.closed)]),
            (.frontendState(.initialising), [.switchState(.initWait)]),
            (.frontendState(.initialised), [.connect]),
            (.connectSucceeded, [.switchState(.connected)]),
        ]),
        ("frontend jumps from Connected to Closed: Closing is still shown", [
            (.frontendState(.initialised), [.connect]),
            (.connectSucceeded, [.switchState(.connected)]),
            (.frontendState(.closed), [.switchState(.closing), .disconnect, .switchState(.closed)]),
        ]),
        ("frontend directory vanishes while connected", [
            (.probed, [.switchState(.initWait)]),
            (.frontendState(.connected), [.connect]),
            (.connectSucceeded, [.switchState(.connected)]),
            (.frontendVanished, [.switchState(.closing), .disconnect, .switchState(.closed), .removeDevice]),
            (.frontendState(.initialising), []),
        ]),
        ("toolstack sets online=0 while connected", [
            (.frontendState(.initialised), [.connect]),
            (.connectSucceeded, [.switchState(.connected)]),
            (.online(false), [.switchState(.closing)]),
            (.frontendState(.closing), []),
            (.frontendState(.closed), [.disconnect, .switchState(.closed), .removeDevice]),
        ]),
        ("online=0 with the frontend already closed", [
            (.probed, [.switchState(.initWait)]),
            (.frontendState(.closed), [.switchState(.closing), .switchState(.closed)]),
            (.online(false), [.removeDevice]),
        ]),
        ("online=0 before the frontend ever appeared", [
            (.probed, [.switchState(.initWait)]),
            (.online(false), [.switchState(.closing), .switchState(.closed), .removeDevice]),
            (.frontendState(.initialised), []),
        ]),
        ("offline device is not connected", [
            (.probed, [.switchState(.initWait)]),
            (.frontendState(.initialising), []),
            (.online(false), [.switchState(.closing)]),
            (.frontendState(.initialised), []),
        ]),
        ("connect fails", [
            (.probed, [.switchState(.initWait)]),
            (.frontendState(.initialised), [.connect]),
            (.connectFailed("ring-ref is not a number"), [.reportError("ring-ref is not a number"), .disconnect, .switchState(.closing)]),
            (.frontendState(.closed), [.switchState(.closed)]),
            (.frontendState(.initialising), [.switchState(.initWait)]),
        ]),
        ("a repeated Initialised while attached re-maps from a clean slate", [
            (.frontendState(.initialised), [.connect]),
            (.connectSucceeded, [.switchState(.connected)]),
            (.frontendState(.initialised), []),
            (.frontendState(.closing), [.switchState(.closing)]),
            (.frontendState(.initialised), [.disconnect, .connect]),
            (.connectSucceeded, [.switchState(.connected)]),
        ]),
        ("Reconfiguring is reported, not acted on", [
            (.probed, [.switchState(.initWait)]),
            (.frontendState(.reconfiguring), [.reportError("frontend is in state Reconfiguring, which block and network devices do not use")]),
        ]),
        ("frontend state Unknown removes the device", [
            (.probed, [.switchState(.initWait)]),
            (.frontendState(.unknown), [.switchState(.closing), .switchState(.closed), .removeDevice]),
        ]),
    ]

    @Test(arguments: scenarios.indices)
    func scenario(_ index: Int) {
        let (name, steps) = Self.scenarios[index]
        var machine = BackendStateMachine()
        for (i, (event, expected)) in steps.enumerated() {
            let actions = machine.handle(event)
            #expect(actions == expected, "\(name), step \(i): \(event)")
        }
    }

    /// Any event sequence (each `.connect` answered at once with a random
    /// outcome, as a driver does): no connect while attached, never from
    /// Connected to Closed without Closing, nothing after removal, and no
    /// removal while still attached.
    @Test func invariantsUnderRandomSequences() {
        let events: [BackendEvent] = [.probed, .frontendVanished, .online(true), .online(false)]
            + XenbusState.allCases.map { .frontendState($0) }
        var seed: UInt64 = 42
        func random(_ n: Int) -> Int {
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
            return Int(seed >> 33) % n
        }
        for _ in 0..<2_000 {
            var machine = BackendStateMachine()
            var attached = false, removed = false, lastState = XenbusState.initialising
            var pending = [events[random(events.count)]]
            var steps = 0
            while steps < 60 {
                let event = pending.isEmpty ? events[random(events.count)] : pending.removeFirst()
                steps += 1
                let actions = machine.handle(event)
                if removed { #expect(actions.isEmpty, "acted after removal") }
                for action in actions {
                    switch action {
                    case .connect:
                        #expect(!attached, "connect while attached")
                        attached = true
                        pending.append(random(4) == 0 ? .connectFailed("injected") : .connectSucceeded)
                    case .disconnect: attached = false
                    case .switchState(let s):
                        #expect(!(lastState == .connected && s == .closed), "skipped Closing")
                        lastState = s
                    case .removeDevice:
                        removed = true
                        #expect(!attached, "removed while attached")
                    case .reportError: break
                    }
                }
                #expect(machine.state == lastState)
            }
        }
    }
}

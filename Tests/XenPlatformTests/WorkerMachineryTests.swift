#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import Testing
import XenPlatform
import XenSystem

/// An event channel device that hands out scripted pending ports and
/// records unmasks: the XSA-332 holds are judged on it.
final class ScriptedEvents: EventChannelDevice, @unchecked Sendable {
    var pending: [EventChannelPort] = []
    var unmasked: [EventChannelPort] = []
    func bindInterdomain(remoteDomain: DomainID, remotePort: EventChannelPort) throws(EventChannelError) -> EventChannelPort { remotePort }
    func notify(_ port: EventChannelPort) throws(EventChannelError) {}
    func unmask(_ port: EventChannelPort) throws(EventChannelError) { unmasked.append(port) }
    func unbind(_ port: EventChannelPort) throws(EventChannelError) {}
    var fileDescriptor: Int32 { -1 }
    func takePending(into ports: UnsafeMutableBufferPointer<EventChannelPort>) throws(EventChannelError) -> Int {
        let n = min(ports.count, pending.count)
        for i in 0..<n { ports[i] = pending[i] }
        pending.removeFirst(n)
        return n
    }
}

/// Two rings behind two ports, with counters the test moves.
final class TwoPortWorker: EventPortServing {
    enum Role: Int, EventPortRole { case first, second }
    var consumed = [UInt32](repeating: 0, count: 2)
    var waiting = [false, false]
    func role(of port: EventChannelPort) -> Role? { port == EventChannelPort(10) ? .first : port == EventChannelPort(20) ? .second : nil }
    func port(of role: Role) -> EventChannelPort? { role == .first ? EventChannelPort(10) : EventChannelPort(20) }
    func requestsConsumed(by role: Role) -> UInt32 { consumed[role.rawValue] }
    func hasWork(for role: Role) -> Bool { waiting[role.rawValue] }
}

@Suite struct EventPortHoldsTests {
    func take(_ holds: inout EventPortHolds<TwoPortWorker.Role>, _ events: ScriptedEvents, _ worker: TwoPortWorker,
              _ ports: [UInt32]) throws -> Int {
        events.pending = ports.map { EventChannelPort($0) }
        var buffer = [EventChannelPort](repeating: EventChannelPort(0), count: 8)
        return try buffer.withUnsafeMutableBufferPointer { (b) throws(EventChannelError) -> Int in
            try holds.takeEvents(from: events, into: b, worker: worker)
        }
    }

    @Test func aSecondSpuriousEventHoldsThatPortOnly() throws {
        let worker = TwoPortWorker(), events = ScriptedEvents()
        var holds = EventPortHolds(for: worker)
        #expect(try take(&holds, events, worker, [10]) == 1)
        #expect(events.unmasked == [EventChannelPort(10)], "the first spurious event is forgiven")
        #expect(try take(&holds, events, worker, [10]) == 1)
        #expect(events.unmasked == [EventChannelPort(10)], "the second holds the port masked")
        #expect(holds.isHolding)
        // The other port is judged on its own.
        worker.waiting[1] = true
        #expect(try take(&holds, events, worker, [20]) == 0)
        #expect(events.unmasked == [EventChannelPort(10), EventChannelPort(20)])
        // The hold ends 1 ms on: unmasked then, and the sleep was capped by it.
        let now = monotonicNanoseconds()
        let cap = holds.unmaskExpired(now: now, worker: worker, events: events)
        #expect(cap != nil && cap! <= 1)
        _ = holds.unmaskExpired(now: now + 2_000_000, worker: worker, events: events)
        #expect(events.unmasked.last == EventChannelPort(10) && !holds.isHolding)
    }

    @Test func requestsTakenSinceTheLastEventMeanItFoundWork() throws {
        let worker = TwoPortWorker(), events = ScriptedEvents()
        var holds = EventPortHolds(for: worker)
        for round in 0..<5 {
            worker.consumed[0] += 3  // a final check took the kick's requests before the event came
            #expect(try take(&holds, events, worker, [10]) == 0, "round \(round)")
        }
        #expect(events.unmasked.count == 5 && !holds.isHolding)
    }

    @Test func anEventOnAPortWeDoNotKnowIsUnmasked() throws {
        let worker = TwoPortWorker(), events = ScriptedEvents()
        var holds = EventPortHolds(for: worker)
        #expect(try take(&holds, events, worker, [99]) == 0)
        #expect(events.unmasked == [EventChannelPort(99)])
    }
}

@Suite struct WorkerPollSetTests {
    @Test func wakesForEachDescriptorAndTimesOut() throws {
        let channelFD = try OwnedDescriptor(eventfd: 0), stopFD = try OwnedDescriptor(eventfd: 0), otherFD = try OwnedDescriptor(eventfd: 0)
        let (channel, stop, other) = (channelFD.raw, stopFD.raw, otherFD.raw)
        var set = WorkerPollSet(eventChannel: channel, stop: stop, others: [other, -1])
        #expect(set.wait(timeoutMilliseconds: 0) == .timedOut)
        var one: UInt64 = 1
        _ = write(other, &one, 8)
        #expect(set.wait(timeoutMilliseconds: 1000) == .ready)
        #expect(set.returnedEvents(other: 0) != 0 && !set.eventsPending)
        set.watch(other: 0, false)
        #expect(set.wait(timeoutMilliseconds: 0) == .timedOut, "an unwatched descriptor does not wake it")
        _ = write(channel, &one, 8)
        #expect(set.wait(timeoutMilliseconds: 1000) == .ready && set.eventsPending)
        _ = write(stop, &one, 8)
        #expect(set.wait(timeoutMilliseconds: 1000) == .stop)
    }
}

enum TestCounter: Int, WorkerCounter {
    case apples, pears
    var displayName: String { self == .apples ? "apples" : "pears" }
}

@Suite struct WorkerCountersTests {
    @Test func countsSumsAndPrintsInOrder() {
        let a = WorkerCounters<TestCounter>(), b = WorkerCounters<TestCounter>()
        a.add(.apples); a.add(.apples, 4); b.add(.pears, 2); b.add(.apples)
        #expect(a[.apples] == 5 && a[.pears] == 0)
        let total = a.snapshot + b.snapshot + .zero
        #expect(total[.apples] == 6 && total[.pears] == 2)
        #expect("\(total)" == "apples 6 pears 2")
    }

    @Test func countsFromManyThreads() {
        let counters = WorkerCounters<TestCounter>()
        let group = ThreadGroup()
        for _ in 0..<4 { group.spawn { for _ in 0..<10_000 { counters.add(.pears) } } }
        group.joinAll()
        #expect(counters[.pears] == 40_000)
    }
}

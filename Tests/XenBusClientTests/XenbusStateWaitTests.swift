import Synchronization
import Testing
import XenBus
import XenBusClient
import XenPlatform
import XenSim
import XenStore

/// The sim's xenstored with two dom0 connections: one waits, one writes.
func withXenStore(_ body: (_ waiter: XenStoreClient, _ writer: XenStoreClient) async throws -> Void) async throws {
    let host = try await SimGuestHost(guestID: DomainID(3), guestPages: 1, grantEntries: 16)
    do {
        try await body(host.frontendStore, host.backendStore)
    } catch {
        await host.shutdown()
        throw error
    }
    await host.shutdown()
}

let device = "/local/domain/0/backend/vbd/3/51712"

final class SeenStates: Sendable {
    let states = Mutex<[XenbusState]>([])
    func add(_ s: XenbusState) { states.withLock { $0.append(s) } }
    var all: [XenbusState] { states.withLock { $0 } }
}

@Suite struct XenbusStateWaitTests {
    /// A state that already holds is returned at once (the watch's first
    /// event reads it); nothing is written.
    @Test func aStateAlreadyThereIsReturned() async throws {
        try await withXenStore { waiter, writer in
            try await writer.write(device + "/state", "4")
            let state = try await awaitXenbusState(waiter, device, timeout: .seconds(10), "Connected") { $0 == .connected }
            #expect(state == .connected)
            #expect(try await writer.readString(device + "/state") == "4")
        }
    }

    /// States that do not satisfy the condition are passed over; the wait
    /// returns the first that does, written after it started.
    @Test func waitsThroughOtherStates() async throws {
        try await withXenStore { waiter, writer in
            try await writer.write(device + "/state", "1")
            let seen = SeenStates()
            let wait = Task {
                try await awaitXenbusState(waiter, device, timeout: .seconds(10), "Closed") { seen.add($0); return $0 == .closed }
            }
            // The wait has read Initialising once it has seen the first event.
            let deadline = ContinuousClock.now + .seconds(10)
            while seen.all.isEmpty && ContinuousClock.now < deadline { await Task.yield() }
            for state in ["2", "3", "4", "5", "6"] { try await writer.write(device + "/state", state) }
            #expect(try await wait.value == .closed)
            let all = seen.all
            #expect(all.first == .initialising && all.last == .closed)
            #expect(all.dropLast().allSatisfy { $0 != .closed }, "only the last state seen satisfied it")
        }
    }

    /// A missing node, text that is not a number and numbers that are no
    /// xenbus state are not states: the wait goes on until a real one.
    @Test func missingAndMalformedValuesAreNotStates() async throws {
        try await withXenStore { waiter, writer in
            let seen = SeenStates()
            let wait = Task {
                try await awaitXenbusState(waiter, device, timeout: .seconds(10), "any state") { seen.add($0); return true }
            }
            for text in ["banana", "", "99", "-1"] { try await writer.write(device + "/state", text) }
            try await writer.write(device + "/state", "6")
            #expect(try await wait.value == .closed)
            #expect(seen.all == [.closed])
        }
    }

    /// Nothing satisfying within the timeout: XenbusWaitTimeout naming what
    /// was awaited.
    @Test func timesOutNamingWhatItWaitedFor() async throws {
        try await withXenStore { waiter, writer in
            try await writer.write(device + "/state", "2")
            let clock = ContinuousClock(), start = clock.now
            await #expect(throws: XenbusWaitTimeout(what: "backend Connected")) {
                _ = try await awaitXenbusState(waiter, device, timeout: .milliseconds(300), "backend Connected") { $0 == .connected }
            }
            #expect(clock.now - start >= .milliseconds(300))
            #expect("\(XenbusWaitTimeout(what: "backend Connected"))" == "timed out waiting for backend Connected")
        }
    }
}

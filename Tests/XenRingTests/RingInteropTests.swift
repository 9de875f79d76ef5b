import MallocInterposerSwift
import Testing
import XenBlockProtocol
import XenRing
import XenRingBenchmark

/// A C peer built from ring.h's own macros on one end of a shared page and
/// our Swift ring on the other, on two threads, with eventfds as event
/// channels: a wrong notify decision on either side shows up as a lost wakeup
/// (the sleeping side times out) rather than as a hang.
@Suite struct RingInteropTests {
    typealias Impl = RingBenchmark.Implementation

    @Test(arguments: [(Impl.c, Impl.swift), (.swift, .c), (.swift, .swift)])
    func millionRequestsAcrossTheIndexWrap(frontend: Impl, backend: Impl) throws {
        let requests: UInt64 = 1_000_000
        let start = RingIndex(UInt32.max - 400_000)  // the run crosses 2^32
        let run = try RingBenchmark.runPair(frontend: frontend, backend: backend,
                                            configuration: .init(mode: .eventfd, requests: requests, pages: 1, rounds: 1),
                                            start: start)
        #expect(run.frontend.error == nil && run.backend.error == nil)
        #expect(run.frontend.completed == requests, "every response checked")
        #expect(run.backend.completed == requests)
        #expect(run.frontend.badResponses == 0)
        // Suppression worked: far fewer kicks than requests.
        #expect(run.frontend.notifications + run.backend.notifications < requests / 4)
    }

    @Test(arguments: [1, 2, 4, 8, 16])
    func multiPageRings(pages: Int) throws {
        for (f, b) in [(Impl.c, Impl.swift), (.swift, .c)] {
            let run = try RingBenchmark.runPair(frontend: f, backend: b,
                                                configuration: .init(mode: .poll, requests: 200_000, pages: pages, rounds: 1),
                                                start: RingIndex(UInt32.max - 50_000))
            #expect(run.frontend.error == nil && run.backend.error == nil)
            #expect(run.frontend.completed == 200_000 && run.frontend.badResponses == 0, "\(f) front, \(b) back, \(pages) pages")
        }
    }

    @Test func swiftRingsAllocateNothingPerRequest() throws {
        guard AllocationCounter.isActive else {
            Issue.record("malloc interposer inactive: cannot count allocations")
            return
        }
        let run = try RingBenchmark.runPair(frontend: .swift, backend: .swift,
                                            configuration: .init(mode: .eventfd, requests: 200_000, pages: 1, rounds: 1),
                                            start: RingIndex(0))
        #expect(run.frontend.completed == 200_000)
        #expect(run.mallocs == 0, "mallocs during 200k Swift requests")
    }
}

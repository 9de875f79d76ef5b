import CXenRingReference
import CXenShims
import Synchronization
import XenBlockProtocol
import XenPlatform
import XenRing
#if canImport(Glibc)
import Glibc
#endif

/// `xenback bench ring`: one frontend thread and one backend thread pass
/// blkif requests over a shared ring, once with our Swift rings and once with
/// Xen's ring.h macros in C, alternately, in the same process.
public struct RingBenchmark: Sendable {
    public enum Implementation: String, Sendable { case swift, c }

    public struct Configuration: Sendable {
        public var mode: WaitMode
        public var requests: UInt64
        public var pages: Int
        public var rounds: Int
        /// Also run C frontend + Swift backend and the reverse, to show which
        /// end the time goes to.
        public var mixed: Bool
        public init(mode: WaitMode, requests: UInt64, pages: Int, rounds: Int, mixed: Bool = false) {
            self.mode = mode; self.requests = requests; self.pages = pages; self.rounds = rounds; self.mixed = mixed
        }
    }

    public struct Run: Sendable {
        /// The frontend's implementation (the backend's is `backendImplementation`).
        public var implementation: Implementation
        public var backendImplementation: Implementation
        public var seconds: Double
        public var requestsPerSecond: Double
        public var frontend: PeerStats
        public var backend: PeerStats
        public var mallocs: Int?
    }

    public struct Report: Sendable {
        public var configuration: Configuration
        public var runs: [Run]
        public var ringSize: UInt32

        var pure: [Run] { runs.filter { $0.implementation == $0.backendImplementation } }

        public func median(frontend: Implementation, backend: Implementation) -> Double {
            let v = runs.filter { $0.implementation == frontend && $0.backendImplementation == backend }.map(\.requestsPerSecond).sorted()
            return v.isEmpty ? 0 : v[v.count / 2]
        }

        func median(_ impl: Implementation) -> Double {
            let v = pure.filter { $0.implementation == impl }.map(\.requestsPerSecond).sorted()
            return v.isEmpty ? 0 : v[v.count / 2]
        }
        public var swiftRequestsPerSecond: Double { median(.swift) }
        public var cRequestsPerSecond: Double { median(.c) }
        /// The median of each round's Swift/C ratio: a round runs C then Swift
        /// back to back, so slow drifts of a shared machine cancel out.
        public var ratio: Double {
            let c = pure.filter { $0.implementation == .c }, s = pure.filter { $0.implementation == .swift }
            let ratios = zip(s, c).map { $0.requestsPerSecond / $1.requestsPerSecond }.sorted()
            return ratios.isEmpty ? 0 : ratios[ratios.count / 2]
        }
        /// Mallocs per request over every Swift run; nil if the counter is inactive.
        public var allocationsPerRequest: Double? {
            let swiftRuns = pure.filter { $0.implementation == .swift }
            var total = 0
            for r in swiftRuns { guard let m = r.mallocs else { return nil }; total += m }
            return Double(total) / Double(configuration.requests * UInt64(swiftRuns.count))
        }
        public func notificationsPerRequest(_ impl: Implementation) -> Double {
            let r = pure.filter { $0.implementation == impl }
            let n = r.reduce(0) { $0 + $1.frontend.notifications + $1.backend.notifications }
            return Double(n) / Double(configuration.requests * UInt64(max(r.count, 1)))
        }
        public var failures: [String] {
            runs.flatMap { run -> [String] in
                var f: [String] = []
                if let e = run.frontend.error { f.append("\(run.implementation) frontend: \(e)") }
                if let e = run.backend.error { f.append("\(run.implementation) backend: \(e)") }
                if run.frontend.badResponses > 0 { f.append("\(run.implementation): \(run.frontend.badResponses) bad responses") }
                if run.frontend.completed != configuration.requests { f.append("\(run.implementation): \(run.frontend.completed) of \(configuration.requests) completed") }
                return f
            }
        }
    }

    public let configuration: Configuration
    public init(_ configuration: Configuration) { self.configuration = configuration }

    public func run(progress: (Run) -> Void = { _ in }) throws -> Report {
        var runs: [Run] = []
        for _ in 0..<configuration.rounds {
            var pairs: [(Implementation, Implementation)] = [(.c, .c), (.swift, .swift)]
            if configuration.mixed { pairs += [(.c, .swift), (.swift, .c)] }
            for (front, back) in pairs {
                let r = try Self.runPair(frontend: front, backend: back, configuration: configuration, start: RingIndex(0))
                progress(r)
                runs.append(r)
            }
        }
        let size = SharedRingMemory.ringSize(byteCount: configuration.pages * 4096, entrySize: BlockRingX86_64.entrySize)
        return Report(configuration: configuration, runs: runs, ringSize: size)
    }

    /// One run with any pairing of Swift and C ends (the interop tests mix
    /// them). The frontend's implementation initialises the shared header;
    /// `start` sets every index, so a run can cross the 2^32 wrap.
    public static func runPair(frontend frontImpl: Implementation, backend backImpl: Implementation,
                               configuration: Configuration, start: RingIndex) throws -> Run {
        // SAFETY: `pages` owns the ring area; withExtendedLifetime below keeps
        // it mapped until both peer threads, which borrow it, are joined.
        let pages = RingPages(pageCount: configuration.pages)
        let memory = try SharedRingMemory(base: pages.base, pageCount: configuration.pages)
        switch frontImpl {
        case .swift: _ = try FrontRing<BlockRingX86_64>(initializing: memory, at: start)
        case .c: cxr_shared_init(pages.base, start.rawValue)
        }
        let toBackend = try EventFD(), toFrontend = try EventFD()
        let config = configuration
        let ready = Atomic<Int>(0)
        let go = Atomic<Bool>(false)
        let (frontFD, backFD) = (toFrontend.fd, toBackend.fd)
        let frontStats = Mutex(PeerStats()), backStats = Mutex(PeerStats())

        // Frontend on CPU 0, backend on CPU 1 when there are two, for both
        // implementations alike; otherwise the scheduler's placement is noise.
        let pin = CXenShims_available_cpus() >= 2
        func waitForGo() {
            AllocationCounter.measureThisThread()
            // Releasing add / acquiring load: each peer's setup is done before
            // the main thread sees it ready, and the start signal before we go.
            ready.add(1, ordering: .releasing)
            while !go.load(ordering: .acquiring) { sched_yield() }
        }
        return withoutActuallyEscaping(waitForGo) { waitForGo in
            nonisolated(unsafe) let waitForGo = waitForGo
            let front = JoinableThread {
                if pin { _ = CXenShims_pin_current_thread(0) }
                waitForGo()
                let s: PeerStats
                switch frontImpl {
                case .swift:
                    s = RingPeer.runFrontend(memory: memory, start: start, requests: config.requests, mode: config.mode,
                                             kickFD: backFD, waitFD: frontFD)
                case .c:
                    var c = cxr_peer_stats()
                    cxr_run_frontend(memory.base, memory.byteCount, start.rawValue, config.requests,
                                     config.mode == .eventfd ? Int32(CXR_MODE_EVENTFD) : Int32(CXR_MODE_POLL), backFD, frontFD, &c)
                    s = PeerStats(c)
                }
                frontStats.withLock { $0 = s }
            }
            let back = JoinableThread {
                if pin { _ = CXenShims_pin_current_thread(1) }
                waitForGo()
                let s: PeerStats
                switch backImpl {
                case .swift:
                    s = RingPeer.runBackend(memory: memory, start: start, requests: config.requests, mode: config.mode,
                                            kickFD: frontFD, waitFD: backFD)
                case .c:
                    var c = cxr_peer_stats()
                    cxr_run_backend(memory.base, memory.byteCount, start.rawValue, config.requests,
                                    config.mode == .eventfd ? Int32(CXR_MODE_EVENTFD) : Int32(CXR_MODE_POLL), frontFD, backFD, &c)
                    s = PeerStats(c)
                }
                backStats.withLock { $0 = s }
            }
            // Acquiring, pairing with the peers' releasing adds; the releasing
            // store of `go` below pairs with their acquiring loads.
            while ready.load(ordering: .acquiring) < 2 { sched_yield() }
            AllocationCounter.start()
            let t0 = monotonicSeconds()
            go.store(true, ordering: .releasing)
            front.join()
            back.join()
            let seconds = monotonicSeconds() - t0
            let mallocs = AllocationCounter.stop()
            withExtendedLifetime(pages) {}  // the ring pages and eventfds outlive both threads
            _ = toBackend.fd; _ = toFrontend.fd
            return Run(implementation: frontImpl, backendImplementation: backImpl, seconds: seconds,
                       requestsPerSecond: Double(config.requests) / seconds,
                       frontend: frontStats.withLock { $0 }, backend: backStats.withLock { $0 },
                       mallocs: mallocs)
        }
    }
}

extension PeerStats {
    init(_ c: cxr_peer_stats) {
        self.init()
        completed = c.completed
        notifications = c.notifications
        sleeps = c.sleeps
        badResponses = c.bad_responses
        switch c.error {
        case Int32(CXR_OK): error = nil
        case Int32(CXR_ERROR_OVERFLOW): error = .overflow("C peer saw an impossible producer index")
        case Int32(CXR_ERROR_TIMEOUT): error = .lostWakeup
        default: error = .system("C peer I/O", EIO)
        }
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

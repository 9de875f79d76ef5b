import ArgumentParser
import XenRingBenchmark

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks, each side by side with its baseline; the last line of output is JSON.",
        subcommands: [RingBenchCommand.self, BlockBenchCommand.self, BlockLimitBenchCommand.self, NetBenchCommand.self])
}

extension WaitMode: ExpressibleByArgument {}

struct RingBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ring",
        abstract: "Swift rings vs Xen's C ring.h macros: blkif requests between two threads.")

    @Option(help: "How each side waits: eventfd (sleep after a final check) or poll (spin).")
    var mode: WaitMode = .eventfd

    @Option(help: "Requests per run.")
    var requests: UInt64 = 10_000_000

    @Option(help: "Ring pages, 1...16 (multi-page ring).")
    var pages: Int = 1

    @Option(help: "Runs of each implementation, alternating; the median is reported.")
    var rounds: Int = 3

    @Flag(help: "Also run C frontend + Swift backend and Swift frontend + C backend.")
    var mixed = false

    func validate() throws {
        guard (1...16).contains(pages) else { throw ValidationError("--pages must be 1...16, got \(pages)") }
        guard requests > 0 else { throw ValidationError("--requests must be positive") }
        guard rounds > 0 else { throw ValidationError("--rounds must be positive") }
    }

    func run() throws {
        let bench = RingBenchmark(.init(mode: mode, requests: requests, pages: pages, rounds: rounds, mixed: mixed))
        print("ring benchmark: mode \(mode.rawValue), \(requests) blkif requests per run, \(pages) page(s), \(rounds) round(s)")
        print("front/back  seconds   requests/s    notifies/req  sleeps(front/back)")
        let report = try bench.run { r in
            let notes = Double(r.frontend.notifications + r.backend.notifications) / Double(requests)
            print("\((r.implementation.rawValue + "/" + r.backendImplementation.rawValue).padding(11))\(fmt(r.seconds, 3).padding(10))\(fmt(r.requestsPerSecond, 0).padding(14))\(fmt(notes, 4).padding(14))\(r.frontend.sleeps)/\(r.backend.sleeps)")
        }
        for failure in report.failures { print("FAILED: \(failure)") }
        if mixed {
            print("mixed medians: C front + Swift back \(fmt(report.median(frontend: .c, backend: .swift), 0)) rps, Swift front + C back \(fmt(report.median(frontend: .swift, backend: .c), 0)) rps")
        }
        let allocs = report.allocationsPerRequest.map { fmt($0, 6) } ?? "null"
        print("ring size \(report.ringSize) slots; median swift \(fmt(report.swiftRequestsPerSecond, 0)) rps, C \(fmt(report.cRequestsPerSecond, 0)) rps, ratio (median of rounds) \(fmt(report.ratio, 3)), allocations/request \(allocs)")
        print("{\"bench\":\"ring\",\"mode\":\"\(mode.rawValue)\",\"requests\":\(requests),\"pages\":\(pages),\"rounds\":\(rounds),\"swift_rps\":\(fmt(report.swiftRequestsPerSecond, 0)),\"c_rps\":\(fmt(report.cRequestsPerSecond, 0)),\"ratio\":\(fmt(report.ratio, 3)),\"allocs_per_request\":\(allocs),\"swift_notifies_per_request\":\(fmt(report.notificationsPerRequest(.swift), 4)),\"c_notifies_per_request\":\(fmt(report.notificationsPerRequest(.c), 4)),\"ok\":\(report.failures.isEmpty)}")
        if !report.failures.isEmpty { throw ExitCode.failure }
    }
}

func fmt(_ v: Double, _ digits: Int) -> String {
    var s = String(format: v, digits: digits)
    if s == "-0" { s = "0" }
    return s
}

extension String {
    /// Formats without Foundation: rounds to `digits` decimals.
    init(format v: Double, digits: Int) {
        if digits == 0 { self = String(Int64(v.rounded())); return }
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let scaled = Int64((abs(v) * scale).rounded())
        let whole = scaled / Int64(scale), frac = scaled % Int64(scale)
        var f = String(frac)
        while f.count < digits { f = "0" + f }
        self = (v < 0 && scaled != 0 ? "-" : "") + "\(whole).\(f)"
    }
    func padding(_ n: Int) -> String { count >= n ? self + " " : self + String(repeating: " ", count: n - count) }
}

import ArgumentParser
import XenSim
import XenStore
import XenStoreProtocol
#if canImport(Glibc)
import Glibc
import XenBus
#endif

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Each block device and network interface a backend domain serves: its state, what was negotiated, and its counters.",
        discussion: "States and features come from xenstore; counters from xenbackd's --metrics-file.")

    @Option(help: "A running sim's control socket (default: the system's xenstored).") var sim: String?
    @Option(help: "xenbackd's --metrics-file, for the counters.") var metricsFile: String?
    @Option(help: "The backend domain.") var domain: UInt16 = 0

    func run() async throws {
        let xenstore: XenStoreClient
        if let sim { xenstore = try await SimClient(socketPath: sim).xenstore(as: .dom0) } else { xenstore = try await XenStoreClient.connectToSystem() }
        let counters = try metricsFile.map(Self.readMetrics) ?? [:]
        let root = "/local/domain/\(domain)/backend/vbd"
        print("device          state         frontend      params                          queues order protocol    persistent  rd_req    wr_req    f_req  errors  spurious")
        var count = 0
        for dom in (try? await xenstore.directory(root)) ?? [] {
            for devid in (try? await xenstore.directory(root + "/" + dom)) ?? [] {
                let b = "\(root)/\(dom)/\(devid)"
                func key(_ path: String) async -> String? { try? await xenstore.readIfPresent(path) }
                let frontendPath = await key(b + "/frontend") ?? ""
                func stateName(_ text: String?) -> String {
                    text.flatMap { UInt32($0) }.flatMap { XenbusState(rawValue: $0) }.map { "\($0)" } ?? "-"
                }
                let state = stateName(await key(b + "/state"))
                let frontState = stateName(await key(frontendPath + "/state"))
                let queues = await key(frontendPath + "/multi-queue-num-queues") ?? "1"
                let order = await key(frontendPath + "/ring-page-order") ?? "0"
                let proto = await key(frontendPath + "/protocol") ?? "-"
                let persistent = await key(b + "/feature-persistent") ?? "-"
                let params = await key(b + "/params") ?? "-"
                func counter(_ name: String, _ op: String? = nil) -> String {
                    var labels = "domid=\"\(dom)\",devid=\"\(devid)\""
                    if let op { labels += ",op=\"\(op)\"" }
                    return counters["\(name){\(labels)}"].map { String(Int($0)) } ?? "-"
                }
                var row = "dom\(dom)/\(devid)".padding(16) + state.padding(14) + frontState.padding(14)
                row += String(params.suffix(30)).padding(32) + queues.padding(7) + order.padding(6)
                row += proto.padding(12) + persistent.padding(12)
                row += counter("xenback_block_requests_total", "read").padding(10)
                row += counter("xenback_block_requests_total", "write").padding(10)
                row += counter("xenback_block_requests_total", "flush").padding(7)
                row += counter("xenback_block_errors_total").padding(8) + counter("xenback_block_spurious_events_total")
                print(row)
                count += 1
            }
        }
        if count == 0 { print("(no block devices under \(root))") }
        print("")
        try await printInterfaces(xenstore, counters: counters)
        await xenstore.close()
    }

    private func printInterfaces(_ xenstore: XenStoreClient, counters: [String: Double]) async throws {
        let root = "/local/domain/\(domain)/backend/vif"
        print("interface       state         frontend      bridge        queues split gso   mcast  tx_pkts    rx_pkts    tx_err  rx_drop  spurious")
        var count = 0
        for dom in (try? await xenstore.directory(root)) ?? [] {
            for handle in (try? await xenstore.directory(root + "/" + dom)) ?? [] {
                let b = "\(root)/\(dom)/\(handle)"
                func key(_ path: String) async -> String? { try? await xenstore.readIfPresent(path) }
                let frontendPath = await key(b + "/frontend") ?? ""
                func stateName(_ text: String?) -> String {
                    text.flatMap { UInt32($0) }.flatMap { XenbusState(rawValue: $0) }.map { "\($0)" } ?? "-"
                }
                let splitSingle = await key(frontendPath + "/event-channel-tx"), splitQueues = await key(frontendPath + "/queue-0/event-channel-tx")
                let split = splitSingle != nil || splitQueues != nil
                let gso = await key(frontendPath + "/feature-gso-tcpv4") == "1"
                let mcast = await key(frontendPath + "/request-multicast-control") == "1"
                func counter(_ name: String, _ direction: String? = nil) -> String {
                    var labels = "domid=\"\(dom)\",handle=\"\(handle)\""
                    if let direction { labels += ",direction=\"\(direction)\"" }
                    return counters["\(name){\(labels)}"].map { String(Int($0)) } ?? "-"
                }
                var row = "vif\(dom).\(handle)".padding(16) + stateName(await key(b + "/state")).padding(14)
                row += stateName(await key(frontendPath + "/state")).padding(14) + (await key(b + "/bridge") ?? "-").padding(14)
                row += (await key(frontendPath + "/multi-queue-num-queues") ?? "1").padding(7) + (split ? "yes" : "no").padding(6)
                row += (gso ? "yes" : "no").padding(6) + (mcast ? "yes" : "no").padding(7)
                row += counter("xenback_net_packets_total", "tx").padding(11) + counter("xenback_net_packets_total", "rx").padding(11)
                row += counter("xenback_net_errors_total", "tx").padding(8) + counter("xenback_net_dropped_total", "rx").padding(9)
                row += counter("xenback_net_spurious_events_total")
                print(row)
                count += 1
            }
        }
        if count == 0 { print("(no network interfaces under \(root))") }
    }

    /// "name{labels} value" lines of a Prometheus text file, labels sorted as written.
    static func readMetrics(_ path: String) throws -> [String: Double] {
        guard let file = fopen(path, "r") else { throw ValidationError("cannot read --metrics-file \(path): \(String(cString: strerror(errno)))") }
        defer { fclose(file) }
        var out: [String: Double] = [:]
        var buffer = [CChar](repeating: 0, count: 4096)
        while fgets(&buffer, Int32(buffer.count), file) != nil {
            let line = String(decoding: buffer.prefix { $0 != 0 && $0 != 10 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            guard !line.hasPrefix("#"), let space = line.lastIndex(of: " ") else { continue }
            out[String(line[..<space])] = Double(line[line.index(after: space)...])
        }
        return out
    }
}

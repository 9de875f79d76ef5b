import Foundation
import Testing
import XenBackendDaemon
import XenBlockBackend
import XenNetBackend
import XenProtocolTesting
import XenNetDevice

@Suite struct DaemonConfigurationTests {
    func parse(_ json: String) throws(ConfigurationError) -> DaemonConfiguration {
        try DaemonConfiguration.parse(Data(json.utf8), source: "test.json")
    }

    @Test func aFullFileSetsEverything() throws {
        let c = try parse("""
            { "block": { "engine": "io_uring", "maxQueues": 2, "maxRingPageOrder": 3, "maxIndirectSegments": 64,
                         "persistentGrants": 0, "directIO": false, "pollMicroseconds": 5 },
              "metrics": { "file": "/tmp/x.prom" }, "log": { "level": "debug" } }
            """)
        let b = try c.blockConfiguration()
        #expect(b == BlockBackendConfiguration(engine: .ioUring, maximumQueues: 2, maximumRingPageOrder: 3, maximumIndirectSegments: 64,
                                               directIO: false, maximumPersistentGrants: 0, pollMicroseconds: 5))
        #expect(c.metrics?.file == "/tmp/x.prom" && c.log?.level == "debug")
        #expect(try parse("{}").blockConfiguration() == BlockBackendConfiguration(), "an empty file keeps the defaults")
    }

    @Test func theNetworkSection() throws {
        let c = try parse(#"""
            { "net": { "maxQueues": 2, "captureDirectory": "/tmp", "namespace": "/proc/self/ns/net", "receiveQueueBytes": 131072,
                       "stallMilliseconds": 5000, "parkAfterMilliseconds": 0, "rate": "125000,10000" } }
            """#)
        let n = try c.netConfiguration()
        var expected = NetBackendConfiguration(maximumQueues: 2, namespace: NetworkNamespace(path: "/proc/self/ns/net"), captureDirectory: "/tmp",
                                               receiveQueueBytes: 131_072, receiveStallMilliseconds: 5000, parkAfterMilliseconds: 0)
        expected.defaultRate = NetRate(bytes: 125_000, microseconds: 10_000)
        #expect(n == expected)
        #expect(try parse("{}").netConfiguration() == NetBackendConfiguration(), "an empty file keeps the defaults")
        let bad: [(String, String)] = [
            (#"{ "net": { "rate": "fast" } }"#, "net.rate"),
            (#"{ "net": { "captureDirectory": "/nonexistent" } }"#, "net.captureDirectory"),
            (#"{ "net": { "namespace": "/var/run/netns/nope" } }"#, "net.namespace"),
            (#"{ "net": { "maxQueues": 99 } }"#, "maximum queues 99"),
            (#"{ "net": { "queues": 2 } }"#, "net.queues"),
        ]
        for (json, mention) in bad {
            do {
                _ = try parse(json)
                Issue.record("accepted: \(json)")
            } catch {
                #expect("\(error)".contains(mention), "\(json): \(error)")
            }
        }
    }

    @Test func everyBadValueNamesItsKey() {
        let cases: [(String, ConfigurationError)] = [
            (#"{ "blok": {} }"#, .unknownKey(source: "test.json", key: "blok")),
            (#"{ "block": { "maxQueue": 2 } }"#, .unknownKey(source: "test.json", key: "block.maxQueue")),
            (#"{ "block": { "maxQueues": "four" } }"#, .badValue(source: "test.json", key: "block.maxQueues", reason: "must be a whole number")),
            (#"{ "block": { "directIO": 1 } }"#, .badValue(source: "test.json", key: "block.directIO", reason: "must be true or false")),
            (#"{ "block": { "engine": "posix" } }"#, .badValue(source: "test.json", key: "block.engine", reason: "\"posix\" is not one of sync, libaio, io_uring")),
            (#"{ "log": { "level": "loud" } }"#, .badValue(source: "test.json", key: "log.level", reason: "\"loud\" is not one of trace, debug, info, notice, warning, error, critical")),
            (#"{ "block": 3 }"#, .badValue(source: "test.json", key: "block", reason: "must be an object")),
            ("{ not json", .malformed(source: "test.json", reason: "not valid JSON")),
        ]
        for (json, expected) in cases {
            #expect(throws: expected, "\(json)") { try parse(json) }
        }
        // Out of range: the message says which setting and its bounds.
        do {
            _ = try parse(#"{ "block": { "maxRingPageOrder": 9 } }"#)
            Issue.record("order 9 accepted")
        } catch {
            #expect("\(error)".contains("maximum ring page order 9 is not in 0...4"), "\(error)")
        }
    }

    @Test func xenbackdRefusesABadFileWithItsReason() throws {
        let xenbackd = try #require(builtProduct("xenbackd"))
        let path = "/tmp/xenbackd-bad-\(getpid()).json"
        try Data(#"{ "block": { "maxQueues": 0 } }"#.utf8).write(to: URL(fileURLWithPath: path))
        defer { unlink(path) }
        let (status, output) = runShell("\(xenbackd) --platform sim --sim-socket /nonexistent --config \(path) 2>&1")
        #expect(status != 0)
        #expect(output.contains("maximum queues 0 is not in 1...64") && output.contains(path), "\(output)")
    }

    @Test func xenbackdRefusesAMetricsAddressItCannotUse() throws {
        let xenbackd = try #require(builtProduct("xenbackd"))
        let (badStatus, badOutput) = runShell("\(xenbackd) --platform sim --sim-socket /nonexistent --metrics-listen 127.0.0.1 2>&1")
        #expect(badStatus != 0 && badOutput.contains("--metrics-listen must be ADDRESS:PORT") && badOutput.contains("got 127.0.0.1"), "\(badOutput)")
        // A well-formed address that cannot be bound fails before any device is served.
        let (status, output) = runShell("\(xenbackd) --platform sim --sim-socket /nonexistent --metrics-listen 192.0.2.1:9512 2>&1")
        #expect(status != 0 && output.contains("--metrics-listen 192.0.2.1:9512: cannot listen there"), "\(output)")
    }
}

import Foundation
import XenBlockBackend
import XenNetBackend
import XenNetDevice
import XenDisk

/// xenbackd's configuration file (JSON). Every key is optional; command-line
/// flags override it. Unknown keys and values of the wrong type or out of
/// range are errors that name the key, so a typo never silently becomes a
/// default. (swift-configuration would return the default for a value of
/// the wrong type; Foundation's decoder reports the key path.)
///
/// ```json
/// { "block": { "engine": "libaio", "maxQueues": 4, "maxRingPageOrder": 4,
///              "maxIndirectSegments": 256, "persistentGrants": 4096,
///              "directIO": true, "pollMicroseconds": 0, "parkAfterMilliseconds": 1000 },
///   "net": { "maxQueues": 2, "captureDirectory": "/var/lib/xenback/pcap",
///            "namespace": "/var/run/netns/guests", "receiveQueueBytes": 524288,
///            "stallMilliseconds": 60000, "parkAfterMilliseconds": 1000, "rate": "12500000,50000" },
///   "metrics": { "file": "/var/lib/node_exporter/xenback.prom" },
///   "log": { "level": "info" } }
/// ```
public struct DaemonConfiguration: Codable, Sendable, Equatable {
    public struct Block: Codable, Sendable, Equatable {
        public var engine: String?
        public var maxQueues: Int?
        public var maxRingPageOrder: Int?
        public var maxIndirectSegments: Int?
        public var persistentGrants: Int?
        public var directIO: Bool?
        public var pollMicroseconds: Int?
        public var parkAfterMilliseconds: Int?
    }
    public struct Net: Codable, Sendable, Equatable {
        public var maxQueues: Int?
        public var captureDirectory: String?
        public var namespace: String?
        public var receiveQueueBytes: Int?
        public var stallMilliseconds: Int?
        public var parkAfterMilliseconds: Int?
        /// "bytes,usec" for VIFs without a `rate` key.
        public var rate: String?
    }
    public struct Metrics: Codable, Sendable, Equatable {
        public var file: String?
    }
    public struct Log: Codable, Sendable, Equatable {
        public var level: String?
    }
    public var block: Block?
    public var net: Net?
    public var metrics: Metrics?
    public var log: Log?

    public init() {}

    static let knownKeys: [String: Set<String>] = [
        "": ["block", "net", "metrics", "log"],
        "net": ["maxQueues", "captureDirectory", "namespace", "receiveQueueBytes", "stallMilliseconds", "parkAfterMilliseconds", "rate"],
        "block": ["engine", "maxQueues", "maxRingPageOrder", "maxIndirectSegments", "persistentGrants", "directIO", "pollMicroseconds", "parkAfterMilliseconds"],
        "metrics": ["file"],
        "log": ["level"],
    ]

    /// Reads and checks `path`.
    public static func load(path: String) throws(ConfigurationError) -> DaemonConfiguration {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw .unreadable(path: path, reason: "\(error.localizedDescription)")
        }
        return try parse(data, source: path)
    }

    public static func parse(_ data: Data, source: String) throws(ConfigurationError) -> DaemonConfiguration {
        let tree: Any
        do { tree = try JSONSerialization.jsonObject(with: data) } catch {
            throw .malformed(source: source, reason: "not valid JSON")
        }
        guard let top = tree as? [String: Any] else { throw .malformed(source: source, reason: "the top level must be an object") }
        for key in top.keys.sorted() where !knownKeys[""]!.contains(key) { throw .unknownKey(source: source, key: key) }
        for (section, known) in knownKeys where !section.isEmpty {
            guard let value = top[section] else { continue }
            guard let object = value as? [String: Any] else { throw .badValue(source: source, key: section, reason: "must be an object") }
            for key in object.keys.sorted() where !known.contains(key) { throw .unknownKey(source: source, key: "\(section).\(key)") }
        }
        let configuration: DaemonConfiguration
        do { configuration = try JSONDecoder().decode(DaemonConfiguration.self, from: data) } catch let error as DecodingError {
            switch error {
            case .typeMismatch(let type, let context), .valueNotFound(let type, let context):
                throw .badValue(source: source, key: context.codingPath.map(\.stringValue).joined(separator: "."), reason: "must be \(describe(type))")
            default:
                throw .malformed(source: source, reason: "\(error)")
            }
        } catch {
            throw .malformed(source: source, reason: "\(error)")
        }
        _ = try configuration.blockConfiguration(source: source)
        _ = try configuration.netConfiguration(source: source)
        if let level = configuration.log?.level, !["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(level) {
            throw .badValue(source: source, key: "log.level", reason: "\"\(level)\" is not one of trace, debug, info, notice, warning, error, critical")
        }
        return configuration
    }

    private static func describe(_ type: Any.Type) -> String {
        switch type {
        case is Int.Type: "a whole number"
        case is Bool.Type: "true or false"
        case is String.Type: "a string"
        default: "\(type)"
        }
    }

    /// The block settings over `base` (the built-in defaults unless given).
    public func blockConfiguration(over base: BlockBackendConfiguration = BlockBackendConfiguration(),
                                   source: String = "configuration") throws(ConfigurationError) -> BlockBackendConfiguration {
        var c = base
        guard let b = block else { return c }
        if let e = b.engine {
            guard let kind = BlockEngineKind(rawValue: e) else {
                throw .badValue(source: source, key: "block.engine", reason: "\"\(e)\" is not one of \(BlockEngineKind.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            c.engine = kind
        }
        if let v = b.maxQueues { c.maximumQueues = v }
        if let v = b.maxRingPageOrder { c.maximumRingPageOrder = v }
        if let v = b.maxIndirectSegments { c.maximumIndirectSegments = v }
        if let v = b.persistentGrants { c.maximumPersistentGrants = v }
        if let v = b.directIO { c.directIO = v }
        if let v = b.pollMicroseconds { c.pollMicroseconds = v }
        if let v = b.parkAfterMilliseconds { c.parkAfterMilliseconds = v }
        do { try c.validate() } catch {
            throw .badValue(source: source, key: "block", reason: "\(error)")
        }
        return c
    }
}

extension DaemonConfiguration {
    /// The network settings over `base` (the built-in defaults unless given).
    public func netConfiguration(over base: NetBackendConfiguration = NetBackendConfiguration(),
                                 source: String = "configuration") throws(ConfigurationError) -> NetBackendConfiguration {
        var c = base
        guard let n = net else { return c }
        if let v = n.maxQueues { c.maximumQueues = v }
        if let v = n.captureDirectory {
            var st = stat()
            guard stat(v, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else {
                throw .badValue(source: source, key: "net.captureDirectory", reason: "\"\(v)\" is not a directory")
            }
            c.captureDirectory = v
        }
        if let v = n.namespace {
            guard access(v, R_OK) == 0 else {
                throw .badValue(source: source, key: "net.namespace", reason: "\"\(v)\" does not exist (ip netns add NAME makes /var/run/netns/NAME)")
            }
            c.namespace = NetworkNamespace(path: v)
        }
        if let v = n.receiveQueueBytes { c.receiveQueueBytes = v }
        if let v = n.stallMilliseconds { c.receiveStallMilliseconds = v }
        if let v = n.parkAfterMilliseconds { c.parkAfterMilliseconds = v }
        if let v = n.rate {
            guard let r = NetRate(xenstoreValue: v) else {
                throw .badValue(source: source, key: "net.rate", reason: "\"\(v)\" is not \"bytes,microseconds\" with both positive")
            }
            c.defaultRate = r
        }
        do { try c.validate() } catch {
            throw .badValue(source: source, key: "net", reason: "\(error)")
        }
        return c
    }
}

public enum ConfigurationError: Error, Equatable, Sendable, CustomStringConvertible {
    case unreadable(path: String, reason: String)
    case malformed(source: String, reason: String)
    case unknownKey(source: String, key: String)
    case badValue(source: String, key: String, reason: String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason): "cannot read \(path): \(reason)"
        case .malformed(let source, let reason): "\(source): \(reason)"
        case .unknownKey(let source, let key): "\(source): unknown key \"\(key)\""
        case .badValue(let source, let key, let reason): "\(source): \(key) \(reason)"
        }
    }
}

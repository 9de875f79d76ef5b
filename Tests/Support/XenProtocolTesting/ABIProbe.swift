@_exported import XenProcess
#if canImport(Glibc)
import Glibc
#endif
import XenProcess

/// Facts about Xen's public headers as gcc lays them out, read by compiling
/// and running tools/abi-probe/abi-probe.c against Debian's libxen-dev.
/// Tests compare our Swift layouts and constants to these; nobody here wrote
/// the headers, so agreement is evidence, not tautology.
public struct ABIProbe: Sendable {
    public enum Target: String, Sendable { case x86_64 = "64", x86_32 = "32" }

    public let facts: [String: String]

    public static let x86_64: Result<ABIProbe, ProbeError> = Result { () throws(ProbeError) in try ABIProbe(.x86_64) }
    public static let x86_32: Result<ABIProbe, ProbeError> = Result { () throws(ProbeError) in try ABIProbe(.x86_32) }

    public struct ProbeError: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    init(_ target: Target) throws(ProbeError) {
        let source = repositoryRoot + "/tools/abi-probe/abi-probe.c"
        let binary = "/tmp/xenback-abi-probe-\(getpid())-\(target.rawValue)"
        let compile = "gcc -m\(target.rawValue) -O0 -o \(binary) \(source) 2>&1"
        let (status, compilerOutput) = runShell(compile)
        guard status == 0 else {
            throw ProbeError(description: "compiling the ABI probe (-m\(target.rawValue)) failed; run tools/setup.sh (libxen-dev, gcc-multilib):\n\(compilerOutput)")
        }
        let (runStatus, output) = runShell(binary)
        unlink(binary)
        guard runStatus == 0 else { throw ProbeError(description: "ABI probe exited \(runStatus)") }
        var facts: [String: String] = [:]
        for line in output.split(separator: "\n") {
            guard let space = line.firstIndex(of: " ") else { continue }
            facts[String(line[..<space])] = String(line[line.index(after: space)...])
        }
        self.facts = facts
    }

    /// An integer fact, e.g. `int("sizeof.blkif_request")`.
    public func int(_ key: String) -> Int? { facts[key].flatMap { Int($0) } }

    /// A byte dump, e.g. `bytes("vector.blkif_request_write3")`.
    public func bytes(_ key: String) -> [UInt8]? { facts[key].flatMap(Hex.decode) }
}

/// The checkout's root, found from this file's location.
public let repositoryRoot: String = {
    var path = #filePath
    for _ in 0..<4 { path = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)]) }
    return path
}()

/// Runs a shell command, returning its exit status and standard output.
public enum Hex {
    public static func decode(_ text: String) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 2)
        var i = 0
        while i < chars.count {
            guard let hi = nibble(chars[i]), let lo = nibble(chars[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }
    public static func encode(_ bytes: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var s: [UInt8] = []
        for b in bytes { s.append(digits[Int(b >> 4)]); s.append(digits[Int(b & 15)]) }
        return String(decoding: s, as: UTF8.self)
    }
    static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: c - 48
        case 97...102: c - 87
        case 65...70: c - 55
        default: nil
        }
    }
}

/// The golden vectors in protocols/vectors/NAME.vectors: "name hex" lines.
public struct GoldenVectors: Sendable {
    public let vectors: [String: [UInt8]]
    public init(_ file: String) throws {
        let path = repositoryRoot + "/protocols/vectors/\(file).vectors"
        guard let f = fopen(path, "r") else { throw ABIProbe.ProbeError(description: "cannot open \(path)") }
        defer { fclose(f) }
        var text = ""
        var buffer = [CChar](repeating: 0, count: 4096)
        while fgets(&buffer, Int32(buffer.count), f) != nil {
            text += String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        var v: [String: [UInt8]] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let parts = line.split(separator: " ")
            guard parts.count == 2, let bytes = Hex.decode(String(parts[1])) else { continue }
            v[String(parts[0])] = bytes
        }
        vectors = v
    }
    public subscript(name: String) -> [UInt8]? { vectors[name] }
}

/// The path of product `name` built next to the running test binary
/// (`swift build --build-tests` builds every product), nil if it is not there.
public func builtProduct(_ name: String) -> String? { siblingExecutable(name) }

/// A sparse temporary disk image, removed when released.
public final class TempDisk {
    public let path: String

    public init(megabytes: Int) {
        var template = Array("/tmp/xenback-disk-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        precondition(fd >= 0, "cannot create a disk image in /tmp: errno \(errno)")
        // The template is NUL-terminated; mkstemp filled in its X's.
        path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        ftruncate(fd, off_t(megabytes) << 20)
        close(fd)
    }

    deinit { unlink(path) }

    public func read(_ offset: Int, _ count: Int) -> [UInt8] {
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var b = [UInt8](repeating: 0, count: count)
        _ = pread(fd, &b, count, off_t(offset))
        return b
    }

    public func write(_ offset: Int, _ bytes: [UInt8]) {
        let fd = open(path, O_RDWR)
        defer { close(fd) }
        _ = pwrite(fd, bytes, bytes.count, off_t(offset))
        fsync(fd)
    }

    public var allocatedBlocks: Int {
        var st = stat()
        stat(path, &st)
        return Int(st.st_blocks)
    }
}

/// Runs blocking work (a child process, a wait on a pipe) on a thread of its
/// own and awaits it, so async tests do not pin one of the few threads of
/// the cooperative pool that other tests' xenstore clients need.
public func offThePool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
        let job = Unmanaged.passRetained(OffPoolJob { continuation.resume(with: Result { try body() }) }).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { arg in
            // SAFETY: arg is the retained Job passed below; this thread owns it.
            Unmanaged<OffPoolJob>.fromOpaque(arg!).takeRetainedValue().run()
            return nil
        }, job)
        if rc == 0 { pthread_detach(thread) } else {
            Unmanaged<OffPoolJob>.fromOpaque(job).release()
            continuation.resume(throwing: ThreadStartFailed(code: rc))
        }
    }
}

public struct ThreadStartFailed: Error { public var code: Int32 }

final class OffPoolJob: @unchecked Sendable {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}

import XenSystem
#if canImport(Glibc)
import Glibc
#endif

/// Pages in a memfd, mapped shared into this process. The memfd can be
/// mapped again (a grant mapping is a second view of a guest page) and
/// passed to other processes.
final class SharedPages: @unchecked Sendable {
    /// The memfd, owned by this object (the mapping holds its own reference).
    private let descriptor: OwnedDescriptor
    var fd: Int32 { descriptor.raw }
    let pageCount: Int
    /// This process's view of all pages. Owned by this object: unmapped when
    /// it goes.
    private let mapping: MappedMemory
    /// This process's view of all pages; valid while this object lives.
    var base: UnsafeMutableRawPointer { mapping.base }

    convenience init(name: String, pageCount: Int) throws(SimError) {
        let fd: OwnedDescriptor
        do { fd = OwnedDescriptor(adopting: try Syscall.memfdCreate(name).get()) } catch { throw .system("memfd_create", error.code) }
        guard ftruncate(fd.raw, off_t(pageCount * 4096)) == 0 else { throw .system("ftruncate", errno) }
        try self.init(adopting: fd, pageCount: pageCount)
    }

    /// Maps pages of a memfd another process created; owns `fd` from here
    /// (a failed mapping closes it).
    init(adopting fd: consuming OwnedDescriptor, pageCount: Int) throws(SimError) {
        do {
            mapping = try MappedMemory(file: fd.raw, length: pageCount * 4096)
        } catch {
            throw .system("mmap", error.code)
        }
        descriptor = fd
        self.pageCount = pageCount
    }

    /// SAFETY: in bounds only for `frame < pageCount` (callers check); the
    /// pointer is valid while this object lives. The guest (or its process)
    /// writes these pages at any time: callers copy out what they check.
    func page(_ frame: UInt32) -> UnsafeMutableRawPointer { base + Int(frame) * 4096 }
}

public enum SimError: Error, Equatable, Sendable, CustomStringConvertible {
    case system(String, Int32)
    case domainExists(UInt16)
    case noSuchDomain(UInt16)
    case grantTableFull(UInt16)
    case frameOutOfRange(UInt32, pageCount: Int)
    /// The sim server refused a request.
    case remote(operation: String, errno: Int32)

    public var description: String {
        switch self {
        case .system(let call, let e): "\(call) failed: \(String(cString: strerror(e)))"
        case .domainExists(let d): "domain \(d) already exists"
        case .noSuchDomain(let d): "no domain \(d)"
        case .grantTableFull(let d): "grant table of domain \(d) is full"
        case .frameOutOfRange(let f, let n): "frame \(f) is outside the guest's \(n) pages"
        case .remote(let op, let e): "sim server refused \(op): \(String(cString: strerror(e)))"
        }
    }
}

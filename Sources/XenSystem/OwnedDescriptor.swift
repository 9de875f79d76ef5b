import CXenShims
#if canImport(Glibc)
import Glibc
#endif

/// A file descriptor this value owns and closes (through `Syscall.close`)
/// when it ends. Non-copyable, so it is closed exactly once and an
/// initialiser that throws after opening it closes it without a written
/// rollback: the local or the half-initialised object drops it.
/// `raw` is for passing to the kernel (poll, read, ioctl); whoever borrows
/// it must not keep it past the owner's life.
public struct OwnedDescriptor: ~Copyable, Sendable {
    public let raw: Int32

    /// Takes ownership of `raw`, an open descriptor nothing else will close.
    public init(adopting raw: Int32) {
        precondition(raw >= 0, "adopting descriptor \(raw): not a descriptor")
        self.raw = raw
    }

    /// open(2) through the funnel.
    public init(opening path: String, _ flags: Int32) throws(Errno) {
        raw = try Syscall.open(path, flags).get()
    }

    /// eventfd(2) with a zero counter (EFD_CLOEXEC, EFD_NONBLOCK, ...).
    public init(eventfd flags: Int32) throws(Errno) {
        raw = try Syscall.retrying("eventfd") { eventfd(0, flags) }.get()
    }

    /// socket(2); pass SOCK_CLOEXEC in `type`.
    public init(socket domain: Int32, _ type: Int32, _ protocol: Int32 = 0) throws(Errno) {
        raw = try Syscall.retrying("socket") { Glibc.socket(domain, type, `protocol`) }.get()
    }

    /// A close-on-exec duplicate of `fd` (F_DUPFD_CLOEXEC), owned apart
    /// from it: for handing a shared descriptor to an owner of its own.
    public init(duplicating fd: Int32) throws(Errno) {
        raw = try Syscall.retrying("fcntl(F_DUPFD_CLOEXEC)") { fcntl(fd, F_DUPFD_CLOEXEC, 0) }.get()
    }

    /// Gives the descriptor up without closing it: the caller (or the API
    /// it hands it to, such as swift-nio or fdopen) owns it from here on.
    public consuming func take() -> Int32 {
        let fd = raw
        discard self
        return fd
    }

    /// Closes now rather than at the end of the scope (where the order
    /// matters: a peer must see the hang-up before something else happens).
    public consuming func close() {}

    deinit { Syscall.close(raw) }
}

/// Several descriptors owned together, closed together when this value
/// ends: those that arrived in one message, a TAP device's queues, a parked
/// worker's wake descriptors. (An array cannot hold non-copyable values.)
public struct OwnedDescriptors: ~Copyable, Sendable {
    private var descriptors: [Int32]

    public init() { descriptors = [] }

    /// Takes ownership of every descriptor in `raw`.
    public init(adopting raw: [Int32]) {
        precondition(raw.allSatisfy { $0 >= 0 }, "adopting descriptors \(raw): not all descriptors")
        descriptors = raw
    }

    /// For passing to the kernel; owned by this value still.
    public var raw: [Int32] { descriptors }
    public var count: Int { descriptors.count }
    public var isEmpty: Bool { descriptors.isEmpty }

    public mutating func append(_ descriptor: consuming OwnedDescriptor) {
        descriptors.append(descriptor.take())
    }

    public mutating func append(contentsOf other: consuming OwnedDescriptors) {
        descriptors += other.take()
    }

    /// The first descriptor, owned by the caller now.
    public mutating func removeFirst() -> OwnedDescriptor {
        OwnedDescriptor(adopting: descriptors.removeFirst())
    }

    /// The last `k`, owned by the caller now.
    public mutating func removeLast(_ k: Int) -> OwnedDescriptors {
        let last = Array(descriptors.suffix(k))
        descriptors.removeLast(k)
        return OwnedDescriptors(adopting: last)
    }

    /// Closes them now rather than at the end of the scope.
    public consuming func close() {}

    /// Gives every descriptor up without closing them (see OwnedDescriptor.take).
    public consuming func take() -> [Int32] {
        defer { descriptors = [] }
        return descriptors
    }

    deinit { for fd in descriptors { Syscall.close(fd) } }
}

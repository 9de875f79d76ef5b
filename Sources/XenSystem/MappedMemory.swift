#if canImport(Glibc)
import Glibc
#endif

/// A private anonymous mapping this value owns and unmaps when it ends: the
/// backends' bounce and packet buffers, reserved with MAP_NORESERVE so only
/// pages that were touched take memory.
public struct MappedMemory: ~Copyable, @unchecked Sendable {
    /// Valid for `length` bytes until this value is consumed or dropped.
    /// SAFETY: owned by this value alone (non-copyable): borrowers of `base`
    /// must not keep it past the owner's life; deinit unmaps it once.
    public let base: UnsafeMutableRawPointer
    public let length: Int

    /// Reserves `length` bytes of zeroed, readable and writable memory.
    public init(anonymous length: Int) throws(Errno) {
        self.base = try Syscall.mmap(length: length, protection: PROT_READ | PROT_WRITE,
                                     flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, fd: -1, offset: 0).get()
        self.length = length
    }

    /// Maps `length` bytes of `fd` from `offset` (shared), owned by this value.
    public init(file fd: Int32, length: Int, offset: Int64 = 0, protection: Int32 = PROT_READ | PROT_WRITE) throws(Errno) {
        self.base = try Syscall.mmap(length: length, protection: protection, flags: MAP_SHARED, fd: fd, offset: offset).get()
        self.length = length
    }

    deinit { Syscall.munmap(base, length: length) }
}

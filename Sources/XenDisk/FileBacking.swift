import CXenShims
import XenSystem
#if canImport(Glibc)
import Glibc
#endif

public enum BackingError: Error, Equatable, Sendable, CustomStringConvertible {
    case open(path: String, errno: Int32)
    case notADisk(path: String)
    case io(operation: String, errno: Int32)

    public var description: String {
        switch self {
        case .open(let p, let e): "cannot open \(p): \(String(cString: strerror(e)))"
        case .notADisk(let p): "\(p) is neither a regular file nor a block device"
        case .io(let op, let e): "\(op) failed: \(String(cString: strerror(e)))"
        }
    }
}

/// A disk backed by a raw image file or a block device (an LVM logical
/// volume is one): size and sector sizes read from the backing itself,
/// flush as fdatasync, discard as a punched hole (files) or BLKDISCARD /
/// BLKSECDISCARD (devices). Data moves through each ring's `BlockIOEngine`
/// on `fd` (positional I/O, so several rings may share it).
public final class FileBacking: @unchecked Sendable {
    public let path: String
    private let descriptor: OwnedDescriptor
    /// For positional I/O; owned by this backing (closed when it goes).
    public var fd: Int32 { descriptor.raw }
    public let isBlockDevice: Bool
    public let geometry: DiskGeometry
    /// Opened with O_DIRECT: data bypasses dom0's page cache.
    public let isDirect: Bool

    /// Opens `path`; with `direct`, uses O_DIRECT where the backing takes
    /// 512-byte aligned direct I/O (tried once at open), buffered I/O otherwise.
    /// A throw after the open closes the descriptor (it is owned).
    public init(path: String, readOnly: Bool = false, direct: Bool = false) throws(BackingError) {
        let flags = (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC
        let descriptor: OwnedDescriptor
        if direct, let d = try? OwnedDescriptor(opening: path, flags | CXenShims_O_DIRECT()),
           Self.acceptsSectorAlignedDirectIO(d.raw) {
            descriptor = d
            isDirect = true
        } else {
            // A direct descriptor that failed the probe was closed as its binding ended.
            do { descriptor = try OwnedDescriptor(opening: path, flags) } catch { throw .open(path: path, errno: error.code) }
            isDirect = false
        }
        let fd = descriptor.raw
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .open(path: path, errno: errno) }
        let bytes: UInt64, logical: Int, physical: Int
        var discard = !readOnly, secure = false, granularity = 0
        switch st.st_mode & S_IFMT {
        case S_IFREG:
            // Punching holes works in file-system blocks.
            bytes = UInt64(st.st_size); logical = 512; physical = max(512, Int(st.st_blksize))
            granularity = Int(st.st_blksize)
            isBlockDevice = false
        case S_IFBLK:
            var size: UInt64 = 0; var l: Int32 = 0; var p: Int32 = 0
            guard CXenShims_block_device_geometry(fd, &size, &l, &p) == 0 else { throw .open(path: path, errno: errno) }
            bytes = size; logical = Int(l); physical = Int(p)
            isBlockDevice = true
            // What the device's queue says it can do (Linux blkback asks the same queue).
            let queue = Self.sysfsQueue(device: UInt64(st.st_rdev))
            discard = !readOnly && (Self.sysfsNumber(queue + "discard_max_bytes") ?? 0) > 0
            granularity = Self.sysfsNumber(queue + "discard_granularity") ?? 0
            secure = discard && (Self.sysfsNumber(queue + "max_secure_erase_sectors") ?? 0) > 0
        default:
            throw .notADisk(path: path)
        }
        self.path = path
        self.descriptor = descriptor
        var geometry = DiskGeometry(sectors: bytes / 512, logicalSectorSize: logical, physicalSectorSize: physical,
                                    readOnly: readOnly, discard: discard, secureDiscard: secure)
        geometry.discardGranularity = granularity
        self.geometry = geometry
    }

    /// /sys/dev/block/MAJOR:MINOR/queue/ for a device number (glibc's
    /// gnu_dev_major/minor split).
    package static func sysfsQueue(device dev: UInt64) -> String {
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & ~UInt64(0xfff))
        let minor = (dev & 0xff) | ((dev >> 12) & ~UInt64(0xff))
        return "/sys/dev/block/\(major):\(minor)/queue/"
    }

    package static func sysfsNumber(_ path: String) -> Int? {
        guard let file = try? OwnedDescriptor(opening: path, O_RDONLY | O_CLOEXEC) else { return nil }
        var buffer = [UInt8](repeating: 0, count: 64)
        // SAFETY: a view of the local array for the read only (63 of its 64 bytes).
        let result = buffer.withUnsafeMutableBytes { Syscall.read(file.raw, $0.baseAddress!, count: 63) }
        guard case .success(let n) = result, n > 0 else { return nil }
        return Int(String(decoding: buffer[0..<n].prefix { $0 >= 0x30 && $0 <= 0x39 }, as: UTF8.self))
    }

    /// Whether a 512-byte direct read at a 512-byte offset works (file
    /// systems on 4Kn disks, tmpfs and some others refuse it).
    private static func acceptsSectorAlignedDirectIO(_ fd: Int32) -> Bool {
        // SAFETY: ours for this probe only, freed on return; aligned for O_DIRECT.
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { buffer.deallocate() }
        return pread(fd, buffer, 512, 512) >= 0
    }

    /// Discards a byte range (reads then return zeros).
    public func discard(offset: UInt64, count: UInt64, secure: Bool) throws(BackingError) {
        let rc = isBlockDevice
            ? CXenShims_block_discard(fd, offset, count, secure ? 1 : 0)
            : CXenShims_punch_hole(fd, Int64(offset), Int64(count))
        guard rc == 0 else { throw .io(operation: "discard \(path)", errno: errno) }
    }
}

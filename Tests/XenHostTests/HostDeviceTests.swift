import CXenUAPI
import Synchronization
import Testing
import XenPlatform
import XenProtocolTesting
@testable import XenHost
#if canImport(Glibc)
import Glibc
import XenSystem
#endif

/// The kernel's ioctl numbers, computed by hand from _IOC(NONE, type, nr, size).
@Suite struct UAPIConstantsTests {
    @Test func ioctlNumbersAreTheKernels() {
        func ioc(_ type: Character, _ nr: UInt, _ size: UInt) -> UInt { size << 16 | UInt(type.asciiValue!) << 8 | nr }
        #expect(CXenUAPI_IOCTL_GNTDEV_MAP_GRANT_REF == ioc("G", 0, 24))
        #expect(CXenUAPI_IOCTL_GNTDEV_UNMAP_GRANT_REF == ioc("G", 1, 16))
        #expect(CXenUAPI_IOCTL_GNTDEV_SET_UNMAP_NOTIFY == ioc("G", 7, 16))
        #expect(CXenUAPI_IOCTL_GNTDEV_GRANT_COPY == ioc("G", 8, 16))
        #expect(CXenUAPI_IOCTL_EVTCHN_BIND_INTERDOMAIN == ioc("E", 1, 8))
        #expect(CXenUAPI_IOCTL_EVTCHN_UNBIND == ioc("E", 3, 4))
        #expect(CXenUAPI_IOCTL_EVTCHN_NOTIFY == ioc("E", 4, 4))
        #expect(CXenUAPI_sizeof_map_grant_ref_header() == 16)
        #expect(CXenUAPI_sizeof_grant_copy_segment() == 24)
    }
}

@Suite struct HostGrantTests {
    static let fd: Int32 = 7

    @Test func mapAndUnmapMakeTheExactCalls() throws {
        let mock = SyscallMock { record, argument in
            if case .ioctl(_, CXenUAPI_IOCTL_GNTDEV_MAP_GRANT_REF, _) = record {
                argument!.storeBytes(of: UInt64(0x3000), toByteOffset: 8, as: UInt64.self)  // the index gntdev hands out
            }
            if case .open = record { return .result(Int(Self.fd)) }
            return .result(0)
        }
        try SyscallMock.$current.withValue(mock) {
            let grants = try HostGrants()
            let m = try grants.map([GrantRef(10), GrantRef(11), GrantRef(12)], of: DomainID(5), writable: true)
            #expect(m.pageCount == 3 && m.handle == 0x3000 && m.writable)
            try grants.unmap(m)
        }
        #expect(mock.records == [
            .open(path: "/dev/xen/gntdev", flags: O_RDWR | O_CLOEXEC),
            .ioctl(fd: Self.fd, request: CXenUAPI_IOCTL_GNTDEV_MAP_GRANT_REF,
                   argument: le32(3) + le32(0) + le64(0) + le32(5) + le32(10) + le32(5) + le32(11) + le32(5) + le32(12)),
            .mmap(length: 3 * 4096, protection: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: Self.fd, offset: 0x3000),
            .munmap(length: 3 * 4096),
            .ioctl(fd: Self.fd, request: CXenUAPI_IOCTL_GNTDEV_UNMAP_GRANT_REF, argument: le64(0x3000) + le32(3) + le32(0)),
            .close(fd: Self.fd),
        ])
    }

    @Test func unmapNotifyAsksTheKernelToClearAndSignal() throws {
        let mock = SyscallMock { record, argument in
            if case .open = record { return .result(3) }
            if case .ioctl(_, CXenUAPI_IOCTL_GNTDEV_MAP_GRANT_REF, _) = record {
                argument!.storeBytes(of: UInt64(0x5000), toByteOffset: 8, as: UInt64.self)
            }
            return .result(0)
        }
        try SyscallMock.$current.withValue(mock) {
            let grants = try HostGrants()
            let m = try grants.map([GrantRef(8)], of: DomainID(4), writable: true)
            #expect(throws: GrantError.self) { try grants.setUnmapNotify(m, clearingByteAt: 4096, notifying: nil) }
            try grants.setUnmapNotify(m, clearingByteAt: 12, notifying: EventChannelPort(33))
        }
        let notify = mock.records.filter { if case .ioctl(_, CXenUAPI_IOCTL_GNTDEV_SET_UNMAP_NOTIFY, _) = $0 { return true }; return false }
        #expect(notify == [.ioctl(fd: 3, request: CXenUAPI_IOCTL_GNTDEV_SET_UNMAP_NOTIFY,
                                  argument: le64(0x5000 + 12) + le32(CXenUAPI_UNMAP_NOTIFY_CLEAR_BYTE | CXenUAPI_UNMAP_NOTIFY_SEND_EVENT) + le32(33))],
                "one ioctl: the rejected offset never reached the kernel")
    }

    @Test func readOnlyMappingAsksForReadOnlyPages() throws {
        let mock = SyscallMock { record, _ in if case .open = record { return .result(3) }; return .result(0) }
        try SyscallMock.$current.withValue(mock) {
            let grants = try HostGrants()
            try grants.unmap(try grants.map([GrantRef(1)], of: DomainID(2), writable: false))
        }
        #expect(mock.records.contains(.mmap(length: 4096, protection: PROT_READ, flags: MAP_SHARED, fd: 3, offset: 0)))
    }

    @Test func aFailedBatchNamesTheFailingRefAndLeavesNothingMapped() throws {
        let lastRef = Mutex<UInt32>(0)
        let mock = SyscallMock { record, argument in
            switch record {
            case .open: return .result(3)
            case .ioctl(_, CXenUAPI_IOCTL_GNTDEV_MAP_GRANT_REF, let bytes):
                let ref = bytes[20..<24].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
                lastRef.withLock { $0 = ref }
                argument!.storeBytes(of: UInt64(ref) * 0x1000, toByteOffset: 8, as: UInt64.self)
                return .result(0)
            case .mmap(let length, _, _, _, _):
                // The hypercall fails for ref 11, so any batch holding it fails.
                return length > 4096 || lastRef.withLock({ $0 }) == 11 ? .error(EINVAL) : .result(0)
            default: return .result(0)
            }
        }
        try SyscallMock.$current.withValue(mock) {
            let grants = try HostGrants()
            #expect(throws: GrantError.mapFailed(domain: DomainID(5), refs: [GrantRef(10), GrantRef(11), GrantRef(12)],
                                                 statuses: [.okay, .generalError, .okay])) {
                try grants.map([GrantRef(10), GrantRef(11), GrantRef(12)], of: DomainID(5), writable: false)
            }
        }
        // Every index reserved was released, every page mapped was unmapped.
        let reserved = mock.records.filter { if case .ioctl(_, CXenUAPI_IOCTL_GNTDEV_MAP_GRANT_REF, _) = $0 { return true }; return false }.count
        let released = mock.records.filter { if case .ioctl(_, CXenUAPI_IOCTL_GNTDEV_UNMAP_GRANT_REF, _) = $0 { return true }; return false }.count
        let mapped = mock.records.filter { if case .mmap = $0 { return true }; return false }.count
        let unmapped = mock.records.filter { if case .munmap = $0 { return true }; return false }.count
        #expect(reserved == 4 && released == 4, "batch + three singles")
        #expect(mapped - 2 == unmapped, "the two failed mmaps mapped nothing; the two good singles were unmapped")
    }

    @Test func errnosBecomeClearErrors() throws {
        let noMemory = SyscallMock { record, _ in
            if case .open = record { return .result(3) }
            if case .ioctl = record { return .error(ENOMEM) }
            return .result(0)
        }
        try SyscallMock.$current.withValue(noMemory) {
            let grants = try HostGrants()
            #expect(throws: GrantError.system(operation: "IOCTL_GNTDEV_MAP_GRANT_REF", errno: ENOMEM)) {
                try grants.map([GrantRef(1)], of: DomainID(2), writable: false)
            }
        }
        #expect(!noMemory.records.contains { if case .mmap = $0 { return true }; return false }, "no mmap after a failed ioctl")
        let missing = SyscallMock { _, _ in .error(ENOENT) }
        SyscallMock.$current.withValue(missing) {
            #expect(throws: GrantError.system(operation: "open /dev/xen/gntdev", errno: ENOENT)) { try HostGrants() }
        }
    }

    @Test func interruptedCallsAreRetried() throws {
        let calls = Mutex(0)
        let mock = SyscallMock { record, _ in
            if case .open = record { return .result(3) }
            if case .ioctl = record { return calls.withLock { $0 += 1; return $0 } < 3 ? .error(EINTR) : .result(0) }
            return .result(0)
        }
        try SyscallMock.$current.withValue(mock) {
            let grants = try HostGrants()
            try grants.unmap(try grants.map([GrantRef(1)], of: DomainID(2), writable: false))
        }
        #expect(calls.withLock { $0 } == 4, "two EINTRs, then the map ioctl, then the unmap ioctl")
    }

    @Test func copyBatchBytesAndPerOperationStatuses() throws {
        let seen = Mutex<[[UInt8]]>([])
        let mock = SyscallMock { record, argument in
            switch record {
            case .open: return .result(3)
            case .ioctl(_, CXenUAPI_IOCTL_GNTDEV_GRANT_COPY, let bytes):
                let count = Int(bytes[0..<4].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
                let segments = UnsafeMutableRawPointer(bitPattern: UInt(argument!.load(fromByteOffset: 8, as: UInt64.self)))!
                seen.withLock { s in for i in 0..<count { s.append(Array(UnsafeRawBufferPointer(start: segments + 24 * i, count: 24))) } }
                // The kernel fills in each segment's status.
                (segments + 20).storeBytes(of: Int16(0), as: Int16.self)
                (segments + 24 + 20).storeBytes(of: Int16(-3), as: Int16.self)
                return .result(0)
            default: return .result(0)
            }
        }
        let local = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 4096)
        defer { local.deallocate() }
        local.initializeMemory(as: UInt8.self, repeating: 7, count: 8192)
        var ops = [
            GrantCopyOperation(source: .grant(GrantRef(0x11), domain: DomainID(5), offset: 0x80), destination: .local(local), length: 512),
            GrantCopyOperation(source: .local(local + 4096), destination: .grant(GrantRef(0x22), domain: DomainID(5), offset: 0), length: 4096),
            GrantCopyOperation(source: .grant(GrantRef(0x33), domain: DomainID(5), offset: 4000), destination: .local(local), length: 200),
            GrantCopyOperation(source: .local(local), destination: .local(local + 4096), length: 16),
        ]
        try SyscallMock.$current.withValue(mock) {
            let grants = try HostGrants()
            try grants.copy(&ops)
        }
        #expect(ops.map(\.status) == [.okay, .badGrantRef, .badCopyArgument, .okay])
        let segments = seen.withLock { $0 }
        #expect(segments.count == 2, "the page-crossing and local-only copies never reach the kernel")
        let pointer = le64(UInt64(UInt(bitPattern: local)))
        let pointer2 = le64(UInt64(UInt(bitPattern: local + 4096)))
        // source {ref, offset, domid} | dest {virt} | len | flags (GNTCOPY_source_gref) | status | pad
        #expect(segments[0] == le32(0x11) + [0x80, 0x00, 0x05, 0x00] + pointer + [0x00, 0x02, 0x01, 0x00, 0xFF, 0xFF, 0, 0])
        #expect(segments[1] == pointer2 + le32(0x22) + [0, 0, 0x05, 0x00] + [0x00, 0x10, 0x02, 0x00, 0xFF, 0xFF, 0, 0])
    }
}

@Suite struct HostEventChannelTests {
    @Test func bindNotifyUnmaskReadUnbind() throws {
        let mock = SyscallMock { record, argument in
            switch record {
            case .open: return .result(9)
            case .ioctl(_, CXenUAPI_IOCTL_EVTCHN_BIND_INTERDOMAIN, _): return .result(17)
            case .read:
                argument!.storeBytes(of: UInt32(17), as: UInt32.self)
                argument!.storeBytes(of: UInt32(23), toByteOffset: 4, as: UInt32.self)
                return .result(8)
            case .write(_, let bytes): return .result(bytes.count)
            default: return .result(0)
            }
        }
        var taken: [UInt32] = []
        try SyscallMock.$current.withValue(mock) {
            let device = try HostEventChannelDevice()
            let port = try device.bindInterdomain(remoteDomain: DomainID(5), remotePort: EventChannelPort(3))
            #expect(port == EventChannelPort(17))
            try device.notify(port)
            try device.unmask(port)
            var buffer = [EventChannelPort](repeating: EventChannelPort(0), count: 16)
            let n = try buffer.withUnsafeMutableBufferPointer { try device.takePending(into: $0) }
            taken = buffer.prefix(n).map(\.rawValue)
            try device.unbind(port)
        }
        #expect(taken == [17, 23])
        #expect(mock.records == [
            .open(path: "/dev/xen/evtchn", flags: O_RDWR | O_CLOEXEC | O_NONBLOCK),
            .ioctl(fd: 9, request: CXenUAPI_IOCTL_EVTCHN_BIND_INTERDOMAIN, argument: le32(5) + le32(3)),
            .ioctl(fd: 9, request: CXenUAPI_IOCTL_EVTCHN_NOTIFY, argument: le32(17)),
            .write(fd: 9, bytes: le32(17)),
            .read(fd: 9, count: 64),
            .ioctl(fd: 9, request: CXenUAPI_IOCTL_EVTCHN_UNBIND, argument: le32(17)),
            .close(fd: 9),
        ])
    }

    @Test func errnosBecomeClearErrors() throws {
        let mock = SyscallMock { record, _ in
            switch record {
            case .open: return .result(9)
            case .ioctl(_, CXenUAPI_IOCTL_EVTCHN_BIND_INTERDOMAIN, _): return .error(EINVAL)
            case .ioctl(_, CXenUAPI_IOCTL_EVTCHN_NOTIFY, _): return .error(ENOTCONN)
            case .read: return .error(EAGAIN)
            default: return .result(0)
            }
        }
        try SyscallMock.$current.withValue(mock) {
            let device = try HostEventChannelDevice()
            do {
                _ = try device.bindInterdomain(remoteDomain: DomainID(5), remotePort: EventChannelPort(3))
                Issue.record("bind succeeded")
            } catch {
                let text = String(describing: error)
                #expect(text.contains("IOCTL_EVTCHN_BIND_INTERDOMAIN") && text.contains("dom5"))
            }
            #expect(throws: EventChannelError.notBound(EventChannelPort(4))) { try device.notify(EventChannelPort(4)) }
            var buffer = [EventChannelPort](repeating: EventChannelPort(0), count: 4)
            #expect(try buffer.withUnsafeMutableBufferPointer { try device.takePending(into: $0) } == 0, "EAGAIN: nothing pending")
        }
        SyscallMock.$current.withValue(SyscallMock { _, _ in .error(ENOENT) }) {
            #expect(throws: EventChannelError.system(operation: "open /dev/xen/evtchn", errno: ENOENT)) { try HostEventChannelDevice() }
        }
    }

    /// (How `auto` chooses between host and sim is XenPlatformTests' PlatformKindTests.)
    @Test func availableWhereTheXenDevicesAre() {
        #expect(HostPlatform.isAvailable == (access("/dev/xen/gntdev", F_OK) == 0 && access("/dev/xen/evtchn", F_OK) == 0))
    }
}

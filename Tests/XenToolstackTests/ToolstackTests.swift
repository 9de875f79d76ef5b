#if canImport(Glibc)
import Glibc
#endif
import Testing
import XenBus
import XenPlatform
import XenProtocolTesting
import XenSim
import XenStore
import XenToolstack

/// The sim's xenstored, a dom0 connection (the toolstack) and one acting as
/// guest `guestID`, which xenstored's permission checks apply to.
func withToolstack(guestID: UInt16 = 3,
                   _ body: (_ dom0: XenStoreClient, _ guest: XenStoreClient) async throws -> Void) async throws {
    let host = try await SimGuestHost(guestID: DomainID(guestID), guestPages: 1, grantEntries: 16)
    var fds: [Int32] = [0, 0]
    try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0)
    try await host.server.adopt(socket: fds[0], domain: UInt32(guestID))
    let guest = try await XenStoreClient.connect(fileDescriptor: fds[1])
    do {
        try await body(host.backendStore, guest)
    } catch {
        await guest.close()
        await host.shutdown()
        throw error
    }
    await guest.close()
    await host.shutdown()
}

func isRefused(_ body: () async throws -> Void) async -> Bool {
    do { try await body(); return false } catch XenStoreClientError.failed(.accessDenied, _, _) { return true } catch { return false }
}

@Suite struct ToolstackDiskTests {
    /// libxl's layout for a disk: the backend's directory under the backend
    /// domain, the frontend's under the guest's device/vbd, each naming the
    /// other, both Initialising.
    @Test func theDirectoriesLibxlWrites() async throws {
        try await withToolstack { dom0, _ in
            let disk = try await ToolstackDisk.create(xenstore: dom0, frontend: DomainID(3), target: "/var/lib/xen/disk.img")
            #expect(disk.frontendPath == "/local/domain/3/device/vbd/51712")
            #expect(disk.backendPath == "/local/domain/0/backend/vbd/3/51712")
            #expect(try await xenstoreKeys(dom0, disk.backendPath) == [
                "frontend": disk.frontendPath, "frontend-id": "3", "params": "/var/lib/xen/disk.img", "type": "phy", "mode": "w",
                "online": "1", "state": "1", "removable": "0", "bootable": "1", "device-type": "disk", "discard-enable": "1", "dev": "xvda",
            ])
            #expect(try await xenstoreKeys(dom0, disk.frontendPath) == [
                "backend": disk.backendPath, "backend-id": "0", "state": "1", "virtual-device": "51712", "device-type": "disk",
            ])
        }
    }

    /// The device number names the disk (xvda, xvdb, ... every 16 minors);
    /// read-only and cdrom disks say so on both sides; extra keys win.
    @Test func namesModesAndExtraKeys() async throws {
        try await withToolstack { dom0, _ in
            let second = try await ToolstackDisk.create(xenstore: dom0, frontend: DomainID(3), devid: ToolstackDisk.firstXenDisk + 16,
                                                        target: "/dev/vg/disk1", readOnly: true, cdrom: true,
                                                        extraBackendKeys: ["type": "file", "direct-io-safe": "1"])
            #expect(second.devid == 51728)
            let backend = try await xenstoreKeys(dom0, second.backendPath)
            #expect(backend["dev"] == "xvdb" && backend["mode"] == "r" && backend["device-type"] == "cdrom")
            #expect(backend["type"] == "file" && backend["direct-io-safe"] == "1")
            #expect(try await dom0.readString(second.frontendPath + "/device-type") == "cdrom")
            let third = try await ToolstackDisk.create(xenstore: dom0, frontend: DomainID(3), backend: DomainID(2),
                                                       devid: ToolstackDisk.firstXenDisk + 32, target: "/d")
            #expect(third.backendPath == "/local/domain/2/backend/vbd/3/51744")
            #expect(try await dom0.readString(third.backendPath + "/dev") == "xvdc")
            #expect(try await dom0.readString(third.frontendPath + "/backend-id") == "2")
        }
    }

    /// Each side owns its directory and may read the other's: the guest
    /// reads the backend's keys but cannot change them, and writes its own.
    @Test func eachSideOwnsItsDirectory() async throws {
        try await withToolstack { dom0, guest in
            let disk = try await ToolstackDisk.create(xenstore: dom0, frontend: DomainID(3), target: "/img")
            #expect(try await dom0.permissions(disk.backendPath) == XenStorePermissions(owner: 0, grants: [.init(domain: 3, access: .read)]))
            #expect(try await dom0.permissions(disk.frontendPath) == XenStorePermissions(owner: 3, grants: [.init(domain: 0, access: .read)]))
            #expect(try await guest.readString(disk.backendPath + "/params") == "/img")
            #expect(await isRefused { try await guest.write(disk.backendPath + "/params", "/etc/shadow") })
            #expect(await isRefused { try await guest.write(disk.backendPath + "/state", "4") })
            try await guest.write(disk.frontendPath + "/state", "3")
            try await guest.write(disk.frontendPath + "/ring-ref", "8")
            #expect(try await dom0.readString(disk.frontendPath + "/ring-ref") == "8")
        }
    }

    /// Detach: `online` = 0 first, then both directories go (and only they).
    @Test func offlineThenRemove() async throws {
        try await withToolstack { dom0, _ in
            let disk = try await ToolstackDisk.create(xenstore: dom0, frontend: DomainID(3), target: "/img")
            let other = try await ToolstackDisk.create(xenstore: dom0, frontend: DomainID(3), devid: ToolstackDisk.firstXenDisk + 16, target: "/img2")
            try await disk.setOffline(xenstore: dom0)
            #expect(try await dom0.readString(disk.backendPath + "/online") == "0")
            try await disk.remove(xenstore: dom0)
            #expect(try await dom0.readIfPresent(disk.backendPath) == nil)
            #expect(try await dom0.readIfPresent(disk.frontendPath) == nil)
            #expect(try await dom0.directory("/local/domain/0/backend/vbd/3") == ["51728"])
            #expect(try await dom0.readString(other.frontendPath + "/virtual-device") == "51728")
        }
    }
}

@Suite struct ToolstackNICTests {
    /// libxl's layout for a NIC, the MAC written as lower-case pairs.
    @Test func theDirectoriesLibxlWrites() async throws {
        try await withToolstack(guestID: 7) { dom0, guest in
            let nic = try await ToolstackNIC.create(xenstore: dom0, frontend: DomainID(7), handle: 1, mac: [0x00, 0x16, 0x3E, 0x0A, 0xB, 0xFF],
                                                    bridge: "xenbr0", extraFrontendKeys: ["mtu": "9000"])
            #expect(nic.frontendPath == "/local/domain/7/device/vif/1")
            #expect(nic.backendPath == "/local/domain/0/backend/vif/7/1")
            #expect(try await xenstoreKeys(dom0, nic.backendPath) == [
                "frontend": nic.frontendPath, "frontend-id": "7", "online": "1", "state": "1", "mac": "00:16:3e:0a:0b:ff",
                "handle": "1", "type": "vif", "bridge": "xenbr0",
            ])
            #expect(try await xenstoreKeys(dom0, nic.frontendPath) == [
                "backend": nic.backendPath, "backend-id": "0", "state": "1", "handle": "1", "mac": "00:16:3e:0a:0b:ff", "mtu": "9000",
            ])
            #expect(await isRefused { try await guest.write(nic.backendPath + "/bridge", "other") })
            try await nic.setOffline(xenstore: dom0)
            try await nic.remove(xenstore: dom0)
            #expect(try await dom0.readIfPresent(nic.backendPath) == nil)
            #expect(try await dom0.readIfPresent(nic.frontendPath) == nil)
        }
    }

    /// No bridge: no `bridge` key (the backend then leaves the VIF unattached).
    @Test func withoutABridge() async throws {
        try await withToolstack { dom0, _ in
            let nic = try await ToolstackNIC.create(xenstore: dom0, frontend: DomainID(3), mac: [2, 0, 0, 0, 0, 1], bridge: nil,
                                                    extraBackendKeys: ["script": "vif-bridge"])
            let backend = try await xenstoreKeys(dom0, nic.backendPath)
            #expect(backend["bridge"] == nil && backend["script"] == "vif-bridge" && backend["mac"] == "02:00:00:00:00:01")
        }
    }
}

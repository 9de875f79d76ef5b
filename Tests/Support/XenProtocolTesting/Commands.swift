#if canImport(Glibc)
import Glibc
#endif
import XenProcess

/// Runs a command, throwing with its output when it fails; returns the
/// output without leading and trailing blanks and newlines.
@discardableResult
public func runCommand(_ command: String) throws -> String {
    let (status, output) = runShell(command + " 2>&1")
    guard status == 0 else { throw CommandFailed(command: command, output: output) }
    var s = Substring(output)
    while let c = s.first, c == " " || c == "\n" { s = s.dropFirst() }
    while let c = s.last, c == " " || c == "\n" { s = s.dropLast() }
    return String(s)
}

public struct CommandFailed: Error, CustomStringConvertible {
    public var command: String, output: String
    public var description: String { "\(command) failed: \(output)" }
}

/// What the machine offers for block-device tests.
public enum BlockDevices {
    public static var loopAvailable: Bool { getuid() == 0 && access("/dev/loop-control", F_OK) == 0 && access("/sbin/losetup", X_OK) == 0 }
    /// device-mapper in the running kernel and lvm2 installed (this CI kernel has no device-mapper).
    public static var lvmAvailable: Bool {
        loopAvailable && access("/sbin/lvcreate", X_OK) == 0 && runShell("dmsetup version 2>&1 | grep -q 'Driver version'").0 == 0
    }
    /// lvm without udev (containers, CI) and only our loop devices.
    public static let lvmConfig = "--config 'devices { filter = [ \"a|^/dev/loop|\", \"r|.*|\" ] } activation { udev_sync = 0 udev_rules = 0 }'"
}

/// Test data that differs at every offset and with every seed.
public func pattern(_ count: Int, seed: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: ($0 &* 131) ^ ($0 >> 9) &+ seed) }
}

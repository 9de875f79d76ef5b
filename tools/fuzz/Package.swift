// swift-tools-version: 6.2
// The fuzz package owns the fuzz harnesses (XenFuzzing), the libFuzzer targets
// (built with --sanitize=fuzzer,address -DLIBFUZZER by tools/fuzz/run) and the
// tests that replay every committed seed and regression through the same
// harnesses without sanitizers (tools/test.sh runs them). xenbackd and the
// main package's products never link any of it.
import PackageDescription

let harness: [Target.Dependency] = ["XenFuzzing"]
let library = ["-parse-as-library"]

let package = Package(
    name: "xenback-fuzz",
    dependencies: [.package(name: "xenback", path: "../..")],
    targets: [
        .target(name: "XenFuzzing", dependencies: [
            .product(name: "XenRing", package: "xenback"),
            .product(name: "XenBlockProtocol", package: "xenback"),
            .product(name: "XenNetProtocol", package: "xenback"),
            .product(name: "XenStoreProtocol", package: "xenback"),
            .product(name: "XenStoreCore", package: "xenback"),
            .product(name: "XenBus", package: "xenback"),
            .product(name: "XenSystem", package: "xenback"),
            .product(name: "XenPlatform", package: "xenback"),
            .product(name: "XenSim", package: "xenback"),
            .product(name: "XenDisk", package: "xenback"),
            .product(name: "XenNetDevice", package: "xenback"),
            .product(name: "XenBlockBackend", package: "xenback"),
            .product(name: "XenNetBackend", package: "xenback"),
        ]),
        .executableTarget(name: "FuzzBackRing", dependencies: harness, swiftSettings: [.unsafeFlags(library)]),
        .executableTarget(name: "FuzzXenStoreWire", dependencies: harness, swiftSettings: [.unsafeFlags(library)]),
        .executableTarget(name: "FuzzXenStoreServer", dependencies: harness, swiftSettings: [.unsafeFlags(library)]),
        .executableTarget(name: "FuzzBlockRequests", dependencies: harness, swiftSettings: [.unsafeFlags(library)]),
        .executableTarget(name: "FuzzNetQueue", dependencies: harness, swiftSettings: [.unsafeFlags(library)]),
        .executableTarget(name: "FuzzXenbusStateMachine", dependencies: harness, swiftSettings: [.unsafeFlags(library)]),
        .testTarget(name: "FuzzReplayTests", dependencies: harness),
    ]
)

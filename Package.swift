// swift-tools-version: 6.2
import PackageDescription

// Layering (arrows are "may import"):
//   xenback (exe) -> XenRingBenchmark -> XenBlockProtocol -> XenRing
//   XenNetProtocol -> XenRing;  XenStoreProtocol has no dependency.
// The protocol modules do no I/O. C lives only in CXenRingReference, which
// builds Xen's own io/ring.h macros (from libxen-dev) as the reference peer
// and baseline that our Swift ring is tested and benchmarked against.
let package = Package(
    name: "xenback",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "XenRing", targets: ["XenRing"]),
        .library(name: "XenBlockProtocol", targets: ["XenBlockProtocol"]),
        .library(name: "XenNetProtocol", targets: ["XenNetProtocol"]),
        .library(name: "XenStoreProtocol", targets: ["XenStoreProtocol"]),
        .library(name: "XenBus", targets: ["XenBus"]),
        .library(name: "XenPlatform", targets: ["XenPlatform"]),
        .library(name: "XenSim", targets: ["XenSim"]),
        .library(name: "XenHost", targets: ["XenHost"]),
        .library(name: "XenBlockBackend", targets: ["XenBlockBackend"]),
        .library(name: "XenBlockFrontend", targets: ["XenBlockFrontend"]),
        .library(name: "XenNetBackend", targets: ["XenNetBackend"]),
        .library(name: "XenNetFrontend", targets: ["XenNetFrontend"]),
        .library(name: "XenStoreCore", targets: ["XenStoreCore"]),
        .library(name: "XenStore", targets: ["XenStore"]),
        .library(name: "XenFuzzing", targets: ["XenFuzzing"]),
        .executable(name: "xenback", targets: ["xenback"]),
        .executable(name: "xenbackd", targets: ["xenbackd"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/ordo-one/malloc-interposer", from: "1.6.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        .target(name: "XenRing"),
        .target(name: "XenBlockProtocol", dependencies: ["XenRing"]),
        .target(name: "XenNetProtocol", dependencies: ["XenRing"]),
        .target(name: "XenStoreProtocol"),
        .target(name: "XenBus", dependencies: ["XenStoreProtocol"]),
        .target(name: "XenPlatform", dependencies: ["CXenShims"]),
        .target(name: "XenSim", dependencies: ["XenPlatform", "CXenShims", "XenStore", .product(name: "Logging", package: "swift-log")]),
        .target(name: "CXenUAPI"),
        // The xenbus handshake loop every backend device kind shares.
        .target(name: "XenBusDriver", dependencies: ["XenBus", "XenStore", "XenPlatform", .product(name: "Logging", package: "swift-log")]),
        .target(name: "XenBlockBackend", dependencies: [
            "XenBusDriver", "XenRing", "XenBlockProtocol", "XenPlatform", "XenBus", "XenStore", "CXenShims", "CXenAIO",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // TAP, bridge and namespace ioctls and libpcap (libpcap-dev) behind a small C API.
        .target(name: "CXenNet", cSettings: [.define("_GNU_SOURCE")], linkerSettings: [.linkedLibrary("pcap")]),
        .target(name: "XenNetBackend", dependencies: [
            "XenBusDriver", "XenRing", "XenNetProtocol", "XenPlatform", "XenBus", "XenStore", "CXenNet", "CXenShims",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "XenNetFrontend", dependencies: ["XenBusDriver", "XenRing", "XenNetProtocol", "XenNetBackend", "XenPlatform", "XenSim", "XenStore", "XenStoreProtocol"]),
        .target(name: "XenNetTestbed", dependencies: [
            "XenNetBackend", "XenNetFrontend", "XenProcess", "XenSim", "XenStore", "XenPlatform",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "XenBlockFrontend", dependencies: ["XenBusDriver", "XenRing", "XenBlockProtocol", "XenPlatform", "XenSim", "XenStore", "XenStoreProtocol"]),
        // The in-process sim host for block devices: tests, bench blk, front blk.
        .target(name: "XenBlockTestbed", dependencies: [
            "XenBlockBackend", "XenBlockFrontend", "XenSim", "XenStore", "XenPlatform", "XenRing", "XenBlockProtocol",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "XenProcess", dependencies: ["CXenShims"]),
        // The daemon's logic (device discovery, lifecycle), testable in-process.
        .target(name: "XenBackendDaemon", dependencies: [
            "XenBlockBackend", "XenNetBackend", "XenPlatform", "XenStore", "XenStoreProtocol",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        .executableTarget(name: "xenbackd", dependencies: [
            "XenBackendDaemon", "XenBlockBackend", "XenNetBackend", "XenHost", "XenSim", "XenStore", "XenPlatform", "XenProcess",
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        // libaio and liburing (libaio-dev, liburing-dev) behind a small C API.
        .target(name: "CXenAIO", cSettings: [.define("_GNU_SOURCE")],
                linkerSettings: [.linkedLibrary("aio"), .linkedLibrary("uring")]),
        .target(name: "XenHost", dependencies: ["XenPlatform", "CXenUAPI"],
                swiftSettings: [.define("ENABLE_MOCKING", .when(configuration: .debug))]),
        .target(name: "XenStoreCore", dependencies: ["XenStoreProtocol"]),
        .target(name: "XenStore", dependencies: [
            "XenStoreProtocol", "XenStoreCore",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        .target(name: "CXenShims", cSettings: [.define("_GNU_SOURCE")]),
        .target(
            name: "CXenRingReference",
            cSettings: [.define("_GNU_SOURCE")],
            linkerSettings: [.linkedLibrary("pthread")]
        ),
        .target(
            name: "XenRingBenchmark",
            dependencies: [
                "XenRing", "XenBlockProtocol", "CXenRingReference", "CXenShims", "XenPlatform",
                .product(name: "MallocInterposerSwift", package: "malloc-interposer"),
            ]
        ),
        .executableTarget(
            name: "xenback",
            dependencies: [
                "XenRingBenchmark", "XenStore", "XenSim", "XenBlockBackend", "XenBlockFrontend", "XenBlockTestbed", "XenProcess", "CXenShims",
                "XenNetBackend", "XenNetFrontend", "XenNetTestbed", "XenStoreProtocol", "XenNetProtocol",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        // The fuzz targets' logic, shared by tools/fuzz (libFuzzer) and the
        // tests that replay seed and regression inputs.
        .target(name: "XenFuzzing", dependencies: ["XenRing", "XenBlockProtocol", "XenNetProtocol", "XenStoreProtocol", "XenStoreCore", "XenBus",
                                                "XenSim", "XenBlockBackend", "XenNetBackend", "XenPlatform", "CXenShims"]),
        // Test support shared by the test targets: the ABI probe runner and the
        // golden-vector reader. Never imported by Sources.
        .target(name: "XenProtocolTesting", dependencies: ["XenProcess"], path: "Sources/XenProtocolTesting"),
        .testTarget(
            name: "XenRingTests",
            dependencies: ["XenRing", "XenBlockProtocol", "XenRingBenchmark", "CXenRingReference", "XenProtocolTesting", "XenFuzzing",
                           .product(name: "MallocInterposerSwift", package: "malloc-interposer")]
        ),
        .testTarget(name: "XenBlockProtocolTests", dependencies: ["XenBlockProtocol", "XenRing", "XenProtocolTesting"]),
        .testTarget(name: "XenNetProtocolTests", dependencies: ["XenNetProtocol", "XenRing", "XenProtocolTesting"]),
        .testTarget(name: "XenBlockBackendTests", dependencies: ["XenBlockBackend", "XenBlockFrontend", "XenBlockTestbed", "XenFuzzing", "XenStore", "XenProtocolTesting", "XenBlockProtocol", "XenRing", "XenPlatform", "XenSim", "CXenShims"]),
        .testTarget(name: "XenBackendDaemonTests", dependencies: ["XenBackendDaemon", "XenProcess", "XenBlockFrontend", "XenBlockTestbed", "XenBlockProtocol", "XenBlockBackend", "XenBusDriver", "XenStoreProtocol", "CXenShims", .product(name: "Logging", package: "swift-log"), .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"), "XenNetFrontend", "XenNetTestbed", "XenSim", "XenStore", "XenPlatform", "XenProtocolTesting"]),
        .testTarget(name: "XenNetBackendTests", dependencies: ["XenNetBackend", "XenFuzzing", "XenNetFrontend", "XenNetTestbed", "XenNetProtocol", "XenRing", "XenPlatform", "XenSim", "XenStore", "XenStoreProtocol", "XenBusDriver", "XenProtocolTesting", "XenProcess", "CXenNet"]),
        .testTarget(name: "XenHostTests", dependencies: ["XenHost", "XenPlatform", "CXenUAPI"]),
        .testTarget(name: "XenSimTests", dependencies: ["XenSim", "XenPlatform", "XenRing", "XenBlockProtocol", "XenStore", "XenProtocolTesting"]),
        .testTarget(name: "XenBusTests", dependencies: ["XenBus", "XenFuzzing", "XenProtocolTesting"]),
        .testTarget(name: "XenStoreTests", dependencies: ["XenStore", "XenStoreCore", "XenProtocolTesting", "XenFuzzing"]),
        .testTarget(name: "XenStoreProtocolTests", dependencies: ["XenStoreProtocol", "XenProtocolTesting", "XenFuzzing"]),
    ]
)

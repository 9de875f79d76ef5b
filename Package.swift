// swift-tools-version: 6.2
import PackageDescription

// Modules in layers; a module imports only from layers below it (and C shims
// only from the layer that owns them). tools/check-layering.sh enforces this in
// CI; docs/architecture.md draws the graph and says why.
//   1 wire protocols, no I/O .... XenRing, XenBlockProtocol, XenNetProtocol,
//                                 XenStoreProtocol, XenBus, XenNetChecksum
//   2 system calls .............. XenSystem (the one funnel; CXenShims)
//   3 platform interfaces ....... XenPlatform (backend and guest sides),
//                                 XenStoreCore, XenStore, XenBusClient
//   4 implementations ........... XenHost (real Xen), XenSim (software hypervisor)
//   5 device I/O, no rings ...... XenDisk (backings, I/O engines), XenNetDevice (TAP,
//                                 bridge, capture), XenProcess
//   6 backends and frontends .... XenBusDriver, XenBlockBackend, XenNetBackend;
//                                 XenBlockFrontend, XenNetFrontend; XenToolstack
//   7 daemon .................... XenBackendDaemon
//   8 executables ............... xenbackd (links no test, bench or fuzz code), xenback
// Sources/Dev holds the sim rigs and the ring benchmark that only xenback's
// sim and bench commands and the tests link; Tests/Support holds what only
// tests link; the fuzz harnesses live in their own package, tools/fuzz.
let package = Package(
    name: "xenback",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "XenRing", targets: ["XenRing"]),
        .library(name: "XenBlockProtocol", targets: ["XenBlockProtocol"]),
        .library(name: "XenNetProtocol", targets: ["XenNetProtocol"]),
        .library(name: "XenStoreProtocol", targets: ["XenStoreProtocol"]),
        .library(name: "XenBus", targets: ["XenBus"]),
        .library(name: "XenSystem", targets: ["XenSystem"]),
        .library(name: "XenPlatform", targets: ["XenPlatform"]),
        .library(name: "XenStoreCore", targets: ["XenStoreCore"]),
        .library(name: "XenStore", targets: ["XenStore"]),
        .library(name: "XenHost", targets: ["XenHost"]),
        .library(name: "XenSim", targets: ["XenSim"]),
        .library(name: "XenDisk", targets: ["XenDisk"]),
        .library(name: "XenNetDevice", targets: ["XenNetDevice"]),
        .library(name: "XenBlockBackend", targets: ["XenBlockBackend"]),
        .library(name: "XenNetBackend", targets: ["XenNetBackend"]),
        .library(name: "XenBlockFrontend", targets: ["XenBlockFrontend"]),
        .library(name: "XenNetFrontend", targets: ["XenNetFrontend"]),
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
        // 1: wire protocols.
        .target(name: "XenRing"),
        .target(name: "XenBlockProtocol", dependencies: ["XenRing"]),
        .target(name: "XenNetProtocol", dependencies: ["XenRing"]),
        .target(name: "XenStoreProtocol"),
        .target(name: "XenBus"),
        // RFC 1071 arithmetic, shared by netback's offloads and the test netfront.
        .target(name: "XenNetChecksum"),

        // 2: system calls. C only for what Swift cannot call or spell.
        .target(name: "CXenShims", cSettings: [.define("_GNU_SOURCE")]),
        .target(name: "XenSystem", dependencies: ["CXenShims"],
                swiftSettings: [.define("ENABLE_MOCKING", .when(configuration: .debug))]),

        // 3: platform interfaces.
        .target(name: "XenPlatform", dependencies: ["XenSystem", "CXenShims"]),
        .target(name: "XenStoreCore", dependencies: ["XenStoreProtocol"]),
        .target(name: "XenStore", dependencies: [
            "XenStoreProtocol", "XenStoreCore",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        // Waiting for a peer's xenbus state over a xenstore client: both sides.
        .target(name: "XenBusClient", dependencies: ["XenBus", "XenStore"]),

        // 4: implementations of the platform.
        .target(name: "CXenUAPI"),
        .target(name: "XenHost", dependencies: ["XenPlatform", "XenSystem", "CXenUAPI"]),
        .target(name: "XenSim", dependencies: ["XenPlatform", "XenSystem", "XenStore", .product(name: "Logging", package: "swift-log")]),

        // 5: device I/O that knows no rings.
        // libaio and liburing (libaio-dev, liburing-dev) behind a small C API.
        .target(name: "CXenAIO", cSettings: [.define("_GNU_SOURCE")],
                linkerSettings: [.linkedLibrary("aio"), .linkedLibrary("uring")]),
        .target(name: "XenDisk", dependencies: ["XenSystem", "CXenAIO"]),
        // TAP, bridge and namespace structures and libpcap (libpcap-dev) behind a small C API.
        .target(name: "CXenNet", cSettings: [.define("_GNU_SOURCE")], linkerSettings: [.linkedLibrary("pcap")]),
        .target(name: "XenNetDevice", dependencies: ["XenSystem", "XenPlatform", "XenNetChecksum", "CXenNet"]),
        .target(name: "XenProcess", dependencies: ["XenSystem"]),

        // 6: backends (xenbus glue apart from the data path), frontends, toolstack.
        .target(name: "XenBusDriver", dependencies: ["XenBus", "XenBusClient", "XenStore", "XenPlatform", .product(name: "Logging", package: "swift-log")]),
        .target(name: "XenBlockBackend", dependencies: [
            "XenBusDriver", "XenRing", "XenBlockProtocol", "XenPlatform", "XenSystem", "XenBus", "XenStore", "XenDisk",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "XenNetBackend", dependencies: [
            "XenBusDriver", "XenRing", "XenNetProtocol", "XenNetChecksum", "XenPlatform", "XenSystem", "XenBus", "XenStore", "XenNetDevice",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "XenBlockFrontend", dependencies: ["XenRing", "XenBlockProtocol", "XenPlatform", "XenBus", "XenBusClient", "XenStore"]),
        .target(name: "XenNetFrontend", dependencies: ["XenRing", "XenNetProtocol", "XenNetChecksum", "XenPlatform", "XenBus", "XenBusClient", "XenStore"]),
        // What a toolstack writes for a device (libxl's layout): the sim's xl.
        .target(name: "XenToolstack", dependencies: ["XenBus", "XenPlatform", "XenStore"]),

        // 7: the daemon's logic (device discovery, lifecycle), testable in-process.
        .target(name: "XenBackendDaemon", dependencies: [
            "XenBlockBackend", "XenNetBackend", "XenPlatform", "XenBus", "XenBusDriver", "XenStore", "XenStoreProtocol", "XenDisk", "XenNetDevice",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),

        // 8: executables.
        .executableTarget(name: "xenbackd", dependencies: [
            "XenBackendDaemon", "XenBlockBackend", "XenNetBackend", "XenHost", "XenSim", "XenStore", "XenPlatform", "XenProcess",
            "XenDisk", "XenNetDevice", "XenSystem",
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
        .executableTarget(name: "xenback", dependencies: [
            "XenRingBenchmark", "XenBlockTestbed", "XenNetTestbed", "XenToolstack", "XenStore", "XenSim", "XenSystem", "XenProcess",
            "XenBlockBackend", "XenBlockFrontend", "XenDisk", "XenNetBackend", "XenNetFrontend", "XenNetDevice",
            "XenBus", "XenBusClient", "XenStoreProtocol", "XenNetProtocol", "XenBlockProtocol", "XenRing", "XenPlatform",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "UnixSignals", package: "swift-service-lifecycle"),
        ]),

        // Development: sim rigs and the ring benchmark, for xenback's sim and
        // bench commands and the tests; no product, never linked by xenbackd.
        .target(name: "XenBlockTestbed", dependencies: [
            "XenBlockBackend", "XenBlockFrontend", "XenToolstack", "XenSim", "XenStore", "XenPlatform", "XenRing", "XenBlockProtocol", "XenDisk",
            .product(name: "Logging", package: "swift-log"),
        ], path: "Sources/Dev/XenBlockTestbed"),
        .target(name: "XenNetTestbed", dependencies: [
            "XenNetBackend", "XenNetFrontend", "XenToolstack", "XenProcess", "XenSim", "XenStore", "XenPlatform", "XenNetDevice", "XenSystem",
            .product(name: "Logging", package: "swift-log"),
        ], path: "Sources/Dev/XenNetTestbed"),
        // C's io/ring.h (from libxen-dev) as the reference peer and baseline.
        .target(name: "CXenRingReference", path: "Sources/Dev/CXenRingReference",
                cSettings: [.define("_GNU_SOURCE")], linkerSettings: [.linkedLibrary("pthread")]),
        .target(name: "XenRingBenchmark", dependencies: [
            "XenRing", "XenBlockProtocol", "CXenRingReference", "CXenShims", "XenSystem", "XenPlatform",
            .product(name: "MallocInterposerSwift", package: "malloc-interposer"),
        ], path: "Sources/Dev/XenRingBenchmark"),

        // Tests: one target per module with logic; shared helpers in Tests/Support.
        .target(name: "XenProtocolTesting", dependencies: ["XenProcess", "XenStore", "XenNetTestbed", "XenNetBackend", "XenNetFrontend", "XenSim", "XenPlatform"],
                path: "Tests/Support/XenProtocolTesting"),
        .testTarget(name: "XenRingTests", dependencies: [
            "XenRing", "XenBlockProtocol", "XenRingBenchmark", "CXenRingReference", "XenProtocolTesting",
            .product(name: "MallocInterposerSwift", package: "malloc-interposer"),
        ]),
        .testTarget(name: "XenBlockProtocolTests", dependencies: ["XenBlockProtocol", "XenRing", "XenProtocolTesting"]),
        .testTarget(name: "XenNetProtocolTests", dependencies: ["XenNetProtocol", "XenRing", "XenProtocolTesting"]),
        .testTarget(name: "XenBlockBackendTests", dependencies: [
            "XenBlockBackend", "XenBlockFrontend", "XenBlockTestbed", "XenToolstack", "XenStore", "XenProtocolTesting", "XenBlockProtocol",
            "XenRing", "XenPlatform", "XenSim", "XenSystem", "XenDisk", "XenBus",
        ]),
        .testTarget(name: "XenBackendDaemonTests", dependencies: [
            "XenBackendDaemon", "XenProcess", "XenBlockFrontend", "XenBlockTestbed", "XenBlockProtocol", "XenBlockBackend", "XenBusDriver",
            "XenBusClient", "XenBus", "XenToolstack", "XenStoreProtocol", "XenSystem", "XenDisk", "XenNetDevice",
            .product(name: "Logging", package: "swift-log"), .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            "XenNetFrontend", "XenNetTestbed", "XenSim", "XenStore", "XenPlatform", "XenProtocolTesting",
        ]),
        .testTarget(name: "XenNetBackendTests", dependencies: [
            "XenNetBackend", "XenNetFrontend", "XenNetTestbed", "XenNetProtocol", "XenNetChecksum", "XenNetDevice", "XenRing", "XenPlatform", "XenSim",
            "XenStore", "XenStoreProtocol", "XenBusDriver", "XenBus", "XenBusClient", "XenToolstack", "XenProtocolTesting", "XenProcess", "XenSystem", "CXenNet",
        ]),
        .testTarget(name: "XenHostTests", dependencies: ["XenHost", "XenPlatform", "XenSystem", "XenDisk", "CXenUAPI", "XenProtocolTesting"]),
        .testTarget(name: "XenSimTests", dependencies: ["XenSim", "XenPlatform", "XenRing", "XenBlockProtocol", "XenStore", "XenSystem", "XenProtocolTesting"]),
        .testTarget(name: "XenBusTests", dependencies: ["XenBus", "XenProtocolTesting"]),
        .testTarget(name: "XenStoreTests", dependencies: ["XenStore", "XenStoreCore", "XenProtocolTesting"]),
        .testTarget(name: "XenStoreProtocolTests", dependencies: ["XenStoreProtocol", "XenBus", "XenProtocolTesting"]),
        .testTarget(name: "XenNetChecksumTests", dependencies: ["XenNetChecksum", "XenProtocolTesting"]),
        .testTarget(name: "XenSystemTests", dependencies: ["XenSystem", "CXenShims", "XenProtocolTesting"]),
        .testTarget(name: "XenPlatformTests", dependencies: ["XenPlatform", "XenSystem", "CXenShims", "XenProtocolTesting"]),
        .testTarget(name: "XenBusClientTests", dependencies: ["XenBusClient", "XenBus", "XenStore", "XenSim", "XenPlatform"]),
        .testTarget(name: "XenDiskTests", dependencies: ["XenDisk", "CXenShims", "XenProtocolTesting"]),
        .testTarget(name: "XenNetDeviceTests", dependencies: [
            "XenNetDevice", "XenNetChecksum", "XenPlatform", "CXenNet", "XenNetTestbed", "XenProtocolTesting",
        ]),
        .testTarget(name: "XenProcessTests", dependencies: ["XenProcess", "CXenShims", "XenProtocolTesting"]),
        .testTarget(name: "XenBusDriverTests", dependencies: [
            "XenBusDriver", "XenBusClient", "XenBus", "XenStore", "XenSim", "XenPlatform",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "XenBlockFrontendTests", dependencies: [
            "XenBlockFrontend", "XenBlockTestbed", "XenBlockBackend", "XenBlockProtocol", "XenToolstack", "XenSim", "XenStore", "XenBus",
            "XenBusClient", "XenPlatform", "XenRing", "XenProtocolTesting",
        ]),
        .testTarget(name: "XenNetFrontendTests", dependencies: [
            "XenNetFrontend", "XenNetTestbed", "XenNetBackend", "XenNetDevice", "XenNetChecksum", "XenNetProtocol", "XenToolstack", "XenSim",
            "XenStore", "XenBus", "XenBusClient", "XenPlatform", "XenProtocolTesting",
        ]),
        .testTarget(name: "XenToolstackTests", dependencies: ["XenToolstack", "XenStore", "XenSim", "XenBus", "XenPlatform", "XenProtocolTesting"]),
    ]
)

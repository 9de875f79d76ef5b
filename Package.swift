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
        .library(name: "XenStore", targets: ["XenStore"]),
        .library(name: "XenFuzzing", targets: ["XenFuzzing"]),
        .executable(name: "xenback", targets: ["xenback"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/ordo-one/malloc-interposer", from: "1.6.1"),
    ],
    targets: [
        .target(name: "XenRing"),
        .target(name: "XenBlockProtocol", dependencies: ["XenRing"]),
        .target(name: "XenNetProtocol", dependencies: ["XenRing"]),
        .target(name: "XenStoreProtocol"),
        .target(name: "XenBus", dependencies: ["XenStoreProtocol"]),
        .target(name: "XenStore", dependencies: ["XenStoreProtocol"]),
        .target(name: "CXenShims", cSettings: [.define("_GNU_SOURCE")]),
        .target(
            name: "CXenRingReference",
            cSettings: [.define("_GNU_SOURCE")],
            linkerSettings: [.linkedLibrary("pthread")]
        ),
        .target(
            name: "XenRingBenchmark",
            dependencies: [
                "XenRing", "XenBlockProtocol", "CXenRingReference", "CXenShims",
                .product(name: "MallocInterposerSwift", package: "malloc-interposer"),
            ]
        ),
        .executableTarget(
            name: "xenback",
            dependencies: [
                "XenRingBenchmark",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The fuzz targets' logic, shared by tools/fuzz (libFuzzer) and the
        // tests that replay seed and regression inputs.
        .target(name: "XenFuzzing", dependencies: ["XenRing", "XenBlockProtocol", "XenNetProtocol", "XenStoreProtocol"]),
        // Test support shared by the test targets: the ABI probe runner and the
        // golden-vector reader. Never imported by Sources.
        .target(name: "XenProtocolTesting", path: "Sources/XenProtocolTesting"),
        .testTarget(
            name: "XenRingTests",
            dependencies: ["XenRing", "XenBlockProtocol", "XenRingBenchmark", "CXenRingReference", "XenProtocolTesting", "XenFuzzing",
                           .product(name: "MallocInterposerSwift", package: "malloc-interposer")]
        ),
        .testTarget(name: "XenBlockProtocolTests", dependencies: ["XenBlockProtocol", "XenRing", "XenProtocolTesting"]),
        .testTarget(name: "XenNetProtocolTests", dependencies: ["XenNetProtocol", "XenRing", "XenProtocolTesting"]),
        .testTarget(name: "XenBusTests", dependencies: ["XenBus"]),
        .testTarget(name: "XenStoreTests", dependencies: ["XenStore"]),
        .testTarget(name: "XenStoreProtocolTests", dependencies: ["XenStoreProtocol", "XenProtocolTesting", "XenFuzzing"]),
    ]
)

// swift-tools-version: 6.2
// libFuzzer targets, built with --sanitize=fuzzer --sanitize=address by
// tools/fuzz/run. Each is a thin wrapper around a XenFuzzing entry point, so
// the main package's tests replay the same logic on the seed and regression
// inputs without sanitizers.
import PackageDescription

let package = Package(
    name: "xenback-fuzz",
    dependencies: [.package(name: "xenback", path: "../..")],
    targets: [
        .executableTarget(name: "FuzzBackRing", dependencies: [.product(name: "XenFuzzing", package: "xenback")],
                          swiftSettings: [.unsafeFlags(["-parse-as-library"])]),
        .executableTarget(name: "FuzzXenStoreWire", dependencies: [.product(name: "XenFuzzing", package: "xenback")],
                          swiftSettings: [.unsafeFlags(["-parse-as-library"])]),
        .executableTarget(name: "FuzzXenStoreServer", dependencies: [.product(name: "XenFuzzing", package: "xenback")],
                          swiftSettings: [.unsafeFlags(["-parse-as-library"])]),
        .executableTarget(name: "FuzzBlockRequests", dependencies: [.product(name: "XenFuzzing", package: "xenback")],
                          swiftSettings: [.unsafeFlags(["-parse-as-library"])]),
        .executableTarget(name: "FuzzNetQueue", dependencies: [.product(name: "XenFuzzing", package: "xenback")],
                          swiftSettings: [.unsafeFlags(["-parse-as-library"])]),
        .executableTarget(name: "FuzzXenbusStateMachine", dependencies: [.product(name: "XenFuzzing", package: "xenback")],
                          swiftSettings: [.unsafeFlags(["-parse-as-library"])]),
    ]
)

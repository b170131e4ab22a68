// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "NodeLease",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "Raft", targets: ["Raft"]),
        .library(name: "RaftStorage", targets: ["RaftStorage"]),
        .library(name: "LeaseRegistry", targets: ["LeaseRegistry"]),
        .library(name: "RaftSimulator", targets: ["RaftSimulator"]),
        .executable(name: "nodelease-sim", targets: ["nodelease-sim"]),
        .executable(name: "nodelease-microbench", targets: ["nodelease-microbench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
    ],
    targets: [
        // The consensus algorithm as a pure, deterministic state machine.
        .target(name: "Raft"),
        // Write-ahead log, snapshots and crash recovery on disk.
        .target(name: "RaftStorage", dependencies: ["Raft"]),
        // The replicated state machine of node-ID leases, and leader-side expiry.
        .target(name: "LeaseRegistry", dependencies: ["Raft"]),
        // Seeded, single-threaded world that runs the real core under faults.
        .target(name: "RaftSimulator", dependencies: ["Raft", "RaftStorage", "LeaseRegistry"]),
        .executableTarget(
            name: "nodelease-sim",
            dependencies: [
                "RaftSimulator",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "nodelease-microbench",
            dependencies: [
                "RaftStorage",
                "LeaseRegistry",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "RaftTests",
            dependencies: ["Raft", "RaftSimulator"],
            exclude: ["testdata"]
        ),
        .testTarget(name: "RaftSimulatorTests", dependencies: ["Raft", "RaftSimulator"]),
        .testTarget(name: "RaftStorageTests", dependencies: ["Raft", "RaftStorage", "nodelease-microbench"]),
        .testTarget(name: "LeaseRegistryTests", dependencies: ["Raft", "LeaseRegistry"]),
    ],
    swiftLanguageModes: [.v6]
)

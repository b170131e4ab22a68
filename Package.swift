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
        .executable(name: "nodelease", targets: ["nodelease"]),
        .executable(name: "nodelease-sim", targets: ["nodelease-sim"]),
        .executable(name: "nodelease-jepsen", targets: ["nodelease-jepsen"]),
        .executable(name: "nodelease-microbench", targets: ["nodelease-microbench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.0"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.0.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.34.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.30.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.0"),
        .package(url: "https://github.com/hummingbird-project/swift-mustache.git", from: "2.1.1"),
    ],
    targets: [
        // The consensus algorithm as a pure, deterministic state machine.
        .target(name: "Raft"),
        // Write-ahead log, snapshots and crash recovery on disk.
        .target(name: "RaftStorage", dependencies: ["Raft"]),
        // The replicated state machine of node-ID leases, and leader-side expiry.
        .target(name: "LeaseRegistry", dependencies: ["Raft"]),
        // NIO TCP between replicas: frames, handshake, reconnect, bounded queues.
        .target(
            name: "RaftTransport",
            dependencies: [
                "Raft",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The replica: Ready loop driver, HTTP API, process wiring.
        .target(
            name: "NodeLeaseServer",
            dependencies: [
                "Raft", "RaftStorage", "RaftTransport", "LeaseRegistry", "ReplicaCore", "NodeLeaseClient",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Mustache", package: "swift-mustache"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // The library a node embeds, and the tools use.
        .target(
            name: "NodeLeaseClient",
            dependencies: [
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        // Programs started with posix_spawn (not Foundation's Process): the Jepsen harness and
        // the tests start replicas, keepers, openssl and the CLI with it.
        .target(
            name: "ChildProcess",
            dependencies: ["CNodeLeaseShims", .product(name: "NIOConcurrencyHelpers", package: "swift-nio")]
        ),
        // Checkers over Jepsen histories (a library, so tests can feed them made-up histories).
        .target(name: "JepsenCheckers"),
        .executableTarget(
            name: "nodelease-jepsen",
            dependencies: [
                "JepsenCheckers", "NodeLeaseClient", "ChildProcess",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        // What Swift cannot call: prctl(PR_SET_PDEATHSIG) for `nodelease hold`'s command (prctl is
        // variadic), and the _GNU_SOURCE spawn and pipe calls ChildProcess needs.
        .target(name: "CNodeLeaseShims"),
        // One replica's decisions as a pure value: Raft core, registry, expiry and the request
        // path; run by the server's actor and by the simulator.
        .target(name: "ReplicaCore", dependencies: ["Raft", "LeaseRegistry"]),
        // Seeded, single-threaded world that runs the real core under faults.
        .target(name: "RaftSimulator", dependencies: ["Raft", "RaftStorage", "LeaseRegistry", "ReplicaCore"]),
        .executableTarget(
            name: "nodelease",
            dependencies: [
                "NodeLeaseServer", "NodeLeaseClient", "Raft", "RaftTransport", "RaftStorage", "LeaseRegistry", "CNodeLeaseShims",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
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
        // What the network test targets share: loopback ports that cannot collide.
        .target(
            name: "TestSupport",
            dependencies: [
                "ChildProcess",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Tests/TestSupport"
        ),
        .testTarget(name: "RaftSimulatorTests", dependencies: ["Raft", "RaftSimulator"]),
        .testTarget(name: "ReplicaCoreTests", dependencies: ["Raft", "LeaseRegistry", "ReplicaCore"]),
        .testTarget(name: "RaftStorageTests", dependencies: ["Raft", "RaftStorage", "ChildProcess", "nodelease-microbench"]),
        .testTarget(name: "LeaseRegistryTests", dependencies: ["Raft", "LeaseRegistry"]),
        .testTarget(name: "JepsenCheckersTests", dependencies: ["JepsenCheckers"]),
        .testTarget(
            name: "NodeLeaseServerTests",
            dependencies: [
                "NodeLeaseServer", "NodeLeaseClient", "Raft", "RaftTransport", "RaftStorage", "LeaseRegistry", "nodelease", "JepsenCheckers", "TestSupport", "ChildProcess",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "RaftTransportTests",
            dependencies: [
                "Raft", "RaftTransport", "TestSupport",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)

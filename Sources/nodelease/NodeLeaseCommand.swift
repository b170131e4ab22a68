import ArgumentParser
import CNodeLeaseShims
import Foundation
import Logging
import NIOCore
import NIOPosix
import NodeLeaseClient
import NodeLeaseServer
import Raft
import RaftTransport
import ServiceLifecycle


@main
struct NodeLeaseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nodelease",
        abstract: "Unique node IDs for the servers of a mail cluster, by lease, over Raft.",
        version: "\(NodeLeaseBuild.version) (cluster versions 1 to \(NodeLeaseBuild.newestClusterVersion))",
        subcommands: [
            Serve.self, Dev.self, Acquire.self, Renew.self, Release.self, Forget.self, Nodes.self, Status.self, Member.self, Hold.self, HoldExec.self, Bench.self, Token.self,
            SnapshotCommand.self,
        ])

    /// Parses the command; for the replica and the load generator, sizes NIO's event loops
    /// (`--event-loops`) and runs Swift concurrency's jobs on them (the threads that do the
    /// sockets' I/O), so a request no longer hops from an event loop to the concurrency pool
    /// and back: fewer thread switches per request. (Not for the client commands: `hold`
    /// blocks while its command runs.) Then runs the command.
    static func main() async {
        do {
            var command = try parseAsRoot()
            let loops: Int?
            do {
                loops = try eventLoops(for: command)
            } catch let e as ConfigError {
                FileHandle.standardError.write(Data("nodelease \(command is Dev ? "dev" : "serve"): invalid configuration: \(e)\n".utf8))
                throw ExitCode(2)
            }
            // Before anything uses NIO's singleton group (NIO stops the process if it is set
            // after): the executor's install below is the first use.
            if let loops { NIOSingletons.groupLoopCountSuggestion = loops }
            let server = command is Serve || command is Dev || command is Bench
            if server && ProcessInfo.processInfo.environment["NODELEASE_CONCURRENCY_POOL"] != "swift" {
                NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
            }
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }

    /// The event loops `command` asks for; nil: NIO's default (one per core).
    ///
    /// A replica runs on one by default. Its requests are serialized through its driver actor
    /// anyway, and with a second loop most of them crossed threads twice (in, and the answer
    /// out). On a 2-core machine with 3 replicas and the load generator (README, Performance):
    /// renew at c=64 went from 9.8-10.1k to 11.3-11.9k ops/s at 135-138 -> 109-114 us of
    /// replica CPU an op; the fleet of 70,000 showed no difference beyond its noise. `dev`
    /// runs every replica in one process, so it keeps one loop per core.
    static func eventLoops(for command: any ParsableCommand) throws -> Int? {
        switch command {
        case let serve as Serve: return try serve.options.eventLoopCount() ?? 1
        case let dev as Dev: return try dev.options.eventLoopCount()
        default: return nil
        }
    }
}

/// Flags shared by `serve` and `dev`; each has an environment equivalent (`--node-id-range`
/// is `NODELEASE_NODE_ID_RANGE`). A flag wins over the environment.
struct ReplicaOptions: ParsableArguments {
    @Option(help: "Cluster id; replicas of another cluster are refused. Env NODELEASE_CLUSTER_ID.")
    var clusterId: String?
    @Option(help: "Default lease TTL in seconds (30). Env NODELEASE_DEFAULT_TTL.")
    var defaultTtl: String?
    @Option(help: "Shortest TTL a client may ask for (5). Env NODELEASE_MIN_TTL.")
    var minTtl: String?
    @Option(help: "Longest TTL a client may ask for (3600). Env NODELEASE_MAX_TTL.")
    var maxTtl: String?
    @Option(help: "Node IDs to hand out, LOW-HIGH within 0-4294967295 (1-511). Env NODELEASE_NODE_ID_RANGE.")
    var nodeIdRange: String?
    @Option(help: "Seconds a stale node keeps its ID before it becomes inactive (86400). Env NODELEASE_RETENTION.")
    var retention: String?
    @Option(help: "Election timeout in milliseconds (1000). Env NODELEASE_ELECTION_TIMEOUT.")
    var electionTimeout: String?
    @Option(help: "Heartbeat interval in milliseconds (100). Env NODELEASE_HEARTBEAT_INTERVAL.")
    var heartbeatInterval: String?
    @Option(help: "Milliseconds a client request may wait for the cluster (5000). Env NODELEASE_REQUEST_TIMEOUT.")
    var requestTimeout: String?
    @Option(help: "Snapshot every this many log entries, or twice the registry's size if more (100000). Env NODELEASE_SNAPSHOT_EVERY.")
    var snapshotEvery: String?
    @Option(help: "Log entries kept behind a snapshot for slow followers (5000). Env NODELEASE_SNAPSHOT_KEEP.")
    var snapshotKeep: String?
    @Option(help: "Seconds of leader time an idempotency key is remembered (600). Env NODELEASE_IDEMPOTENCY_WINDOW.")
    var idempotencyWindow: String?
    @Option(help: "Most idempotency keys remembered, the oldest going first (100000). Env NODELEASE_IDEMPOTENCY_KEYS.")
    var idempotencyKeys: String?
    @Flag(help: "Do not fsync the log: acknowledged writes can be lost. Benchmarks only. Env NODELEASE_NO_FSYNC=1.")
    var noFsync = false
    @Flag(help: "Serve acquire, renew, release and the registry through Hummingbird's per-connection task like every other route, not from the event loop (A/B of the fast path). Env NODELEASE_NO_LEASE_FAST_PATH=1.")
    var noLeaseFastPath = false
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (info). Env NODELEASE_LOG_LEVEL.")
    var logLevel: String?
    @Option(help: "Token file (SHA-256 hashes with roles; see `nodelease token create`): every request but /healthz and /readyz then needs a token. Reloaded on SIGHUP. Env NODELEASE_TOKEN_FILE.")
    var tokenFile: String?
    @Option(help: "Long polls of the registry (GET /v1/cluster/nodes?waitIndex=...) waiting at once; one more gets 503 (1024; at most half the client connections). Env NODELEASE_MAX_WATCHES.")
    var maxWatches: String?
    @Option(help: "Reads of the registry whose answer (after ?status=) has more nodes than this are rendered off the event loop, one render at a time shared by every read it covers (1024); a larger value renders more of them on the event loop, each read its own (for A/B runs). Env NODELEASE_INLINE_RENDER_NODES.")
    var inlineRenderNodes: String?
    @Option(help: "Tests of rolling upgrades: support cluster versions only up to this one, as an older build does (this build's newest). Env NODELEASE_MAX_CLUSTER_VERSION.")
    var maxClusterVersion: String?
    @Option(help: "Event-loop threads, which do the sockets' I/O and the replica's own work (serve: 1; dev: one per core). More may help a replica on a machine of its own with many TLS clients or follower reads (not measured). Env NODELEASE_EVENT_LOOPS.")
    var eventLoops: String?

    static func env(_ flag: String) -> String? {
        let name = "NODELEASE_" + flag.dropFirst(2).uppercased().replacingOccurrences(of: "-", with: "_")
        guard let v = ProcessInfo.processInfo.environment[name], !v.isEmpty else { return nil }
        return v
    }

    func value(_ flagValue: String?, _ flag: String) -> String? { flagValue ?? Self.env(flag) }

    func number<T: FixedWidthInteger>(_ flagValue: String?, _ flag: String, default d: T) throws -> T {
        guard let text = value(flagValue, flag) else { return d }
        guard let v = T(text.trimmingCharacters(in: .whitespaces)) else { throw ConfigError(flag, "expected an integer, got \"\(text)\"") }
        return v
    }

    /// `--event-loops`, if given; at most 256.
    func eventLoopCount() throws -> Int? {
        guard value(eventLoops, "--event-loops") != nil else { return nil }
        let n: Int = try number(eventLoops, "--event-loops", default: 1)
        guard (1...256).contains(n) else { throw ConfigError("--event-loops", "must be between 1 and 256, got \(n)") }
        return n
    }

    func apply(to c: inout ServerConfig) throws {
        if let v = value(clusterId, "--cluster-id") { c.clusterID = v }
        c.defaultTTL = try number(defaultTtl, "--default-ttl", default: c.defaultTTL)
        let lo: UInt32 = try number(minTtl, "--min-ttl", default: c.ttlRange.lowerBound)
        let hi: UInt32 = try number(maxTtl, "--max-ttl", default: c.ttlRange.upperBound)
        guard lo <= hi else { throw ConfigError("--min-ttl", "must not exceed --max-ttl (\(hi))") }
        c.ttlRange = lo...hi
        if let r = value(nodeIdRange, "--node-id-range") { c.nodeIDRange = try ServerConfig.parseRange(r, flag: "--node-id-range") }
        c.retentionSeconds = try number(retention, "--retention", default: c.retentionSeconds)
        c.snapshotEvery = try number(snapshotEvery, "--snapshot-every", default: c.snapshotEvery)
        c.keepAfterSnapshot = try number(snapshotKeep, "--snapshot-keep", default: c.keepAfterSnapshot)
        guard c.snapshotEvery >= 1 else { throw ConfigError("--snapshot-every", "must be at least 1") }
        let heartbeat: Int = try number(heartbeatInterval, "--heartbeat-interval", default: 100)
        let election: Int = try number(electionTimeout, "--election-timeout", default: 1000)
        guard heartbeat >= 1 else { throw ConfigError("--heartbeat-interval", "must be at least 1 ms") }
        guard election >= 2 * heartbeat else {
            throw ConfigError("--election-timeout", "must be at least twice --heartbeat-interval (\(heartbeat) ms)")
        }
        c.tickMillis = heartbeat
        c.heartbeatTicks = 1
        c.electionTicks = election / heartbeat
        c.requestTimeoutMillis = try number(requestTimeout, "--request-timeout", default: c.requestTimeoutMillis)
        c.idempotencyWindow.seconds = try number(idempotencyWindow, "--idempotency-window", default: c.idempotencyWindow.seconds)
        c.idempotencyWindow.maxKeys = try number(idempotencyKeys, "--idempotency-keys", default: c.idempotencyWindow.maxKeys)
        if noFsync || Self.env("--no-fsync") == "1" { c.fsync = false }
        if noLeaseFastPath || Self.env("--no-lease-fast-path") == "1" { c.leaseFastPath = false }
        if let f = value(tokenFile, "--token-file") { c.tokenFile = f }
        c.maxWatches = try number(maxWatches, "--max-watches", default: c.maxWatches)
        guard c.maxWatches >= 1 else { throw ConfigError("--max-watches", "must be at least 1") }
        c.inlineRenderNodes = try number(inlineRenderNodes, "--inline-render-nodes", default: c.inlineRenderNodes)
        guard c.inlineRenderNodes >= 0 else { throw ConfigError("--inline-render-nodes", "must not be negative") }
        c.supportedClusterVersion = try number(maxClusterVersion, "--max-cluster-version", default: c.supportedClusterVersion)
        // Planted bugs: only in a fault build; a normal build refuses to start with them set.
        c.faults = try FaultOptions.fromEnvironment()
        try c.validate()
    }

    func makeLogger(_ label: String) throws -> Logger {
        var logger = Logger(label: label)
        if let l = value(logLevel, "--log-level") {
            guard let level = Logger.Level(rawValue: l) else { throw ConfigError("--log-level", "unknown level \"\(l)\"") }
            logger.logLevel = level
        }
        return logger
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run one replica.")

    @Option(help: "This replica's id (1, 2, ...). Env NODELEASE_REPLICA_ID.")
    var replicaId: String?
    @Option(help: "Every replica's peer address: 1=127.0.0.1:7501,2=127.0.0.1:7502,3=... Env NODELEASE_PEERS.")
    var peers: String?
    @Option(help: "Client (HTTP) listen address (0.0.0.0:7400). Env NODELEASE_CLIENT_ADDR.")
    var clientAddr: String?
    @Option(help: "Peer listen address (this replica's entry in --peers). Env NODELEASE_PEER_ADDR.")
    var peerAddr: String?
    @Option(help: "Data directory (./data/replica-ID). Env NODELEASE_DATA_DIR.")
    var dataDir: String?
    @Flag(help: "Join an existing cluster with an empty data directory, after `nodelease member add` (which prints this command). Env NODELEASE_JOIN=1.")
    var join = false
    @Flag(inversion: .prefixedNo, help: "As leader, promote a caught-up learner to voter by itself. Env NODELEASE_AUTO_PROMOTE=0 turns it off.")
    var autoPromote = true
    @Option(help: "The client address other replicas and clients are told (default: --client-addr, with the --peer-addr host if that listens on 0.0.0.0). Env NODELEASE_ADVERTISE_CLIENT_ADDR.")
    var advertiseClientAddr: String?
    @Option(help: "This replica's peer certificate (PEM), naming it nodelease://CLUSTER/replica/ID: mutual TLS between replicas, with --peer-key and --peer-ca. Env NODELEASE_PEER_CERT.")
    var peerCert: String?
    @Option(help: "The peer certificate's private key (PEM). Env NODELEASE_PEER_KEY.")
    var peerKey: String?
    @Option(help: "The cluster CA's certificate (PEM); peers must present a certificate it issued. Env NODELEASE_PEER_CA.")
    var peerCa: String?
    @Option(help: "Serve clients over HTTPS with this certificate (PEM), with --client-key. Env NODELEASE_CLIENT_CERT.")
    var clientCert: String?
    @Option(help: "The client-port certificate's private key (PEM). Env NODELEASE_CLIENT_KEY.")
    var clientKey: String?
    @Option(help: "Require client certificates issued by this CA (PEM) on the client port. Env NODELEASE_CLIENT_CA.")
    var clientCa: String?
    @OptionGroup var options: ReplicaOptions

    func run() async throws {
        // A snapshot's buffer (the registry's size) is freed once its file is written; from
        // the heap, glibc kept its pages (and raised its threshold so the next one came from
        // the heap too): 7 MiB more on a leader of 65,536 nodes (README, Performance).
        _ = nodelease_malloc_large_chunks_from(256 * 1024)
        let config: ServerConfig
        let logger: Logger
        do {
            guard let idText = options.value(replicaId, "--replica-id") else { throw ConfigError("--replica-id", "is required") }
            guard let raw = UInt64(idText), raw > 0 else { throw ConfigError("--replica-id", "expected a positive integer, got \"\(idText)\"") }
            let id = ReplicaID(raw)
            guard let peersText = options.value(peers, "--peers") else { throw ConfigError("--peers", "is required") }
            let peerMap = try ServerConfig.parsePeers(peersText)
            let client = try options.value(clientAddr, "--client-addr").map { try ServerConfig.parseAddress($0, flag: "--client-addr") }
                ?? PeerAddress(host: "0.0.0.0", port: 7400)
            var c = ServerConfig(
                replicaID: id, peers: peerMap, clientListen: client,
                dataDir: options.value(dataDir, "--data-dir") ?? "./data/replica-\(raw)")
            if let p = options.value(peerAddr, "--peer-addr") { c.peerListen = try ServerConfig.parseAddress(p, flag: "--peer-addr") }
            c.join = join || ReplicaOptions.env("--join") == "1"
            c.autoPromote = autoPromote && ReplicaOptions.env("--auto-promote") != "0"
            if let a = options.value(advertiseClientAddr, "--advertise-client-addr") {
                c.advertiseClient = try ServerConfig.parseAddress(a, flag: "--advertise-client-addr").description
            }
            let peerFiles = (options.value(peerCert, "--peer-cert"), options.value(peerKey, "--peer-key"), options.value(peerCa, "--peer-ca"))
            switch peerFiles {
            case (nil, nil, nil): break
            case (let cert?, let key?, let ca?): c.peerTLS = TLSFiles(certificate: cert, key: key, ca: ca)
            default: throw ConfigError("--peer-cert", "mutual TLS between replicas needs all of --peer-cert, --peer-key and --peer-ca")
            }
            switch (options.value(clientCert, "--client-cert"), options.value(clientKey, "--client-key"), options.value(clientCa, "--client-ca")) {
            case (nil, nil, nil): break
            case (let cert?, let key?, let ca): c.clientTLS = TLSFiles(certificate: cert, key: key, ca: ca)
            default: throw ConfigError("--client-cert", "HTTPS needs both --client-cert and --client-key (--client-ca is optional)")
            }
            try options.apply(to: &c)
            config = c
            logger = try options.makeLogger("nodelease")
        } catch let e as ConfigError {
            FileHandle.standardError.write(Data("nodelease serve: invalid configuration: \(e)\n".utf8))
            throw ExitCode(2)
        }
        let replica: NodeLeaseReplica
        do {
            replica = try NodeLeaseReplica(config: config, logger: logger)
        } catch {
            FileHandle.standardError.write(Data("nodelease serve: cannot start: \(error)\n".utf8))
            throw ExitCode(1)
        }
        // SIGHUP reloads the token file (an invalid one is refused, keeping the tokens in use).
        signal(SIGHUP, SIG_IGN)
        let hangup = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        hangup.setEventHandler { replica.reloadTokens() }
        hangup.resume()
        defer { hangup.cancel() }
        let group = ServiceGroup(
            configuration: .init(services: [replica], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}

struct Dev: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a 3-replica cluster in this process on loopback and show the registry as it changes.")

    @Option(help: "Keep the replicas' data here instead of a temporary directory.")
    var dataDir: String?
    @Option(help: "Number of replicas (1, 3 or 5).")
    var replicas: Int = 3
    @OptionGroup var options: ReplicaOptions

    func run() async throws {
        let base = dataDir ?? (NSTemporaryDirectory() + "nodelease-dev-\(getpid())")
        var peers: [ReplicaID: PeerAddress] = [:]
        for i in 1...replicas { peers[ReplicaID(UInt64(i))] = PeerAddress(host: "127.0.0.1", port: 7500 + i) }
        var logger = try options.makeLogger("nodelease")
        if options.value(options.logLevel, "--log-level") == nil { logger.logLevel = .warning }
        var services: [NodeLeaseReplica] = []
        for i in 1...replicas {
            var c = ServerConfig(
                replicaID: ReplicaID(UInt64(i)), peers: peers, clientListen: PeerAddress(host: "127.0.0.1", port: 7400 + i),
                dataDir: "\(base)/replica-\(i)")
            do {
                try options.apply(to: &c)
            } catch let e as ConfigError {
                FileHandle.standardError.write(Data("nodelease dev: invalid configuration: \(e)\n".utf8))
                throw ExitCode(2)
            }
            services.append(try NodeLeaseReplica(config: c, logger: logger))
        }
        say("NodeLease dev cluster: \(replicas) replicas, data in \(base)")
        for i in 1...replicas { say("  replica \(i): http://127.0.0.1:\(7400 + i)  (peers on 127.0.0.1:\(7500 + i))") }
        say("try: curl -s -XPOST http://127.0.0.1:7401/v1/leases -d '{\"hostname\":\"mx1.example.org\",\"holder\":\"me\"}'")
        say("")
        // SIGHUP reloads the token file, as for `serve`.
        signal(SIGHUP, SIG_IGN)
        let hangup = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        hangup.setEventHandler { for s in services { s.reloadTokens() } }
        hangup.resume()
        defer { hangup.cancel() }
        let group = ServiceGroup(
            configuration: .init(
                services: services.map { $0 as any Service } + [RegistryWatcher(port: 7401)],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}

/// Prints the registry whenever it changes (polling one replica's API with the client
/// library: not URLSession, whose FoundationNetworking would load libcurl and a dozen
/// libraries into every replica).
struct RegistryWatcher: Service {
    let port: Int

    func run() async throws {
        let client = NodeLeaseClient(endpoints: [URL(string: "http://127.0.0.1:\(port)")!], timeout: .seconds(2))
        var last = ""
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            guard let nodes = try? await client.nodes() else { continue }
            let text = "[" + nodes.map(Render.json).joined(separator: ",") + "]"
            if text != last {
                last = text
                say("registry: \(text)")
            }
        }
    }
}

/// Writes a line to standard output at once (no buffering, so `dev | tee` shows it live).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

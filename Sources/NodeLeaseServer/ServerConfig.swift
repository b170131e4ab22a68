import LeaseRegistry
import Raft
import RaftTransport

/// Everything one replica is configured with. `ServerConfig.parse` builds it from flags and
/// `NODELEASE_*` environment variables; invalid values name the flag.
public struct ServerConfig: Sendable {
    public var replicaID: ReplicaID
    public var clusterID: String = "nodelease"
    /// Every voter's peer address, this replica's included.
    public var peers: [ReplicaID: PeerAddress]
    public var clientListen: PeerAddress
    public var peerListen: PeerAddress
    public var dataDir: String
    public var defaultTTL: UInt32 = 30
    public var ttlRange: ClosedRange<UInt32> = 5...3600
    public var nodeIDRange: ClosedRange<UInt32> = 1...511
    public var retentionSeconds: UInt64 = 86_400
    public var tickMillis: Int = 100
    public var electionTicks: Int = 10
    public var heartbeatTicks: Int = 1
    public var requestTimeoutMillis: Int = 5000
    /// fsync every batch. Off only for benchmarks (logged loudly).
    public var fsync: Bool = true
    /// Acquire, renew, release and the registry answered from the event loop
    /// (`LeaseFastPathHandler`); false: through Hummingbird like every other route.
    public var leaseFastPath = true
    /// 100,000 (etcd's default too): a snapshot carries the idempotency window, up to 100,000
    /// keys and 15 MB, so at 10,000 a busy leader wrote and fsynced 15 MB every 10,000 writes
    /// (8 % of its CPU, on the disk its WAL fsyncs).
    public var snapshotEvery: UInt64 = 100_000
    /// ... or more: this many entries per registered node, so that a snapshot (whose cost grows
    /// with the registry) costs each entry at most 1/snapshotEntriesPerNode of a record.
    public var snapshotEntriesPerNode: UInt64 = 2
    public var keepAfterSnapshot: UInt64 = 5_000
    /// How long and how many idempotency keys the registry remembers (shared/API.md).
    public var idempotencyWindow = IdempotencyWindow()
    /// The fault build's planted bug and test facilities (empty in a normal build).
    public var faults = FaultOptions()
    /// The newest cluster version this replica supports (LeaseRegistry's ClusterVersion):
    /// lower only to play a replica of an older build in tests of rolling upgrades.
    public var supportedClusterVersion = ClusterVersion.newest
    /// Join an existing cluster: start with no configuration of its own (the leader's log
    /// brings it, once `nodelease member add` made this replica a learner); `--peers` then
    /// only says where the others are until the log does.
    public var join = false
    /// The leader promotes a caught-up learner to voter by itself.
    public var autoPromote = true
    /// The client address written into the configuration (nil: the listen address, with
    /// the peer address's host when listening on every interface).
    public var advertiseClient: String?
    /// The token file (shared/API.md "Authentication and roles"); nil: no authentication.
    public var tokenFile: String?
    /// Mutual TLS between replicas: this replica's certificate and key, and the cluster's CA
    /// (PEM files); nil: plain TCP.
    public var peerTLS: TLSFiles?
    /// TLS on the client port: the certificate and key; `ca`, when set, also requires client
    /// certificates issued by it. Nil: plain HTTP.
    public var clientTLS: TLSFiles?
    /// A client connection must send a request's head within this long of opening or of the
    /// previous response, and the rest of the request within `httpBodyTimeoutMillis` of it.
    public var httpHeadTimeoutMillis = 10_000
    public var httpBodyTimeoutMillis = 30_000
    /// While responses are pending, a connection is closed after twice the request timeout
    /// and this much more (no answer takes longer today; a request pipelined behind one the
    /// server closes after is never answered). A long poll (API.md's `wait`) extends it by its
    /// wait.
    public var httpResponseGraceMillis = 10_000
    /// Long polls of the registry waiting at once on this replica; one beyond gets 503 at once.
    /// They do not count against `maxConcurrentRequests` while they wait. At most half of
    /// `maxClientConnections` (each holds a connection), so writes always find one.
    public var maxWatches = 1024
    /// Requests in progress on this replica beyond which new ones get 503 at once.
    public var maxConcurrentRequests = 1024
    /// A read of the registry whose answer (after its `status` filter) has more nodes than
    /// this is rendered off the event loop, one render at a time shared by every read it
    /// covers (`RegistryRenders`); up to this many, at once where it is asked (about 2 us a
    /// node).
    public var inlineRenderNodes = 1024
    /// Run on the render thread before each render off the event loop: tests hold renders
    /// with it. Nil in every replica the `nodelease` command starts.
    public var beforeRender: (@Sendable () -> Void)?
    /// Client connections open at once beyond which new ones are closed at once.
    public var maxClientConnections = 4096

    public init(replicaID: ReplicaID, peers: [ReplicaID: PeerAddress], clientListen: PeerAddress, dataDir: String) {
        self.replicaID = replicaID
        self.peers = peers
        self.clientListen = clientListen
        self.peerListen = peers[replicaID] ?? PeerAddress(host: "127.0.0.1", port: 7401)
        self.dataDir = dataDir
    }

    /// The configuration a new cluster starts with: every replica of `--peers` a voter (its
    /// client address is filled in by the leader later). A joining replica starts with none.
    public var membership: Membership {
        join ? .empty : Self.voters(peers)
    }

    /// Every replica of `peers` a voter, at its peer address.
    public static func voters(_ peers: [ReplicaID: PeerAddress]) -> Membership {
        Membership(members: peers.map { Member(id: $0.key, role: .voter, peerAddress: $0.value.description) })
    }

    /// Where clients reach this replica, as other replicas and clients are told.
    public var advertisedClientAddress: String {
        if let advertiseClient { return advertiseClient }
        let host = clientListen.host
        if host == "0.0.0.0" || host == "::" || host.isEmpty {
            return PeerAddress(host: peerListen.host, port: clientListen.port).description
        }
        return clientListen.description
    }

    public func validate() throws(ConfigError) {
        if replicaID.rawValue == 0 { throw ConfigError("--replica-id", "must be a positive integer") }
        if peers[replicaID] == nil { throw ConfigError("--peers", "must include this replica (\(replicaID))") }
        if peers.count > Membership.maxMembers { throw ConfigError("--peers", "lists more than \(Membership.maxMembers) replicas") }
        if clusterID.isEmpty || clusterID.utf8.count > 128 { throw ConfigError("--cluster-id", "must be 1 to 128 characters") }
        if dataDir.isEmpty { throw ConfigError("--data-dir", "must not be empty") }
        if !(1...ClusterVersion.newest).contains(supportedClusterVersion) {
            throw ConfigError("--max-cluster-version", "must be between 1 and \(ClusterVersion.newest) (this build's newest)")
        }
        if !ttlRange.contains(defaultTTL) {
            throw ConfigError("--default-ttl", "must be within --min-ttl and --max-ttl (\(ttlRange.lowerBound)-\(ttlRange.upperBound))")
        }
        if ttlRange.lowerBound < 1 { throw ConfigError("--min-ttl", "must be at least 1") }
        if tickMillis < 1 { throw ConfigError("--heartbeat-interval", "must be at least 1 ms") }
        if electionTicks <= heartbeatTicks { throw ConfigError("--election-timeout", "must be longer than the heartbeat interval") }
        if requestTimeoutMillis < 100 { throw ConfigError("--request-timeout", "must be at least 100 ms") }
        if idempotencyWindow.seconds < 1 { throw ConfigError("--idempotency-window", "must be at least 1 second") }
        if idempotencyWindow.maxKeys < 1 || idempotencyWindow.maxKeys > Int(UInt32.max) {
            throw ConfigError("--idempotency-keys", "must be between 1 and \(UInt32.max)")
        }
        if UInt64(requestTimeoutMillis) >= idempotencyWindow.seconds * 1000 {
            throw ConfigError("--idempotency-window", "must be longer than --request-timeout, or a replica's own re-sends could apply twice")
        }
    }
}

/// PEM files for TLS.
public struct TLSFiles: Sendable, Equatable {
    public var certificate: String
    public var key: String
    public var ca: String?
    public init(certificate: String, key: String, ca: String?) {
        self.certificate = certificate
        self.key = key
        self.ca = ca
    }
}

public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public var flag: String
    public var problem: String
    public init(_ flag: String, _ problem: String) {
        self.flag = flag
        self.problem = problem
    }
    public var description: String { "\(flag): \(problem)" }
}

extension ServerConfig {
    /// Parses `1=127.0.0.1:7501,2=127.0.0.1:7502`.
    public static func parsePeers(_ text: String, flag: String = "--peers") throws(ConfigError) -> [ReplicaID: PeerAddress] {
        var out: [ReplicaID: PeerAddress] = [:]
        for item in text.split(separator: ",") {
            let kv = item.split(separator: "=", maxSplits: 1)
            guard kv.count == 2, let id = UInt64(kv[0].trimmingSpaces), id > 0 else {
                throw ConfigError(flag, "expected ID=HOST:PORT items separated by commas, got \"\(item)\"")
            }
            let address = try parseAddress(String(kv[1]), flag: flag)
            guard out[ReplicaID(id)] == nil else { throw ConfigError(flag, "replica \(id) is listed twice") }
            out[ReplicaID(id)] = address
        }
        if out.isEmpty { throw ConfigError(flag, "must list at least one replica") }
        return out
    }

    /// Parses `HOST:PORT`.
    public static func parseAddress(_ text: String, flag: String) throws(ConfigError) -> PeerAddress {
        let t = text.trimmingSpaces
        guard let colon = t.lastIndex(of: ":"), let port = Int(t[t.index(after: colon)...]), (0...65535).contains(port) else {
            throw ConfigError(flag, "expected HOST:PORT, got \"\(t)\"")
        }
        let host = String(t[..<colon])
        guard !host.isEmpty else { throw ConfigError(flag, "expected HOST:PORT, got \"\(t)\"") }
        return PeerAddress(host: host, port: port)
    }

    /// Parses `LOW-HIGH` within 0 to 2^32-1.
    public static func parseRange(_ text: String, flag: String) throws(ConfigError) -> ClosedRange<UInt32> {
        let parts = text.trimmingSpaces.split(separator: "-")
        guard parts.count == 2, let lo = UInt32(parts[0]), let hi = UInt32(parts[1]), lo <= hi else {
            throw ConfigError(flag, "expected LOW-HIGH with 0 <= LOW <= HIGH <= 4294967295, got \"\(text)\"")
        }
        return lo...hi
    }
}

extension StringProtocol {
    var trimmingSpaces: String {
        String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}

import Foundation

/// A lease as the API returns it (shared/API.md).
public struct Lease: Codable, Sendable, Hashable {
    public var leaseId: String
    public var nodeId: UInt32
    public var hostname: String
    public var holder: String
    public var fencingToken: UInt64
    public var ttlSeconds: UInt32
    public var acquiredAt: String
    public var lastRenewal: String
    public var leaseTransitions: UInt64
}

/// One registry entry.
public struct ClusterNode: Codable, Sendable, Hashable {
    public var nodeId: UInt32
    public var hostname: String
    public var lastRenewal: String
    public var status: String

    public init(nodeId: UInt32, hostname: String, lastRenewal: String, status: String) {
        self.nodeId = nodeId
        self.hostname = hostname
        self.lastRenewal = lastRenewal
        self.status = status
    }
}

/// One replica's view of the cluster (`GET /v1/status`).
public struct ReplicaStatusView: Codable, Sendable, Hashable {
    public struct Peer: Codable, Sendable, Hashable {
        public var replicaId: UInt64
        public var address: String
        public var reachable: Bool
        public var matchIndex: UInt64?
    }
    public var replicaId: UInt64
    /// The cluster id the replica was started with (`--cluster-id`); nil when it has none.
    public var clusterId: String?
    public var role: String
    public var term: UInt64
    public var leaderId: UInt64?
    public var commitIndex: UInt64
    public var appliedIndex: UInt64
    public var peers: [Peer]
    /// The replica's build, the cluster version in force there and the newest it supports;
    /// nil from a replica of the first release (which supports cluster version 1 only).
    public var version: String?
    public var clusterVersion: UInt32?
    public var supportedClusterVersion: UInt32?
}

/// One member of the replica configuration (`GET /v1/cluster/replicas`).
public struct ReplicaInfo: Codable, Sendable, Hashable {
    public var replicaId: UInt64
    /// Where the other replicas reach it (`HOST:PORT`).
    public var peerAddress: String
    /// Where clients reach its HTTP API (`HOST:PORT`).
    public var clientAddress: String
    /// `voter` or `learner`.
    public var role: String

    public init(replicaId: UInt64, peerAddress: String, clientAddress: String, role: String) {
        self.replicaId = replicaId
        self.peerAddress = peerAddress
        self.clientAddress = clientAddress
        self.role = role
    }
}

/// The replicas of the cluster as of the log entry `configIndex` that set them.
public struct ReplicaConfiguration: Codable, Sendable, Hashable {
    /// The index to pass as `expectedConfigIndex` to change this configuration.
    public var configIndex: UInt64
    public var replicas: [ReplicaInfo]

    public init(configIndex: UInt64, replicas: [ReplicaInfo]) {
        self.configIndex = configIndex
        self.replicas = replicas
    }
}

/// What went wrong, typed after the API's error codes.
public enum NodeLeaseError: Error, Sendable, Hashable, CustomStringConvertible {
    /// Another installation holds this hostname's node ID.
    case hostnameInUse(nodeId: UInt32, holder: String, expiresInSeconds: UInt64)
    /// The lease is unknown, expired, released or superseded: stop using its node ID.
    case leaseNotFound
    case nodeNotFound
    case nodeActive
    case nodeIDsExhausted
    /// No replica could reach a leader with a quorum before the deadline.
    case noLeader
    /// Another membership change is still being committed; retry when it is done.
    case configChangeInProgress
    /// The configuration changed since the `expectedConfigIndex` given.
    case staleConfig
    /// The replica id is already in the configuration.
    case replicaExists
    /// The replica id is not in the configuration.
    case replicaNotFound
    /// The learner cannot be promoted yet (it has not caught up with the leader's log, or it
    /// runs a build that does not support the cluster version); the server's `message` says which.
    case learnerLagging(String)
    /// The change would leave fewer reachable voters than its quorum; `message` says why.
    case wouldLoseQuorum(String)
    /// The request was refused as malformed; `message` says why.
    case invalidRequest(String)
    /// The idempotency key was used before for a different request (a client bug).
    case idempotencyKeyMismatch
    /// Authentication is on and the token is missing or not valid (`NODELEASE_TOKEN`).
    case unauthenticated(String)
    /// The token's role or hostname patterns do not allow this request.
    case forbidden(String)
    /// No endpoint answered before the deadline.
    case transport(String)
    /// The server answered something this client does not understand.
    case unexpected(status: Int, body: String)

    public var description: String {
        switch self {
        case .hostnameInUse(let id, let holder, let s):
            "hostname in use: node \(id) is held by \(holder) for \(s) more seconds unless renewed"
        case .leaseNotFound: "lease not found (expired, released or superseded)"
        case .nodeNotFound: "node not found"
        case .nodeActive: "the node holds a live lease"
        case .unauthenticated(let m): "unauthenticated: \(m) (set NODELEASE_TOKEN)"
        case .forbidden(let m): "forbidden: \(m)"
        case .nodeIDsExhausted: "no node ID of the configured range is free"
        case .noLeader: "no leader reachable (the cluster has no quorum)"
        case .configChangeInProgress: "another membership change is in progress; retry once it has committed"
        case .staleConfig: "the replica configuration has changed since the expected config index; list the replicas and retry"
        case .replicaExists: "this replica id is a member, or was one (ids are never reused: pick a new one)"
        case .replicaNotFound: "no replica with this id is in the configuration"
        case .learnerLagging(let m): "the learner cannot be promoted yet: \(m)"
        case .wouldLoseQuorum(let m): m
        case .invalidRequest(let m): "invalid request: \(m)"
        case .idempotencyKeyMismatch: "idempotency key reused for a different request"
        case .transport(let m): "no replica reachable: \(m)"
        case .unexpected(let status, let body): "unexpected answer \(status): \(body)"
        }
    }
}

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
    public var role: String
    public var term: UInt64
    public var leaderId: UInt64?
    public var commitIndex: UInt64
    public var appliedIndex: UInt64
    public var peers: [Peer]
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
    /// The request was refused as malformed; `message` says why.
    case invalidRequest(String)
    /// The idempotency key was used before for a different request (a client bug).
    case idempotencyKeyMismatch
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
        case .nodeIDsExhausted: "no node ID of the configured range is free"
        case .noLeader: "no leader reachable (the cluster has no quorum)"
        case .invalidRequest(let m): "invalid request: \(m)"
        case .idempotencyKeyMismatch: "idempotency key reused for a different request"
        case .transport(let m): "no replica reachable: \(m)"
        case .unexpected(let status, let body): "unexpected answer \(status): \(body)"
        }
    }
}

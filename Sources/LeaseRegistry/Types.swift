/// A node ID handed to a mail server (Snowflake-style worker ID). Any value of 0 to 2^32-1.
public struct NodeID: RawRepresentable, Hashable, Comparable, Sendable, ExpressibleByIntegerLiteral, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public init(_ value: UInt32) { self.rawValue = value }
    public init(integerLiteral value: UInt32) { self.rawValue = value }
    public static func < (a: NodeID, b: NodeID) -> Bool { a.rawValue < b.rawValue }
    public var description: String { String(rawValue) }
}

/// A node's registry status (see shared/API.md). Stored in the replicated state and changed
/// only by committed commands, never derived from a reader's clock.
public enum NodeStatus: UInt8, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// Holds an unexpired lease.
    case active = 1
    /// Its lease expired without a release; the ID stays bound to the hostname.
    case stale = 2
    /// Released, or stale past the retention period; the ID may go to a new hostname once no
    /// never-used ID is left.
    case inactive = 3

    public var description: String {
        switch self {
        case .active: "active"
        case .stale: "stale"
        case .inactive: "inactive"
        }
    }

    public init?(name: String) {
        guard let s = NodeStatus.allCases.first(where: { $0.description == name }) else { return nil }
        self = s
    }
}

/// Everything the registry knows of one node ID: the hostname bound to it and its current (or
/// last) lease.
public struct NodeRecord: Sendable, Hashable {
    // Stored in this order so the record packs into 104 bytes, not 112: the two 32-bit
    // fields share a word and the status byte comes last (a registry of 65,536 nodes keeps
    // 0.5 MiB less in its table).
    public var nodeID: NodeID
    public var ttlSeconds: UInt32
    public var hostname: String
    public var holder: String
    /// The fencing token of the current (or last) grant; also its lease id.
    public var leaseID: UInt64
    /// Leader wall-clock seconds (Unix time) of the grant and of the last renewal.
    public var acquiredAt: UInt64
    public var lastRenewal: UInt64
    /// How many times this node ID has changed holder.
    public var transitions: UInt64
    /// Log index of the last acquire or renew applied: an `expire` decided before a later
    /// renewal must not take effect.
    public var renewalIndex: UInt64
    /// Leader wall-clock seconds and log index of the last status change.
    public var statusSince: UInt64
    public var statusIndex: UInt64
    public var status: NodeStatus

    /// The fields in the order the snapshot encodes them (its decoder reads them as
    /// arguments, left to right), not the order they are stored in.
    init(
        nodeID: NodeID, hostname: String, status: NodeStatus, leaseID: UInt64, holder: String, ttlSeconds: UInt32,
        acquiredAt: UInt64, lastRenewal: UInt64, transitions: UInt64, renewalIndex: UInt64, statusSince: UInt64,
        statusIndex: UInt64
    ) {
        self.nodeID = nodeID
        self.ttlSeconds = ttlSeconds
        self.hostname = hostname
        self.holder = holder
        self.leaseID = leaseID
        self.acquiredAt = acquiredAt
        self.lastRenewal = lastRenewal
        self.transitions = transitions
        self.renewalIndex = renewalIndex
        self.statusSince = statusSince
        self.statusIndex = statusIndex
        self.status = status
    }

    /// The API's Lease object for the current grant.
    public var lease: Lease {
        Lease(
            leaseID: leaseID, nodeID: nodeID, hostname: hostname, holder: holder, fencingToken: leaseID,
            ttlSeconds: ttlSeconds, acquiredAt: acquiredAt, lastRenewal: lastRenewal, transitions: transitions)
    }
}

/// The API's Lease object.
public struct Lease: Sendable, Hashable {
    public var leaseID: UInt64
    public var nodeID: NodeID
    public var hostname: String
    public var holder: String
    public var fencingToken: UInt64
    public var ttlSeconds: UInt32
    public var acquiredAt: UInt64
    public var lastRenewal: UInt64
    public var transitions: UInt64
}

/// Why a command was refused. Each maps to an error code of shared/API.md.
public enum LeaseError: Error, Sendable, Hashable {
    /// Another holder has a live lease on this hostname.
    case hostnameInUse(nodeID: NodeID, holder: String, expiresInSeconds: UInt64)
    case nodeIDsExhausted
    case leaseNotFound
    case nodeNotFound
    case nodeActive(NodeID)
    /// A field is invalid; `field` names it.
    case invalid(field: String, message: String)
    /// An idempotency key already used for a different request.
    case idempotencyKeyMismatch

    /// The API error code.
    public var code: String {
        switch self {
        case .hostnameInUse: "hostname_in_use"
        case .nodeIDsExhausted: "node_ids_exhausted"
        case .leaseNotFound: "lease_not_found"
        case .nodeNotFound: "node_not_found"
        case .nodeActive: "node_active"
        case .invalid: "invalid_request"
        case .idempotencyKeyMismatch: "idempotency_key_mismatch"
        }
    }

    /// A sentence for a person.
    public var message: String {
        switch self {
        case .hostnameInUse(let id, let holder, let s):
            "hostname holds node ID \(id) under another holder (\(holder)); its lease expires in \(s) s unless renewed"
        case .nodeIDsExhausted: "every node ID of the configured range is in use"
        case .leaseNotFound: "no such live lease: it is unknown, expired, released or superseded; stop using its node ID and acquire again"
        case .nodeNotFound: "no node with this ID is registered"
        case .nodeActive(let id): "node \(id) holds a live lease; only stale or inactive nodes can be forgotten"
        case .invalid(let field, let message): "\(field): \(message)"
        case .idempotencyKeyMismatch:
            "this Idempotency-Key was already used for a different request (method, path or body); use a new key for a new request"
        }
    }
}

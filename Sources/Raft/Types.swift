/// A Raft term. Terms only grow; term 0 means "no term yet".
public struct Term: RawRepresentable, Hashable, Comparable, Sendable, ExpressibleByIntegerLiteral,
    CustomStringConvertible
{
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ value: UInt64) { self.rawValue = value }
    public init(integerLiteral value: UInt64) { self.rawValue = value }
    public static func < (a: Term, b: Term) -> Bool { a.rawValue < b.rawValue }
    public var description: String { String(rawValue) }
    /// The next term.
    public var next: Term { Term(rawValue + 1) }
}

/// A position in the replicated log. Index 0 is the empty position before the first entry.
public struct LogIndex: RawRepresentable, Hashable, Comparable, Sendable, ExpressibleByIntegerLiteral,
    CustomStringConvertible, Strideable
{
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ value: UInt64) { self.rawValue = value }
    public init(integerLiteral value: UInt64) { self.rawValue = value }
    public static func < (a: LogIndex, b: LogIndex) -> Bool { a.rawValue < b.rawValue }
    public var description: String { String(rawValue) }
    public func distance(to other: LogIndex) -> Int { Int(other.rawValue) - Int(rawValue) }
    public func advanced(by n: Int) -> LogIndex {
        LogIndex(n >= 0 ? rawValue + UInt64(n) : rawValue - UInt64(-n))
    }
    public static func + (a: LogIndex, n: Int) -> LogIndex { a.advanced(by: n) }
    public static func - (a: LogIndex, n: Int) -> LogIndex { a.advanced(by: -n) }
}

/// The identity of one coordinator replica (not to be confused with the node IDs that the
/// lease registry hands out to mail servers).
public struct ReplicaID: RawRepresentable, Hashable, Comparable, Sendable, ExpressibleByIntegerLiteral,
    CustomStringConvertible
{
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ value: UInt64) { self.rawValue = value }
    public init(integerLiteral value: UInt64) { self.rawValue = value }
    public static func < (a: ReplicaID, b: ReplicaID) -> Bool { a.rawValue < b.rawValue }
    public var description: String { String(rawValue) }
}

/// An identifier the caller chooses for one `readIndex` request; it comes back in the
/// matching `ReadState`.
public struct ReadRequestID: RawRepresentable, Hashable, Sendable, ExpressibleByIntegerLiteral,
    CustomStringConvertible
{
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ value: UInt64) { self.rawValue = value }
    public init(integerLiteral value: UInt64) { self.rawValue = value }
    public var description: String { String(rawValue) }
}

/// What kind of payload an entry carries.
public enum EntryKind: UInt8, Sendable, Hashable {
    /// Application data, handed to the state machine.
    case normal = 0
    /// The empty entry a new leader appends to commit entries of earlier terms.
    case noop = 1
    /// A membership change: the data is the whole new configuration
    /// (`ByteWriter.membership`), in effect from the moment it is appended.
    case configChange = 2
}

/// One entry of the replicated log.
public struct Entry: Sendable, Hashable {
    public var term: Term
    public var index: LogIndex
    public var kind: EntryKind
    public var data: [UInt8]

    public init(term: Term, index: LogIndex, kind: EntryKind = .normal, data: [UInt8] = []) {
        self.term = term
        self.index = index
        self.kind = kind
        self.data = data
    }

    /// Approximate encoded size, used for message and batch size limits.
    public var byteSize: Int { data.count + 24 }
}

/// Whether a member votes and counts toward commitment, or only receives the log.
public enum MemberRole: UInt8, Sendable, Hashable, CustomStringConvertible {
    case voter = 0
    /// Receives the log like a voter but never votes, never campaigns and never counts
    /// toward a quorum: how a new replica catches up before it is promoted.
    case learner = 1

    public var description: String { self == .voter ? "voter" : "learner" }
}

/// One member of a configuration. The addresses are opaque to the core; they travel with the
/// configuration so that every replica (and every client) learns where the others are.
public struct Member: Sendable, Hashable {
    public var id: ReplicaID
    public var role: MemberRole
    public var peerAddress: String
    public var clientAddress: String

    public init(id: ReplicaID, role: MemberRole, peerAddress: String = "", clientAddress: String = "") {
        self.id = id
        self.role = role
        self.peerAddress = peerAddress
        self.clientAddress = clientAddress
    }
}

/// A configuration of the cluster: its voters and learners (sorted by id, so that every
/// iteration is deterministic), and the ids removed from it, which are never used again.
///
/// Configurations change one server at a time (Raft thesis 4.1): add a learner, promote a
/// learner, or remove a member. Each change is a log entry carrying the whole new
/// configuration, and a replica uses the latest configuration in its log, committed or not
/// (see `RaftNode.proposeConfChange`).
public struct Membership: Sendable, Hashable, CustomStringConvertible {
    public private(set) var members: [Member]
    public private(set) var voters: [ReplicaID]
    public private(set) var learners: [ReplicaID]
    /// Ids that were members once and were removed: refused for good.
    public private(set) var removed: [ReplicaID]
    /// The index of the log entry that made this configuration (0 for the one a cluster was
    /// created with). `expectedConfigIndex` in a change request is compared with it.
    public var index: LogIndex = 0

    /// Written first by the current encoding (see `ByteWriter.membership`).
    public static let formatTag: UInt32 = 0xFFFF_0002
    public static let maxMembers = 64
    public static let maxRemoved = 65_536
    /// The last `maxRecentChanges` keyed changes (oldest first): each request's
    /// `Idempotency-Key`, what it asked for, and the index of the entry that made it. A repeat
    /// of one of them (a client's retry after a lost answer) finds its change made and gets its
    /// answer without a second entry; the same key for another change is a client error.
    public var recentChanges: [RecentChange] = []
    public static let maxRecentChanges = 32
    /// Written first by the encoding with `recentChanges` (the one before had neither).
    public static let formatTagWithKeys: UInt32 = 0xFFFF_0003

    public init(voters: [ReplicaID]) {
        self.init(members: voters.map { Member(id: $0, role: .voter) })
    }

    public init(members: [Member], removed: [ReplicaID] = []) {
        var seen: [Member] = []
        for m in members.sorted(by: { $0.id < $1.id }) where seen.last?.id != m.id { seen.append(m) }
        self.members = seen
        self.voters = seen.filter { $0.role == .voter }.map(\.id)
        self.learners = seen.filter { $0.role == .learner }.map(\.id)
        var r: [ReplicaID] = []
        for id in removed.sorted() where r.last != id { r.append(id) }
        self.removed = r
    }

    /// The configuration of a replica that joins an existing cluster and has not yet
    /// received any: no voters, so it never campaigns.
    public static let empty = Membership(members: [])

    public var isEmpty: Bool { members.isEmpty }

    /// The number of votes (or acknowledgements) that make a majority.
    public var quorum: Int { voters.count / 2 + 1 }

    /// Whether `id` is a voter.
    public func contains(_ id: ReplicaID) -> Bool { voters.contains(id) }

    /// Whether `id` is a voter or a learner.
    public func isMember(_ id: ReplicaID) -> Bool { members.contains { $0.id == id } }

    public func member(_ id: ReplicaID) -> Member? { members.first { $0.id == id } }

    /// Every member but `id`, in id order: where the leader replicates.
    func others(than id: ReplicaID) -> [ReplicaID] { members.compactMap { $0.id == id ? nil : $0.id } }

    /// This configuration with `change` made, or why it cannot be made.
    public func applying(_ change: ConfChange) -> Result<Membership, ConfChangeError> {
        var list = members
        var gone = removed
        switch change {
        case .addLearner(let m):
            if isMember(m.id) || removed.contains(m.id) || m.id.rawValue == 0 { return .failure(.replicaExists(m.id)) }
            if members.count >= Membership.maxMembers { return .failure(.invalid("a cluster has at most \(Membership.maxMembers) members")) }
            if removed.count >= Membership.maxRemoved {
                return .failure(.invalid("\(Membership.maxRemoved) replicas were removed already; start a new cluster from a backup"))
            }
            list.append(Member(id: m.id, role: .learner, peerAddress: m.peerAddress, clientAddress: m.clientAddress))
        case .promote(let id):
            guard let i = list.firstIndex(where: { $0.id == id }) else { return .failure(.notFound(id)) }
            guard list[i].role == .learner else { return .failure(.invalid("replica \(id) is already a voter")) }
            list[i].role = .voter
        case .update(let m):
            guard let i = list.firstIndex(where: { $0.id == m.id }) else { return .failure(.notFound(m.id)) }
            list[i].peerAddress = m.peerAddress
            list[i].clientAddress = m.clientAddress
        case .remove(let id):
            guard let i = list.firstIndex(where: { $0.id == id }) else { return .failure(.notFound(id)) }
            if list[i].role == .voter && voters.count == 1 {
                return .failure(.invalid("replica \(id) is the only voter; a cluster needs one"))
            }
            list.remove(at: i)
            gone.append(id)
        }
        return .success(Membership(members: list, removed: gone))
    }

    public var description: String {
        var s = "voters=(" + voters.map(\.description).joined(separator: " ") + ")"
        if !learners.isEmpty { s += " learners=(" + learners.map(\.description).joined(separator: " ") + ")" }
        return s
    }
}

/// A keyed membership change a configuration remembers (see `Membership.recentChanges`).
public struct RecentChange: Sendable, Hashable {
    public var key: String
    /// The change asked for, addresses included (`ConfChange.fingerprint`).
    public var change: String
    public var index: LogIndex
    public init(key: String, change: String, index: LogIndex) {
        self.key = key
        self.change = change
        self.index = index
    }
}

/// One single-server membership change.
public enum ConfChange: Sendable, Hashable, CustomStringConvertible {
    /// Adds a new replica as a learner (its role in the argument is ignored).
    case addLearner(Member)
    /// Makes a learner a voter.
    case promote(ReplicaID)
    /// Removes a voter or a learner; its id is never used again.
    case remove(ReplicaID)
    /// Records a member's addresses (its role is kept): no vote changes hands.
    case update(Member)

    /// What a request asked for, addresses included: two requests under one key must agree.
    public var fingerprint: String {
        switch self {
        case .addLearner(let m): "add-learner \(m.id) \(m.peerAddress) \(m.clientAddress)"
        case .update(let m): "update \(m.id) \(m.peerAddress) \(m.clientAddress)"
        default: description
        }
    }

    public var description: String {
        switch self {
        case .addLearner(let m): "add-learner \(m.id)"
        case .promote(let id): "promote \(id)"
        case .remove(let id): "remove \(id)"
        case .update(let m): "update \(m.id)"
        }
    }
}

/// Why the leader refused a membership change (each is a 409 or 404 in shared/API.md).
public enum ConfChangeError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A change is in the log and not yet committed, or this leader has not yet committed an
    /// entry of its own term (until then an uncommitted change of an earlier leader may
    /// still be in the way: the single-server-change bug Ongaro described on raft-dev).
    case inProgress(String)
    /// `expectedConfigIndex` is not the index of the current configuration.
    case stale(current: LogIndex)
    /// The id is a member, or was removed and cannot be used again.
    case replicaExists(ReplicaID)
    case notFound(ReplicaID)
    /// The learner has not caught up with the leader's log.
    case learnerLagging(ReplicaID, match: LogIndex, commit: LogIndex)
    /// The learner is held back from voting by the state machine (it runs a build that
    /// cannot apply everything the log holds); `why` says so.
    case learnerHeld(ReplicaID, why: String)
    /// The new configuration would have fewer reachable voters than its quorum.
    case wouldLoseQuorum(reachable: Int, quorum: Int)
    /// This leader was elected less than an election timeout ago and has not heard from
    /// these voters yet, without which the new configuration has no reachable quorum: whether
    /// they are up is not known until the timeout has passed (a request waits for it).
    case votersNotHeardYet([ReplicaID])
    case invalid(String)

    public var description: String {
        switch self {
        case .inProgress(let why): why
        case .stale(let current): "the current configuration is at index \(current)"
        case .replicaExists(let id): "replica id \(id) is a member or was one; ids are never reused"
        case .notFound(let id): "replica \(id) is not a member"
        case .learnerLagging(let id, let match, let commit):
            "learner \(id) has the log up to \(match), the commit index is \(commit): let it catch up first"
        case .learnerHeld(_, let why): why
        case .wouldLoseQuorum(let reachable, let quorum):
            "the new configuration would have \(reachable) reachable voter\(reachable == 1 ? "" : "s"), fewer than its quorum of \(quorum)"
        case .votersNotHeardYet(let ids):
            "this leader was elected less than an election timeout ago and has not heard from replica\(ids.count == 1 ? "" : "s") "
                + ids.map(\.description).joined(separator: ", ") + " yet"
        case .invalid(let why): why
        }
    }
}

/// The state that must be on stable storage before messages that depend on it are sent.
public struct HardState: Sendable, Hashable, CustomStringConvertible {
    public var term: Term
    public var vote: ReplicaID?
    public var commit: LogIndex

    public init(term: Term = 0, vote: ReplicaID? = nil, commit: LogIndex = 0) {
        self.term = term
        self.vote = vote
        self.commit = commit
    }

    public var description: String {
        "term=\(term) vote=\(vote.map(\.description) ?? "-") commit=\(commit)"
    }
}

/// Where a snapshot stands in the log, and the membership at that point.
public struct SnapshotMetadata: Sendable, Hashable {
    public var index: LogIndex
    public var term: Term
    public var membership: Membership

    public init(index: LogIndex, term: Term, membership: Membership) {
        self.index = index
        self.term = term
        self.membership = membership
    }
}

/// A state-machine snapshot covering every entry up to `metadata.index`.
public struct Snapshot: Sendable, Hashable {
    public var metadata: SnapshotMetadata
    public var data: [UInt8]

    public init(metadata: SnapshotMetadata, data: [UInt8]) {
        self.metadata = metadata
        self.data = data
    }

    public var isEmpty: Bool { metadata.index == 0 }
}

/// The result of a linearizable read request: once the local replica has applied up to
/// `index`, reading its state machine is linearizable.
public struct ReadState: Sendable, Hashable {
    public var index: LogIndex
    public var requestID: ReadRequestID
    public init(index: LogIndex, requestID: ReadRequestID) {
        self.index = index
        self.requestID = requestID
    }
}

/// The role a replica plays in its current term.
public enum Role: String, Sendable, Hashable {
    case follower
    case preCandidate = "pre-candidate"
    case candidate
    case leader
}

/// Why the core refused a request from its caller.
public enum RaftError: Error, Sendable, Hashable {
    /// This replica is not the leader; `leader` is the one it knows of, if any.
    case notLeader(leader: ReplicaID?)
    /// A leadership transfer is in progress; proposals are refused until it ends.
    case transferInProgress
    /// The request does not make sense for this cluster (for example an unknown replica).
    case invalid(String)
}

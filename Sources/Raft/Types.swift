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
    /// Reserved for membership changes (joint consensus); not produced yet.
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

/// The voting members of the cluster. Kept sorted so that every iteration is deterministic.
public struct Membership: Sendable, Hashable, CustomStringConvertible {
    public private(set) var voters: [ReplicaID]

    public init(voters: [ReplicaID]) {
        var seen: [ReplicaID] = []
        for v in voters.sorted() where seen.last != v { seen.append(v) }
        self.voters = seen
    }

    /// The number of votes (or acknowledgements) that make a majority.
    public var quorum: Int { voters.count / 2 + 1 }

    public func contains(_ id: ReplicaID) -> Bool { voters.contains(id) }

    public var description: String { "voters=(" + voters.map(\.description).joined(separator: " ") + ")" }
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

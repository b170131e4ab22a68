/// The kinds of message replicas exchange.
public enum MessageKind: UInt8, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// PreVote request: "would you vote for me at `term`?" Changes nobody's term.
    case preVote = 1
    case preVoteResponse = 2
    /// RequestVote.
    case vote = 3
    case voteResponse = 4
    /// AppendEntries: `index`/`logTerm` are the entry before `entries`.
    case append = 5
    /// Answer to `append` and `snapshot`. On success `index` is the highest index known to
    /// match; on rejection `index` is the rejected `append.index` and `rejectHint`/`logTerm`
    /// tell the leader where to probe next.
    case appendResponse = 6
    /// Leader heartbeat; carries the commit index (capped at the follower's match) and, for
    /// read requests, a context the follower echoes.
    case heartbeat = 7
    case heartbeatResponse = 8
    /// InstallSnapshot.
    case snapshot = 9
    /// A follower asks the leader for a read index on behalf of its client.
    case readIndex = 10
    case readIndexResponse = 11
    /// Leadership transfer: "start an election now, skipping PreVote".
    case timeoutNow = 12

    public var description: String {
        switch self {
        case .preVote: "PreVote"
        case .preVoteResponse: "PreVoteResp"
        case .vote: "Vote"
        case .voteResponse: "VoteResp"
        case .append: "App"
        case .appendResponse: "AppResp"
        case .heartbeat: "Heartbeat"
        case .heartbeatResponse: "HeartbeatResp"
        case .snapshot: "Snap"
        case .readIndex: "ReadIndex"
        case .readIndexResponse: "ReadIndexResp"
        case .timeoutNow: "TimeoutNow"
        }
    }
}

/// A message between two replicas. One flat shape for every kind, as in etcd-io/raft: the
/// fields a kind does not use stay at their defaults.
public struct Message: Sendable, Hashable {
    public var kind: MessageKind
    public var from: ReplicaID
    public var to: ReplicaID
    public var term: Term
    /// Append: term of the entry at `index`. Vote: the candidate's last log term. Rejected
    /// AppendResp: the term of the follower's entry at `rejectHint`.
    public var logTerm: Term
    /// Append: the index before `entries`. Vote: the candidate's last log index.
    /// AppendResp: see `MessageKind.appendResponse`. ReadIndexResp: the read index.
    public var index: LogIndex
    public var entries: [Entry]
    public var commit: LogIndex
    public var reject: Bool
    public var rejectHint: LogIndex
    public var snapshot: Snapshot?
    /// Heartbeat/HeartbeatResp: the leader's read-request sequence number being confirmed.
    /// ReadIndex/ReadIndexResp: the follower's request id.
    public var context: UInt64
    /// Vote/PreVote sent because of a leadership transfer: bypasses the leader lease check.
    public var leaderTransfer: Bool

    public init(
        kind: MessageKind, from: ReplicaID, to: ReplicaID, term: Term = 0, logTerm: Term = 0,
        index: LogIndex = 0, entries: [Entry] = [], commit: LogIndex = 0, reject: Bool = false,
        rejectHint: LogIndex = 0, snapshot: Snapshot? = nil, context: UInt64 = 0,
        leaderTransfer: Bool = false
    ) {
        self.kind = kind
        self.from = from
        self.to = to
        self.term = term
        self.logTerm = logTerm
        self.index = index
        self.entries = entries
        self.commit = commit
        self.reject = reject
        self.rejectHint = rejectHint
        self.snapshot = snapshot
        self.context = context
        self.leaderTransfer = leaderTransfer
    }

    /// Whether a driver may send this message before the `Ready` it came in is persisted.
    /// Only a leader's replication traffic qualifies (Raft thesis 10.2.1): the leader counts
    /// its own log toward commitment only once its write is durable, so sending early is safe.
    /// Everything else (votes, acknowledgements) promises durable state and must wait.
    public var maySendBeforePersist: Bool {
        switch kind {
        case .append, .heartbeat, .snapshot: true
        default: false
        }
    }

    /// Approximate encoded size.
    public var byteSize: Int {
        64 + entries.reduce(0) { $0 + $1.byteSize } + (snapshot?.data.count ?? 0)
    }
}

extension Message: CustomStringConvertible {
    public var description: String {
        var s = "\(from)->\(to) \(kind) Term:\(term)"
        switch kind {
        case .preVote, .vote:
            s += " Log:\(logTerm)/\(index)"
            if leaderTransfer { s += " Transfer" }
        case .preVoteResponse, .voteResponse:
            if reject { s += " Rejected" }
        case .append:
            s += " Log:\(logTerm)/\(index) Commit:\(commit)"
            if !entries.isEmpty {
                s += " Entries:[" + entries.map(\.shortDescription).joined(separator: ", ") + "]"
            }
        case .appendResponse:
            s += reject ? " Rejected:\(index) Hint:\(logTerm)/\(rejectHint)" : " Index:\(index)"
        case .heartbeat:
            s += " Commit:\(commit)"
            if context != 0 { s += " Ctx:\(context)" }
        case .heartbeatResponse:
            if context != 0 { s += " Ctx:\(context)" }
        case .snapshot:
            if let m = snapshot?.metadata { s += " Snapshot:\(m.term)/\(m.index) \(m.membership)" }
        case .readIndex:
            s += " Req:\(context)"
        case .readIndexResponse:
            s += " Req:\(context) Index:\(index)"
        case .timeoutNow:
            break
        }
        return s
    }
}

extension Entry {
    /// `term/index` and the payload, for transcripts and traces.
    public var shortDescription: String {
        switch kind {
        case .noop: return "\(term)/\(index) noop"
        case .configChange:
            guard let m = try? Membership.decode(data) else { return "\(term)/\(index) conf <\(data.count) bytes>" }
            return "\(term)/\(index) conf \(m)"
        case .normal:
            if data.allSatisfy({ $0 >= 0x20 && $0 < 0x7f && $0 != 0x22 }) {
                return "\(term)/\(index) \"\(String(decoding: data, as: UTF8.self))\""
            }
            return "\(term)/\(index) <\(data.count) bytes>"
        }
    }
}

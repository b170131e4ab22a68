import Raft

/// One broken rule, with what showed it.
public struct Violation: Sendable, Hashable, CustomStringConvertible {
    public enum Rule: String, Sendable, Hashable, CaseIterable {
        case electionSafety = "election safety"
        case logMatching = "log matching"
        case leaderCompleteness = "leader completeness"
        case stateMachineSafety = "state machine safety"
        case durableVote = "durable term and vote"
        case linearizableRead = "linearizable read"
        case acknowledgedWriteLost = "acknowledged write lost"
        case divergentState = "divergent state"
        case liveness = "liveness"
        case twoHolders = "two holders of one node ID"
        case holderOutlivedLease = "a holder stops before its lease expires"
        case fencingToken = "fencing tokens increase"
        case idHostnameMapping = "one ID per hostname, one hostname per ID"
        case earlyExpiry = "no early expiry"
        case exactlyOnce = "exactly once: every answer matches one application"
        case indexesMonotonic = "commit and applied indexes never go backwards"
        case commitQuorum = "a committed entry is held by a majority of the leader's voters"
        case membership = "membership changes: one pending at a time, removed replicas never lead"
    }
    public var rule: Rule
    public var detail: String
    public var description: String { "\(rule.rawValue): \(detail)" }
}

/// Checks the Raft invariants of ARCHITECTURE.md from observations. It knows nothing of how
/// the observations were produced, so tests can feed it made-up (broken) histories.
public struct SafetyChecker: Sendable {
    private struct EntryKey: Hashable { var index: LogIndex; var term: Term }
    private struct EntryFacts: Hashable { var payload: UInt64; var previousTerm: Term? }
    private struct Committed: Hashable {
        var term: Term
        var payload: UInt64
        /// An upper bound on the term in which the entry was committed: the term of the first
        /// replica seen applying it.
        var committedBy: Term = 0
        func same(_ o: Committed) -> Bool { term == o.term && payload == o.payload }
    }

    private var leaders: [Term: ReplicaID] = [:]
    private var created: [EntryKey: EntryFacts] = [:]
    private var committed: [LogIndex: Committed] = [:]
    public private(set) var highestCommitted: LogIndex = 0
    /// Entries some replica knew committed (its commit index covered them), applied or not:
    /// their term, and the observer's term then (an upper bound on the term they committed in).
    private var knownCommitted: [LogIndex: (term: Term, by: Term)] = [:]
    private var commitFrontier: LogIndex = 0
    private var hardStates: [ReplicaID: HardState] = [:]
    public private(set) var violations: [Violation] = []

    public init() {}

    public var ok: Bool { violations.isEmpty }

    mutating func fail(_ rule: Violation.Rule, _ detail: String) {
        // Keep the first few: one is enough to fail the seed, more help to read it.
        if violations.count < 8 { violations.append(Violation(rule: rule, detail: detail)) }
    }

    static func payload(_ e: Entry) -> UInt64 {
        var h = FNV1a()
        h.add([e.kind.rawValue])
        h.add(e.data)
        return h.value
    }

    /// At most one leader per term (§5.2).
    public mutating func observeLeader(_ id: ReplicaID, term: Term) {
        if let other = leaders[term] {
            if other != id { fail(.electionSafety, "replicas \(other) and \(id) both led term \(term)") }
        } else {
            leaders[term] = id
        }
    }

    /// A replica made `entries` durable; `previousTerm` is its term at the index before the
    /// first one (nil when unknown, e.g. compacted). Two entries with one index and term must
    /// carry one payload and follow one previous term: by induction, logs that agree on an
    /// entry agree on everything before it (§5.3).
    public mutating func observePersist(_ replica: ReplicaID, entries: [Entry], previousTerm: Term?) {
        var prev = previousTerm
        for e in entries {
            let key = EntryKey(index: e.index, term: e.term)
            let facts = EntryFacts(payload: Self.payload(e), previousTerm: prev)
            if let known = created[key] {
                if known.payload != facts.payload {
                    fail(.logMatching, "replica \(replica) holds a different entry \(e.term)/\(e.index)")
                } else if let a = known.previousTerm, let b = facts.previousTerm, a != b {
                    fail(
                        .logMatching,
                        "replica \(replica): entry \(e.term)/\(e.index) follows term \(b), elsewhere term \(a)")
                } else if known.previousTerm == nil && facts.previousTerm != nil {
                    created[key] = facts
                }
            } else {
                created[key] = facts
            }
            prev = e.term
        }
    }

    /// A replica at `currentTerm` applied `entry`: every replica applies the same entry at
    /// each index (§5.4.3).
    public mutating func observeApply(_ replica: ReplicaID, entry: Entry, currentTerm: Term) {
        let c = Committed(term: entry.term, payload: Self.payload(entry), committedBy: currentTerm)
        if let known = committed[entry.index] {
            if !known.same(c) {
                fail(
                    .stateMachineSafety,
                    "replica \(replica) applied \(entry.term)/\(entry.index), others applied term \(known.term) there")
            }
        } else {
            committed[entry.index] = c
            highestCommitted = max(highestCommitted, entry.index)
        }
    }

    /// A replica at `currentTerm` has commit index `commit`: every index up to it is committed
    /// with the term its log has there (compacted indexes, `termAt` nil, are skipped). Leader
    /// completeness then covers committed entries nobody has applied yet.
    public mutating func observeCommitIndex(_ replica: ReplicaID, commit: LogIndex, currentTerm: Term, termAt: (LogIndex) -> Term?) {
        guard commit > commitFrontier else { return }
        var i = commitFrontier + 1
        while i <= commit {
            if let t = termAt(i) {
                if let c = committed[i], c.term != t {
                    fail(.stateMachineSafety, "replica \(replica) committed \(t)/\(i), but \(c.term)/\(i) was applied")
                }
                knownCommitted[i] = (t, currentTerm)
            }
            i = i + 1
        }
        commitFrontier = commit
    }

    /// A replica became leader with this log: it must hold every entry committed in an
    /// earlier term (§5.4.1). A leader of an old term that only now learns of its victory
    /// (say, after a pause) need not hold entries committed in later terms.
    /// `termAt` answers nil for compacted indexes (covered by its snapshot).
    public mutating func observeNewLeader(
        _ replica: ReplicaID, term: Term, firstIndex: LogIndex, lastIndex: LogIndex,
        termAt: (LogIndex) -> Term?
    ) {
        observeLeader(replica, term: term)
        guard highestCommitted > 0 || commitFrontier > 0 else { return }
        var i = max(firstIndex, 1)
        while i <= max(highestCommitted, commitFrontier) {
            if committed[i] == nil, let k = knownCommitted[i], k.by < term {
                if i > lastIndex {
                    fail(.leaderCompleteness, "leader \(replica) of term \(term) lacks committed (not yet applied) entry \(k.term)/\(i)")
                    return
                }
                if let t = termAt(i), t != k.term {
                    fail(.leaderCompleteness, "leader \(replica) of term \(term) has \(t)/\(i) where \(k.term)/\(i) was committed")
                    return
                }
            }
            if let c = committed[i], c.committedBy < term {
                if i > lastIndex {
                    fail(.leaderCompleteness, "leader \(replica) of term \(term) lacks committed entry \(c.term)/\(i)")
                    return
                }
                if let t = termAt(i), t != c.term {
                    fail(
                        .leaderCompleteness,
                        "leader \(replica) of term \(term) has \(t)/\(i) where \(c.term)/\(i) was committed")
                    return
                }
            }
            i = i + 1
        }
    }

    /// A replica made its hard state durable: terms never go back and a replica never votes
    /// for two candidates in one term.
    public mutating func observeHardState(_ replica: ReplicaID, _ hs: HardState) {
        if let old = hardStates[replica] {
            if hs.term < old.term {
                fail(.durableVote, "replica \(replica) term went back from \(old.term) to \(hs.term)")
            } else if hs.term == old.term, let a = old.vote, hs.vote != a {
                fail(
                    .durableVote,
                    "replica \(replica) voted for \(a) and then \(hs.vote.map(\.description) ?? "nobody") in term \(hs.term)")
            }
        }
        hardStates[replica] = hs
    }

    /// A linearizable read was served at `index`; every write acknowledged before the read
    /// began had index `<= requiredIndex`.
    public mutating func observeRead(replica: ReplicaID, index: LogIndex, requiredIndex: LogIndex, detail: String) {
        if index < requiredIndex {
            fail(
                .linearizableRead,
                "replica \(replica) served a read at index \(index) although index \(requiredIndex) was acknowledged before it began (\(detail))"
            )
        }
    }

    /// A write was acknowledged to a client as committed at `index` with `term`.
    public mutating func checkAcknowledged(index: LogIndex, term: Term, data: [UInt8], operation: String) {
        guard let c = committed[index] else {
            fail(.acknowledgedWriteLost, "\(operation) acknowledged at \(term)/\(index) was never applied")
            return
        }
        let e = Entry(term: term, index: index, kind: .normal, data: data)
        if !c.same(Committed(term: term, payload: Self.payload(e))) {
            fail(.acknowledgedWriteLost, "\(operation) acknowledged at \(term)/\(index), but \(c.term)/\(index) was applied")
        }
    }

    public mutating func recordFailure(_ rule: Violation.Rule, _ detail: String) { fail(rule, detail) }
}

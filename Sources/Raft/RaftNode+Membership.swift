/// Membership changes, one server at a time (Raft thesis 4.1, as in hashicorp/raft).
///
/// A configuration is a log entry carrying the whole new configuration, and it takes effect
/// on a replica as soon as the entry is in its log, committed or not (thesis 4.1), not when
/// it is applied (etcd-io/raft). Why: with "when appended", every replica's configuration is
/// a function of its log alone, so the two configurations that can be in use at once are
/// always consecutive ones, which differ by one server and so share a member in every pair
/// of majorities. With "when applied", a replica whose apply (or commit index) lags can still
/// campaign under a configuration two changes old while the others use the newest; when the
/// two differ by two voters their majorities need not overlap. The cost is that a replica
/// whose uncommitted configuration entry is overwritten must fall back to the one before it,
/// which `configs` (the configuration entries of the retained log) makes cheap, and the same
/// rule holds everywhere: on the leader when it appends, on a follower when it appends or
/// truncates, after a snapshot (whose metadata holds the configuration at its index), and
/// on restart (the snapshot's configuration, then every configuration entry after it).
///
/// The rules that keep it safe, each enforced in `proposeConfChange`:
/// - a leader accepts a change only once an entry of its own term has committed;
/// - one change at a time: none while the newest configuration entry is uncommitted;
/// - a removed leader keeps replicating (not counting itself) until the change commits,
///   then steps down, first telling the most up-to-date voter to campaign at once;
/// - learners neither vote nor count toward commitment, and a replica that is not a member
///   of a voter's configuration gets no vote from it;
/// - a learner is promoted only once its log is within `learnerCatchUpEntries` of the
///   commit index, and no change may leave fewer reachable voters than its quorum unless
///   forced.
struct ConfigRecord: Sendable, Hashable {
    var index: LogIndex
    var membership: Membership
}

extension RaftNode {
    /// The current configuration: the newest one in the log (committed or not).
    public var membership: Membership { configs[configs.count - 1].membership }

    /// The index of the entry holding the current configuration (0 for the one the cluster
    /// was created with).
    public var configIndex: LogIndex { membership.index }

    /// How many configuration entries of the log are uncommitted (a leader never has more
    /// than one).
    public var pendingConfigChanges: Int { configs.filter { $0.index > log.committed }.count }

    /// Whether the current configuration entry is still uncommitted.
    public var configChangePending: Bool { configs[configs.count - 1].index > log.committed }

    /// The configuration in effect at `index` (for a snapshot taken there), as far back as
    /// the retained log reaches.
    public func membership(at index: LogIndex) -> Membership {
        var m = configs[0].membership
        for c in configs where c.index <= index { m = c.membership }
        return m
    }

    /// The configuration entries of the log from `storage`'s snapshot on, read at start.
    static func loadConfigs(storage: any RaftLogStorage, base: Membership) throws -> [ConfigRecord] {
        let snapshotIndex = try storage.snapshotMetadata().index
        var configs = [ConfigRecord(index: snapshotIndex, membership: base)]
        var next = snapshotIndex + 1
        let end = try storage.lastIndex() + 1
        while next < end {
            let batch = try storage.entries(next, end, maxBytes: 4 << 20)
            guard let last = batch.last else { break }
            for e in batch where e.kind == .configChange {
                configs.append(ConfigRecord(index: e.index, membership: try Membership.decode(e.data)))
            }
            next = last.index + 1
        }
        return configs
    }

    /// Entries `entries` are now in the log right after `prevIndex`, and the log ends at
    /// `lastIndex`: configurations of overwritten entries are dropped, new ones take effect.
    mutating func noteAppended(_ entries: [Entry], after prevIndex: LogIndex) {
        let lastIndex = log.lastIndex()
        let lastNew = prevIndex + entries.count
        let before = membership
        let base = configs[0].index
        configs.removeAll { c in c.index > base && c.index > prevIndex && (c.index <= lastNew || c.index > lastIndex) }
        for e in entries where e.kind == .configChange {
            guard let m = try? Membership.decode(e.data) else { continue }
            configs.append(ConfigRecord(index: e.index, membership: m))
        }
        configs.sort { $0.index < $1.index }
        let compacted = log.firstIndex() - 1
        while configs.count > 1 && configs[1].index <= compacted { configs.removeFirst() }
        if membership != before { membershipChanged() }
    }

    /// The log was replaced by a snapshot.
    mutating func noteSnapshot(_ metadata: SnapshotMetadata) {
        let before = membership
        configs = [ConfigRecord(index: metadata.index, membership: metadata.membership)]
        if membership != before { membershipChanged() }
    }

    /// The configuration changed: a leader tracks exactly the new members (and itself).
    mutating func membershipChanged() {
        guard role == .leader else { return }
        let members = Set(membership.members.map(\.id)).union([id])
        for k in progress.keys.sorted() where !members.contains(k) { progress[k] = nil }
        for m in membership.members where progress[m.id] == nil {
            var pr = Progress(next: log.lastIndex() + 1, inflightCapacity: config.maxInflightMessages)
            pr.silentTicks = config.electionTicks
            progress[m.id] = pr
        }
    }

    /// The ids whose votes and acknowledgements count.
    var countingVoters: [ReplicaID] {
        config.faults.contains(.learnersVote) ? membership.voters + membership.learners : membership.voters
    }

    /// Proposes a membership change (leader only). Throws `RaftError.notLeader` or
    /// `.transferInProgress`, or `ConfChangeError` when a rule refuses it; the change is in
    /// effect at once and done when the returned entry commits.
    @discardableResult
    public mutating func proposeConfChange(
        _ change: ConfChange, expectedConfigIndex: LogIndex? = nil, force: Bool = false, key: String = ""
    ) throws -> Proposal {
        guard role == .leader else { throw RaftError.notLeader(leader: leader) }
        guard leadTransferee == nil else { throw RaftError.transferInProgress }
        if !config.faults.contains(.confChangeBeforeOwnTermCommit) && log.termOrZero(log.committed) != term {
            throw ConfChangeError.inProgress(
                "this leader has not yet committed an entry of its term \(term); retry in a moment")
        }
        if configChangePending {
            throw ConfChangeError.inProgress("the change at index \(configIndex) is not committed yet")
        }
        if let expected = expectedConfigIndex, expected != configIndex {
            throw ConfChangeError.stale(current: configIndex)
        }
        var next: Membership
        switch membership.applying(change) {
        case .success(let m): next = m
        case .failure(let e): throw e
        }
        if case .promote(let learner) = change {
            if let why = promotionHeld[learner] { throw ConfChangeError.learnerHeld(learner, why: why) }
            let match = progress[learner]?.match ?? 0
            if match + config.learnerCatchUpEntries < log.committed || !isReachable(learner) {
                throw ConfChangeError.learnerLagging(learner, match: match, commit: log.committed)
            }
        }
        if !force {
            var reachable = 0
            var unknown: [ReplicaID] = []
            for v in next.voters {
                if v == id || isReachable(v) {
                    reachable += 1
                } else if notHeardYet(v) {
                    unknown.append(v)
                }
            }
            if reachable < next.quorum {
                // A leader elected moments ago has heard only from those that answered first;
                // the others have had no chance to show they are up.
                if reachable + unknown.count >= next.quorum { throw ConfChangeError.votersNotHeardYet(unknown) }
                throw ConfChangeError.wouldLoseQuorum(reachable: reachable, quorum: next.quorum)
            }
        }
        let index = log.lastIndex() + 1
        next.index = index
        next.recentChanges = membership.recentChanges
        if !key.isEmpty {
            next.recentChanges.append(RecentChange(key: key, change: change.fingerprint, index: index))
            if next.recentChanges.count > Membership.maxRecentChanges { next.recentChanges.removeFirst() }
        }
        let entry = Entry(term: term, index: index, kind: .configChange, data: next.encoded)
        appendAsLeader([entry])
        return Proposal(index: index, term: term)
    }

    /// Whether `peer` answered within the last election timeout.
    func isReachable(_ peer: ReplicaID) -> Bool {
        guard let pr = progress[peer] else { return false }
        return pr.silentTicks < config.electionTicks
    }

    /// Whether this leader has led for less than an election timeout and `peer` has not
    /// answered in that time: whether it is reachable is not known yet.
    func notHeardYet(_ peer: ReplicaID) -> Bool {
        role == .leader && ticksInRole < config.electionTicks && !isReachable(peer)
    }

    /// Leader, every tick: promotes a learner whose log has stayed close to the commit index
    /// for a whole election timeout.
    mutating func maybeAutoPromote() {
        var candidate: ReplicaID?
        for l in membership.learners {
            guard var pr = progress[l] else { continue }
            // Caught up: answering about every heartbeat, with a log close to the commit index.
            let answering = pr.silentTicks <= 2 * config.heartbeatTicks
            if answering && pr.match + config.learnerCatchUpEntries >= log.committed && pr.match > 0 {
                pr.caughtUpTicks += 1
            } else {
                pr.caughtUpTicks = 0
            }
            progress[l] = pr
            if candidate == nil && pr.caughtUpTicks >= config.electionTicks && promotionHeld[l] == nil { candidate = l }
        }
        guard config.autoPromote, let l = candidate, !configChangePending, leadTransferee == nil,
            log.termOrZero(log.committed) == term
        else { return }
        _ = try? proposeConfChange(.promote(l))
    }

    /// A leader that is no longer a voter steps down once the change that removed it has
    /// committed, after telling the most up-to-date voter to campaign at once.
    mutating func stepDownIfRemoved() {
        guard role == .leader, !membership.contains(id), log.committed >= configIndex else { return }
        var best: ReplicaID?
        var bestMatch: LogIndex = 0
        for v in membership.voters {
            if let pr = progress[v], pr.match >= bestMatch {
                best = v
                bestMatch = pr.match
            }
        }
        if let best, bestMatch == log.lastIndex() {
            send(Message(kind: .timeoutNow, from: id, to: best))
        }
        becomeFollower(term: term, leader: nil)
    }
}

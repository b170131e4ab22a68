extension RaftNode {
    /// Feeds one message from a peer. Messages for another replica, or from a replica that is
    /// not a member, are ignored, as are messages that make no sense in the current state.
    public mutating func step(_ m: Message) {
        guard m.to == id, m.from != id else { return }
        if (m.kind == .vote || m.kind == .preVote) && membership.removed.contains(m.from) {
            // A replica removed from the cluster gets no vote and cannot move our term: it
            // cannot disrupt the cluster it left (thesis 4.2.3). Others are answered as usual,
            // members or not: a configuration newer than ours may count them (thesis 4.1).
            send(Message(kind: m.kind == .vote ? .voteResponse : .preVoteResponse, from: id, to: m.from, term: term, reject: true))
            return
        }
        if m.term > term {
            if m.kind == .vote || m.kind == .preVote {
                // Leader lease (thesis 4.2.3): while we hear from a leader, ignore elections
                // unless the leader itself asked for one.
                let inLease = config.checkQuorum && leader != nil && electionElapsed < config.electionTicks
                if inLease && !m.leaderTransfer { return }
            }
            switch m.kind {
            case .preVote:
                break  // never changes our term
            case .preVoteResponse where !m.reject:
                break  // granted at the future term we asked about
            case .append, .heartbeat, .snapshot:
                becomeFollower(term: m.term, leader: m.from)
            default:
                becomeFollower(term: m.term, leader: nil)
            }
        } else if m.term < term {
            if (config.checkQuorum || config.preVote) && (m.kind == .append || m.kind == .heartbeat) {
                // Tell a stale leader about the newer term, so it steps down (and a replica
                // whose pre-votes fail can still learn the term).
                send(Message(kind: .appendResponse, from: id, to: m.from))
            } else if m.kind == .preVote {
                send(Message(kind: .preVoteResponse, from: id, to: m.from, reject: true))
            }
            return
        }

        switch m.kind {
        case .preVote, .vote:
            handleVoteRequest(m)
        default:
            switch role {
            case .leader: stepLeader(m)
            case .candidate, .preCandidate: stepCandidate(m)
            case .follower: stepFollower(m)
            }
        }
        stepDownIfRemoved()
    }

    private mutating func handleVoteRequest(_ m: Message) {
        let canVote =
            vote == m.from || (vote == nil && leader == nil)
            || (m.kind == .preVote && m.term > term)
        let upToDate =
            config.faults.contains(.grantVoteIgnoringLog)
            || log.isUpToDate(lastIndex: m.index, lastTerm: m.logTerm)
        let responseKind: MessageKind = m.kind == .vote ? .voteResponse : .preVoteResponse
        if canVote && upToDate {
            send(Message(kind: responseKind, from: id, to: m.from, term: m.term))
            if m.kind == .vote {
                electionElapsed = 0
                vote = m.from
            }
        } else {
            send(Message(kind: responseKind, from: id, to: m.from, term: term, reject: true))
        }
    }

    // MARK: Roles

    mutating func becomeFollower(term newTerm: Term, leader newLeader: ReplicaID?) {
        reset(term: newTerm)
        role = .follower
        leader = newLeader
    }

    private mutating func becomePreCandidate() {
        // Neither the term nor the vote changes: a PreVote round is only a question.
        role = .preCandidate
        votes = [:]
        leader = nil
    }

    private mutating func becomeCandidate() {
        reset(term: term.next)
        vote = id
        role = .candidate
    }

    private mutating func becomeLeader() {
        reset(term: term)
        role = .leader
        leader = id
        // A new leader commits an empty entry of its term at once (§5.4.2, thesis 6.4).
        appendAsLeader([Entry(term: term, index: log.lastIndex() + 1, kind: .noop)])
    }

    private mutating func reset(term newTerm: Term) {
        if newTerm != term {
            term = newTerm
            vote = nil
        }
        leader = nil
        electionElapsed = 0
        heartbeatElapsed = 0
        ticksInRole = 0
        randomizedElectionTimeout =
            config.electionTicks + Int.random(in: 0..<config.electionTicks, using: &random)
        leadTransferee = nil
        votes = [:]
        pendingReads = []
        readsAwaitingCommit = []
        progress = [:]
        let stableLast = log.unstableOffset - 1
        for v in membership.members.map(\.id) where v != id {
            var pr = Progress(next: log.lastIndex() + 1, inflightCapacity: config.maxInflightMessages)
            // Only this replica counts as recently active at first, as in etcd-io/raft: a vote
            // shows a follower was reachable once, not that it still is, so a leader cut off
            // right after it won steps down at its first CheckQuorum round (one election
            // timeout) instead of its second, and waits for answers before it starts work of
            // its own (`hasQuorumContact`). Followers that are reachable answer the first
            // heartbeat, well within that round.
            pr.recentActive = false
            pr.silentTicks = config.electionTicks  // not heard from yet
            progress[v] = pr
        }
        // The replica's own entry, even while a change that removes it is pending.
        var own = Progress(next: log.lastIndex() + 1, inflightCapacity: config.maxInflightMessages)
        own.recentActive = true
        own.match = min(stableLast, log.lastIndex())
        progress[id] = own
    }

    // MARK: Elections

    mutating func campaignIfPromotable(transfer: Bool) {
        // Learners and replicas outside the configuration never campaign.
        guard membership.contains(id) || (config.faults.contains(.learnersVote) && membership.isMember(id)) else { return }
        if config.preVote && !transfer {
            becomePreCandidate()
            requestVotes(kind: .preVote, term: term.next, transfer: false)
        } else {
            becomeCandidate()
            requestVotes(kind: .vote, term: term, transfer: transfer)
        }
    }

    private mutating func requestVotes(kind: MessageKind, term voteTerm: Term, transfer: Bool) {
        if poll(id, granted: true) == .won {
            // A single-replica cluster wins at once.
            if kind == .preVote { campaignIfPromotable(transfer: true) } else { becomeLeader() }
            return
        }
        let lastIndex = log.lastIndex()
        let lastTerm = log.lastTerm
        for v in countingVoters where v != id {
            send(
                Message(
                    kind: kind, from: id, to: v, term: voteTerm, logTerm: lastTerm, index: lastIndex,
                    leaderTransfer: transfer))
        }
    }

    enum VoteResult { case won, lost, pending }

    private mutating func poll(_ from: ReplicaID, granted: Bool) -> VoteResult {
        if votes[from] == nil { votes[from] = granted }
        var yes = 0
        var no = 0
        let voters = countingVoters
        for v in voters {
            switch votes[v] {
            case true?: yes += 1
            case false?: no += 1
            case nil: break
            }
        }
        if yes >= membership.quorum { return .won }
        if voters.count - no < membership.quorum { return .lost }
        return .pending
    }

    private mutating func stepCandidate(_ m: Message) {
        let expected: MessageKind = role == .preCandidate ? .preVoteResponse : .voteResponse
        switch m.kind {
        case .append:
            becomeFollower(term: m.term, leader: m.from)
            handleAppend(m)
        case .heartbeat:
            becomeFollower(term: m.term, leader: m.from)
            handleHeartbeat(m)
        case .snapshot:
            becomeFollower(term: m.term, leader: m.from)
            handleSnapshot(m)
        case expected:
            switch poll(m.from, granted: !m.reject) {
            case .won:
                if role == .preCandidate {
                    becomeCandidate()
                    requestVotes(kind: .vote, term: term, transfer: false)
                } else {
                    becomeLeader()
                }
            case .lost:
                becomeFollower(term: term, leader: nil)
            case .pending:
                break
            }
        default:
            break
        }
    }

    private mutating func stepFollower(_ m: Message) {
        switch m.kind {
        case .append:
            electionElapsed = 0
            leader = m.from
            handleAppend(m)
        case .heartbeat:
            electionElapsed = 0
            leader = m.from
            handleHeartbeat(m)
        case .snapshot:
            electionElapsed = 0
            leader = m.from
            handleSnapshot(m)
        case .timeoutNow:
            campaignIfPromotable(transfer: true)
        case .readIndexResponse:
            readStates.append(ReadState(index: m.index, requestID: ReadRequestID(m.context)))
        default:
            break
        }
    }

    // MARK: Follower side of replication

    private mutating func handleAppend(_ m: Message) {
        if m.index < log.committed {
            send(Message(kind: .appendResponse, from: id, to: m.from, index: log.committed))
            return
        }
        if let lastNew = log.maybeAppend(index: m.index, logTerm: m.logTerm, commit: m.commit, entries: m.entries) {
            if !m.entries.isEmpty { noteAppended(m.entries, after: m.index) }
            send(Message(kind: .appendResponse, from: id, to: m.from, index: lastNew))
        } else {
            // Fast back-off (thesis 5.3.1): tell the leader the last index whose term is not
            // newer than the one it probed, so it can skip a whole term at a time.
            let (hintIndex, hintTerm) = log.findConflictByTerm(min(m.index, log.lastIndex()), m.logTerm)
            send(
                Message(
                    kind: .appendResponse, from: id, to: m.from, logTerm: hintTerm, index: m.index,
                    reject: true, rejectHint: hintIndex))
        }
    }

    private mutating func handleHeartbeat(_ m: Message) {
        log.commit(to: min(m.commit, log.lastIndex()))
        send(Message(kind: .heartbeatResponse, from: id, to: m.from, context: m.context))
    }

    private mutating func handleSnapshot(_ m: Message) {
        guard let snap = m.snapshot else { return }
        let index = snap.metadata.index
        if index <= log.committed {
            send(Message(kind: .appendResponse, from: id, to: m.from, index: log.committed))
            return
        }
        if log.matchTerm(index, snap.metadata.term) {
            // We already have the entries the snapshot covers: just learn the commit.
            log.commit(to: index)
            send(Message(kind: .appendResponse, from: id, to: m.from, index: log.committed))
            return
        }
        log.restore(snap)
        noteSnapshot(snap.metadata)
        send(Message(kind: .appendResponse, from: id, to: m.from, index: log.lastIndex()))
    }

    // MARK: Output

    mutating func send(_ m: Message) {
        var m = m
        if m.term == 0 { m.term = term }
        messages.append(m)
    }
}

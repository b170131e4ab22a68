import Raft
import Testing

/// Unit tests named after the rules of the Raft paper (§) and Ongaro's thesis.
struct RaftRuleTests {
    let r1: ReplicaID = 1
    let r2: ReplicaID = 2
    let r3: ReplicaID = 3

    // MARK: Elections (§5.2, §5.4.1)

    @Test("§5.2 election safety: at most one leader per term, whatever the delivery order")
    func electionSafety() throws {
        var random = DeterministicGenerator(seed: 42)
        for round in 0..<60 {
            let cluster = try TestCluster(size: 5, preVote: round % 2 == 0, checkQuorum: false)
            var leaderOfTerm: [Term: ReplicaID] = [:]
            for _ in 0..<40 {
                // Random replicas time out; a random half of the messages get through.
                for id in cluster.ids where random.chance(0.15) { cluster.with(id) { $0.campaign() } }
                cluster.deliverAll { _ in random.chance(0.6) }
                for id in cluster.leaders {
                    let term = cluster[id].term
                    if let other = leaderOfTerm[term] { #expect(other == id, "two leaders in term \(term)") }
                    leaderOfTerm[term] = id
                }
            }
        }
    }

    @Test("§5.4.1 vote restriction: a candidate whose log is behind is refused")
    func voteRestrictionRefusesStaleCandidate() throws {
        let c = try TestCluster(size: 3, preVote: false, checkQuorum: false)
        c.elect(r1)
        c.isolated = [r3]
        try c.with(r1) { _ = try $0.propose("x".bytes) }
        c.stabilize()
        c.isolated = []
        #expect(c[r2].lastIndex == 2 && c[r3].lastIndex == 1)
        c.with(r3) { $0.campaign() }
        c.processReadies()
        c.deliverAll()
        let answers = c.inFlight.filter { $0.kind == .voteResponse && $0.to == r3 }
        #expect(answers.count == 2)
        #expect(answers.allSatisfy { $0.reject })
        c.stabilize()
        #expect(c[r3].role != .leader)
    }

    @Test("§5.2 one vote per term, and it survives a restart")
    func votesOncePerTerm() throws {
        let c = try TestCluster(size: 3, preVote: false, checkQuorum: false)
        c.with(r3) { $0.step(Message(kind: .vote, from: 1, to: 3, term: 5)) }
        c.processReadies()
        try c.restart(r3)
        c.with(r3) { $0.step(Message(kind: .vote, from: 2, to: 3, term: 5)) }
        c.processReadies()
        let answers = c.inFlight.filter { $0.kind == .voteResponse }
        #expect(answers.map(\.to) == [1, 2])
        #expect(answers.map(\.reject) == [false, true])
        #expect(c[r3].vote == 1)
    }

    // MARK: Replication (§5.3)

    @Test("§5.3 log matching: an append whose previous entry does not match is rejected with a hint")
    func logMatchingRejectsMismatch() throws {
        let c = try TestCluster(size: 3, preVote: false, checkQuorum: false) { _, storage in
            storage.append([Entry(term: 1, index: 1), Entry(term: 1, index: 2)])
            storage.setHardState(HardState(term: 1))
        }
        // The leader of term 3 claims entry 2 has term 2: our entry 2 has term 1.
        c.with(r2) {
            $0.step(Message(kind: .append, from: 1, to: 2, term: 3, logTerm: 2, index: 2, entries: [Entry(term: 3, index: 3)]))
        }
        // An append past our end.
        c.with(r2) { $0.step(Message(kind: .append, from: 1, to: 2, term: 3, logTerm: 3, index: 5)) }
        c.processReadies()
        let answers = c.inFlight.filter { $0.kind == .appendResponse }
        #expect(answers.count == 2)
        #expect(answers[0].reject && answers[0].index == 2 && answers[0].rejectHint == 2 && answers[0].logTerm == 1)
        #expect(answers[1].reject && answers[1].index == 5 && answers[1].rejectHint == 2)
        #expect(c[r2].lastIndex == 2)
    }

    @Test("§5.3 follower truncation: conflicting uncommitted entries are replaced by the leader's")
    func followerTruncatesConflicts() throws {
        let c = try TestCluster(size: 3, preVote: false, checkQuorum: false) { id, storage in
            storage.append([Entry(term: 1, index: 1), Entry(term: 1, index: 2, data: "old".bytes), Entry(term: 1, index: 3)])
            storage.setHardState(HardState(term: 1, commit: 1))
        }
        c.with(r2) {
            $0.step(
                Message(
                    kind: .append, from: 1, to: 2, term: 2, logTerm: 1, index: 1,
                    entries: [Entry(term: 2, index: 2, data: "new".bytes)], commit: 1))
        }
        c.processReadies()
        #expect(c[r2].lastIndex == 2)
        #expect(c[r2].entries(2, 3)?.first?.data == "new".bytes)
        #expect(c.storages[r2]!.retainedEntries.map(\.term) == [1, 2])
    }

    @Test("§5.3 a batch of proposals goes out in one append")
    func batchedProposals() throws {
        let c = try TestCluster(size: 3)
        c.elect(r1)
        let proposals = try c.with(r1) { try $0.propose(batch: ["a".bytes, "b".bytes, "c".bytes]) }
        #expect(proposals.map(\.index) == [2, 3, 4])
        c.processReadies()
        let appends = c.inFlight.filter { $0.kind == .append && $0.to == r2 }
        #expect(appends.count == 1)
        #expect(appends.first?.entries.map(\.index) == [2, 3, 4])
    }

    @Test("pipelining: no more than the in-flight window of appends is outstanding")
    func inflightWindow() throws {
        let c = try TestCluster(size: 3, maxInflight: 2, maxMessageBytes: 1)
        c.elect(r1)
        for i in 0..<6 { try c.with(r1) { _ = try $0.propose("p\(i)".bytes) } }
        c.processReadies()
        let appends = c.inFlight.filter { $0.kind == .append && $0.to == r2 && !$0.entries.isEmpty }
        #expect(appends.count == 2)
        c.stabilize()
        #expect(c[r2].lastIndex == 7 && c[r1].commitIndex == 7)
    }

    // MARK: Commitment (§5.4.2, Figure 8)

    /// Leader 1 of term 3 holds an entry of term 2 that no follower has. Messages carry one
    /// entry each, so the term-2 entry reaches a majority before the leader's own no-op does.
    func figure8(faults: FaultInjection) throws -> (committedEarlyTermByCounting: Bool, finalCommit: LogIndex) {
        let c = try TestCluster(size: 3, preVote: false, checkQuorum: false, maxInflight: 1, maxMessageBytes: 1) { id, s in
            s.append(id == 1 ? [Entry(term: 1, index: 1), Entry(term: 2, index: 2)] : [Entry(term: 1, index: 1)])
            s.setHardState(HardState(term: 2, commit: 1))
        }
        if !faults.isEmpty {
            let config = RaftConfig(id: 1, maxMessageBytes: 1, maxInflightMessages: 1, preVote: false, checkQuorum: false, faults: faults)
            c.configs[r1] = config
            try c.restart(r1)
        }
        c.with(r1) { $0.campaign() }
        var early = false
        for _ in 0..<50 {
            guard c.deliverAll() > 0 else { break }
            // Committing index 2 is only allowed once an entry of term 3 is on a majority.
            let followersWithTerm3 = [r2, r3].filter { c.storages[$0]!.retainedEntries.contains { $0.term == 3 } }
            if c[r1].role == .leader && c[r1].commitIndex >= 2 && followersWithTerm3.isEmpty { early = true }
        }
        return (early, c[r1].commitIndex)
    }

    @Test("§5.4.2 commitment: an entry of an earlier term is never committed by counting replicas")
    func commitOnlyCurrentTermByCounting() throws {
        let result = try figure8(faults: [])
        #expect(!result.committedEarlyTermByCounting)
        #expect(result.finalCommit == 3)
    }

    @Test("the Figure 8 check catches a core that commits earlier terms by counting")
    func figure8CheckHasTeeth() throws {
        let result = try figure8(faults: .commitEarlierTermsByCounting)
        #expect(result.committedEarlyTermByCounting)
    }

    @Test("thesis 10.2.1: the leader counts its own entries only once they are durable")
    func leaderCountsOwnEntriesWhenPersisted() throws {
        let c = try TestCluster(size: 3)
        c.elect(r1)
        c.isolated = [r3]
        try c.with(r1) { _ = try $0.propose("x".bytes) }
        let rd = c.with(r1) { $0.ready() }
        // Replicate before the leader's own write is done: one follower acknowledges.
        for m in rd.messagesBeforePersist where m.to == r2 { c.with(r2) { $0.step(m) } }
        c.processReadies(only: [r2])
        for m in c.inFlight where m.to == r1 { c.with(r1) { $0.step(m) } }
        c.inFlight = []
        #expect(c[r1].commitIndex == 1, "leader + one follower only counts once the leader's write is durable")
        c.storages[r1]!.append(rd.entries)
        c.with(r1) { $0.advance(rd) }
        #expect(c[r1].commitIndex == 2)
    }

    // MARK: PreVote and CheckQuorum (thesis 9.6, 6.2)

    @Test("thesis 9.6 PreVote: an isolated replica does not raise its term or disrupt the leader on return")
    func preVoteProtectsLeader() throws {
        let c = try TestCluster(size: 3)
        c.elect(r1)
        c.isolated = [r3]
        for _ in 0..<10 {
            c.tick(r3, 30)
            c.processReadies()
        }
        #expect(c[r3].term == 1)
        c.isolated = []
        c.inFlight = []
        c.tick(r1)
        c.stabilize()
        #expect(c[r1].role == .leader && c[r1].term == 1)
        #expect(c[r3].leader == r1)
    }

    @Test("thesis 6.2 CheckQuorum: a leader that hears no majority for an election timeout steps down")
    func checkQuorumStepsDown() throws {
        let c = try TestCluster(size: 3)
        c.elect(r1)
        c.isolated = [r1]
        for _ in 0..<20 {
            c.tick(r1)
            c.processReadies()
        }
        #expect(c[r1].role == .follower)
        #expect(c[r1].leader == nil)
    }

    @Test("thesis 6.2 leader lease: a follower that hears from its leader ignores vote requests")
    func followerIgnoresVotesWhileLeaderAlive() throws {
        let c = try TestCluster(size: 3, preVote: false)
        c.elect(r1)
        c.with(r2) { $0.step(Message(kind: .vote, from: 3, to: 2, term: 9, logTerm: 1, index: 1)) }
        c.processReadies()
        #expect(c[r2].term == 1)
        #expect(!c.inFlight.contains { $0.kind == .voteResponse })
    }

    @Test("a leader whose connection is refused is given up at once: votes granted, election within half a timeout")
    func unreachableLeaderIsGivenUp() throws {
        let c = try TestCluster(size: 3)
        c.elect(r1)
        // Another replica's reachability means nothing to r2.
        c.with(r2) { $0.peerUnreachable(r3) }
        #expect(c[r2].leader == r1)
        // r1 dies; both followers find its port closed.
        c.crash(r1)
        c.with(r2) { $0.peerUnreachable(r1) }
        c.with(r3) { $0.peerUnreachable(r1) }
        #expect(c[r2].leader == nil && c[r3].leader == nil)
        // Within half an election timeout (10 ticks) one of them campaigns, and the other,
        // no longer in a leader lease, grants its votes.
        for _ in 0..<5 where c.leaders.isEmpty {
            c.tick(r2)
            c.tick(r3)
            c.stabilize()
        }
        #expect(c.leaders.count == 1)
        #expect(c.leaders.first != r1)
    }

    @Test("a mistaken unreachable report does not disturb a live leader")
    func mistakenUnreachableReportIsHarmless() throws {
        let c = try TestCluster(size: 3)
        c.elect(r1)
        let term = c[r1].term
        c.with(r2) { $0.peerUnreachable(r1) }
        // r2 campaigns soon; r3 still hears r1 and refuses the pre-vote, so no term changes.
        for _ in 0..<5 {
            c.tick(r2)
            c.stabilize()
        }
        #expect(c[r1].role == .leader && c[r1].term == term && c[r3].term == term)
        // r1's next heartbeat makes r2 its follower again.
        c.tick(r1)
        c.stabilize()
        #expect(c[r2].leader == r1)
    }

    // MARK: ReadIndex (thesis 6.4)

    @Test("thesis 6.4 ReadIndex: answered only after a quorum confirms leadership")
    func readIndexNeedsQuorum() throws {
        let c = try TestCluster(size: 3)
        c.elect(r1)
        c.isolated = [r2, r3]
        try c.with(r1) { try $0.readIndex(7) }
        c.stabilize()
        #expect(c.readStates[r1]!.isEmpty)
        c.isolated = []
        c.tick(r1)
        c.stabilize()
        #expect(c.readStates[r1] == [ReadState(index: 1, requestID: 7)])
    }

    @Test("thesis 6.4 ReadIndex: a new leader answers only after committing an entry of its term")
    func readIndexWaitsForCurrentTerm() throws {
        let c = try TestCluster(size: 3)
        c.with(r1) { $0.campaign() }
        // Run the election, but hold back the appends of the no-op.
        for _ in 0..<6 { c.deliverAll { $0.kind != .append } }
        #expect(c[r1].role == .leader && c[r1].commitIndex == 0)
        try c.with(r1) { try $0.readIndex(3) }
        c.deliverAll { $0.kind != .append }
        #expect(c.readStates[r1]!.isEmpty)
        c.with(r1) { $0.tick() }
        c.stabilize()
        #expect(c.readStates[r1] == [ReadState(index: 1, requestID: 3)])
    }

    @Test("thesis 6.4 ReadIndex: a single voter too answers only after committing an entry of its term")
    func singleVoterReadWaitsForCurrentTerm() throws {
        // A restarted single replica: an entry of term 1 in its log, whose commit (a
        // commit-only hard state, not synced) was lost with the crash.
        let c = try TestCluster(size: 1) { _, storage in
            storage.append([Entry(term: 1, index: 1, data: "acknowledged".bytes)])
            storage.setHardState(HardState(term: 1, vote: 1, commit: 0))
        }
        c.with(r1) { $0.campaign() }
        #expect(c[r1].role == .leader && c[r1].commitIndex == 0)
        try c.with(r1) { try $0.readIndex(5) }
        // Answered only once the term's no-op (index 2) commits; index 0 would be a read from
        // before the acknowledged entry.
        c.stabilize()
        c.processReadies()
        #expect(c.readStates[r1] == [ReadState(index: 2, requestID: 5)])
    }

    @Test("thesis 6.4 ReadIndex from a follower is forwarded to the leader")
    func readIndexFromFollower() throws {
        let c = try TestCluster(size: 3)
        c.elect(r1)
        try c.with(r1) { _ = try $0.propose("x".bytes) }
        c.stabilize()
        try c.with(r3) { try $0.readIndex(11) }
        c.stabilize()
        #expect(c.readStates[r3] == [ReadState(index: 2, requestID: 11)])
    }

    // MARK: Leadership transfer (thesis 3.10)

    @Test("thesis 3.10 leadership transfer: the target is caught up, then wins at once")
    func leadershipTransfer() throws {
        let c = try TestCluster(size: 3)
        c.elect(r1)
        c.isolated = [r3]
        try c.with(r1) { _ = try $0.propose("x".bytes) }
        c.stabilize()
        c.isolated = []
        try c.with(r1) { try $0.transferLeadership(to: r3) }
        #expect(throws: RaftError.transferInProgress) { try c.with(r1) { _ = try $0.propose("y".bytes) } }
        c.stabilize()
        #expect(c[r3].role == .leader)
        #expect(c[r1].role == .follower && c[r1].leader == r3)
        #expect(c[r3].lastIndex >= 3)
    }

    // MARK: Snapshots (§7)

    @Test("§7 InstallSnapshot: a replica behind the leader's compacted log restores from a snapshot")
    func snapshotInstall() throws {
        let c = try TestCluster(size: 3)
        c.elect(r1)
        c.crash(r3)
        for i in 0..<5 { try c.with(r1) { _ = try $0.propose("e\(i)".bytes) } }
        c.stabilize()
        let s = c.storages[r1]!
        try s.createSnapshot(at: 6, data: "state@6".bytes)
        s.compact(through: 6)
        try c.restart(r3)
        c.tick(r1)
        c.stabilize()
        #expect(c.storages[r3]!.currentSnapshot.metadata.index == 6)
        #expect(c.storages[r3]!.currentSnapshot.data == "state@6".bytes)
        try c.with(r1) { _ = try $0.propose("after".bytes) }
        c.stabilize()
        #expect(c[r3].commitIndex == 7 && c.applied[r3]!.last?.data == "after".bytes)
    }

    // MARK: Small clusters and restarts

    @Test("a 1-replica cluster elects itself and commits alone")
    func singleReplica() throws {
        let c = try TestCluster(size: 1)
        c.with(r1) { $0.campaign() }
        #expect(c[r1].role == .leader)
        try c.with(r1) { _ = try $0.propose("solo".bytes) }
        c.processReadies()
        #expect(c[r1].commitIndex == 2)
        #expect(c.applied[r1]!.map(\.data) == [[], "solo".bytes])
        try c.with(r1) { try $0.readIndex(1) }
        c.processReadies()
        #expect(c.readStates[r1] == [ReadState(index: 2, requestID: 1)])
    }

    @Test("followers refuse proposals and name the leader")
    func followerRefusesProposals() throws {
        let c = try TestCluster(size: 3)
        c.elect(r1)
        #expect(throws: RaftError.notLeader(leader: r1)) { try c.with(r2) { _ = try $0.propose("x".bytes) } }
    }

    @Test("a restarted replica keeps its term, vote and log, and re-applies committed entries")
    func restartRecoversState() throws {
        let c = try TestCluster(size: 3)
        c.elect(r1)
        try c.with(r1) { _ = try $0.propose("x".bytes) }
        c.stabilize()
        try c.restart(r2)
        #expect(c[r2].term == 1 && c[r2].vote == r1 && c[r2].lastIndex == 2 && c[r2].commitIndex == 2)
        c.processReadies()
        #expect(c.applied[r2]!.map(\.index) == [1, 2])
    }

    @Test("invalid configuration is refused")
    func configValidation() {
        #expect(throws: RaftError.self) { try RaftConfig(id: 0).validate() }
        #expect(throws: RaftError.self) { try RaftConfig(id: 1, electionTicks: 1, heartbeatTicks: 1).validate() }
    }
}

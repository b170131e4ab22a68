import Raft

/// Membership changes as a fault: learners are added from spare replicas (empty disks, no
/// configuration), promoted, and members removed (the leader too), while partitions, crashes
/// and pauses go on. The checks: a commit is held durably by a majority of the committing
/// leader's voters (so learners never count); a leader never has two uncommitted
/// configuration entries; a replica removed by a committed configuration never leads.
extension Simulation {
    func membershipNemesis() {
        guard let l = currentLeader(), let node = replicas[l].raft else { return }
        let m = node.membership
        var choices: [ConfChange] = []
        if m.members.count < knobs.replicas + 2,
            let spare = replicas.indices.first(where: { !m.isMember(replicas[$0].id) && !m.removed.contains(replicas[$0].id) })
        {
            choices.append(.addLearner(Member(id: replicas[spare].id, role: .learner)))
        }
        for learner in m.learners {
            choices.append(.promote(learner))
            choices.append(.remove(learner))
        }
        if m.voters.count > 3 { for v in m.voters { choices.append(.remove(v)) } }
        guard !choices.isEmpty else { return }
        let change = choices[Int(random.next() % UInt64(choices.count))]
        if case .addLearner(let member) = change {
            let slot = Int(member.id.rawValue) - 1
            if !replicas[slot].up { start(slot) }
        }
        trace("nemesis: membership \(change) at leader \(node.id) (\(m))")
        if replicas[l].core != nil {
            _ = replicas[l].core!.submitConfChange(change, expectedConfigIndex: nil, force: false, now: localNanos(l))
            coreCarryOut(l)
        } else {
            do { try replicas[l].node!.proposeConfChange(change) } catch { trace("membership change refused: \(error)") }
            afterInput(l)
        }
    }

    /// Whether one more voter may crash and leave a quorum of the current configuration (and
    /// of the committed one, when a change is pending) able to come back.
    func mayCrashAnotherVoter() -> Bool {
        let configs: [Membership]
        if let l = currentLeader(), let node = replicas[l].raft {
            configs = [node.membership, node.membership(at: node.commitIndex)]
        } else {
            configs = [latestMembership()]
        }
        for c in configs {
            let down = c.voters.filter { !replicas[Int($0.rawValue) - 1].up }.count
            if down + 1 > c.voters.count - c.quorum { return false }
        }
        return true
    }

    /// The newest configuration any running replica knows.
    func latestMembership() -> Membership {
        var best = Membership(voters: (1...knobs.replicas).map { ReplicaID(UInt64($0)) })
        for r in replicas {
            if let n = r.raft, n.configIndex > best.index { best = n.membership }
        }
        return best
    }

    /// The replicas that must converge at the end: the members of the configuration of the
    /// leader with the highest term (or the newest one known).
    func finalMembers() -> [Int] {
        let config = currentLeader().flatMap { replicas[$0].raft?.membership } ?? latestMembership()
        return replicas.indices.filter { config.isMember(replicas[$0].id) }
    }

    /// Records the ids removed by configurations that replicas know to be committed.
    func noteRemoved() {
        for r in replicas {
            guard let n = r.raft, n.configIndex <= n.commitIndex else { continue }
            for id in n.membership.removed { removedIDs.insert(id) }
        }
    }

    /// The leader `i` just advanced its commit index: the entry there must be on the disks of
    /// a majority of its voters (not counting learners, nor writes still in flight). "Its
    /// voters": the configuration it had when it counted, which is the one at its commit
    /// index or, if a change was appended since, the one after it (a change can be proposed
    /// in the same step, right after the commit it waited for; one is pending at a time).
    func checkCommitQuorum(_ i: Int, _ node: RaftNode) {
        let index = node.commitIndex
        guard let term = node.term(at: index) else { return }
        var report: [String] = []
        for config in [node.membership(at: index), node.membership] {
            var holders: [ReplicaID] = []
            for v in config.voters {
                // A crashed replica's write-ahead log cannot be read until it restarts: its
                // acknowledgements were of synced writes, so it counts.
                guard let storage = replicas[Int(v.rawValue) - 1].disk.openStorage else {
                    holders.append(v)
                    continue
                }
                let snapshotIndex = (try? storage.snapshotMetadata().index) ?? 0
                if snapshotIndex >= index || (try? storage.term(index)) == term { holders.append(v) }
            }
            if holders.count >= config.quorum { return }
            report.append("held by \(holders) of voters \(config.voters) (quorum \(config.quorum))")
        }
        checker.recordFailure(
            .commitQuorum, "leader \(node.id) committed \(term)/\(index) " + report.joined(separator: "; "))
    }
}

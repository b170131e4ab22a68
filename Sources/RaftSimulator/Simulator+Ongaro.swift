import Raft

/// The schedule of the single-server membership bug Ongaro described on raft-dev (2015),
/// played with ordinary faults because random ones almost never line it up. It needs four
/// voters and a caught-up learner, which it first makes with membership changes.
///
/// 1. leader L, cut off with learner X only, proposes to promote X: the new configuration
///    (five voters) reaches X alone;
/// 2. L crashes and X is cut off; the other three voters elect M (a majority of the four);
/// 3. the moment M leads, it proposes to remove a voter D and D is cut off: M and the one
///    voter left form a majority of the new three-voter configuration. A correct M refuses
///    (no entry of its own term has committed yet) and the schedule ends; a broken one commits
///    its empty entry and the removal with that one voter;
/// 4. M crashes; L returns with X and D: under its five-voter configuration L, X and D are a
///    majority, and L's log looks as new as theirs, so L wins without M's committed entries.
///
/// Runs at most once per seed, in seeds that draw `ongaro` (their leaders do not promote
/// learners by themselves, so the schedule decides who is a learner).
extension Simulation {
    enum Ongaro {
        case idle
        /// Making the configuration: four voters and a learner.
        case setup(deadline: UInt64)
        /// L proposed X's promotion, cut off with X.
        case promoting(l: Int, x: Int, index: LogIndex, until: UInt64)
        /// L is down, X cut off; waiting for M.
        case awaitingNewLeader(l: Int, x: Int)
        /// M proposed removing D, reaching one voter only.
        case removing(l: Int, x: Int, m: Int, d: Int, index: LogIndex, until: UInt64)
        /// M is down; L back with X and D.
        case oldLeaderBack(l: Int, m: Int)
        case done
    }

    var ongaroRunning: Bool {
        switch ongaro {
        case .idle, .done: false
        default: true
        }
    }

    func startOngaro() {
        ongaro = .setup(deadline: now + micros(ms: 1500))
        trace("ongaro: making four voters and a learner")
        queue.push(.ongaroStep, at: now)
    }

    /// The next step (a timer fired every few milliseconds while the schedule runs).
    func ongaroStep() {
        guard !faultsOver else { return endOngaro("the faults are over") }
        switch ongaro {
        case .setup(let deadline):
            guard now < deadline else { return endOngaro("no suitable configuration in time") }
            ongaroSetup()
        case .promoting(let l, let x, let index, let until):
            // Wait until X holds the new configuration, then L goes.
            guard let xn = replicas[x].raft, xn.lastIndex >= index, xn.term(at: index) == replicas[l].raft?.term(at: index) else {
                if now > until { return endOngaro("the promotion did not reach \(x + 1)") }
                return queue.push(.ongaroStep, at: now + micros(ms: 5))
            }
            crash(l)
            blocked = []
            block([x], replicas.indices.filter { $0 != x }, bothWays: true)
            ongaro = .awaitingNewLeader(l: l, x: x)
            trace("ongaro: \(x + 1) holds the promotion at \(index); \(l + 1) crashes, \(x + 1) is cut off")
            queue.push(.ongaroTimeout(step: 2), at: now + micros(ms: 1500))
        case .removing(let l, let x, let m, let d, let index, let until):
            guard let mn = replicas[m].raft, mn.commitIndex >= index else {
                if now > until { return endOngaro("the removal did not commit") }
                return queue.push(.ongaroStep, at: now + micros(ms: 5))
            }
            crash(m)
            blocked = []
            let back = [l, x, d]
            block(back, replicas.indices.filter { !back.contains($0) }, bothWays: true)
            start(l)
            ongaro = .oldLeaderBack(l: l, m: m)
            trace("ongaro: \(m + 1) committed the removal at \(index) and crashes; \(l + 1) returns with \(x + 1) and \(d + 1)")
            queue.push(.ongaroTimeout(step: 4), at: now + micros(ms: 2000))
        default:
            break
        }
    }

    /// One membership change toward four voters and a caught-up learner, or step 1 once there.
    private func ongaroSetup() {
        defer { if case .setup = ongaro { queue.push(.ongaroStep, at: now + micros(ms: 20)) } }
        guard let l = currentLeader(), let node = replicas[l].raft, !node.configChangePending,
            node.term(at: node.commitIndex) == node.term
        else { return }
        let m = node.membership
        let change: ConfChange
        if m.voters.count == 4, let x = m.learners.first {
            let xi = Int(x.rawValue) - 1
            let allUp = m.members.allSatisfy { replicas[Int($0.id.rawValue) - 1].up }
            guard allUp, let xn = replicas[xi].raft, xn.lastIndex >= node.commitIndex else { return }
            blocked = []
            let others = replicas.indices.filter { $0 != l && $0 != xi }
            block([l, xi], others, bothWays: true)
            do {
                let p = try proposeAtLeader(l, .promote(x))
                ongaro = .promoting(l: l, x: xi, index: p.index, until: now + micros(ms: 500))
                trace("ongaro: leader \(l + 1), cut off with learner \(x), proposes its promotion at \(p.index)")
                queue.push(.ongaroStep, at: now + micros(ms: 5))
            } catch {
                blocked = []
            }
            return
        } else if m.voters.count > 4, let v = m.voters.first(where: { $0 != node.id }) {
            change = .remove(v)
        } else if m.voters.count < 4, let x = m.learners.first {
            change = .promote(x)
        } else if let spare = replicas.indices.first(where: { !m.isMember(replicas[$0].id) && !m.removed.contains(replicas[$0].id) }) {
            if !replicas[spare].up { start(spare) }
            change = .addLearner(Member(id: replicas[spare].id, role: .learner))
        } else {
            return endOngaro("no spare replica left")
        }
        _ = try? proposeAtLeader(l, change)
    }

    /// Proposes a membership change straight at the leader's Raft core.
    func proposeAtLeader(_ l: Int, _ change: ConfChange, force: Bool = false) throws -> Proposal {
        let p: Proposal
        if replicas[l].core != nil {
            p = try replicas[l].core!.proposeConfChange(change, force: force, now: localNanos(l))
            coreCarryOut(l)
        } else {
            p = try replicas[l].node!.proposeConfChange(change, force: force)
            afterInput(l)
        }
        return p
    }

    /// A replica became leader.
    func ongaroNewLeader(_ i: Int) {
        switch ongaro {
        case .awaitingNewLeader(let l, let x) where i != l && i != x:
            guard let node = replicas[i].raft,
                let d = node.membership.voters.map({ Int($0.rawValue) - 1 }).first(where: { $0 != i && $0 != l })
            else { return endOngaro("no voter to remove") }
            block([d], replicas.indices.filter { $0 != d }, bothWays: true)
            queue.push(.ongaroPropose(m: i, d: d), at: now)
        case .oldLeaderBack(let l, _) where i == l:
            trace("ongaro: \(l + 1) leads again, term \(replicas[l].raft!.term)")
            endOngaro("done")
        default:
            break
        }
    }

    /// Step 3: the new leader M proposes removing D before its own first entry commits.
    func ongaroPropose(m: Int, d: Int) {
        guard case .awaitingNewLeader(let l, let x) = ongaro, replicas[m].raft?.role == .leader else { return }
        do {
            // Forced: a new leader has heard from no one yet, so the reachability check would
            // refuse it; the own-term rule must still hold.
            let p = try proposeAtLeader(m, .remove(replicas[d].id), force: true)
            ongaro = .removing(l: l, x: x, m: m, d: d, index: p.index, until: now + micros(ms: 800))
            trace("ongaro: new leader \(m + 1) proposes removing \(d + 1) at \(p.index), before its term's first commit")
            queue.push(.ongaroStep, at: now + micros(ms: 5))
        } catch {
            endOngaro("the new leader \(m + 1) refuses the removal: \(error)")
        }
    }

    func ongaroTimeout(step: Int) {
        switch (ongaro, step) {
        case (.awaitingNewLeader, 2), (.oldLeaderBack, 4):
            endOngaro("no leader in time at step \(step)")
        default:
            break
        }
    }

    func endOngaro(_ why: String) {
        trace("ongaro: ends (\(why))")
        ongaro = .done
        blocked = []
        for i in replicas.indices where !replicas[i].up && !replicas[i].spare {
            queue.push(.restart(i), at: now + micros(ms: 20 + random.next() % 200))
        }
    }
}

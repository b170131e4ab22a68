import Raft

/// The schedule of the Raft paper's Figure 8, played with ordinary faults (partitions,
/// crashes, lost messages), because random faults almost never line it up:
///
/// 1. the leader L is cut off while it accepts writes: it holds entries of its term that no one
///    else has; it crashes;
/// 2. another replica M wins the next term and is cut off at once: its first entry (of a newer
///    term) lands at an index where L holds one of its own; it crashes;
/// 3. L comes back as the centre of a star (the others reach only L), wins a term, and sends
///    one entry per message; the network loses every append that carries an entry of L's new
///    term, so only L's older entries reach a majority. A correct leader commits nothing now
///    (§5.4.2: only entries of its own term commit by counting); one that commits by counting
///    applies an entry M's log contradicts;
/// 4. L crashes before its own entry spreads; M returns and wins (its last term is newer than
///    the others'), and replaces L's entries: what a broken L applied is lost.
///
/// Runs at most once per seed, only in seeds that draw `figure8`, and never alongside other
/// faults; any step whose precondition fails ends it and restarts what it stopped.
extension Simulation {
    enum Figure8 {
        case idle
        /// L is cut off and accepting writes.
        case oldLeaderAlone(l: Int)
        /// L is down; waiting for another replica to lead.
        case awaitingNewLeader(l: Int)
        /// M leads, cut off; its first entry is being written.
        case newLeaderAlone(l: Int, m: Int)
        /// M is down; L is back at the centre of a star and only its older entries get out.
        case oldLeaderBack(l: Int, m: Int)
        /// L is down again; waiting for M to lead.
        case newLeaderReturns(l: Int, m: Int)
        case done
    }

    var figure8Running: Bool {
        switch figure8 {
        case .idle, .done: false
        default: true
        }
    }

    /// Starts the schedule when the cluster is whole and has a leader; false if it cannot now.
    func startFigure8() -> Bool {
        guard replicas.count >= 3, upCount() == replicas.count, replicas.allSatisfy({ $0.pausedUntil <= now }),
            let l = currentLeader()
        else { return false }
        blocked = []
        block([l], replicas.indices.filter { $0 != l }, bothWays: true)
        figure8 = .oldLeaderAlone(l: l)
        trace("figure 8: leader \(l + 1) cut off while it accepts writes")
        queue.push(.figure8Step, at: now + micros(ms: 40 + random.next() % 60))
        return true
    }

    /// The next step of the schedule (a timer fired).
    func figure8Step() {
        guard !faultsOver else { return endFigure8("the faults are over") }
        switch figure8 {
        case .oldLeaderAlone(let l):
            guard let node = replicas[l].raft, node.lastIndex > node.commitIndex else {
                return endFigure8("leader \(l + 1) holds no uncommitted entry")
            }
            crash(l)
            blocked = []
            figure8 = .awaitingNewLeader(l: l)
            trace("figure 8: \(l + 1) crashes with entries up to \(node.lastIndex) (commit \(node.commitIndex))")
            queue.push(.figure8Timeout(step: 1), at: now + micros(ms: 1500))
        case .newLeaderAlone(let l, let m):
            guard !replicas[l].up else { return endFigure8("\(l + 1) came back early") }
            crash(m)
            blocked = []
            // The others reach only L, so only L can gather votes.
            let others = replicas.indices.filter { $0 != l }
            for x in others { block([x], others.filter { $0 != x }, bothWays: false) }
            start(l, maxMessageBytes: 1)
            figure8Through = [:]
            figure8 = .oldLeaderBack(l: l, m: m)
            trace("figure 8: \(m + 1) crashes; \(l + 1) restarts at the centre of a star")
            queue.push(.figure8Timeout(step: 3), at: now + micros(ms: 1500))
        case .oldLeaderBack(let l, let m):
            crash(l)
            blocked = []
            if !replicas[m].up { start(m) }
            figure8 = .newLeaderReturns(l: l, m: m)
            trace("figure 8: \(l + 1) crashes before its own entry spreads; \(m + 1) restarts")
            queue.push(.figure8Timeout(step: 4), at: now + micros(ms: 1500))
        default:
            break
        }
    }

    /// A step waited too long for a leader: the schedule ends.
    func figure8Timeout(step: Int) {
        switch (figure8, step) {
        case (.awaitingNewLeader, 1), (.oldLeaderBack, 3), (.newLeaderReturns, 4):
            endFigure8("no leader in time at step \(step)")
        default:
            break
        }
    }

    /// A replica became leader (called before any of its messages go out).
    func figure8NewLeader(_ i: Int) {
        switch figure8 {
        case .awaitingNewLeader(let l) where i != l:
            // (L's disk is closed while it is down: whether it holds an entry at M's first index
            // of its term shows only later. When it does not, the schedule is harmless.)
            guard let node = replicas[i].raft else { return }
            blocked = []
            block([i], replicas.indices.filter { $0 != i }, bothWays: true)
            figure8 = .newLeaderAlone(l: l, m: i)
            trace("figure 8: \(i + 1) leads term \(node.term), cut off at once")
            queue.push(.figure8Step, at: now + micros(ms: 20 + random.next() % 40))
        case .oldLeaderBack(let l, _) where i == l:
            trace("figure 8: \(l + 1) leads again, term \(replicas[l].raft!.term)")
            queue.push(.figure8Step, at: now + micros(ms: 80 + random.next() % 120))
        case .newLeaderReturns(let l, let m) where i == m:
            trace("figure 8: \(m + 1) leads again; \(l + 1) restarts")
            figure8 = .done
            queue.push(.restart(l), at: now + micros(ms: 50))
        default:
            break
        }
    }

    /// While L is back, the network loses its appends that carry an entry of its current term
    /// unless the follower is sure to reject them: a probe beyond both the follower's log and
    /// everything L has got through to it gets through, so that L finds where their logs agree
    /// and sends its older entries. (Checking the follower's log alone is not enough: an
    /// append whose predecessor is still in flight would be accepted.)
    func figure8Drops(_ m: Message) -> Bool {
        guard case .oldLeaderBack(let l, _) = figure8, m.kind == .append, m.from == replicas[l].id else { return false }
        let to = Int(m.to.rawValue) - 1
        if m.entries.contains(where: { $0.term == m.term }) {
            guard let follower = replicas[to].raft else { return true }
            let sureReject = m.index > follower.lastIndex && m.index > figure8Through[to, default: 0]
            if !sureReject { return true }
        }
        figure8Through[to] = max(figure8Through[to, default: 0], m.entries.last?.index ?? m.index)
        return false
    }

    func endFigure8(_ why: String) {
        trace("figure 8: ends (\(why))")
        restartOneByteLeader()
        figure8 = .done
        blocked = []
        for i in replicas.indices where !replicas[i].up {
            queue.push(.restart(i), at: now + micros(ms: 20 + random.next() % 200))
        }
    }

    /// L runs with one-entry messages only while the schedule needs it: if the schedule stops
    /// with L back, it restarts with the drawn message size.
    func restartOneByteLeader() {
        guard case .oldLeaderBack(let l, _) = figure8, replicas[l].up else { return }
        crash(l)
        start(l)
    }
}

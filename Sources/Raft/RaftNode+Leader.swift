extension RaftNode {
    // MARK: Timers

    mutating func tickLeader() {
        heartbeatElapsed += 1
        electionElapsed += 1
        ticksInRole = min(ticksInRole + 1, config.electionTicks)
        if electionElapsed >= config.electionTicks {
            electionElapsed = 0
            if config.checkQuorum {
                // CheckQuorum (thesis 6.2): step down if a majority was silent for a whole
                // election timeout, so clients can find a leader that works.
                var active = 0
                for v in membership.voters where v == id || progress[v]?.recentActive == true {
                    active += 1
                }
                if active < membership.quorum {
                    becomeFollower(term: term, leader: nil)
                    return
                }
                for v in membership.others(than: id) {
                    progress[v]?.recentActive = false
                }
            }
            // A transfer that did not finish within an election timeout is abandoned.
            leadTransferee = nil
        }
        // Retry snapshots that were lost on the way.
        for v in membership.others(than: id) {
            progress[v]?.silentTicks += 1
            guard var pr = progress[v], pr.state == .snapshot else { continue }
            pr.snapshotTicks += 1
            if pr.snapshotTicks >= 2 * config.electionTicks {
                pr.becomeProbe()
                pr.rewind(to: pr.match + 1)
            }
            progress[v] = pr
        }
        if heartbeatElapsed >= config.heartbeatTicks {
            heartbeatElapsed = 0
            broadcastHeartbeat(context: pendingReads.last?.sequence ?? 0)
        }
        maybeAutoPromote()
    }

    // MARK: Appending and replicating

    mutating func appendAsLeader(_ entries: [Entry]) {
        let prev = log.lastIndex()
        _ = log.append(entries)
        if entries.contains(where: { $0.kind == .configChange }) { noteAppended(entries, after: prev) }
        if config.faults.contains(.countUnpersistedLeaderEntries) {
            _ = progress[id]?.maybeUpdate(log.lastIndex())
            _ = maybeCommit()
        }
        broadcastAppend()
    }

    /// The leader's own write is durable through the stable index: count it.
    mutating func selfPersisted() {
        let stable = log.unstableOffset - 1
        guard var pr = progress[id] else { return }
        if pr.maybeUpdate(min(stable, log.lastIndex())) {
            progress[id] = pr
            if maybeCommit() { broadcastAppend() }
        }
    }

    /// Raft §5.3/§5.4.2: the highest index replicated on a quorum commits if it is of the
    /// current term.
    mutating func maybeCommit() -> Bool {
        var matches = countingVoters.map { progress[$0]?.match ?? 0 }
        matches.sort(by: >)
        let candidate = matches[membership.quorum - 1]
        let committed: Bool
        if config.faults.contains(.commitEarlierTermsByCounting) {
            if candidate > log.committed {
                log.commit(to: candidate)
                committed = true
            } else {
                committed = false
            }
        } else {
            committed = log.maybeCommit(candidate, term: term)
        }
        if committed && !readsAwaitingCommit.isEmpty && log.termOrZero(log.committed) == term {
            let waiting = readsAwaitingCommit
            readsAwaitingCommit = []
            for r in waiting { handleReadRequest(from: r.from, requestID: r.id) }
        }
        return committed
    }

    mutating func broadcastAppend() {
        for v in membership.others(than: id) { _ = sendAppend(to: v) }
    }

    /// Sends the next append (or a snapshot) to `to`. Returns whether anything was sent.
    @discardableResult
    mutating func sendAppend(to target: ReplicaID, sendIfEmpty: Bool = true) -> Bool {
        guard var pr = progress[target], !pr.isPaused else { return false }
        let prevIndex = pr.next - 1
        guard let prevTerm = try? log.term(prevIndex),
            let entries = try? log.entries(from: pr.next, maxBytes: config.maxMessageBytes)
        else {
            return sendSnapshot(to: target)
        }
        if entries.isEmpty && !sendIfEmpty { return false }
        send(
            Message(
                kind: .append, from: id, to: target, logTerm: prevTerm, index: prevIndex,
                entries: entries, commit: log.committed))
        pr.sentEntries(last: entries.last?.index)
        pr.sentCommit = log.committed
        progress[target] = pr
        return true
    }

    /// An append with no entries at the end of what was sent to `target`, past its full
    /// window: acknowledged once everything before it arrived (freeing the window), rejected
    /// if some of it was lost (back to probing from where the follower's log ends). When that
    /// part of the log is compacted, the follower gets the snapshot instead.
    private mutating func sendEmptyAppend(to target: ReplicaID) {
        guard var pr = progress[target], pr.state == .replicate else { return }
        let prevIndex = pr.next - 1
        guard let prevTerm = try? log.term(prevIndex) else {
            _ = sendSnapshot(to: target)
            return
        }
        // The follower takes the commit index only as far as its log matches ours.
        send(Message(kind: .append, from: id, to: target, logTerm: prevTerm, index: prevIndex, entries: [], commit: log.committed))
        pr.sentCommit = log.committed
        progress[target] = pr
    }

    private mutating func sendSnapshot(to target: ReplicaID) -> Bool {
        guard var pr = progress[target], pr.recentActive else { return false }
        guard let snap = try? log.snapshot(), !snap.isEmpty else { return false }
        pr.becomeSnapshot(snap.metadata.index)
        progress[target] = pr
        send(Message(kind: .snapshot, from: id, to: target, snapshot: snap))
        return true
    }

    private mutating func broadcastHeartbeat(context: UInt64) {
        for v in membership.others(than: id) {
            let commit = min(progress[v]?.match ?? 0, log.committed)
            progress[v]?.sentCommit = commit
            send(Message(kind: .heartbeat, from: id, to: v, commit: commit, context: context))
        }
    }

    mutating func stepLeader(_ m: Message) {
        switch m.kind {
        case .appendResponse:
            handleAppendResponse(m)
        case .heartbeatResponse:
            handleHeartbeatResponse(m)
        case .readIndex:
            handleReadRequest(from: m.from, requestID: ReadRequestID(m.context))
        default:
            break
        }
    }

    private mutating func handleAppendResponse(_ m: Message) {
        guard var pr = progress[m.from] else { return }
        pr.recentActive = true
        pr.silentTicks = 0
        if m.reject {
            var hint = m.rejectHint
            if m.logTerm > 0 {
                // Skip every entry of ours whose term is newer than the follower's entry at
                // the hint: none of them can match.
                hint = log.findConflictByTerm(m.rejectHint, m.logTerm).0
            }
            if pr.maybeDecrease(rejected: m.index, hint: hint) {
                if pr.state == .replicate { pr.becomeProbe() }
                progress[m.from] = pr
                sendAppend(to: m.from)
            } else {
                progress[m.from] = pr
            }
            return
        }
        // In probe, an acknowledgement of what the leader already knew still ends the probe:
        // the follower's log matches up to `match` (a heartbeat round found it caught up).
        guard pr.maybeUpdate(m.index) || (pr.state == .probe && pr.match == m.index) else {
            progress[m.from] = pr
            return
        }
        switch pr.state {
        case .probe:
            pr.becomeReplicate()
        case .snapshot:
            if pr.match >= pr.pendingSnapshot || pr.match + 1 >= log.firstIndex() {
                pr.becomeProbe()
                pr.becomeReplicate()
            }
        case .replicate:
            pr.inflights.free(upTo: m.index)
        }
        progress[m.from] = pr
        if maybeCommit() {
            broadcastAppend()
        } else if progress[m.from]!.mayMissCommit(log.committed) {
            // Only when the follower may lack the commit index does it get an append with no
            // entries (this covers a follower that was paused, too).
            sendAppend(to: m.from)
        }
        // Fill the pipeline (never with empty appends).
        while sendAppend(to: m.from, sendIfEmpty: false) {}
        if m.from == leadTransferee, progress[m.from]?.match == log.lastIndex() {
            send(Message(kind: .timeoutNow, from: id, to: m.from))
        }
    }

    private mutating func handleHeartbeatResponse(_ m: Message) {
        guard var pr = progress[m.from] else { return }
        pr.recentActive = true
        pr.silentTicks = 0
        pr.probeSent = false
        // A full window (see `FullWindowPolicy`): the follower is alive, and its answers are
        // late or some appends were lost.
        var windowFull = false
        if pr.state == .replicate && pr.inflights.isFull {
            pr.inflights.free(upTo: pr.match)
            if pr.inflights.isFull {
                switch config.fullWindow {
                case .emptyAppend: windowFull = true
                case .probe: pr.becomeProbe()
                }
            }
        }
        progress[m.from] = pr
        if windowFull {
            sendEmptyAppend(to: m.from)
        } else if pr.match < log.lastIndex() || pr.state == .probe {
            // A follower in probe gets an append even when it looks caught up: its answer is
            // what moves it back to replicate.
            sendAppend(to: m.from)
        }
        if m.context != 0 { acknowledgeRead(sequence: m.context, from: m.from) }
    }

    // MARK: ReadIndex (thesis 6.4)

    mutating func handleReadRequest(from: ReplicaID, requestID: ReadRequestID) {
        if config.faults.contains(.readIndexWithoutQuorum) {
            answerRead(from: from, requestID: requestID, index: log.committed)
            return
        }
        // Until an entry of this term commits, our commit index may be behind the cluster's
        // (a single voter's too: its last term's entries may not be known committed yet).
        guard log.termOrZero(log.committed) == term else {
            readsAwaitingCommit.append((from, requestID))
            return
        }
        if membership.voters == [id] {
            answerRead(from: from, requestID: requestID, index: log.committed)
            return
        }
        readSequence += 1
        pendingReads.append(
            PendingRead(sequence: readSequence, index: log.committed, from: from, requestID: requestID, acks: [id]))
        broadcastHeartbeat(context: readSequence)
    }

    private mutating func acknowledgeRead(sequence: UInt64, from: ReplicaID) {
        guard let i = pendingReads.firstIndex(where: { $0.sequence == sequence }) else { return }
        if !pendingReads[i].acks.contains(from) { pendingReads[i].acks.append(from) }
        // Only voters' acknowledgements count (a learner's, or a removed leader's own, do not).
        let voters = countingVoters
        guard pendingReads[i].acks.filter({ voters.contains($0) }).count >= membership.quorum else { return }
        // A quorum confirmed us as leader after this request arrived, so it did for every
        // request queued before it too.
        let done = pendingReads[...i]
        pendingReads.removeFirst(i + 1)
        for r in done { answerRead(from: r.from, requestID: r.requestID, index: r.index) }
    }

    private mutating func answerRead(from: ReplicaID, requestID: ReadRequestID, index: LogIndex) {
        if from == id {
            readStates.append(ReadState(index: index, requestID: requestID))
        } else {
            send(Message(kind: .readIndexResponse, from: id, to: from, index: index, context: requestID.rawValue))
        }
    }
}

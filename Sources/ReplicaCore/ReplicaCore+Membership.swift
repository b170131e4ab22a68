import Raft

/// Why a membership change request did not succeed here.
public enum ConfChangeFailure: Error, Sendable, Hashable {
    /// A rule refused it (shared/API.md's 409s and 404).
    case refused(ConfChangeError)
    /// This replica does not lead (any more): send the request to `leader`, if known.
    case notLeader(ReplicaID?)
    /// The entry was overwritten by another leader's: the outcome is a new request's to find.
    case lost
    /// The `Idempotency-Key` was used before for another change (a client bug: 422).
    case keyReused
}

/// A membership change that is done: the configuration its entry holds (for a repeat, the
/// current one), and whether this answer repeats an earlier request's.
public struct ConfChangeDone: Sendable, Hashable {
    public var membership: Membership
    public var replayed: Bool
}

/// A membership change request waiting at this replica.
struct PendingConfChange {
    var change: ConfChange
    var expected: LogIndex?
    var force: Bool
    /// The entry proposed for it (or, for a repeat of a change still pending, that change's).
    var proposal: Proposal?
    /// The leader removes itself: leadership goes to this voter first.
    var transferringTo: ReplicaID?
    /// When another change was first found in the way.
    var blockedSince: UInt64?
    /// The client's `Idempotency-Key` ("" without one), recorded in the configuration.
    var key: String
    /// Waiting for an earlier request's entry (same key).
    var replay = false
}

extension ReplicaCore {
    /// A membership change (API.md "Replicas (membership)"): answered by `.confChangeDone`
    /// once its entry has committed and applied here, at once when refused or when this
    /// replica does not lead, or `.timedOut`. A repeat of a change already made (a client's
    /// retry) succeeds without a second entry. A leader asked to remove itself hands
    /// leadership to its most up-to-date voter first and answers `notLeader(new leader)`, so
    /// the new leader makes the change; if the transfer does not happen within an election
    /// timeout, it makes the change itself and steps down once it commits.
    public mutating func submitConfChange(
        _ change: ConfChange, expectedConfigIndex: LogIndex?, force: Bool, key: String = "", now: UInt64
    ) -> UInt64 {
        let id = newRequest(now: now)
        confChanges[id] = PendingConfChange(change: change, expected: expectedConfigIndex, force: force, key: key)
        advanceConfChanges(now: now)
        afterInput(now: now)
        return id
    }

    /// Proposes a change at the Raft core directly, with no request waiting for it (the
    /// simulator's schedules).
    public mutating func proposeConfChange(_ change: ConfChange, force: Bool = false, now: UInt64) throws -> Proposal {
        let p = try node.proposeConfChange(change, force: force)
        afterInput(now: now)
        return p
    }

    /// How long a request waits for a change in the way to commit before it is refused.
    public static let inProgressPatienceNanos: UInt64 = 1_000_000_000

    /// The current configuration as this replica knows it.
    public var membership: Membership { node.membership }

    /// Moves every waiting request on: proposes, transfers, or answers.
    mutating func advanceConfChanges(now: UInt64) {
        // What may be promoted as of now (a learner added, or a version raised, since the tick).
        if !confChanges.isEmpty { holdOutdatedLearners(now: now) }
        for id in confChanges.keys.sorted() {
            guard var p = confChanges[id], p.proposal == nil else { continue }
            if node.role != .leader {
                // No leader known (an election, or a transfer we started): wait for one, within
                // the request's deadline, as writes do.
                if node.leader == nil { continue }
                finishConfChange(id, .failure(.notLeader(node.leader)))
                continue
            }
            if !p.key.isEmpty, let earlier = node.membership.recentChanges.last(where: { $0.key == p.key }) {
                guard earlier.change == p.change.fingerprint else {
                    finishConfChange(id, .failure(.keyReused))
                    continue
                }
                if earlier.index > node.commitIndex {
                    // The earlier request's entry is still uncommitted: answer when it applies.
                    p.proposal = Proposal(index: earlier.index, term: node.term(at: earlier.index) ?? 0)
                    p.replay = true
                    confChanges[id] = p
                } else {
                    finishConfChange(id, .success(ConfChangeDone(membership: node.membership, replayed: true)))
                }
                continue
            }
            if p.transferringTo != nil && node.leadTransferee != nil { continue }
            if case .remove(let target) = p.change, target == config.replicaID, !p.force, p.transferringTo == nil,
                let heir = bestVoter()
            {
                p.transferringTo = heir
                confChanges[id] = p
                try? node.transferLeadership(to: heir)
                continue
            }
            do {
                p.proposal = try node.proposeConfChange(p.change, expectedConfigIndex: p.expected, force: p.force, key: p.key)
                confChanges[id] = p
            } catch ConfChangeError.inProgress(let why) {
                // Another change (often the leader's own address update) commits within a
                // round trip or two: wait a moment before answering 409.
                let since = p.blockedSince ?? now
                if now - since < Self.inProgressPatienceNanos {
                    p.blockedSince = since
                    confChanges[id] = p
                } else {
                    finishConfChange(id, .failure(.refused(.inProgress(why))))
                }
            } catch ConfChangeError.votersNotHeardYet {
                // A leader elected moments ago: within an election timeout of its election
                // those voters have answered or count as unreachable; ask again each tick.
                // (Not time spent behind another change: that patience starts again.)
                p.blockedSince = nil
                confChanges[id] = p
                continue
            } catch let e as ConfChangeError {
                finishConfChange(id, .failure(.refused(e)))
            } catch RaftError.transferInProgress {
                continue  // another transfer: try on the next tick
            } catch RaftError.notLeader(let leader) {
                finishConfChange(id, .failure(.notLeader(leader)))
            } catch {
                finishConfChange(id, .failure(.refused(.invalid("\(error)"))))
            }
        }
    }

    /// An entry applied here: requests whose proposal was at its index are done (or lost, if
    /// another leader's entry, of any kind, took that index).
    mutating func confChangeApplied(_ e: Entry) {
        for id in confChanges.keys.sorted() {
            guard let pending = confChanges[id], let p = pending.proposal, p.index == e.index else { continue }
            if p.term == e.term, e.kind == .configChange, let m = try? Membership.decode(e.data) {
                finishConfChange(id, .success(ConfChangeDone(membership: m, replayed: pending.replay)))
            } else {
                finishConfChange(id, .failure(.lost))
            }
        }
    }

    private mutating func finishConfChange(_ id: UInt64, _ result: Result<ConfChangeDone, ConfChangeFailure>) {
        confChanges[id] = nil
        effects.append(.confChangeDone(id, result))
    }

    /// The other voter with the longest log, as the leader sees it, among those heard from
    /// since the last CheckQuorum round when there are any (ties: the lowest id).
    private func bestVoter() -> ReplicaID? {
        let voters = node.status.peers.filter { $0.id != config.replicaID && $0.role == .voter }
        let heard = voters.filter(\.recentActive)
        var best: (id: ReplicaID, match: LogIndex)?
        for p in heard.isEmpty ? voters : heard where best == nil || p.match > best!.match { best = (p.id, p.match) }
        return best?.id
    }

    /// Leader: writes members' addresses into the configuration where it lacks them (its own
    /// from its configuration, its peers' client addresses from their handshakes). One at a
    /// time, as any change; one that did not take effect is retried after
    /// `leaderCommandRetryNanos`.
    mutating func updateAddresses(now: UInt64, peerClientAddresses: [ReplicaID: String]) {
        guard !node.configChangePending else { return }
        if let last = addressUpdateAttempt, last.configIndex == node.configIndex, now < last.at + config.leaderCommandRetryNanos {
            return
        }
        for member in node.membership.members {
            var want = member
            if member.id == config.replicaID {
                if !config.peerAddress.isEmpty && member.peerAddress.isEmpty { want.peerAddress = config.peerAddress }
                if !config.clientAddress.isEmpty { want.clientAddress = config.clientAddress }
            } else if let client = peerClientAddresses[member.id], !client.isEmpty {
                want.clientAddress = client
            }
            guard want != member else { continue }
            addressUpdateAttempt = (now, node.configIndex)
            _ = try? node.proposeConfChange(.update(want))
            return
        }
    }
}

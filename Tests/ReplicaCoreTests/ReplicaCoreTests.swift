import LeaseRegistry
import Raft
@testable import ReplicaCore
import Testing

/// Replicas running `ReplicaCore` by hand: messages and forwards wait until delivered, time
/// moves only when a test says so, and links to the leader can be down. The request path's
/// decisions are tested here without sockets or timers.
final class CoreCluster {
    var cores: [ReplicaID: ReplicaCore] = [:]
    var storages: [ReplicaID: MemoryStorage] = [:]
    var now: UInt64 = 1_000_000_000
    let wall: UInt64 = 1_767_225_600
    var messages: [Message] = []
    var forwards: [(to: ReplicaID, data: [UInt8])] = []
    /// Forwards to these replicas cannot be sent (no connection yet).
    var noLinkTo: Set<ReplicaID> = []
    var writes: [ReplicaID: [UInt64: ReplicaCore.WriteResult]] = [:]
    var reads: [ReplicaID: [UInt64: LogIndex]] = [:]
    var timedOut: [ReplicaID: [UInt64]] = [:]
    var fatal: [ReplicaID: String] = [:]
    var confChangeAnswers: [ReplicaID: [UInt64: Result<ConfChangeDone, ConfChangeFailure>]] = [:]
    let ids: [ReplicaID]

    init(size: Int = 3, configure: (inout ReplicaCore.Config) -> Void = { _ in }) throws {
        ids = (1...size).map { ReplicaID(UInt64($0)) }
        for id in ids {
            storages[id] = MemoryStorage(membership: Membership(voters: ids))
            try start(id, configure: configure)
        }
    }

    func start(_ id: ReplicaID, configure: (inout ReplicaCore.Config) -> Void = { _ in }) throws {
        var c = ReplicaCore.Config(replicaID: id)
        c.requestTimeoutNanos = 5_000_000_000
        c.readResendNanos = 300_000_000
        c.writeResendNanos = 1_000_000_000
        c.requestIDBase = id.rawValue << 32
        configure(&c)
        let node = try RaftNode(config: RaftConfig(id: id, electionTicks: 10), storage: storages[id]!, random: DeterministicGenerator(seed: id.rawValue))
        let snap = try storages[id]!.snapshot()
        let registry = snap.data.isEmpty ? LeaseRegistry() : try LeaseRegistry(snapshot: snap.data)
        cores[id] = ReplicaCore(config: c, node: node, registry: registry)
    }

    func with<T>(_ id: ReplicaID, _ body: (inout ReplicaCore) throws -> T) rethrows -> T {
        let r = try body(&cores[id]!)
        carry(id)
        return r
    }

    /// Carries out a replica's effects (persisting at once) until it has none.
    func carry(_ id: ReplicaID) {
        for _ in 0..<100 {
            if cores[id]!.needsPump { cores[id]!.pump(now: now, wall: wall) }
            let effects = cores[id]!.takeEffects()
            if effects.isEmpty { return }
            var unsent: [(data: [UInt8], queuedAt: UInt64)] = []
            defer { cores[id]!.forwardFailed(unsent) }
            for e in effects {
                switch e {
                case .send(let ms): messages.append(contentsOf: ms)
                case .persist(let rd):
                    let s = storages[id]!
                    if let snap = rd.snapshot { s.applySnapshot(snap) }
                    if let hs = rd.hardState { s.setHardState(hs) }
                    s.append(rd.entries)
                    cores[id]!.persisted(now: now)
                case .forward(let data, let to, let at):
                    if noLinkTo.contains(to) { unsent.append((data, at)) } else { forwards.append((to, data)) }
                case .writeDone(let r, let w): writes[id, default: [:]][r] = w
                case .readDone(let r, let index): reads[id, default: [:]][r] = index
                case .timedOut(let r): timedOut[id, default: []].append(r)
                case .fatal(let why, _): fatal[id] = why
                case .confChangeDone(let r, let result): confChangeAnswers[id, default: [:]][r] = result
                default: break
                }
            }
        }
    }

    /// Replicas cut off: every message to or from them is lost.
    var cutOff: Set<ReplicaID> = []

    /// Delivers every message and forward in flight, until none is left.
    func settle(dropForwards: Bool = false) {
        for _ in 0..<100 {
            if messages.isEmpty && forwards.isEmpty { return }
            let ms = messages
            let fs = forwards
            messages = []
            forwards = []
            for m in ms where cores[m.to] != nil && !cutOff.contains(m.to) && !cutOff.contains(m.from) { with(m.to) { $0.step([m], now: now) } }
            if !dropForwards {
                for f in fs { with(f.to) { $0.forwarded(f.data, now: now, wall: wall) } }
            }
        }
    }

    func tick(_ n: Int = 1, stepMillis: UInt64 = 100) {
        for _ in 0..<n {
            now += stepMillis * 1_000_000
            for id in ids where cores[id] != nil { with(id) { $0.tick(now: now, wall: wall) } }
            settle()
        }
    }

    func elect(_ id: ReplicaID) {
        with(id) { $0.campaign(now: now) }
        settle()
        tick(3)
    }

    func leader() -> ReplicaID? { ids.first { cores[$0]?.node.role == .leader } }
}

let acquire = LeaseCommand.acquire(hostname: "mx1.example.org", holder: "a", ttlSeconds: 30, idRange: 1...511)

struct ReplicaCoreTests {
    /// Once the cluster version is above 1, a learner that has not reported supporting it is
    /// neither promoted by the leader nor by hand: a build that cannot apply the log never votes
    /// or leads.
    @Test func aLearnerThatDoesNotSupportTheClusterVersionStaysALearner() throws {
        let c = try CoreCluster()
        c.elect(1)
        func tick(_ versions: [ReplicaID: UInt32], applied: [ReplicaID: UInt32] = [:], _ rounds: Int = 30) {
            let reports = Dictionary(uniqueKeysWithValues: versions.map { ($0.key, PeerVersion(supported: $0.value, applied: applied[$0.key] ?? $0.value)) })
            for _ in 0..<rounds {
                c.now += 100_000_000
                for id in c.ids { c.with(id) { $0.tick(now: c.now, wall: c.wall, peerVersions: id == 1 ? reports : [:]) } }
                c.settle()
            }
        }
        tick([2: 2, 3: 2])
        #expect(c.cores[1]!.registry.clusterVersion == 2)
        c.storages[4] = MemoryStorage(membership: .empty)
        try c.start(4)
        _ = try c.with(1) { try $0.node.proposeConfChange(.addLearner(Member(id: 4, role: .learner))) }
        c.settle()
        /// A promote by hand, refused as held (true), or not.
        func promoteByHandIsHeld() -> Bool {
            let id = c.with(1) { $0.submitConfChange(.promote(4), expectedConfigIndex: nil, force: false, now: c.now) }
            c.settle()
            if case .failure(.refused(.learnerHeld(4, let why))) = c.confChangeAnswers[1]?[id] { return why.hasPrefix("replica 4 ") }
            return false
        }
        tick([2: 2, 3: 2], 5)
        #expect(promoteByHandIsHeld(), "held: it has not answered yet")
        tick([2: 2, 3: 2, 4: 1])
        #expect(c.cores[1]!.node.membership.learners == [4], "held: version 1 only")
        #expect(promoteByHandIsHeld())
        tick([2: 2, 3: 2, 4: 2], applied: [4: 1])
        #expect(c.cores[1]!.node.membership.learners == [4], "held: it supports 2 but its registry is at 1")
        tick([2: 2, 3: 2, 4: 2])
        #expect(c.cores[1]!.node.membership.voters.contains(4), "promoted once it reports the cluster's version")
        // One that never answers the question is held only for a while: an unanswered question
        // (client ports closed between replicas) must not keep a replacement from voting for good.
        c.storages[5] = MemoryStorage(membership: .empty)
        try c.start(5)
        _ = try c.with(1) { try $0.node.proposeConfChange(.addLearner(Member(id: 5, role: .learner))) }
        c.settle()
        tick([2: 2, 3: 2, 4: 2], 50)
        #expect(c.cores[1]!.node.membership.learners == [5], "held while it may still answer")
        tick([2: 2, 3: 2, 4: 2], 80)
        #expect(c.cores[1]!.node.membership.voters.contains(5))
    }

    /// The leader raises the cluster version only once every member reports supporting the new
    /// one; a replica that supports only the old one and meets the raise anyway stops there.
    @Test func theClusterVersionMovesOnlyWhenEveryMemberSupportsIt() throws {
        let c = try CoreCluster { if $0.replicaID == 3 { $0.supportedClusterVersion = 1 } }
        c.elect(1)
        func tick(_ versions: [ReplicaID: UInt32]) {
            let reports = versions.mapValues { PeerVersion(supported: $0, applied: $0) }
            for _ in 0..<30 {
                c.now += 100_000_000
                for id in c.ids { c.with(id) { $0.tick(now: c.now, wall: c.wall, peerVersions: id == 1 ? reports : [:]) } }
                c.settle()
            }
        }
        tick([:])
        tick([2: 2])
        tick([2: 2, 3: 1])
        for id in c.ids { #expect(c.cores[id]!.registry.clusterVersion == 1) }
        #expect(c.fatal.isEmpty)
        // Replica 3 is said to support 2 (an upgrade it did not get): it meets a command it does not know.
        tick([2: 2, 3: 2])
        #expect(c.cores[1]!.registry.clusterVersion == 2)
        #expect(c.cores[2]!.registry.clusterVersion == 2)
        #expect(c.cores[3]!.registry.clusterVersion == 1)
        #expect(c.fatal[3]?.contains("registry command kind 9 is unknown to this build") == true)
        #expect(c.fatal[1] == nil && c.fatal[2] == nil)
    }

    /// A replica playing a 0.2 build (cluster version 2 at most) stops at the raise to 3 if it
    /// meets one, and at a session-stamped entry (format 3), naming each; the others go on.
    @Test func aReplicaOfClusterVersion2StopsAtVersion3sCommandsAndEntries() throws {
        let c = try CoreCluster { if $0.replicaID == 3 { $0.supportedClusterVersion = 2 } }
        c.elect(1)
        raiseClusterVersion(c, to: 2)
        #expect(c.cores[3]!.registry.clusterVersion == 2)
        // Replica 3 is said to support 3 (an upgrade it did not get).
        raiseClusterVersion(c, to: 3)
        #expect(c.cores[1]!.registry.clusterVersion == 3)
        #expect(c.fatal[3]?.contains("cluster version 3 is newer than this build supports (2)") == true)
        #expect(c.fatal[1] == nil && c.fatal[2] == nil)

        let d = try CoreCluster { if $0.replicaID == 3 { $0.supportedClusterVersion = 2 } }
        d.elect(1)
        let stamped = TimedCommand(
            acquire, now: d.wall, requestID: 5, leaderNanos: d.now, session: SessionStamp(replica: 2, base: 0, done: 5)
        ).encoded()
        _ = try d.with(1) { core in try core.node.propose(batch: [stamped]) }
        d.settle()
        d.tick(2)
        #expect(d.fatal[3]?.contains("registry command format version 3 is unknown to this build (it reads versions 1 to 2)") == true)
        #expect(d.cores[3]!.registry.count == 0)
        #expect(d.cores[1]!.registry.count == 1)
    }

    /// A newer replica's command (a format version this build does not know) stops every
    /// replica at that entry, naming it; none applies it as malformed, or anything after it.
    @Test func anEntryOfAFormatThisBuildDoesNotKnowStopsTheReplicaThere() throws {
        let c = try CoreCluster()
        c.elect(1)
        var newer = TimedCommand(acquire, now: c.wall).encoded()
        newer[0] = 4
        _ = try c.with(1) { core in try core.node.propose(batch: [newer, TimedCommand(acquire, now: c.wall).encoded()]) }
        c.settle()
        c.tick(2)
        for id in c.ids {
            #expect(c.fatal[id]?.contains("registry command format version 4 is unknown to this build") == true, "replica \(id)")
            #expect(c.cores[id]!.halted)
            #expect(c.cores[id]!.registry.count == 0, "the acquire after it was not applied")
        }
    }

    @Test func aForwardThatCannotBeSentYetGoesOnceTheLinkIsUp() throws {
        let c = try CoreCluster()
        c.elect(1)
        // Replica 3's connection to the leader is not up (it just reconnected).
        c.noLinkTo = [1]
        let id = c.with(3) { $0.submit(acquire, key: nil, now: c.now, wall: c.wall) }
        c.settle()
        c.tick(2)
        #expect(c.writes[3]?[id] == nil)
        c.noLinkTo = []
        c.tick()
        let w = try #require(c.writes[3]?[id], "the write waited for its deadline instead of going when the link came up")
        #expect(w.replayed == false)
        guard case .success(.lease(let l)) = w.result else {
            Issue.record("\(w.result)")
            return
        }
        #expect(l.hostname == "mx1.example.org")
        #expect(c.timedOut[3] == nil)
    }

    @Test func aForwardLostOnTheWayIsSentAgainAndAppliesOnce() throws {
        let c = try CoreCluster()
        c.elect(1)
        let id = c.with(2) { $0.submit(acquire, key: IdempotencyKey(origin: .client, value: "k"), now: c.now, wall: c.wall) }
        // The connection carried the forward, then reset: the leader never got it.
        c.settle(dropForwards: true)
        c.tick(5)
        #expect(c.writes[2]?[id] == nil)
        c.tick(6)
        let w = try #require(c.writes[2]?[id], "a lost forward is never sent again")
        #expect(w.replayed == false)
        #expect(c.cores[1]!.registry.node(hostname: "mx1.example.org")?.status == .active)
    }

    @Test func aWriteCommittedByALeaderThatThenDiedIsNotAppliedTwice() throws {
        let c = try CoreCluster()
        c.elect(1)
        let key = IdempotencyKey(origin: .client, value: "acq")
        let first = c.with(2) { $0.submit(acquire, key: key, now: c.now, wall: c.wall) }
        c.settle()
        let granted = try #require(c.writes[2]?[first])
        // Released, then the same request arrives again through another replica (its answer
        // was lost): the first outcome, no new lease.
        guard case .success(.lease(let l)) = granted.result else { return }
        let rel = c.with(3) { $0.submit(.release(leaseID: l.leaseID), key: nil, now: c.now, wall: c.wall) }
        c.settle()
        #expect(c.writes[3]?[rel] != nil)
        let again = c.with(3) { $0.submit(acquire, key: key, now: c.now, wall: c.wall) }
        c.settle()
        let replay = try #require(c.writes[3]?[again])
        #expect(replay.replayed)
        #expect(replay.result == granted.result && replay.index == granted.index)
        for id in c.ids { #expect(c.cores[id]!.registry.node(l.nodeID)?.status == .inactive) }
    }

    /// Raises the cluster version to `version` (every member reports supporting it).
    func raiseClusterVersion(_ c: CoreCluster, to version: UInt32) {
        let reports = Dictionary(uniqueKeysWithValues: c.ids.map { ($0, PeerVersion(supported: version, applied: version)) })
        for _ in 0..<30 where c.cores[1]!.registry.clusterVersion < version {
            c.now += 100_000_000
            for id in c.ids { c.with(id) { $0.tick(now: c.now, wall: c.wall, peerVersions: id == 1 ? reports : [:]) } }
            c.settle()
        }
    }

    /// A write without a key (cluster version 3) carries its replica's session stamp: a copy
    /// that commits again, after the lease was released, changes nothing, and the replica is
    /// answered once, with the first outcome. Once the replica is done with the request, the
    /// registry keeps nothing of it.
    @Test func aKeylessWriteThatCommitsTwiceAppliesOnce() throws {
        let c = try CoreCluster()
        c.elect(1)
        raiseClusterVersion(c, to: 3)
        #expect(c.cores[2]!.registry.clusterVersion == 3)
        let id = c.with(2) { $0.submit(acquire, key: nil, now: c.now, wall: c.wall) }
        let copy = try #require(c.forwards.first)
        #expect(TimedCommand(decoding: copy.data)?.session?.replica == 2)
        c.settle()
        let w = try #require(c.writes[2]?[id])
        guard case .success(.lease(let l)) = w.result else {
            Issue.record("\(w.result)")
            return
        }
        _ = c.with(3) { $0.submit(.release(leaseID: l.leaseID), key: nil, now: c.now, wall: c.wall) }
        c.settle()
        // The first forward's copy reaches the leader again (a connection that delivered it
        // twice, or a re-send that crossed the answer), after the release.
        c.forwards.append(copy)
        c.settle()
        for r in c.ids {
            #expect(c.cores[r]!.registry.node(l.nodeID)?.status == .inactive, "replica \(r): the late copy brought the lease back")
            #expect(c.cores[r]!.registry.rememberedKeys == 0, "keyless writes remember no outcome")
        }
        #expect(c.writes[2]?[id] == w)
        // Replica 2's next write says it is done with the first: nothing of it is kept.
        _ = c.with(2) { $0.submit(.renew(leaseID: l.leaseID), key: nil, now: c.now, wall: c.wall) }
        c.settle()
        #expect(c.cores[1]!.registry.sessionCounts == (2, 2))
        _ = c.with(2) { $0.submit(.renew(leaseID: l.leaseID), key: nil, now: c.now, wall: c.wall) }
        c.settle()
        #expect(c.cores[1]!.registry.sessionCounts == (2, 2), "replica 2 keeps only its latest number, replica 3 its one")
    }

    /// A replica that learns its write's outcome only through a snapshot has nothing to
    /// answer with when its re-send is discarded: the request times out (outcome unknown),
    /// never answered with the discard.
    @Test func aRepeatDiscardedAfterASnapshotIsNotAnswered() throws {
        let c = try CoreCluster()
        c.elect(1)
        raiseClusterVersion(c, to: 3)
        c.cutOff = [2]
        let id = c.with(2) { $0.submit(acquire, key: nil, now: c.now, wall: c.wall) }
        c.settle()
        #expect(c.cores[1]!.registry.node(hostname: "mx1.example.org")?.status == .active)
        let applied = c.cores[1]!.node.appliedIndex
        try c.storages[1]!.createSnapshot(at: applied, data: c.cores[1]!.registry.snapshot())
        c.storages[1]!.compact(through: applied)
        c.cutOff = []
        c.tick(3)
        #expect(c.cores[2]!.registry.node(hostname: "mx1.example.org")?.status == .active, "installed the leader's snapshot")
        // Its re-send commits and is discarded everywhere.
        c.tick(12)
        #expect(c.cores[1]!.registry.sessionCounts.numbers == 1)
        #expect(c.writes[2]?[id] == nil, "answered with a discarded repeat")
        c.tick(50)
        #expect(c.timedOut[2]?.contains(id) == true)
        #expect(c.cores[2]!.registry.count == 1)
    }

    /// A session's `done` stops at the oldest write still waiting: a later write that applies
    /// first must not make the registry discard the earlier one when its re-send arrives.
    @Test func aKeylessWriteOvertakenByALaterOneStillApplies() throws {
        let c = try CoreCluster()
        c.elect(1)
        raiseClusterVersion(c, to: 3)
        let first = c.with(2) { $0.submit(acquire, key: nil, now: c.now, wall: c.wall) }
        c.settle(dropForwards: true)
        let second = c.with(2) {
            $0.submit(.acquire(hostname: "mx2.example.org", holder: "b", ttlSeconds: 30, idRange: 1...511), key: nil, now: c.now, wall: c.wall)
        }
        c.settle()
        #expect(c.writes[2]?[second] != nil)
        #expect(c.writes[2]?[first] == nil)
        c.tick(11)
        let w = try #require(c.writes[2]?[first], "the re-sent write was not answered")
        #expect(w.replayed == false)
        #expect(c.cores[1]!.registry.node(hostname: "mx1.example.org")?.status == .active)
    }

    /// A leader elected moments ago has heard only from the voters that answered first: a
    /// change that needs the others waits for them (or for its first election timeout to pass)
    /// and is answered with the outcome, never refused early as one that would lose the quorum.
    @Test func aNewLeaderWaitsForVotersItHasNotHeardFromBeforeJudgingAChange() throws {
        let c = try CoreCluster(size: 5)
        // 1 wins with 2 and 3 and commits its first entry with them; 4 and 5 hear nothing yet.
        c.cutOff = [4, 5]
        c.with(1) { $0.campaign(now: c.now) }
        c.settle()
        #expect(c.leader() == 1)
        let remove2 = c.with(1) { $0.submitConfChange(.remove(2), expectedConfigIndex: nil, force: false, now: c.now) }
        #expect(c.confChangeAnswers[1]?[remove2] == nil, "refused before 4 and 5 could answer")
        c.cutOff = []
        c.tick(3)
        let done = try #require(c.confChangeAnswers[1]?[remove2])
        #expect((try? done.get())?.membership.voters == [1, 3, 4, 5])

        // Another new leader, with 4 and 5 down: once its first election timeout has
        // passed without them, the change is refused as one that would lose the quorum.
        let c2 = try CoreCluster(size: 5)
        c2.cutOff = [4, 5]
        c2.with(1) { $0.campaign(now: c2.now) }
        c2.settle()
        let early = c2.with(1) { $0.submitConfChange(.remove(2), expectedConfigIndex: nil, force: false, now: c2.now) }
        c2.tick(5)
        #expect(c2.confChangeAnswers[1]?[early] == nil, "answered within the first election timeout")
        c2.tick(10)
        #expect(c2.confChangeAnswers[1]?[early] == .failure(.refused(.wouldLoseQuorum(reachable: 2, quorum: 3))))
    }

    /// An answered request's deadline does not wait for its instant to leave the queue, and
    /// a request still waiting keeps its deadline.
    @Test func answeredRequestsLeaveTheDeadlineQueue() throws {
        let c = try CoreCluster()
        c.elect(1)
        var leaseID: UInt64 = 0
        let first = c.with(1) { $0.submit(acquire, key: nil, now: c.now, wall: c.wall) }
        c.settle()
        if case .success(.lease(let l))? = c.writes[1]?[first]?.result { leaseID = l.leaseID }
        #expect(leaseID != 0)
        for _ in 0..<3000 {
            _ = c.with(1) { $0.submit(.renew(leaseID: leaseID), key: nil, now: c.now, wall: c.wall) }
            c.settle()
            c.with(1) { $0.tick(now: c.now, wall: c.wall) }
            #expect(c.cores[1]!.queuedRequestDeadlines <= 2 + 1024 + 1)
        }
        #expect(c.writes[1]?.count == 3001)
        // One that cannot commit (replica 2, cut off) still times out at its deadline.
        c.cutOff = [2]
        let stuck = c.with(2) { $0.submit(.renew(leaseID: leaseID), key: nil, now: c.now, wall: c.wall) }
        for _ in 0..<2000 {
            _ = c.with(2) { $0.submit(.renew(leaseID: leaseID), key: nil, now: c.now, wall: c.wall) }
        }
        c.now += 6_000_000_000
        c.with(2) { $0.tick(now: c.now, wall: c.wall) }
        #expect(c.timedOut[2]?.first == stuck)
        #expect(c.timedOut[2]?.count == 2001)
    }

    @Test func aRequestWithNoLeaderTimesOut() throws {
        let c = try CoreCluster()
        let id = c.with(2) { $0.submit(acquire, key: nil, now: c.now, wall: c.wall) }
        c.now += 6_000_000_000
        c.with(2) { $0.tick(now: c.now, wall: c.wall) }
        #expect(c.timedOut[2] == [id])
    }

    @Test func aRestartedFollowerServesLocalReadsOnlyAfterALeaderConfirmedReadIndex() throws {
        let c = try CoreCluster()
        c.elect(1)
        for i in 0..<5 {
            _ = c.with(1) { $0.submit(.acquire(hostname: "h\(i)", holder: "a", ttlSeconds: 30, idRange: 1...511), key: nil, now: c.now, wall: c.wall) }
            c.settle()
        }
        c.tick()
        let before = c.cores[3]!.node.appliedIndex
        #expect(before >= 6)
        // Replica 3 goes down with its commit index lagging (a commit-only hard state is not
        // synced), and replica 2 becomes leader meanwhile: it knows nothing of 3's log, so its
        // heartbeats carry commit min(match, commit) = 0.
        let hs = c.storages[3]!.hardState
        c.storages[3]!.setHardState(HardState(term: hs.term, vote: hs.vote, commit: 1))
        c.cores[3] = nil
        c.messages.removeAll { $0.to == 3 }
        try c.with(1) { try $0.transferLeadership(to: 2, now: c.now) }
        c.settle()
        c.tick(3)
        #expect(c.leader() == 2)
        try c.start(3)
        // Every message one at a time: whenever 3 would serve a local read, it reflects at
        // least what it applied before the restart.
        var served = false
        for _ in 0..<40 {
            c.now += 50_000_000
            for id in c.ids { c.with(id) { $0.tick(now: c.now, wall: c.wall) } }
            while !c.messages.isEmpty {
                let m = c.messages.removeFirst()
                guard c.cores[m.to] != nil else { continue }
                c.with(m.to) { $0.step([m], now: c.now) }
                if c.cores[3]!.mayServeLocalRead(confirmed: false) {
                    served = true
                    #expect(c.cores[3]!.node.appliedIndex >= before, "a local read at \(c.cores[3]!.node.appliedIndex), older than \(before) served before the restart")
                }
            }
        }
        #expect(served)
    }

    @Test func aLinearizableReadOnAFollowerIsAnsweredAtTheLeadersIndex() throws {
        let c = try CoreCluster()
        c.elect(1)
        _ = c.with(1) { $0.submit(acquire, key: nil, now: c.now, wall: c.wall) }
        c.settle()
        let id = c.with(2) { $0.read(now: c.now) }
        c.settle()
        let index = try #require(c.reads[2]?[id])
        #expect(index == c.cores[1]!.node.commitIndex)
        #expect(c.cores[2]!.node.appliedIndex >= index)
    }
}

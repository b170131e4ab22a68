import Raft
import RaftSimulator
import Testing

/// The checkers must be able to fail. Each rule gets a made-up history that breaks it and one
/// that keeps it; the simulator tests below also run deliberately broken cores.
struct CheckerTests {
    func entry(_ term: Term, _ index: LogIndex, _ text: String = "") -> Entry {
        Entry(term: term, index: index, data: Array(text.utf8))
    }

    func rules(_ c: SafetyChecker) -> Set<Violation.Rule> { Set(c.violations.map(\.rule)) }

    @Test func electionSafety() {
        var c = SafetyChecker()
        c.observeLeader(1, term: 3)
        c.observeLeader(1, term: 3)
        c.observeLeader(2, term: 4)
        #expect(c.ok)
        c.observeLeader(3, term: 4)
        #expect(rules(c) == [.electionSafety])
    }

    @Test func logMatchingPayload() {
        var c = SafetyChecker()
        c.observePersist(1, entries: [entry(1, 1, "a"), entry(1, 2, "b")], previousTerm: 0)
        c.observePersist(2, entries: [entry(1, 1, "a"), entry(1, 2, "b")], previousTerm: 0)
        #expect(c.ok)
        c.observePersist(3, entries: [entry(1, 2, "B")], previousTerm: 1)
        #expect(rules(c) == [.logMatching])
    }

    @Test func logMatchingPrefix() {
        var c = SafetyChecker()
        c.observePersist(1, entries: [entry(1, 1), entry(2, 2, "x")], previousTerm: 0)
        // Same entry 2/2, but behind an entry of another term: the logs disagree before it.
        c.observePersist(2, entries: [entry(2, 2, "x")], previousTerm: 2)
        #expect(rules(c) == [.logMatching])
    }

    @Test func stateMachineSafety() {
        var c = SafetyChecker()
        c.observeApply(1, entry: entry(1, 1, "a"), currentTerm: 1)
        c.observeApply(2, entry: entry(1, 1, "a"), currentTerm: 1)
        #expect(c.ok)
        c.observeApply(3, entry: entry(2, 1, "z"), currentTerm: 2)
        #expect(rules(c) == [.stateMachineSafety])
    }

    @Test func leaderCompleteness() {
        var c = SafetyChecker()
        c.observeApply(1, entry: entry(1, 1), currentTerm: 1)
        c.observeApply(1, entry: entry(1, 2), currentTerm: 1)
        // A leader of term 2 that holds both entries is fine.
        c.observeNewLeader(2, term: 2, firstIndex: 1, lastIndex: 2, termAt: { _ in 1 })
        #expect(c.ok)
        // A leader of a stale term need not hold what a later term committed.
        c.observeApply(1, entry: entry(3, 3), currentTerm: 3)
        c.observeNewLeader(3, term: 1, firstIndex: 1, lastIndex: 2, termAt: { _ in 1 })
        #expect(c.ok)
        // A leader of term 4 that lost entry 3 breaks the rule; so does one holding another term.
        c.observeNewLeader(3, term: 4, firstIndex: 1, lastIndex: 2, termAt: { _ in 1 })
        c.observeNewLeader(2, term: 5, firstIndex: 1, lastIndex: 3, termAt: { $0 == 3 ? 2 : 1 })
        #expect(c.violations.count == 2)
        #expect(rules(c) == [.leaderCompleteness])
    }

    @Test func durableVote() {
        var c = SafetyChecker()
        c.observeHardState(1, HardState(term: 1, vote: nil))
        c.observeHardState(1, HardState(term: 1, vote: 2))
        c.observeHardState(1, HardState(term: 2, vote: 3))
        #expect(c.ok)
        c.observeHardState(1, HardState(term: 2, vote: 1))
        #expect(rules(c) == [.durableVote])
        var d = SafetyChecker()
        d.observeHardState(1, HardState(term: 5))
        d.observeHardState(1, HardState(term: 4))
        #expect(rules(d) == [.durableVote])
    }

    @Test func linearizableRead() {
        var c = SafetyChecker()
        c.observeRead(replica: 1, index: 9, requiredIndex: 9, detail: "")
        #expect(c.ok)
        c.observeRead(replica: 1, index: 8, requiredIndex: 9, detail: "stale")
        #expect(rules(c) == [.linearizableRead])
    }

    @Test func acknowledgedWrites() {
        var c = SafetyChecker()
        c.observeApply(1, entry: entry(1, 1, "w1"), currentTerm: 1)
        c.checkAcknowledged(index: 1, term: 1, data: Array("w1".utf8), operation: "w1")
        #expect(c.ok)
        c.checkAcknowledged(index: 2, term: 1, data: Array("w2".utf8), operation: "never applied")
        c.checkAcknowledged(index: 1, term: 1, data: Array("other".utf8), operation: "overwritten")
        #expect(c.violations.count == 2)
        #expect(rules(c) == [.acknowledgedWriteLost])
    }
}

/// The first failing run among `seeds`, with `options` applied to each; with `caughtBy`, the
/// first that fails one of those rules (a broken core can also fail a budget first).
func firstFailure(
    seeds: ClosedRange<UInt64>, caughtBy: Set<Violation.Rule>? = nil, _ options: (inout SimulationOptions) -> Void
) -> SimulationResult? {
    for seed in seeds {
        var o = SimulationOptions(seed: seed)
        options(&o)
        let result = Simulation(options: o).run()
        guard !result.ok else { continue }
        if let caughtBy, Set(result.violations.map(\.rule)).isDisjoint(with: caughtBy) { continue }
        return result
    }
    return nil
}

/// Broken cores in the full simulator: each must be caught by the rule it breaks.
struct BrokenCoreTests {
    func firstFailure(_ faults: FaultInjection, seeds: ClosedRange<UInt64>) -> SimulationResult? {
        RaftSimulatorTests.firstFailure(seeds: seeds) {
            $0.faults = faults
            $0.workload = .register
        }
    }

    @Test("votes granted without the log check lose committed entries")
    func voteIgnoringLog() throws {
        let r = try #require(firstFailure(.grantVoteIgnoringLog, seeds: 1...200))
        let caught = Set(r.violations.map(\.rule))
        #expect(!caught.isDisjoint(with: [.leaderCompleteness, .stateMachineSafety, .acknowledgedWriteLost]))
    }

    @Test("a vote forgotten on restart is caught")
    func forgottenVote() throws {
        let r = try #require(firstFailure(.forgetVoteOnRestart, seeds: 1...200))
        #expect(r.violations.contains { $0.rule == .durableVote || $0.rule == .electionSafety })
    }

    @Test("reads served without confirming leadership are caught as stale")
    func readWithoutQuorum() throws {
        let r = try #require(firstFailure(.readIndexWithoutQuorum, seeds: 1...400))
        #expect(r.violations.contains { $0.rule == .linearizableRead })
    }

    /// Elects replica 1 by hand, then lets one follower acknowledge the leader's first
    /// append before the leader's own write is durable. Returns the leader's commit index.
    func commitBeforeLeaderPersists(_ faults: FaultInjection) throws -> LogIndex {
        let membership = Membership(voters: [1, 2, 3])
        var nodes: [RaftNode] = []
        for id in 1...3 {
            let config = RaftConfig(id: ReplicaID(UInt64(id)), faults: faults)
            nodes.append(try RaftNode(config: config, storage: MemoryStorage(membership: membership), random: DeterministicGenerator(seed: 1)))
        }
        nodes[0].campaign()
        // PreVote round, then the vote round; followers persist nothing here (in memory).
        for _ in 0..<2 {
            let rd = nodes[0].ready()
            for m in rd.messages { nodes[Int(m.to.rawValue) - 1].step(m) }
            nodes[0].advance(rd)
            for i in 1...2 {
                let r = nodes[i].ready()
                for m in r.messages { nodes[0].step(m) }
                nodes[i].advance(r)
            }
        }
        #expect(nodes[0].role == .leader)
        let pending = nodes[0].ready()  // the no-op: neither persisted nor advanced
        for m in pending.messagesBeforePersist where m.to == 2 { nodes[1].step(m) }
        let ack = nodes[1].ready()
        for m in ack.messages { nodes[0].step(m) }
        return nodes[0].commitIndex
    }

    @Test("a leader that counts its unpersisted entries commits with one durable copy")
    func countUnpersisted() throws {
        #expect(try commitBeforeLeaderPersists([]) == 0)
        #expect(try commitBeforeLeaderPersists(.countUnpersistedLeaderEntries) == 1)
    }

    @Test("the same seed replays the same run")
    func determinism() {
        let a = Simulation(options: SimulationOptions(seed: 77, trace: true)).run()
        let b = Simulation(options: SimulationOptions(seed: 77, trace: true)).run()
        #expect(a.trace == b.trace)
        #expect(a.events == b.events && a.acknowledgedWrites == b.acknowledgedWrites)
        #expect(a.trace.count > 100)
    }
}

/// A register whose snapshots forget everything: replicas that restored from one end up with
/// another state than replicas that applied the log.
struct ForgetfulMachine: SimStateMachine {
    var inner = RegisterMachine()
    init() {}
    mutating func apply(_ command: [UInt8], index: LogIndex) -> (any Sendable)? { inner.apply(command, index: index) }
    func snapshot() -> [UInt8] { [] }
    mutating func restore(_ snapshot: [UInt8]) throws { inner = RegisterMachine() }
    var digest: UInt64 { inner.digest }
}

struct SimulationCheckTests {
    @Test("replicas that converge to different states are caught")
    func divergentStateIsCaught() {
        var caught = false
        for seed in UInt64(1)...40 {
            let r = Simulation(options: SimulationOptions(seed: seed, workload: .register), machine: ForgetfulMachine.self).run()
            if r.violations.contains(where: { $0.rule == .divergentState }) {
                caught = true
                break
            }
        }
        #expect(caught)
    }

    @Test("a cluster given no time to recover fails the liveness check")
    func livenessIsChecked() {
        let r = Simulation(options: SimulationOptions(seed: 5, livenessMillis: 0)).run()
        #expect(r.violations.contains { $0.rule == .liveness })
        let healthy = Simulation(options: SimulationOptions(seed: 5)).run()
        #expect(healthy.ok)
    }
}

struct LeaseCheckerTests {
    @Test func overlappingHoldersAreCaught() {
        var c = LeaseChecker()
        c.believe(1, holder: "a", from: 0, until: 1_000)
        c.believe(1, holder: "a", from: 900, until: 2_000)  // a renewal extends a's belief
        c.believe(2, holder: "b", from: 500, until: 1_500)  // another ID
        c.believe(1, holder: "b", from: 2_000, until: 3_000)  // after a stopped
        #expect(c.ok)
        c.believe(1, holder: "c", from: 2_500, until: 3_500)
        #expect(c.failures.map(\.0) == [.twoHolders])
    }

    @Test func stoppingEarlyEndsABelief() {
        var c = LeaseChecker()
        c.believe(1, holder: "a", from: 0, until: 1_000)
        c.stopBelieving(1, holder: "a", at: 400)
        c.believe(1, holder: "b", from: 500, until: 1_500)
        #expect(c.ok)
    }

    @Test func aHolderOutlivingItsLeaseIsCaught() {
        var c = LeaseChecker()
        c.believe(1, holder: "a", from: 0, until: 1_000)
        c.observeLeaseEnded(1, holder: "a", at: 1_000)
        #expect(c.ok)
        c.believe(2, holder: "b", from: 0, until: 1_000)
        c.observeLeaseEnded(2, holder: "b", at: 999)
        #expect(c.failures.map(\.0) == [.holderOutlivedLease])
    }

    @Test func fencingTokensMustGrowPerNodeID() {
        var c = LeaseChecker()
        c.observeGrant(nodeID: 1, hostname: "a", token: 5)
        c.observeGrant(nodeID: 2, hostname: "b", token: 3)
        c.observeGrant(nodeID: 1, hostname: "a", token: 9)
        #expect(c.ok)
        c.observeGrant(nodeID: 1, hostname: "a", token: 9)
        #expect(c.failures.map(\.0) == [.fencing])
    }

    @Test func oneIDPerHostnameAndOneHostnamePerID() {
        var c = LeaseChecker()
        c.observeGrant(nodeID: 1, hostname: "a", token: 1)
        c.unbind(nodeID: 1)
        c.observeGrant(nodeID: 1, hostname: "b", token: 2)  // reuse after the binding ended
        #expect(c.ok)
        c.observeGrant(nodeID: 2, hostname: "b", token: 3)  // b now has two IDs
        var d = LeaseChecker()
        d.observeGrant(nodeID: 1, hostname: "a", token: 1)
        d.observeGrant(nodeID: 1, hostname: "z", token: 2)  // ID 1 for two hostnames
        #expect(c.failures.map(\.0) == [.mapping])
        #expect(d.failures.map(\.0) == [.mapping])
    }

    @Test func earlyExpiryIsCaught() {
        var c = LeaseChecker()
        c.observeExpiry(nodeID: 1, at: 2_000_000, renewedAt: 1_000_000, ttlSeconds: 1, maxRate: 1.0)
        #expect(c.ok)
        c.observeExpiry(nodeID: 1, at: 1_900_000, renewedAt: 1_000_000, ttlSeconds: 1, maxRate: 1.0)
        #expect(c.failures.map(\.0) == [.earlyExpiry])
    }

    @Test func registriesThatDifferAtOneIndexAreCaught() {
        var c = LeaseChecker()
        c.observeDigest(index: 8, digest: 42, replica: 1)
        c.observeDigest(index: 8, digest: 42, replica: 2)
        #expect(c.ok)
        c.observeDigest(index: 8, digest: 43, replica: 3)
        #expect(c.failures.map(\.0) == [.registryDivergence])
    }
}

/// Broken lease behaviour in the full simulator is caught.
struct BrokenLeaseTests {
    func firstFailure(_ faults: LeaseFaults, seeds: ClosedRange<UInt64>) -> SimulationResult? {
        RaftSimulatorTests.firstFailure(seeds: seeds) { $0.leaseFaults = faults }
    }

    @Test("a holder that ignores its deadline outlives its lease")
    func holderIgnoringDeadline() throws {
        let r = try #require(firstFailure(.holderIgnoresDeadline, seeds: 1...60))
        #expect(r.violations.contains { $0.rule == .holderOutlivedLease || $0.rule == .twoHolders })
    }

    @Test("a new leader that does not restart countdowns expires leases early")
    func noFailoverReset() throws {
        let r = try #require(firstFailure(.noFailoverReset, seeds: 1...60))
        #expect(r.violations.contains { $0.rule == .earlyExpiry || $0.rule == .holderOutlivedLease })
    }

    @Test("a registry that forgets idempotency keys before the window ends applies a retry twice")
    func keysForgottenEarly() throws {
        let r = try #require(firstFailure(.forgetKeysEarly, seeds: 1...100))
        #expect(r.violations.contains { $0.rule == .exactlyOnce })
    }

    @Test("keys leave the window in the simulator, and a retry after that may apply again")
    func keysLeaveTheWindow() throws {
        // Small windows are drawn often enough that some seed re-applies a key it forgot;
        // the correct registry must pass that seed.
        let r = try #require((UInt64(1)...200).lazy.map { Simulation(options: SimulationOptions(seed: $0)).run() }.first { $0.keysReapplied > 0 })
        #expect(r.ok, "\(r.summary): \(r.violations)")
    }

    @Test("a registry that applies a replica session's re-sent write again is caught")
    func sessionRepeatsApply() throws {
        let r = try #require(firstFailure(.sessionRepeatsApply, seeds: 1...100))
        #expect(r.violations.contains { $0.rule == .exactlyOnce && $0.detail.contains("keyless request") })
    }

    @Test("a registry that ignores idempotency keys applies retried writes twice")
    func ignoredIdempotencyKeys() throws {
        let r = try #require(firstFailure(.ignoreIdempotencyKeys, seeds: 1...100))
        #expect(r.violations.contains { $0.rule == .exactlyOnce })
    }
}

/// The core's rule-breaking switches that only a crash at the right moment exposes, each
/// caught by the simulator itself (not only by a unit test), searching from seed 1.
struct BrokenDurabilityTests {
    static let lostCommitted: Set<Violation.Rule> = [.leaderCompleteness, .stateMachineSafety, .acknowledgedWriteLost]

    func firstFailure(
        _ faults: FaultInjection, _ workload: SimulationOptions.Workload, replicas: Int? = nil, seeds: ClosedRange<UInt64>,
        caughtBy: Set<Violation.Rule>? = nil
    ) -> SimulationResult? {
        RaftSimulatorTests.firstFailure(seeds: seeds, caughtBy: caughtBy) {
            $0.faults = faults
            $0.workload = workload
            $0.replicas = replicas
        }
    }

    @Test("reads through the request path served without confirming leadership are caught")
    func readWithoutQuorumThroughTheCore() throws {
        let r = try #require(firstFailure(.readIndexWithoutQuorum, .leases, seeds: 1...1000))
        #expect(r.violations.contains { $0.rule == .linearizableRead })
    }

    @Test("a vote sent before it is durable lets two leaders share a term")
    func voteBeforePersist() throws {
        let r = try #require(firstFailure(.sendVoteBeforePersist, .leases, seeds: 1...1000))
        #expect(r.violations.contains { $0.rule == .electionSafety || $0.rule == .durableVote })
    }

    @Test("appends acknowledged before they are durable lose committed entries")
    func ackBeforePersist() throws {
        // (Its message storms also exceed the event budgets: those seeds do not count here.)
        #expect(firstFailure(.ackAppendBeforePersist, .register, seeds: 1...1000, caughtBy: Self.lostCommitted) != nil)
    }

    @Test("a leader that commits earlier terms' entries by counting loses them (the Figure 8 schedule)")
    func commitEarlierTerms() throws {
        let r = try #require(firstFailure(.commitEarlierTermsByCounting, .register, seeds: 1...1000))
        #expect(!Set(r.violations.map(\.rule)).isDisjoint(with: [.leaderCompleteness, .stateMachineSafety, .acknowledgedWriteLost]))
    }

    @Test("the Figure 8 schedule catches commit-earlier-terms in the lease workload too")
    func commitEarlierTermsLeases() throws {
        let r = try #require(firstFailure(.commitEarlierTermsByCounting, .leases, seeds: 1...1000))
        #expect(!Set(r.violations.map(\.rule)).isDisjoint(with: [.leaderCompleteness, .stateMachineSafety, .acknowledgedWriteLost]))
    }

    @Test("a leader that counts its unpersisted entries loses committed entries in a crash")
    func countUnpersisted() throws {
        let r = try #require(firstFailure(.countUnpersistedLeaderEntries, .register, seeds: 1...1000))
        // The commit-quorum check sees it first: the entry is on fewer voters' disks than a quorum.
        #expect(
            !Set(r.violations.map(\.rule)).isDisjoint(with: [.commitQuorum, .leaderCompleteness, .stateMachineSafety, .acknowledgedWriteLost]))
    }

    @Test("the single-server-change bug (a change before the leader's own first commit) is caught by Ongaro's schedule")
    func confChangeBeforeOwnTermCommit() throws {
        for workload in [SimulationOptions.Workload.register, .leases] {
            let r = try #require(firstFailure(.confChangeBeforeOwnTermCommit, workload, seeds: 1...300))
            #expect(!Set(r.violations.map(\.rule)).isDisjoint(with: [.leaderCompleteness, .stateMachineSafety, .acknowledgedWriteLost]))
        }
    }

    @Test("learners that vote and count toward commitment are caught: a commit not held by a majority of voters")
    func learnersVote() throws {
        let r = try #require(firstFailure(.learnersVote, .leases, seeds: 1...600))
        #expect(Set(r.violations.map(\.rule)).contains(.commitQuorum))
    }
}

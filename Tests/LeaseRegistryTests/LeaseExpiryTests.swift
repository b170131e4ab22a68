import LeaseRegistry
import Raft
import Testing

let second: UInt64 = 1_000_000_000

struct LeaseExpiryTests {
    func registry(leases n: Int, ttl: UInt32 = 10) throws -> (LeaseRegistry, [NodeRecord]) {
        var r = LeaseRegistry()
        for i in 0..<n {
            _ = r.apply(.acquire(hostname: "h\(i)", holder: "x", ttlSeconds: ttl, idRange: 1...1000), now: 100, index: UInt64(i + 1))
        }
        return (r, r.nodes())
    }

    /// Renews every lease of `nodes` in turn, each applied on the leader at `round` seconds.
    func renewAll(_ nodes: [NodeRecord], round: UInt64, _ r: inout LeaseRegistry, _ e: inout LeaseExpiry, index: inout UInt64, after: (LeaseExpiry) -> Void = { _ in }) {
        for n in nodes {
            index += 1
            _ = r.apply(.renew(leaseID: n.leaseID), now: 100 + round, index: index)
            e.applied(r.node(n.nodeID)!, now: round * second, registry: r)
            after(e)
        }
    }

    @Test func nothingBeforeTheLeadersFirstEntryApplies() throws {
        let (r, _) = try registry(leases: 3)
        var e = LeaseExpiry(config: .init(clockRateMargin: 0))
        #expect(e.due(now: 1000 * second, wallSeconds: 0, registry: r, hasQuorum: true).isEmpty)
        e.becameLeader()
        #expect(e.due(now: 1000 * second, wallSeconds: 0, registry: r, hasQuorum: true).isEmpty)
    }

    @Test func aNewLeaderRestartsEveryLeaseAtItsFullTTL() throws {
        let (r, nodes) = try registry(leases: 2)
        var e = LeaseExpiry(config: .init(clockRateMargin: 0))
        e.becameLeader()
        e.leaderReady(now: 50 * second, registry: r)
        #expect(e.deadline(of: nodes[0].leaseID, in: r) == 60 * second)
        #expect(e.due(now: 60 * second - 1, wallSeconds: 0, registry: r, hasQuorum: true).isEmpty)
        let due = e.due(now: 60 * second, wallSeconds: 777, registry: r, hasQuorum: true)
        #expect(due.map(\.command) == nodes.map { .expire(leaseID: $0.leaseID, renewalIndex: $0.renewalIndex) })
        #expect(due.allSatisfy { $0.now == 777 })
    }

    @Test func aRenewalMovesTheDeadline() throws {
        var (r, nodes) = try registry(leases: 1)
        var e = LeaseExpiry(config: .init(clockRateMargin: 0))
        e.becameLeader()
        e.leaderReady(now: 0, registry: r)
        _ = r.apply(.renew(leaseID: nodes[0].leaseID), now: 105, index: 10)
        e.applied(r.node(nodes[0].nodeID)!, now: 8 * second, registry: r)
        #expect(e.due(now: 17 * second, wallSeconds: 0, registry: r, hasQuorum: true).isEmpty)
        #expect(e.due(now: 18 * second, wallSeconds: 0, registry: r, hasQuorum: true).map(\.command) == [.expire(leaseID: nodes[0].leaseID, renewalIndex: 10)])
    }

    /// Renewals leave their old deadlines behind; the sweep (or, past twice the live ones, the
    /// rebuild) keeps the heap bounded, and expiry is exactly as without either.
    @Test func renewalsDoNotGrowTheDeadlineHeapWithoutBound() throws {
        var (r, nodes) = try registry(leases: 100, ttl: 3600)
        var e = LeaseExpiry(config: .init(clockRateMargin: 0))
        e.becameLeader()
        e.leaderReady(now: 0, registry: r)
        var index: UInt64 = 1000
        for round in UInt64(1)...100 {
            renewAll(nodes, round: round, &r, &e, index: &index)
            #expect(e.queuedDeadlines <= 2 * 100 + 1024 + 1)
        }
        // All renewed last at 100 s, except the first lease, renewed again at 200 s.
        _ = r.apply(.renew(leaseID: nodes[0].leaseID), now: 300, index: index + 1)
        e.applied(r.node(nodes[0].nodeID)!, now: 200 * second, registry: r)
        #expect(e.due(now: 3699 * second, wallSeconds: 0, registry: r, hasQuorum: true).isEmpty)
        var expired: [LeaseCommand] = []
        for _ in 0..<3 { expired += e.due(now: 3700 * second, wallSeconds: 0, registry: r, hasQuorum: true).map(\.command) }
        #expect(Set(expired) == Set(nodes.dropFirst().map { LeaseCommand.expire(leaseID: $0.leaseID, renewalIndex: r.node($0.nodeID)!.renewalIndex) }))
        #expect(e.deadline(of: nodes[0].leaseID, in: r) == 3800 * second)
        var later: [LeaseCommand] = []
        for _ in 0..<3 { later += e.due(now: 3800 * second, wallSeconds: 0, registry: r, hasQuorum: true).map(\.command) }
        #expect(later.contains(.expire(leaseID: nodes[0].leaseID, renewalIndex: index + 1)))
    }

    /// Each renewal's push sweeps a few entries: the heap stays within 1.5x the live leases
    /// (where a rebuild at twice them stalled the leader), and no lease loses its deadline.
    @Test func theSweepKeepsTheHeapNearTheLiveLeasesAndEveryDeadline() throws {
        var (r, nodes) = try registry(leases: 1000, ttl: 3600)
        var e = LeaseExpiry(config: .init(clockRateMargin: 0))
        e.becameLeader()
        e.leaderReady(now: 0, registry: r)
        var index: UInt64 = 10_000
        var most = 0
        for round in UInt64(1)...12 {
            renewAll(nodes, round: round, &r, &e, index: &index) { most = max(most, $0.queuedDeadlines) }
        }
        #expect(most <= 1500 + 16, "the heap held \(most) entries for 1000 leases")
        let missing = nodes.filter { e.deadline(of: $0.leaseID, in: r) != 3612 * second }
        #expect(missing.count == 0, "leases lost their deadline")
        #expect(e.due(now: 3612 * second - 1, wallSeconds: 0, registry: r, hasQuorum: true).isEmpty)
        var expired: Set<LeaseCommand> = []
        for _ in 0..<20 { expired.formUnion(e.due(now: 3612 * second, wallSeconds: 0, registry: r, hasQuorum: true).map(\.command)) }
        #expect(expired == Set(nodes.map { LeaseCommand.expire(leaseID: $0.leaseID, renewalIndex: r.node($0.nodeID)!.renewalIndex) }))
    }

    /// Acquires, renewals, releases and the leader's own expiries (some proposed and never
    /// applied, so they are retried) in a seeded random mix: after every step each live lease
    /// still has its deadline, the one for its latest renewal, and the heap stays bounded.
    @Test func aRandomMixNeverLeavesALiveLeaseWithoutItsDeadline() throws {
        var random = DeterministicGenerator(seed: 47)
        var r = LeaseRegistry()
        var e = LeaseExpiry(config: .init(maxCommandsPerTick: 8, retryNanos: second, clockRateMargin: 0))
        e.becameLeader()
        e.leaderReady(now: 0, registry: r)
        var index: UInt64 = 0
        var now: UInt64 = 0
        // Per lease: its latest renewal, and the instant this leader applied it plus the TTL.
        var expected: [UInt64: (renewal: UInt64, at: UInt64)] = [:]
        func apply(_ command: LeaseCommand) {
            index += 1
            guard case .success(let reply) = r.apply(command, now: 1_000 + now / second, index: index) else { return }
            let node: NodeRecord?
            switch reply {
            case .lease(let l): node = r.node(l.nodeID)
            case .node(let n): node = r.node(n.nodeID) ?? n
            default: node = nil
            }
            guard let node else { return }
            e.applied(node, now: now, registry: r)
            if node.status == .active, expected[node.leaseID]?.renewal != node.renewalIndex {
                expected[node.leaseID] = (node.renewalIndex, now + UInt64(node.ttlSeconds) * second)
            }
        }
        for step in 0..<6_000 {
            now += random.next() % (second / 20)
            let active = r.nodes(status: .active)
            switch random.next() % 10 {
            case 0, 1:
                apply(.acquire(hostname: "h\(random.next() % 100)", holder: "x", ttlSeconds: UInt32(1 + random.next() % 4), idRange: 1...1000))
            case 2 where !active.isEmpty:
                apply(.release(leaseID: active[Int(random.next() % UInt64(active.count))].leaseID))
            case 3, 4:
                for timed in e.due(now: now, wallSeconds: 1_000 + now / second, registry: r, hasQuorum: true) where random.next() % 10 < 7 {
                    apply(timed.command)
                }
            default:
                if !active.isEmpty { apply(.renew(leaseID: active[Int(random.next() % UInt64(active.count))].leaseID)) }
            }
            let live = r.nodes(status: .active)
            let lost = live.filter { e.deadline(of: $0.leaseID, in: r) != expected[$0.leaseID]?.at }
            guard lost.isEmpty else {
                Issue.record("step \(step): \(lost.count) of \(live.count) live leases without their deadline, e.g. lease \(lost[0].leaseID)")
                return
            }
            #expect(e.queuedDeadlines <= 2 * live.count + 1024 + 1)
        }
    }

    @Test func aLeaderWithoutQuorumProposesNothing() throws {
        let (r, _) = try registry(leases: 1)
        var e = LeaseExpiry(config: .init(clockRateMargin: 0))
        e.becameLeader()
        e.leaderReady(now: 0, registry: r)
        #expect(e.due(now: 100 * second, wallSeconds: 0, registry: r, hasQuorum: false).isEmpty)
        #expect(e.due(now: 100 * second, wallSeconds: 0, registry: r, hasQuorum: true).count == 1)
    }

    @Test func massExpiryGoesOutInBoundedBatchesWithoutRepeats() throws {
        let (r, _) = try registry(leases: 150)
        var e = LeaseExpiry(config: .init(maxCommandsPerTick: 64, retryNanos: 5 * second, clockRateMargin: 0))
        e.becameLeader()
        e.leaderReady(now: 0, registry: r)
        let first = e.due(now: 10 * second, wallSeconds: 0, registry: r, hasQuorum: true)
        let second_ = e.due(now: 10 * second + 1, wallSeconds: 0, registry: r, hasQuorum: true)
        let third = e.due(now: 10 * second + 2, wallSeconds: 0, registry: r, hasQuorum: true)
        let fourth = e.due(now: 10 * second + 3, wallSeconds: 0, registry: r, hasQuorum: true)
        #expect([first.count, second_.count, third.count, fourth.count] == [64, 64, 22, 0])
        #expect(Set(first + second_ + third).count == 150)
        // Not applied after the retry interval: proposed again.
        #expect(e.due(now: 16 * second, wallSeconds: 0, registry: r, hasQuorum: true).count == 64)
    }

    @Test func anAppliedExpiryStopsTracking() throws {
        var (r, nodes) = try registry(leases: 1)
        var e = LeaseExpiry(config: .init(clockRateMargin: 0))
        e.becameLeader()
        e.leaderReady(now: 0, registry: r)
        _ = e.due(now: 10 * second, wallSeconds: 0, registry: r, hasQuorum: true)
        guard case .success(.node(let n)) = r.apply(.expire(leaseID: nodes[0].leaseID, renewalIndex: nodes[0].renewalIndex), now: 0, index: 5) else {
            Issue.record("expire did not apply")
            return
        }
        e.applied(n, now: 10 * second, registry: r)
        #expect(e.deadline(of: nodes[0].leaseID, in: r) == nil)
        #expect(e.due(now: 100 * second, wallSeconds: 0, registry: r, hasQuorum: true).isEmpty)
    }

    @Test func staleNodesPastRetentionAreRetired() throws {
        var (r, nodes) = try registry(leases: 2)
        _ = r.apply(.expire(leaseID: nodes[0].leaseID, renewalIndex: nodes[0].renewalIndex), now: 1_000, index: 10)
        var e = LeaseExpiry(config: .init(retentionSeconds: 3600, clockRateMargin: 0))
        e.becameLeader()
        e.leaderReady(now: 0, registry: r)
        #expect(e.due(now: 1, wallSeconds: 1_000 + 3599, registry: r, hasQuorum: true).isEmpty)
        let due = e.due(now: 2 * second, wallSeconds: 1_000 + 3600, registry: r, hasQuorum: true)
        #expect(due.map(\.command) == [.retire(nodeID: nodes[0].nodeID, statusIndex: 10)])
    }

    @Test func theClockRateMarginDelaysExpiry() throws {
        let (r, nodes) = try registry(leases: 1, ttl: 100)
        var e = LeaseExpiry(config: .init(clockRateMargin: 0.01))
        e.becameLeader()
        e.leaderReady(now: 0, registry: r)
        #expect(e.deadline(of: nodes[0].leaseID, in: r) == 101 * second)
    }

    @Test func losingLeadershipForgetsEverything() throws {
        let (r, _) = try registry(leases: 2)
        var e = LeaseExpiry(config: .init(clockRateMargin: 0))
        e.becameLeader()
        e.leaderReady(now: 0, registry: r)
        e.lostLeadership()
        #expect(e.queuedDeadlines == 0 && !e.isLeader)
        #expect(e.due(now: 100 * second, wallSeconds: 0, registry: r, hasQuorum: true).isEmpty)
    }
}

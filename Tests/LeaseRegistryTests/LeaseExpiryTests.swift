import LeaseRegistry
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

    /// Renewals leave their old deadlines behind; the heap is rebuilt before they outnumber
    /// the live ones, and expiry is exactly as without the rebuild.
    @Test func renewalsDoNotGrowTheDeadlineHeapWithoutBound() throws {
        var (r, nodes) = try registry(leases: 100, ttl: 3600)
        var e = LeaseExpiry(config: .init(clockRateMargin: 0))
        e.becameLeader()
        e.leaderReady(now: 0, registry: r)
        var index: UInt64 = 1000
        for round in UInt64(1)...100 {
            for n in nodes {
                index += 1
                _ = r.apply(.renew(leaseID: n.leaseID), now: 100 + round, index: index)
                e.applied(r.node(n.nodeID)!, now: round * second, registry: r)
            }
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
            for n in nodes {
                index += 1
                _ = r.apply(.renew(leaseID: n.leaseID), now: 100 + round, index: index)
                e.applied(r.node(n.nodeID)!, now: round * second, registry: r)
                most = max(most, e.queuedDeadlines)
            }
        }
        #expect(most <= 1500 + 16, "the heap held \(most) entries for 1000 leases")
        let missing = nodes.filter { e.deadline(of: $0.leaseID, in: r) != 3612 * second }
        #expect(missing.count == 0, "leases lost their deadline")
        #expect(e.due(now: 3612 * second - 1, wallSeconds: 0, registry: r, hasQuorum: true).isEmpty)
        var expired: Set<LeaseCommand> = []
        for _ in 0..<20 { expired.formUnion(e.due(now: 3612 * second, wallSeconds: 0, registry: r, hasQuorum: true).map(\.command)) }
        #expect(expired == Set(nodes.map { LeaseCommand.expire(leaseID: $0.leaseID, renewalIndex: r.node($0.nodeID)!.renewalIndex) }))
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

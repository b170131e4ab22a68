import LeaseRegistry
import Raft
import Testing

/// The indexes that make ID allocation independent of the registry's size must pick exactly
/// the ID the rule names (API.md: the smallest free ID of the range, else the ID inactive the
/// longest), whatever happened before: checked against a direct reading of the rule over the
/// whole registry, on long random histories with forgets, range changes and restores.
struct AllocationTests {
    /// The rule, read directly off the records.
    static func expectedID(_ r: LeaseRegistry, range: ClosedRange<UInt32>) -> NodeID? {
        let all = r.nodes()
        let taken = Set(all.map(\.nodeID.rawValue))
        var id = range.lowerBound
        while true {
            if !taken.contains(id) { return NodeID(id) }
            if id == range.upperBound { break }
            id += 1
        }
        return all.filter { $0.status == .inactive && range.contains($0.nodeID.rawValue) }
            .min { ($0.statusIndex, $0.nodeID.rawValue) < ($1.statusIndex, $1.nodeID.rawValue) }?.nodeID
    }

    @Test(arguments: 1...40)
    func newHostnamesGetTheIDTheRuleNames(seed: UInt64) throws {
        var random = DeterministicGenerator(seed: seed)
        var registry = LeaseRegistry()
        var index: UInt64 = 0
        var leases: [UInt64] = [0]
        var fresh = 0
        // Ranges that move: mostly one, sometimes narrower or shifted.
        let ranges: [ClosedRange<UInt32>] = [1...40, 1...40, 1...40, 3...30, 5...45, 1...12]
        for step in 0..<1500 {
            index += 1
            let range = ranges[Int(random.next() % UInt64(ranges.count))]
            switch random.next() % 9 {
            case 0, 1, 2:
                fresh += 1
                let expected = Self.expectedID(registry, range: range)
                let result = registry.apply(
                    .acquire(hostname: "n\(fresh).example.org", holder: "h", ttlSeconds: 30, idRange: range), now: 1000, index: index)
                switch result {
                case .success(.lease(let l)):
                    #expect(l.nodeID == expected, "step \(step)")
                    leases.append(l.leaseID)
                case .failure(.nodeIDsExhausted): #expect(expected == nil, "step \(step)")
                default: Issue.record("unexpected \(result)")
                }
            case 3: _ = registry.apply(.release(leaseID: leases[Int(random.next() % UInt64(leases.count))]), now: 1000, index: index)
            case 4:
                let l = leases[Int(random.next() % UInt64(leases.count))]
                _ = registry.apply(.expire(leaseID: l, renewalIndex: registry.lease(l)?.renewalIndex ?? 0), now: 1000, index: index)
            case 5:
                let id = NodeID(UInt32(1 + random.next() % 45))
                _ = registry.apply(.retire(nodeID: id, statusIndex: registry.node(id)?.statusIndex ?? 0), now: 1000, index: index)
            case 6: _ = registry.apply(.forget(nodeID: NodeID(UInt32(1 + random.next() % 45))), now: 1000, index: index)
            case 7 where fresh > 0:
                // An earlier hostname again, by its holder or another: a stale or inactive
                // node becomes active (leaving the age indexes), a live one is refused or renewed.
                let name = "n\(1 + random.next() % UInt64(fresh)).example.org"
                let holder = random.next() % 2 == 0 ? "h" : "g"
                if case .success(.lease(let l)) = registry.apply(
                    .acquire(hostname: name, holder: holder, ttlSeconds: 30, idRange: range), now: 1000, index: index)
                {
                    leases.append(l.leaseID)
                }
            default:
                // A restart: the derived indexes are rebuilt from a snapshot.
                registry = try LeaseRegistry(snapshot: registry.snapshot())
            }
        }
        // The retention scan reads stale nodes, oldest first, and only them.
        let stale = registry.nodes(status: .stale).sorted { ($0.statusIndex, $0.nodeID.rawValue) < ($1.statusIndex, $1.nodeID.rawValue) }
        #expect(Array(registry.staleNodes()) == stale)
    }

    @Test func sortedChunksMatchASetThroughSplitsAndMerges() {
        var random = DeterministicGenerator(seed: 7)
        var chunks = SortedChunks<UInt32>()
        var reference = Set<UInt32>()
        for round in 0..<40_000 {
            let v = UInt32(random.next() % 5000)
            // Mostly inserts early, mostly removes late, so chunks split and then merge.
            if random.next() % 100 < (round < 20_000 ? 70 : 30) {
                #expect(chunks.insert(v) == reference.insert(v).inserted)
            } else {
                #expect(chunks.remove(v) == (reference.remove(v) != nil))
            }
            if round % 997 == 0 {
                #expect(Array(chunks) == reference.sorted())
                #expect(chunks.count == reference.count)
                #expect(chunks.first == reference.min())
                #expect(chunks.contains(v) == reference.contains(v))
            }
        }
        #expect(Array(chunks) == reference.sorted())
    }
}

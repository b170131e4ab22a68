@testable import LeaseRegistry
import Raft
import Testing

/// The registry's hostname and lease indexes keep only a hash of each key and read the key
/// from the node's record: checked against a dictionary through random histories, on keys
/// spread as the registry's are and on keys made to collide.
struct RecordIndexTests {
    /// Keys that all fall in one shard with one of `distinct` hashes: long probe runs that
    /// wrap around the end of the buckets, where removal has to shift entries back.
    struct Clumped: ShardKey {
        var value: UInt64
        var distinct: UInt64
        var shardBits: Int { 0 }
        static func == (a: Clumped, b: Clumped) -> Bool { a.value == b.value }
        func hash(into h: inout Hasher) { h.combine(value % distinct) }
    }

    /// Runs `steps` random inserts and removals of keys made by `key` from 0..<keySpace,
    /// each bound to a node, and after each step looks up every key touched so far.
    func check<K: ShardKey>(seed: UInt64, steps: Int, keySpace: UInt64, _ key: (UInt64) -> K) {
        var random = DeterministicGenerator(seed: seed)
        var index = RecordIndex<K>()
        // The records: the key each node holds, and the node each key is indexed under.
        var keyOf: [NodeID: UInt64] = [:]
        var nodeOf: [UInt64: NodeID] = [:]
        var nextNode: UInt32 = 1
        for _ in 0..<steps {
            let k = random.next() % keySpace
            if let id = nodeOf[k] {
                let removed = index.remove(key(k), id)
                let again = index.remove(key(k), id)
                #expect(removed && !again)
                nodeOf[k] = nil
                keyOf[id] = nil
            } else {
                let id = NodeID(nextNode)
                nextNode += 1
                index.insert(key(k), id)
                nodeOf[k] = id
                keyOf[id] = k
            }
            #expect(index.count == nodeOf.count)
            for probe in 0..<keySpace {
                let found = index.find(key(probe)) { keyOf[$0] == probe }
                #expect(found == nodeOf[probe], "key \(probe)")
            }
        }
    }

    @Test func integerKeysMatchADictionary() {
        check(seed: 21, steps: 3000, keySpace: 400) { $0 }
    }

    @Test func stringKeysMatchADictionary() {
        check(seed: 22, steps: 3000, keySpace: 400) { "node-\($0).example" }
    }

    @Test func collidingKeysMatchADictionary() {
        // Two hashes among 200 keys in one shard: every lookup walks a run, and the runs wrap.
        check(seed: 23, steps: 3000, keySpace: 200) { Clumped(value: $0, distinct: 2) }
        check(seed: 24, steps: 3000, keySpace: 60) { Clumped(value: $0, distinct: 7) }
    }

    @Test func aKeyRemovedUnderAnotherNodeStays() {
        var index = RecordIndex<String>()
        index.insert("a", NodeID(1))
        let otherNode = index.remove("a", NodeID(2))
        let otherKey = index.remove("b", NodeID(1))
        #expect(!otherNode && !otherKey)
        #expect(index.find("a") { $0 == NodeID(1) } == NodeID(1))
        // A candidate whose record does not hold the key is passed over.
        #expect(index.find("a") { _ in false } == nil)
    }

    @Test func itsBucketsTakeEightBytesAKeyAtMostThreeQuartersFull() {
        var index = RecordIndex<UInt64>()
        for k in 0..<UInt64(65_536) { index.insert(k, NodeID(UInt32(k + 1))) }
        // 65,536 keys in 64 shards of 2,048 buckets: 1 MiB. A dictionary of String keys took 2.6.
        #expect(index.bucketCount == 131_072)
        #expect(index.bucketCount * 3 >= index.count * 4)
        var reserved = RecordIndex<UInt64>()
        reserved.reserveCapacity(65_536)
        #expect(reserved.bucketCount == 131_072)
    }
}

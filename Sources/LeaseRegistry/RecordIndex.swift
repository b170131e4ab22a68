/// A map from a field of a node's record (its hostname, its active lease's id) to the node's
/// ID, which keeps only a 32-bit hash of each key and the ID: 8 bytes a bucket. The key itself
/// is the record's, so a lookup confirms a candidate by reading the record (`matches`).
///
/// A `ShardedDictionary<String, NodeID>` kept each key inline, 20 bytes a bucket at most 75 %
/// full: 2.6 MB for 65,536 hostnames, and 1.6 MB for their leases. Here each is 1 MB.
///
/// In 64 shards, chosen as `ShardedDictionary` chooses them, so the write after a snapshot's
/// copy copies one shard. Within a shard: open addressing with linear probing, at most 3/4
/// full, and deletion by shifting the run back (no tombstones). The bucket comes from the key's
/// `hashValue`, seeded per process as a `Dictionary`'s is, so hostnames cannot be chosen to
/// collide; nothing iterates the buckets, so their order never shows.
struct RecordIndex<Key: ShardKey>: Sendable {
    private static var shardCount: Int { 64 }
    /// Each shard's buckets: the key's hash in the high 32 bits (never 0), the ID in the low;
    /// 0 is an empty bucket. A power of two in count, or none.
    private var shards = [[UInt64]](repeating: [], count: shardCount)
    private var shardCounts = [Int](repeating: 0, count: shardCount)

    /// Keys indexed.
    var count: Int { shardCounts.reduce(0, +) }

    init() {}

    /// Buckets over all shards (8 bytes each).
    var bucketCount: Int { shards.reduce(0) { $0 + $1.count } }

    private static func shard(_ key: Key) -> Int { key.shardBits & (shardCount - 1) }

    /// The key's hash, never 0 (so no entry is 0); its low bits pick the home bucket.
    private static func hash(_ key: Key) -> UInt32 {
        let h = UInt32(truncatingIfNeeded: key.hashValue)
        return h == 0 ? 1 : h
    }

    private static func home(_ entry: UInt64, mask: Int) -> Int { Int(entry >> 32) & mask }

    /// The ID indexed under `key`: the first whose hash is `key`'s and whose record `matches`.
    func find(_ key: Key, matches: (NodeID) -> Bool) -> NodeID? {
        let buckets = shards[Self.shard(key)]
        guard !buckets.isEmpty else { return nil }
        let h = Self.hash(key)
        let mask = buckets.count - 1
        var i = Int(h) & mask
        while buckets[i] != 0 {
            let e = buckets[i]
            if UInt32(truncatingIfNeeded: e >> 32) == h {
                let id = NodeID(UInt32(truncatingIfNeeded: e))
                if matches(id) { return id }
            }
            i = (i + 1) & mask
        }
        return nil
    }

    /// Indexes `id` under `key`, which must not be indexed already (`find` it first).
    mutating func insert(_ key: Key, _ id: NodeID) {
        assert(find(key) { $0 == id } == nil, "indexed twice")
        let s = Self.shard(key)
        if (shardCounts[s] + 1) * 4 > shards[s].count * 3 { grow(s) }
        let h = Self.hash(key)
        Self.place(UInt64(h) << 32 | UInt64(id.rawValue), in: &shards[s])
        shardCounts[s] += 1
    }

    /// Removes `id` from under `key`; false if it was not there.
    @discardableResult
    mutating func remove(_ key: Key, _ id: NodeID) -> Bool {
        let s = Self.shard(key)
        guard !shards[s].isEmpty else { return false }
        let target = UInt64(Self.hash(key)) << 32 | UInt64(id.rawValue)
        let removed = Self.remove(target, from: &shards[s])
        if removed { shardCounts[s] -= 1 }
        return removed
    }

    /// Room for `n` keys without growing.
    mutating func reserveCapacity(_ n: Int) {
        let perShard = n / Self.shardCount + 1
        for s in shards.indices {
            while perShard * 4 > shards[s].count * 3 { grow(s) }
        }
    }

    /// Doubles shard `s` (8 buckets at first) and places its entries again.
    private mutating func grow(_ s: Int) {
        let old = shards[s]
        var buckets = [UInt64](repeating: 0, count: max(8, old.count * 2))
        for e in old where e != 0 { Self.place(e, in: &buckets) }
        shards[s] = buckets
    }

    /// Puts `entry` in the first empty bucket from its home (there is one: at most 3/4 full).
    private static func place(_ entry: UInt64, in buckets: inout [UInt64]) {
        let mask = buckets.count - 1
        var i = home(entry, mask: mask)
        while buckets[i] != 0 { i = (i + 1) & mask }
        buckets[i] = entry
    }

    /// Empties the bucket holding `entry`, then moves back each later entry of the run that
    /// may sit in the hole (one whose home is not after the hole), so every entry stays
    /// reachable from its home without a gap.
    private static func remove(_ entry: UInt64, from buckets: inout [UInt64]) -> Bool {
        let mask = buckets.count - 1
        var hole = home(entry, mask: mask)
        while buckets[hole] != entry {
            if buckets[hole] == 0 { return false }
            hole = (hole + 1) & mask
        }
        var j = (hole + 1) & mask
        while buckets[j] != 0 {
            // Distances walking forward: from the entry's home to it, and from the hole to it.
            let fromHome = (j - home(buckets[j], mask: mask)) & mask
            let fromHole = (j - hole) & mask
            if fromHome >= fromHole {
                buckets[hole] = buckets[j]
                hole = j
            }
            j = (j + 1) & mask
        }
        buckets[hole] = 0
        return true
    }
}

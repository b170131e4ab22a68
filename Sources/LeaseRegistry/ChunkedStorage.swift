// Containers for the registry whose copy-on-write is paid a piece at a time.
//
// A snapshot is encoded from a copy of the registry (a value) on another thread while the
// actor keeps applying. With whole dictionaries and arrays, the first write after the copy
// duplicated everything it touched at once: 11-29 ms for 65,536 nodes and 100,000 remembered
// keys on an idle core (`nodelease-microbench idempotency`), a stall every request in flight
// waited out. Split in pieces, a write copies only the piece it touches.

/// How a key picks its shard: integer keys by their low bits (dense IDs spread evenly, and
/// the key is hashed once, inside its shard), strings by a fixed hash of their bytes (FNV-1a:
/// not Swift's per-process seeded `hashValue`, so which shard holds a key is the same on every
/// replica and every run). Within a shard, a `Dictionary` or a `RecordIndex` places keys by
/// the seeded hash; nothing reads them in that order.
protocol ShardKey: Hashable, Sendable {
    var shardBits: Int { get }
}

extension UInt64: ShardKey {
    var shardBits: Int { Int(truncatingIfNeeded: self) }
}

extension NodeID: ShardKey {
    var shardBits: Int { Int(rawValue) }
}

extension String: ShardKey {
    var shardBits: Int {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return Int(truncatingIfNeeded: h ^ (h >> 32))
    }
}

extension IdempotencyKey: ShardKey {
    var shardBits: Int { value.shardBits ^ Int(origin.rawValue) }
}

/// A dictionary in 64 shards (a power of two: the shard is the key's low bits).
struct ShardedDictionary<Key: ShardKey, Value: Sendable>: Sendable {
    private static var shardCount: Int { 64 }
    private var shards = [[Key: Value]](repeating: [:], count: shardCount)
    private(set) var count = 0

    init() {}

    private static func shard(_ key: Key) -> Int { key.shardBits & (shardCount - 1) }

    subscript(key: Key) -> Value? {
        get { shards[Self.shard(key)][key] }
        set {
            let s = Self.shard(key)
            if let newValue {
                if shards[s].updateValue(newValue, forKey: key) == nil { count += 1 }
            } else if shards[s].removeValue(forKey: key) != nil {
                count -= 1
            }
        }
    }

    @discardableResult
    mutating func removeValue(forKey key: Key) -> Value? {
        let removed = shards[Self.shard(key)].removeValue(forKey: key)
        if removed != nil { count -= 1 }
        return removed
    }

    mutating func reserveCapacity(_ n: Int) {
        for s in shards.indices { shards[s].reserveCapacity(n / Self.shardCount + 1) }
    }
}

/// An array in chunks of 1024: appending, replacing an element and dropping from the front
/// copy (after a copy of the whole) one chunk and the list of chunks.
struct ChunkedArray<Element: Sendable>: Sendable, Sequence {
    private static var chunkSize: Int { 1024 }
    private var chunks: [[Element]] = []
    /// Elements dropped from the front of the first chunk.
    private var head = 0
    private(set) var count = 0

    init() {}

    var isEmpty: Bool { count == 0 }

    private func locate(_ i: Int) -> (Int, Int) {
        let p = head + i
        return (p / Self.chunkSize, p % Self.chunkSize)
    }

    subscript(i: Int) -> Element {
        get {
            precondition(i >= 0 && i < count, "ChunkedArray index out of range")
            let (c, k) = locate(i)
            return chunks[c][k]
        }
        set {
            precondition(i >= 0 && i < count, "ChunkedArray index out of range")
            let (c, k) = locate(i)
            chunks[c][k] = newValue
        }
    }

    /// What `body` reads from element `i`, without copying the element out.
    func reading<R>(_ i: Int, _ body: (borrowing Element) -> R) -> R {
        precondition(i >= 0 && i < count, "ChunkedArray index out of range")
        let (c, k) = locate(i)
        return body(chunks[c][k])
    }

    var first: Element? { count == 0 ? nil : self[0] }

    mutating func append(_ e: Element) {
        if chunks.isEmpty || chunks[chunks.count - 1].count == Self.chunkSize {
            var chunk: [Element] = []
            chunk.reserveCapacity(Self.chunkSize)
            chunk.append(e)
            chunks.append(chunk)
        } else {
            chunks[chunks.count - 1].append(e)
        }
        count += 1
    }

    /// Drops the first element.
    mutating func removeFirst() {
        precondition(count > 0, "ChunkedArray.removeFirst on an empty array")
        count -= 1
        head += 1
        if head == Self.chunkSize || count == 0 {
            chunks.removeFirst()
            head = 0
            if count == 0 { chunks = [] }
        }
    }

    struct Iterator: IteratorProtocol {
        let array: ChunkedArray
        var i = 0
        mutating func next() -> Element? {
            guard i < array.count else { return nil }
            defer { i += 1 }
            return array[i]
        }
    }

    func makeIterator() -> Iterator { Iterator(array: self) }

    var underestimatedCount: Int { count }
}

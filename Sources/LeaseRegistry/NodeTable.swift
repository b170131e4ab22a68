/// The registry's records by node ID: a small map from ID to slot, and the records in a dense
/// array. A dictionary of records kept every record inline in each of its buckets, two to
/// three times the record count (a 112-byte record in a bucket 62 % empty): 65,536 nodes took
/// 15 MB there, 8 MB here. Slots are reused after a removal; their order never shows (the
/// registry lists and snapshots by `order`). Both are in pieces (ChunkedStorage.swift), so the
/// write after a snapshot's copy copies one piece, not the table.
struct NodeTable: Sendable {
    private var slots = ShardedDictionary<NodeID, UInt32>()
    private var records = ChunkedArray<NodeRecord>()
    private var freeSlots: [UInt32] = []

    init() {}

    /// Preallocates room for `n` records (a snapshot's count).
    mutating func reserve(_ n: Int) {
        slots.reserveCapacity(n)
    }

    var count: Int { slots.count }

    subscript(id: NodeID) -> NodeRecord? {
        get { slots[id].map { records[Int($0)] } }
        set {
            guard let newValue else {
                _ = removeValue(forKey: id)
                return
            }
            if let s = slots[id] {
                records[Int(s)] = newValue
            } else if let s = freeSlots.popLast() {
                records[Int(s)] = newValue
                slots[id] = s
            } else {
                slots[id] = UInt32(records.count)
                records.append(newValue)
            }
        }
    }

    /// What `body` reads from node `id`'s record, without copying the record (and its
    /// strings) out; nil if there is no such node.
    func reading<R>(_ id: NodeID, _ body: (borrowing NodeRecord) -> R) -> R? {
        guard let s = slots[id] else { return nil }
        return records.reading(Int(s), body)
    }

    @discardableResult
    mutating func removeValue(forKey id: NodeID) -> NodeRecord? {
        guard let s = slots.removeValue(forKey: id) else { return nil }
        let r = records[Int(s)]
        // Drop the strings now; the slot waits for the next insert.
        records[Int(s)].hostname = ""
        records[Int(s)].holder = ""
        freeSlots.append(s)
        return r
    }
}

import Raft

/// The most recent entries of the log, contiguous and bounded in bytes, so the leader
/// replicates its tail from memory while older entries are read from their segment.
struct EntryCache {
    private var items: [Entry] = []
    private var head = 0
    /// The index of the oldest cached entry.
    private(set) var start: LogIndex = 1
    private(set) var bytes = 0
    private(set) var limit: Int

    init(limit: Int) { self.limit = limit }

    /// A new limit; a lower one drops the oldest entries at once.
    mutating func setLimit(_ newLimit: Int) {
        let lower = newLimit < limit
        limit = newLimit
        trim()
        if lower {
            // The slots' capacity goes too (a 4 MiB cache of renewals has 28,000 of them).
            items = Array(items[head...])
            head = 0
        } else {
            compactIfNeeded()
        }
    }

    /// What an entry takes in memory here: its bytes, the array's 32-byte header and malloc's
    /// rounding and bookkeeping (about 24), and its 32-byte slot in `items`. (`Entry.byteSize`,
    /// 24 bytes over the data, is its size in a message; for a 60-byte renew the cache held
    /// twice what its limit said.)
    static func cost(_ e: Entry) -> Int { e.data.count + 88 }

    var count: Int { items.count - head }

    func get(_ index: LogIndex) -> Entry? {
        guard index >= start else { return nil }
        let k = start.distance(to: index)
        return k < count ? items[head + k] : nil
    }

    /// Empties the cache; the next entry appended will be `next`.
    mutating func reset(next: LogIndex) {
        items.removeAll(keepingCapacity: true)
        head = 0
        bytes = 0
        start = next
    }

    /// Appends `e`, dropping any cached entries at or after its index first.
    mutating func append(_ e: Entry) {
        if count == 0 || e.index < start {
            reset(next: e.index)
        } else if e.index < start + count {
            let k = head + start.distance(to: e.index)
            for c in items[k...] { bytes -= Self.cost(c) }
            items.removeSubrange(k...)
        } else if e.index > start + count {
            reset(next: e.index)
        }
        items.append(e)
        bytes += Self.cost(e)
        trim()
        compactIfNeeded()
    }

    /// Drops the oldest entries while over the limit (the newest always stays).
    private mutating func trim() {
        while bytes > limit && count > 1 { dropOldest() }
    }

    /// Forgets entries up to and including `index`.
    mutating func dropPrefix(through index: LogIndex) {
        while count > 0 && start <= index { dropOldest() }
        if count == 0 { reset(next: index + 1) }
        compactIfNeeded()
    }

    /// The oldest entry leaves the cache, and its data goes at once: the slot itself is
    /// reclaimed later, a thousand at a time (`compactIfNeeded`), and until then kept a
    /// dropped entry's data alive, up to as much again as the limit.
    private mutating func dropOldest() {
        bytes -= Self.cost(items[head])
        items[head] = Self.dropped
        head += 1
        start = start + 1
    }

    private static let dropped = Entry(term: 0, index: 0)

    /// Bytes of entry data the cache's slots hold, the dropped ones' included (for tests).
    var dataBytesHeld: Int { items.reduce(0) { $0 + $1.data.count } }

    private mutating func compactIfNeeded() {
        if head > 1024 && head * 2 > items.count {
            items.removeFirst(head)
            head = 0
        }
    }
}

import Raft

/// Which renders of the whole registry to make, and which waiting reads each answers: the
/// decisions only (the shell renders on a thread of its own and resumes the reads).
///
/// A read of the whole registry at 65,536 nodes renders about 7 MB of JSON (some 100 ms of
/// CPU). Rendered once per read on the replica's event loop (and the answer copied once more
/// to be sent), a hundred watchers woken by one change kept that loop busy for seconds:
/// heartbeats stopped and the leader was deposed. Here one render is made at a time, off the
/// loop, and it answers every read of the same filter that arrived at or before the index it
/// renders, however many there are.
///
/// A render at index X never answers a read that arrived when the replica had applied more
/// than X: a client that wrote through this replica and then reads from it sees its write
/// (such a read does not join an older render in flight; it waits for the next one).
///
/// Pure: no clock, no randomness; waiting reads are kept in arrival order. Bounded by the
/// reads that can be waiting: one a client connection (HTTP/1).
public struct RegistryRenders<Filter: Equatable & Sendable>: Sendable {
    /// A render to make or being made: of `filter`, of the registry at `index`, for these reads.
    public struct Render: Sendable, Equatable {
        public var filter: Filter
        public var index: LogIndex
        public var readers: [UInt64]

        public init(filter: Filter, index: LogIndex, readers: [UInt64]) {
            self.filter = filter
            self.index = index
            self.readers = readers
        }
    }

    private struct Waiting: Sendable {
        var id: UInt64
        var filter: Filter
    }

    /// The render in flight, if any.
    public private(set) var inFlight: Render?
    /// Reads that no render in flight covers, oldest first.
    private var waiting: [Waiting] = []

    public init() {}

    /// How many reads wait, in flight or queued.
    public var count: Int { (inFlight?.readers.count ?? 0) + waiting.count }

    /// A read `id` of `filter`, arriving when the replica has applied `applied`. Returns the
    /// render to start now, if one is to start: the caller renders the registry as it is now,
    /// at `applied`.
    public mutating func request(id: UInt64, filter: Filter, applied: LogIndex) -> Render? {
        if let r = inFlight, r.filter == filter, r.index >= applied {
            inFlight!.readers.append(id)
            return nil
        }
        waiting.append(Waiting(id: id, filter: filter))
        return inFlight == nil ? start(applied: applied) : nil
    }

    /// The render in flight is done: the reads it answers, and the next render to start (of
    /// the registry as it is now, at `applied`), if reads still wait.
    public mutating func finished(applied: LogIndex) -> (answered: [UInt64], next: Render?) {
        let answered = inFlight?.readers ?? []
        inFlight = nil
        return (answered, waiting.isEmpty ? nil : start(applied: applied))
    }

    /// Every read, in flight or queued (the replica is stopping); nothing is in flight after.
    public mutating func removeAll() -> [UInt64] {
        let all = (inFlight?.readers ?? []) + waiting.map(\.id)
        inFlight = nil
        waiting = []
        return all
    }

    /// Starts a render of the oldest waiting read's filter; it takes every waiting read of that
    /// filter (each arrived at or before `applied`, which only grows).
    private mutating func start(applied: LogIndex) -> Render? {
        guard let first = waiting.first else { return nil }
        var readers: [UInt64] = []
        var rest: [Waiting] = []
        for w in waiting {
            if w.filter == first.filter { readers.append(w.id) } else { rest.append(w) }
        }
        waiting = rest
        let r = Render(filter: first.filter, index: applied, readers: readers)
        inFlight = r
        return r
    }
}

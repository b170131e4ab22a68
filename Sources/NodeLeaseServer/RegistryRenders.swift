/// Which full renders of the registry to make, and which waiting reads each answers: the
/// decisions only (the driver carries them out, rendering on a thread of its own).
///
/// A read of the whole registry at 65,536 nodes renders about 6 MB of JSON (some 100 ms of
/// CPU). Rendered once per request on the replica's event loop, a hundred watchers woken by
/// one change kept that loop busy for seconds: heartbeats stopped and the leader was deposed.
/// Here one render is made at a time, and it answers every read of the same filter that
/// arrived at or before the index it renders, however many there are.
///
/// A render at index X never answers a read that arrived when the replica had applied more
/// than X: a client that wrote through this replica and then reads from it sees its write
/// (reads are not served from an older render in flight; they wait for the next one).
///
/// Pure: no clock, no randomness; waiting reads are kept in arrival order.
struct RegistryRenders<Filter: Equatable & Sendable>: Sendable {
    /// A render being made: of `filter`, at `index`, for these reads.
    struct Render: Sendable, Equatable {
        var filter: Filter
        var index: UInt64
        var readers: [UInt64]
    }

    private struct Waiting: Sendable {
        var id: UInt64
        var filter: Filter
    }

    /// The render in flight, if any.
    private(set) var inFlight: Render?
    /// Reads that no render in flight covers, oldest first.
    private var waiting: [Waiting] = []

    /// How many reads wait, in flight or queued.
    var count: Int { (inFlight?.readers.count ?? 0) + waiting.count }

    /// A read `id` of `filter`, arriving when the replica has applied `applied`. Returns the
    /// render to start now, if one is to start (the caller renders the registry as it is, at
    /// `applied`, and calls `finished` with the same `applied` it started at).
    mutating func request(id: UInt64, filter: Filter, applied: UInt64) -> Render? {
        if let r = inFlight, r.filter == filter, r.index >= applied {
            inFlight!.readers.append(id)
            return nil
        }
        waiting.append(Waiting(id: id, filter: filter))
        return inFlight == nil ? start(applied: applied) : nil
    }

    /// The render in flight is done: the reads it answers, and the next render to start (at
    /// `applied`, the replica's applied index now), if reads still wait.
    mutating func finished(applied: UInt64) -> (answered: [UInt64], next: Render?) {
        let answered = inFlight?.readers ?? []
        inFlight = nil
        return (answered, waiting.isEmpty ? nil : start(applied: applied))
    }

    /// Every read, in flight or queued (the replica is stopping); nothing is in flight after.
    mutating func removeAll() -> [UInt64] {
        let all = (inFlight?.readers ?? []) + waiting.map(\.id)
        inFlight = nil
        waiting = []
        return all
    }

    /// Starts a render of the oldest waiting read's filter; it takes every waiting read of that
    /// filter (each arrived at or before `applied`, which only grows).
    private mutating func start(applied: UInt64) -> Render? {
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

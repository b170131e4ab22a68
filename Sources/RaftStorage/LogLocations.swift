import Raft

/// Where each retained entry of a `DurableLog` is: its term, its segment, and its offset and
/// length in that segment. The term and the segment change rarely (at an election, at a new
/// segment), so they are kept as runs; each entry keeps only its offset and length, 8 bytes
/// where a `Location` takes 32. A leader retaining 131,000 entries (twice a registry of
/// 65,536 between snapshots) held 4.2 MB of locations; it now holds about 1 MB.
///
/// Positions are 0-based from the oldest retained entry, as in an array.
struct LogLocations {
    struct Location: Equatable {
        var term: Term
        var segment: UInt64
        var offset: UInt64
        var length: Int
    }

    /// The largest offset plus length an entry may have in a segment: offsets are kept in 32
    /// bits. `DurableLog` refuses a record that would pass it (segments roll at 1 GiB at most,
    /// so only a record of about 3 GiB could).
    static let maxEnd: UInt64 = UInt64(UInt32.max)

    private struct Span {
        var offset: UInt32
        var length: UInt32
    }

    /// A run of entries with one term in one segment, from `first` (counted from the first
    /// entry ever appended, so dropping a prefix does not move it) to the next run.
    private struct Run {
        var first: Int
        var term: Term
        var segment: UInt64
    }

    private var spans: [Span] = []
    private var runs: [Run] = []
    /// How many entries were dropped from the front since the index was last emptied.
    private var dropped = 0

    var count: Int { spans.count }
    var isEmpty: Bool { spans.isEmpty }
    /// How many runs are held, for tests: the dropped entries' runs go with them.
    var runCount: Int { runs.count }

    subscript(i: Int) -> Location {
        let run = runs[runIndex(of: dropped + i)]
        let s = spans[i]
        return Location(term: run.term, segment: run.segment, offset: UInt64(s.offset), length: Int(s.length))
    }

    func term(at i: Int) -> Term {
        runs[runIndex(of: dropped + i)].term
    }

    /// Appends an entry's location. The caller has checked `fits`.
    mutating func append(_ loc: Location) {
        precondition(Self.fits(loc), "a log location past 4 GiB in its segment")
        let absolute = dropped + spans.count
        if let last = runs.last, last.term == loc.term, last.segment == loc.segment {
            // The entry continues the newest run.
        } else {
            runs.append(Run(first: absolute, term: loc.term, segment: loc.segment))
        }
        spans.append(Span(offset: UInt32(loc.offset), length: UInt32(loc.length)))
    }

    static func fits(_ loc: Location) -> Bool {
        loc.length >= 0 && loc.offset <= maxEnd && UInt64(loc.length) <= maxEnd - loc.offset
    }

    /// Removes the entries from position `i` on.
    mutating func removeSuffix(from i: Int) {
        guard i < spans.count else { return }
        spans.removeSubrange(i...)
        let absolute = dropped + i
        while let last = runs.last, last.first >= absolute { runs.removeLast() }
    }

    /// Removes the oldest `n` entries.
    mutating func removeFirst(_ n: Int) {
        guard n > 0 else { return }
        if n >= spans.count {
            removeAll()
            return
        }
        spans.removeFirst(n)
        dropped += n
        // Keep the run holding the new first entry, and those after it.
        let keep = runIndex(of: dropped)
        if keep > 0 { runs.removeFirst(keep) }
    }

    mutating func removeAll() {
        spans = []
        runs = []
        dropped = 0
    }

    /// The run holding the entry at `absolute`: the last run starting at or before it.
    private func runIndex(of absolute: Int) -> Int {
        // The newest run answers most lookups (the leader's appends and a follower's checks).
        if let last = runs.last, last.first <= absolute { return runs.count - 1 }
        var lo = 0
        var hi = runs.count - 1
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if runs[mid].first <= absolute { lo = mid } else { hi = mid - 1 }
        }
        return lo
    }
}

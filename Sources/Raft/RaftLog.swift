/// The core's view of the log: what storage holds durably plus the unstable tail (entries
/// and possibly a snapshot) that the driver has not yet persisted.
struct RaftLog {
    let storage: any RaftLogStorage
    /// Entries not yet persisted; `unstable[0].index == unstableOffset`.
    private(set) var unstable: [Entry] = []
    private(set) var unstableOffset: LogIndex
    /// A snapshot received from the leader, not yet persisted.
    private(set) var unstableSnapshot: Snapshot?
    /// Highest index known committed.
    private(set) var committed: LogIndex
    /// Highest index handed to the state machine and acknowledged by `advance`.
    private(set) var applied: LogIndex
    let maxApplyBytes: Int

    init(storage: any RaftLogStorage, committed: LogIndex, applied: LogIndex?, maxApplyBytes: Int) throws {
        self.storage = storage
        let first = try storage.firstIndex()
        let last = try storage.lastIndex()
        self.unstableOffset = last + 1
        self.maxApplyBytes = maxApplyBytes
        self.committed = committed
        // Applied starts at the snapshot (the state machine restores from it) unless the
        // caller says its state machine is ahead. Entries may be retained below the snapshot.
        let floor = max(first - 1, try storage.snapshotMetadata().index)
        self.applied = max(floor, min(applied ?? floor, committed))
        if committed < floor { self.committed = floor }
    }

    // MARK: Bounds and terms

    func firstIndex() -> LogIndex {
        if let s = unstableSnapshot { return s.metadata.index + 1 }
        return (try? storage.firstIndex()) ?? 1
    }

    func lastIndex() -> LogIndex {
        if let last = unstable.last { return last.index }
        if let s = unstableSnapshot { return s.metadata.index }
        return (try? storage.lastIndex()) ?? 0
    }

    /// The term at `index`; throws `compacted` below the snapshot, `unavailable` past the end.
    func term(_ index: LogIndex) throws -> Term {
        if index == 0 { return 0 }
        if let first = unstable.first, index >= first.index {
            let i = unstableOffset.distance(to: index)
            if i < unstable.count { return unstable[i].term }
            throw StorageError.unavailable
        }
        if let s = unstableSnapshot {
            if index == s.metadata.index { return s.metadata.term }
            if index < s.metadata.index { throw StorageError.compacted }
            throw StorageError.unavailable
        }
        let first = try storage.firstIndex()
        if index < first - 1 { throw StorageError.compacted }
        if index > (try storage.lastIndex()) { throw StorageError.unavailable }
        return try storage.term(index)
    }

    /// The term at `index`, or 0 when it is not in the log.
    func termOrZero(_ index: LogIndex) -> Term { (try? term(index)) ?? 0 }

    var lastTerm: Term { termOrZero(lastIndex()) }

    func matchTerm(_ index: LogIndex, _ term: Term) -> Bool {
        guard let t = try? self.term(index) else { return false }
        return t == term
    }

    /// Raft §5.4.1: a candidate's log is at least as up to date as ours.
    func isUpToDate(lastIndex: LogIndex, lastTerm: Term) -> Bool {
        lastTerm > self.lastTerm || (lastTerm == self.lastTerm && lastIndex >= self.lastIndex())
    }

    // MARK: Reading entries

    /// Entries in `lo..<hi` up to about `maxBytes`.
    func entries(_ lo: LogIndex, _ hi: LogIndex, maxBytes: Int) throws -> [Entry] {
        if lo >= hi { return [] }
        if lo < firstIndex() { throw StorageError.compacted }
        if hi > lastIndex() + 1 { throw StorageError.unavailable }
        var out: [Entry] = []
        if lo < unstableOffset {
            out = try storage.entries(lo, min(hi, unstableOffset), maxBytes: maxBytes)
            // Storage stopped early because of size: do not add unstable entries after a gap.
            if let last = out.last, last.index + 1 < min(hi, unstableOffset) { return out }
        }
        if hi > unstableOffset {
            var size = out.reduce(0) { $0 + $1.byteSize }
            var i = unstableOffset.distance(to: max(lo, unstableOffset))
            let end = unstableOffset.distance(to: hi)
            while i < end {
                size += unstable[i].byteSize
                if !out.isEmpty && size > maxBytes { break }
                out.append(unstable[i])
                i += 1
            }
        }
        return out
    }

    /// Entries from `lo` to the end of the log.
    func entries(from lo: LogIndex, maxBytes: Int) throws -> [Entry] {
        try entries(lo, lastIndex() + 1, maxBytes: maxBytes)
    }

    func snapshot() throws -> Snapshot {
        if let s = unstableSnapshot { return s }
        return try storage.snapshot()
    }

    /// Committed entries not yet applied, bounded by `maxApplyBytes`.
    func nextCommittedEntries() -> [Entry] {
        let lo = max(applied + 1, firstIndex())
        guard committed >= lo else { return [] }
        return (try? entries(lo, committed + 1, maxBytes: maxApplyBytes)) ?? []
    }

    var hasNextCommittedEntries: Bool {
        committed >= max(applied + 1, firstIndex())
    }

    var unstableEntries: [Entry] { unstable }

    // MARK: Changing the log

    /// Appends entries created by this replica as leader.
    mutating func append(_ entries: [Entry]) -> LogIndex {
        guard let first = entries.first else { return lastIndex() }
        precondition(first.index > committed, "append below commit \(committed)")
        truncateAndAppend(entries)
        return lastIndex()
    }

    /// The follower side of AppendEntries (§5.3): returns the last index the leader's message
    /// proves we match, or nil when the log does not contain `(index, logTerm)`.
    mutating func maybeAppend(index: LogIndex, logTerm: Term, commit: LogIndex, entries: [Entry])
        -> LogIndex?
    {
        guard matchTerm(index, logTerm) else { return nil }
        let lastNew = index + entries.count
        if let conflict = findConflict(entries) {
            precondition(conflict > committed, "entry \(conflict) conflicts with committed entry \(committed)")
            let start = index.distance(to: conflict) - 1
            truncateAndAppend(Array(entries[start...]))
        }
        self.commit(to: min(commit, lastNew))
        return lastNew
    }

    /// The first new entry whose index is past our log or whose term differs from ours.
    private func findConflict(_ entries: [Entry]) -> LogIndex? {
        for e in entries where !matchTerm(e.index, e.term) {
            return e.index
        }
        return nil
    }

    /// The largest index `<= index` whose term is `<= term` (the thesis's fast back-off):
    /// the leader and the follower both use it to skip whole terms of mismatched entries.
    func findConflictByTerm(_ index: LogIndex, _ term: Term) -> (LogIndex, Term) {
        var i = min(index, lastIndex())
        while true {
            guard let t = try? self.term(i) else { return (i, 0) }
            if t <= term || i == 0 { return (i, t) }
            i = i - 1
        }
    }

    private mutating func truncateAndAppend(_ entries: [Entry]) {
        guard let first = entries.first else { return }
        if first.index == unstableOffset + unstable.count {
            unstable.append(contentsOf: entries)
        } else if first.index <= unstableOffset {
            // Replaces all unstable entries; storage will truncate its own tail on persist.
            unstableOffset = first.index
            unstable = entries
        } else {
            let keep = unstableOffset.distance(to: first.index)
            unstable.removeSubrange(keep...)
            unstable.append(contentsOf: entries)
        }
    }

    mutating func commit(to index: LogIndex) {
        guard index > committed else { return }
        precondition(index <= lastIndex(), "commit \(index) is past the last index \(lastIndex())")
        committed = index
    }

    /// Commits `index` if it is in the current term (Raft §5.4.2: only entries of the
    /// current term are committed by counting).
    mutating func maybeCommit(_ index: LogIndex, term: Term) -> Bool {
        guard index > committed, termOrZero(index) == term else { return false }
        commit(to: index)
        return true
    }

    mutating func applied(to index: LogIndex) {
        guard index > applied else { return }
        precondition(index <= committed, "applied \(index) beyond commit \(committed)")
        applied = index
    }

    /// The driver persisted entries through `(index, term)`.
    mutating func stable(to index: LogIndex, term: Term) {
        guard let first = unstable.first, index >= first.index else { return }
        let i = unstableOffset.distance(to: index)
        guard i < unstable.count, unstable[i].term == term else { return }
        unstable.removeSubrange(0...i)
        unstableOffset = index + 1
    }

    mutating func stableSnapshot(to index: LogIndex) {
        if let s = unstableSnapshot, s.metadata.index == index { unstableSnapshot = nil }
    }

    /// Replaces the log with a snapshot from the leader.
    mutating func restore(_ snapshot: Snapshot) {
        let idx = snapshot.metadata.index
        committed = idx
        unstable = []
        unstableOffset = idx + 1
        unstableSnapshot = snapshot
    }

    /// The state machine is being reset to the snapshot being persisted.
    mutating func appliedSnapshot(_ index: LogIndex) {
        if index > applied { applied = index }
    }
}

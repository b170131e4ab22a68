/// Errors a log storage reports to the core.
public enum StorageError: Error, Sendable, Hashable {
    /// The requested index is below the first retained entry (it is covered by a snapshot).
    case compacted
    /// The requested index is above the last entry.
    case unavailable
    /// The snapshot is being produced; the core will ask again later.
    case snapshotTemporarilyUnavailable
}

/// The read-only view of durable Raft state that the core needs. The driver owns the
/// storage and writes to it while handling a `Ready`; the core only reads.
///
/// Indices: `firstIndex()` is the first entry still held (snapshot index + 1);
/// `term(firstIndex() - 1)` must answer with the snapshot's term.
public protocol RaftLogStorage: AnyObject {
    /// The hard state saved last, and the configuration at the snapshot's index (the one the
    /// cluster was created with if there is no snapshot).
    func initialState() throws -> (HardState, Membership)
    /// Entries in `lo..<hi`, stopping early once `maxBytes` is exceeded (at least one entry is
    /// returned if any is in range).
    func entries(_ lo: LogIndex, _ hi: LogIndex, maxBytes: Int) throws -> [Entry]
    /// The term of the entry at `index`, for `firstIndex() - 1 ... lastIndex()`.
    func term(_ index: LogIndex) throws -> Term
    func firstIndex() throws -> LogIndex
    func lastIndex() throws -> LogIndex
    /// The most recent snapshot, with its data (a durable store may read it back from disk:
    /// call it only to send or restore the snapshot).
    func snapshot() throws -> Snapshot
    /// The most recent snapshot's metadata, without reading its data.
    func snapshotMetadata() throws -> SnapshotMetadata
}

extension RaftLogStorage {
    public func snapshotMetadata() throws -> SnapshotMetadata { try snapshot().metadata }
}

/// An in-memory `RaftLogStorage` for tests and the simulator. What is written here counts as
/// durable: the simulator keeps it across a crash of the replica.
public final class MemoryStorage: RaftLogStorage {
    public private(set) var hardState: HardState
    public private(set) var membership: Membership
    public private(set) var currentSnapshot: Snapshot
    /// `log[0]` is a dummy entry at the snapshot's index and term.
    private var log: [Entry]

    public init(membership: Membership) {
        self.hardState = HardState()
        self.membership = membership
        self.currentSnapshot = Snapshot(
            metadata: SnapshotMetadata(index: 0, term: 0, membership: membership), data: [])
        self.log = [Entry(term: 0, index: 0)]
    }

    public func initialState() throws -> (HardState, Membership) { (hardState, membership) }

    public func firstIndex() throws -> LogIndex { log[0].index + 1 }
    public func lastIndex() throws -> LogIndex { log[0].index + (log.count - 1) }

    public func term(_ index: LogIndex) throws -> Term {
        let offset = log[0].index
        if index < offset { throw StorageError.compacted }
        let i = offset.distance(to: index)
        if i >= log.count { throw StorageError.unavailable }
        return log[i].term
    }

    public func entries(_ lo: LogIndex, _ hi: LogIndex, maxBytes: Int) throws -> [Entry] {
        let offset = log[0].index
        if lo <= offset { throw StorageError.compacted }
        if hi > (try lastIndex()) + 1 { throw StorageError.unavailable }
        var out: [Entry] = []
        var size = 0
        var i = offset.distance(to: lo)
        let end = offset.distance(to: hi)
        while i < end {
            let e = log[i]
            size += e.byteSize
            if !out.isEmpty && size > maxBytes { break }
            out.append(e)
            i += 1
        }
        return out
    }

    public func snapshot() throws -> Snapshot { currentSnapshot }

    /// The whole retained log, for checks and traces.
    public var retainedEntries: ArraySlice<Entry> { log[1...] }

    // MARK: Writes (the driver's side)

    public func setHardState(_ hs: HardState) { hardState = hs }

    /// Appends entries, first removing any existing entries from the first new index on.
    public func append(_ entries: [Entry]) {
        guard let first = entries.first else { return }
        let offset = log[0].index
        // Entries at or below the snapshot are already covered by it.
        let fresh = entries.filter { $0.index > offset }
        guard let firstFresh = fresh.first else { return }
        let keep = offset.distance(to: firstFresh.index)
        precondition(keep <= log.count, "append leaves a gap: first new \(first.index), last \(log.count - 1 + Int(offset.rawValue))")
        log.removeSubrange(keep...)
        log.append(contentsOf: fresh)
    }

    /// Replaces everything with `snapshot` (as a follower does on InstallSnapshot).
    public func applySnapshot(_ snapshot: Snapshot) {
        let m = snapshot.metadata
        guard m.index > currentSnapshot.metadata.index else { return }
        currentSnapshot = snapshot
        membership = m.membership
        log = [Entry(term: m.term, index: m.index)]
    }

    /// Records a snapshot the local state machine took at `index` (which must be applied and
    /// retained) with the configuration in effect there (`RaftNode.membership(at:)`; nil keeps
    /// the stored one); entries stay until `compact(through:)`.
    public func createSnapshot(at index: LogIndex, membership: Membership? = nil, data: [UInt8]) throws {
        guard index > currentSnapshot.metadata.index else { return }
        let t = try term(index)
        if let membership { self.membership = membership }
        currentSnapshot = Snapshot(
            metadata: SnapshotMetadata(index: index, term: t, membership: self.membership), data: data)
    }

    /// Drops entries up to and including `index`, which must not exceed the snapshot index.
    public func compact(through index: LogIndex) {
        let offset = log[0].index
        guard index > offset else { return }
        precondition(index <= currentSnapshot.metadata.index, "compacting past the snapshot")
        let i = offset.distance(to: index)
        let dummy = Entry(term: log[i].term, index: log[i].index)
        log.removeSubrange(0...i)
        log.insert(dummy, at: 0)
    }
}

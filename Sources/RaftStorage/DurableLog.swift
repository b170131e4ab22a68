import Foundation
import Raft

/// Durable Raft storage in one data directory: a segmented write-ahead log, snapshot files
/// and a lock file. The core reads it through `RaftLogStorage`; the driver writes each
/// `Ready` with `save(...)`, one record and one fsync per batch (group commit).
///
/// Recovery replays the newest snapshot and the log after it. A torn record at the end of
/// the last segment (a write that never completed) is cut off, with a log line; damage
/// anywhere before that is corruption, and opening fails naming the file and offset rather
/// than silently losing committed entries. Any failed write or fsync puts the storage in a
/// failed state in which every later call throws: the replica must stop.
/// An fsync owed for a record `DurableLog.write` wrote. It holds only the file, so it can
/// run on a thread of its own while the log's owner goes on reading it.
public struct PendingSync: @unchecked Sendable {
    let file: any StorageFile
    public func sync() throws { try file.sync() }
}

/// Writes one snapshot file (temporary name, fsync, rename, directory fsync). It touches no
/// state of the `DurableLog`, so it can run on another thread; see `prepareSnapshot`.
public struct SnapshotWriter: @unchecked Sendable {
    let fs: any StorageFileSystem
    let directory: String
    public let metadata: SnapshotMetadata

    /// Writes `data` as the snapshot at `metadata` and returns it, durable.
    public func write(_ data: [UInt8]) throws -> Snapshot {
        let snap = Snapshot(metadata: metadata, data: data)
        try writeFile(snap)
        return snap
    }

    func writeFile(_ s: Snapshot) throws {
        try fs.replaceAtomically(join(directory, SnapshotFile.name(s.metadata)), in: directory, with: SnapshotFile.encode(s))
    }
}

public final class DurableLog: RaftLogStorage {
    public struct Options: Sendable {
        /// A new segment is started when a record would take the current one past this, or past
        /// 1 GiB (entries' offsets in a segment are kept in 32 bits: `LogLocations`).
        public var segmentBytes: Int
        /// fsync every batch. Turning this off makes acknowledged writes losable: benchmarks
        /// only, and it is logged loudly.
        public var fsync: Bool
        /// Recent entries kept in memory while leader (what lagging followers are sent);
        /// older ones are read from their segment, a run at a time. 2 MiB is about 1.3 s of
        /// renewals at 10,000 a second; 4 MiB (before the runs) cost the leader 2 MiB more
        /// and a follower further behind still read from disk.
        public var cacheBytes: Int
        /// The same while not leader (`setLeader`; at most `cacheBytes`): a follower reads its
        /// entries back only to apply them, moments after they came. Twice the largest append
        /// message (1 MiB), so a follower catching up applies a whole message from memory.
        public var followerCacheBytes: Int
        /// How many snapshot files to keep.
        public var keepSnapshots: Int

        public init(
            segmentBytes: Int = 64 << 20, fsync: Bool = true, cacheBytes: Int = 2 << 20, followerCacheBytes: Int = 2 << 20, keepSnapshots: Int = 2
        ) {
            self.segmentBytes = segmentBytes
            self.fsync = fsync
            self.cacheBytes = cacheBytes
            self.followerCacheBytes = min(followerCacheBytes, cacheBytes)
            self.keepSnapshots = keepSnapshots
        }
    }

    typealias Location = LogLocations.Location

    final class Segment {
        let sequence: UInt64
        let path: String
        let file: any StorageFile
        var size: UInt64
        var maxIndex: LogIndex = 0
        init(sequence: UInt64, path: String, file: any StorageFile, size: UInt64) {
            self.sequence = sequence
            self.path = path
            self.file = file
            self.size = size
        }
    }

    public let directory: String
    public let options: Options
    private let fs: any StorageFileSystem
    private let log: (String) -> Void
    private var lockHandle: (any StorageLock)?

    private var segments: [Segment] = []
    private var segmentBySequence: [UInt64: Segment] = [:]
    private var locations = LogLocations()
    private var offset: LogIndex = 0
    private var offsetTerm: Term = 0
    public private(set) var hardState = HardState()
    private var writtenHardState = HardState()
    public private(set) var membership: Membership
    /// The current snapshot's metadata. Its data stays in its file, read back only to send or
    /// restore it: holding it would cost every replica the registry's size again.
    private var snapshotMeta: SnapshotMetadata
    private var cache: EntryCache
    private var failure: String?
    private var scratchPositions: [(Int, Int)] = []

    /// A random id given to this data directory when it was created. A directory that was
    /// emptied and started again gets a new one, which lets peers notice.
    public private(set) var directoryID: UInt64 = 0

    /// Counters for benchmarks and metrics.
    public private(set) var syncCount = 0
    public private(set) var bytesAppended = 0

    /// Opens (or creates) the data directory and recovers its state.
    /// - Parameters:
    ///   - membership: used when the directory is new.
    ///   - log: receives one line per notable event (torn tail truncated, fsync disabled).
    public init(
        directory: String, fileSystem: any StorageFileSystem = PosixFileSystem(), membership: Membership,
        options: Options = Options(), log: @escaping (String) -> Void = { _ in }
    ) throws {
        self.directory = directory
        self.fs = fileSystem
        self.options = options
        self.log = log
        self.membership = membership
        // Every replica starts as a follower.
        self.cache = EntryCache(limit: min(options.followerCacheBytes, options.cacheBytes))
        self.snapshotMeta = SnapshotMetadata(index: 0, term: 0, membership: membership)
        try fs.createDirectory(directory)
        lockHandle = try fs.lock(join(directory, "LOCK"))
        if !options.fsync {
            log("WARNING: fsync is disabled for \(directory): acknowledged writes can be lost on a crash. Benchmarks only.")
        }
        do {
            try recover()
        } catch {
            lockHandle?.release()
            throw error
        }
    }

    deinit { close() }

    /// The entry cache's limit for the role: `cacheBytes` as leader, `followerCacheBytes`
    /// (never more) otherwise: 2 MiB less held by each follower with the defaults.
    public func setLeader(_ isLeader: Bool) {
        cache.setLimit(isLeader ? options.cacheBytes : min(options.followerCacheBytes, options.cacheBytes))
    }

    /// The entry cache now: its limit and what it holds (bytes as counted against the limit).
    public var cacheUse: (limit: Int, bytes: Int) { (cache.limit, cache.bytes) }
    /// Bytes of entry data the cache keeps alive, those it has dropped included (for tests).
    public var cacheDataHeld: Int { cache.dataBytesHeld }

    /// Closes files and releases the directory lock.
    public func close() {
        for s in segments { s.file.close() }
        segments = []
        lockHandle?.release()
        lockHandle = nil
    }

    // MARK: RaftLogStorage

    public func initialState() throws -> (HardState, Membership) { (hardState, membership) }

    public func firstIndex() throws -> LogIndex { offset + 1 }

    public func lastIndex() throws -> LogIndex { offset + locations.count }

    public func term(_ index: LogIndex) throws -> Term {
        if index == offset { return offsetTerm }
        if index < offset { throw StorageError.compacted }
        let i = offset.distance(to: index) - 1
        guard i < locations.count else { throw StorageError.unavailable }
        return locations.term(at: i)
    }

    public func entries(_ lo: LogIndex, _ hi: LogIndex, maxBytes: Int) throws -> [Entry] {
        if lo <= offset { throw StorageError.compacted }
        if hi > (try lastIndex()) + 1 { throw StorageError.unavailable }
        var out: [Entry] = []
        var size = 0
        var i = lo
        while i < hi {
            // The cache holds the newest entries; older ones come from their segment, a run
            // of them with one read.
            if let e = cache.get(i) {
                size += e.byteSize
                if !out.isEmpty && size > maxBytes { break }
                out.append(e)
                i = i + 1
                continue
            }
            let run = try readRun(from: i, before: hi, budget: maxBytes - size)
            for e in run {
                size += e.byteSize
                if !out.isEmpty && size > maxBytes { return out }
                out.append(e)
            }
            i = i + run.count
        }
        return out
    }

    /// The most one read of entries from a segment takes.
    static let maxRunBytes = 1 << 20

    /// Entries from `lo` (not cached) towards `hi` read with one read: those after it in the
    /// same segment, up to the cache, `budget` bytes of entries (at least one) or
    /// `maxRunBytes` of file. A catching-up follower was sent its entries one read each.
    private func readRun(from lo: LogIndex, before hi: LogIndex, budget: Int) throws -> [Entry] {
        let first = offset.distance(to: lo) - 1
        let end = offset.distance(to: hi) - 1
        let start = locations[first]
        guard let seg = segmentBySequence[start.segment] else {
            throw StorageFailure.failed("segment \(start.segment) of entry \(lo) is gone")
        }
        // In `Entry.byteSize` (the data and 24 bytes; encoded here, the data and 21), so a run
        // stops where the caller's budget does.
        func size(_ loc: Location) -> Int { loc.length + 3 }
        var last = first
        var estimate = size(start)
        while last + 1 < end {
            let next = locations[last + 1]
            guard next.segment == start.segment, next.offset > locations[last].offset,
                next.offset + UInt64(next.length) - start.offset <= UInt64(Self.maxRunBytes), estimate + size(next) <= budget,
                cache.get(offset + (last + 2)) == nil
            else { break }
            estimate += size(next)
            last += 1
        }
        let span = Int(locations[last].offset + UInt64(locations[last].length) - start.offset)
        let bytes = try seg.file.read(at: start.offset, count: span)
        var out: [Entry] = []
        out.reserveCapacity(last - first + 1)
        for k in first...last {
            let loc = locations[k]
            let at = Int(loc.offset - start.offset)
            let index = offset + (k + 1)
            var r = ByteReader(bytes, at: at)
            guard let e = try? r.entry(), r.position == at + loc.length, e.index == index, e.term == loc.term else {
                throw StorageFailure.corrupt(file: seg.path, offset: loc.offset, reason: "entry \(index) does not decode")
            }
            out.append(e)
        }
        return out
    }

    /// The current snapshot, its data read back from its file (and checked) at each call. A
    /// file that cannot be read or fails its check is logged and the call fails (a leader
    /// then sends no snapshot, and tries again later); the replica's state in memory is
    /// intact and goes on, and the next snapshot replaces the file.
    public func snapshot() throws -> Snapshot {
        let m = snapshotMeta
        guard m.index > 0 else { return Snapshot(metadata: m, data: []) }
        let path = join(directory, SnapshotFile.name(m))
        do {
            let file = try fs.open(path, create: false)
            defer { file.close() }
            let snap = try SnapshotFile.decode(try file.read(at: 0, count: Int(try file.size())), file: path)
            guard snap.metadata == m else {
                throw StorageFailure.corrupt(file: path, offset: 0, reason: "the snapshot file's metadata changed since it was written")
            }
            return snap
        } catch {
            let failure = error as? StorageFailure ?? .failed("cannot read the snapshot \(path): \(error)")
            log("cannot read the snapshot back to send or restore it: \(failure); the next snapshot replaces it")
            throw failure
        }
    }

    public func snapshotMetadata() throws -> SnapshotMetadata { snapshotMeta }

    /// The current snapshot's file and where its data starts in it, for messages; nil when
    /// there is no snapshot.
    public var snapshotFile: (path: String, dataOffset: Int)? {
        let m = snapshotMeta
        guard m.index > 0 else { return nil }
        return (join(directory, SnapshotFile.name(m)), SnapshotFile.dataOffset(m))
    }

    /// Where entry `index` is on disk ("FILE at offset N"), for messages; nil if it is not.
    public func location(of index: LogIndex) -> String? {
        guard index > offset else { return nil }
        let i = offset.distance(to: index) - 1
        guard i < locations.count, let seg = segmentBySequence[locations[i].segment] else { return nil }
        return "\(seg.path) at offset \(locations[i].offset)"
    }

    /// Every retained entry, for tests and tools.
    public func retainedEntries() throws -> [Entry] {
        try entries(offset + 1, offset + locations.count + 1, maxBytes: Int.max)
    }

    // MARK: Writing

    /// Persists one `Ready`: the snapshot (if any) first, then the entries and hard state as
    /// one record, made durable with one fsync when `sync` is set. A hard state that changed
    /// only its commit index (`sync` false) is kept in memory and written with the next
    /// record: losing it on a crash only makes the replica relearn the commit index.
    public func save(hardState hs: HardState?, entries: [Entry], snapshot: Snapshot?, sync: Bool) throws {
        guard let pending = try write(hardState: hs, entries: entries, snapshot: snapshot, sync: sync) else { return }
        var failure: (any Error)?
        do { try pending.sync() } catch { failure = error }
        try synced(pending, error: failure)
    }

    /// The first half of `save`: writes the record (to the page cache) and updates the
    /// in-memory log, so reads see the new entries at once, and returns the fsync still owed,
    /// if any. The caller runs `PendingSync.sync()` (on any thread: it touches only the file)
    /// and then `synced(_:error:)` here, before the next write. The entries must not be
    /// counted as persisted (nor acknowledged) until then.
    public func write(hardState hs: HardState?, entries: [Entry], snapshot: Snapshot?, sync: Bool) throws -> PendingSync? {
        try checkHealthy()
        do {
            if let snapshot { try installSnapshot(snapshot) }
            if let hs { hardState = hs }
            if entries.isEmpty && (hardState == writtenHardState || !sync) { return nil }
            let fresh = entries.filter { $0.index > offset }
            if let first = fresh.first, first.index > (try lastIndex()) + 1 {
                throw StorageFailure.invalid("append at \(first.index) leaves a gap after \(try lastIndex())")
            }
            let record = WAL.encodeBatch(
                hardState: hardState != writtenHardState ? hardState : nil, entries: fresh, positions: &scratchPositions)
            let seg = try segmentFor(record.count)
            let start = seg.size
            guard start + UInt64(record.count) <= LogLocations.maxEnd else {
                throw StorageFailure.invalid("a record of \(record.count) bytes is too large for the log (entries end within 4 GiB of a segment's start)")
            }
            try seg.file.write(record, at: start)
            seg.size += UInt64(record.count)
            bytesAppended += record.count
            writtenHardState = hardState
            for (e, (pos, len)) in zip(fresh, scratchPositions) {
                place(e, Location(term: e.term, segment: seg.sequence, offset: start + UInt64(pos), length: len))
                seg.maxIndex = max(seg.maxIndex, e.index)
            }
            return options.fsync ? PendingSync(file: seg.file) : nil
        } catch let e as StorageFailure {
            if case .invalid = e { throw e }
            throw fail(e)
        }
    }

    /// Records the outcome of a `PendingSync`. A failed fsync leaves the file in an unknown
    /// state: the storage fails and refuses everything after (fail-stop).
    public func synced(_ pending: PendingSync, error: (any Error)?) throws {
        if let error {
            throw fail(error as? StorageFailure ?? .failed("fsync failed: \(error)"))
        }
        syncCount += 1
    }

    /// Records a snapshot of the local state machine at `index` (applied, still in the log),
    /// with the configuration in effect there (`RaftNode.membership(at:)`; nil: the stored
    /// one). Entries stay until `compact(through:)`.
    public func createSnapshot(at index: LogIndex, membership: Membership? = nil, data: [UInt8]) throws {
        try checkHealthy()
        guard index > snapshotMeta.index else { return }
        let t = try term(index)
        let snap = Snapshot(metadata: SnapshotMetadata(index: index, term: t, membership: membership ?? self.membership), data: data)
        do {
            try writeSnapshotFile(snap)
        } catch let e as StorageFailure {
            throw fail(e)
        }
        snapshotMeta = snap.metadata
        self.membership = snap.metadata.membership
        removeOldSnapshots()
    }

    /// The first step of a snapshot taken off the owner's thread: fixes its metadata (the
    /// entry at `index` must still be in the log). Nil if a snapshot at or past `index` exists.
    /// Write the data with `SnapshotWriter.write` on any thread, then `adoptSnapshot` here.
    public func prepareSnapshot(at index: LogIndex, membership: Membership? = nil) throws -> SnapshotWriter? {
        try checkHealthy()
        guard index > snapshotMeta.index else { return nil }
        let metadata = SnapshotMetadata(index: index, term: try term(index), membership: membership ?? self.membership)
        return SnapshotWriter(fs: fs, directory: directory, metadata: metadata)
    }

    /// Makes a snapshot written by a `SnapshotWriter` the current one (if nothing newer came
    /// meanwhile) and removes older snapshot files.
    public func adoptSnapshot(_ snap: Snapshot) throws {
        try checkHealthy()
        if snap.metadata.index > snapshotMeta.index {
            snapshotMeta = snap.metadata
            membership = snap.metadata.membership
        }
        removeOldSnapshots()
    }

    /// Drops entries up to `index` (at most the snapshot index) and removes segments that
    /// hold nothing after it.
    public func compact(through index: LogIndex) throws {
        try checkHealthy()
        guard index > offset else { return }
        guard index <= snapshotMeta.index else {
            throw StorageFailure.invalid("cannot compact through \(index): the snapshot is at \(snapshotMeta.index)")
        }
        let t = try term(index)
        do {
            try appendState(reset: false, compactedIndex: index, compactedTerm: t)
        } catch let e as StorageFailure {
            throw fail(e)
        }
        dropPrefix(through: index, term: t)
        removeSegments { $0.maxIndex <= index }
    }

    // MARK: Internals

    private func checkHealthy() throws {
        if let failure { throw StorageFailure.failed(failure) }
    }

    private func fail(_ e: StorageFailure) -> StorageFailure {
        var why = e.description
        if case .failed(let inner) = e { why = inner }
        if failure == nil {
            failure = why
            log("storage failed, refusing further writes: \(why)")
        }
        return .failed(why)
    }

    private func syncFile(_ seg: Segment) throws {
        guard options.fsync else { return }
        try seg.file.sync()
        syncCount += 1
    }

    private func place(_ e: Entry, _ loc: Location) {
        let last = offset + locations.count
        if e.index <= last {
            locations.removeSuffix(from: offset.distance(to: e.index) - 1)
        }
        locations.append(loc)
        cache.append(e)
    }

    private func dropPrefix(through index: LogIndex, term: Term) {
        let n = min(offset.distance(to: index), locations.count)
        locations.removeFirst(n)
        offset = index
        offsetTerm = term
        cache.dropPrefix(through: index)
    }

    /// The segment the next record of `size` bytes goes to, starting a new one when full.
    private func segmentFor(_ size: Int) throws -> Segment {
        if let cur = segments.last, cur.size + UInt64(size) <= UInt64(min(options.segmentBytes, 1 << 30)) || cur.maxIndex == 0 && cur.size < 4096 {
            return cur
        }
        return try startSegment()
    }

    @discardableResult
    private func startSegment() throws -> Segment {
        let sequence = (segments.last?.sequence ?? 0) + 1
        let path = join(directory, "wal-\(hex(sequence)).log")
        let file = try fs.open(path, create: true)
        try file.truncate(to: 0)
        let seg = Segment(sequence: sequence, path: path, file: file, size: 0)
        let header = WAL.encodeState(
            WAL.State(
                hardState: writtenHardState, compactedIndex: offset, compactedTerm: offsetTerm, membership: membership,
                reset: false))
        try file.write(header, at: 0)
        seg.size = UInt64(header.count)
        try syncFile(seg)
        try fs.syncDirectory(directory)
        segments.append(seg)
        segmentBySequence[sequence] = seg
        return seg
    }

    private func appendState(reset: Bool, compactedIndex: LogIndex, compactedTerm: Term) throws {
        writtenHardState = hardState
        let record = WAL.encodeState(
            WAL.State(
                hardState: hardState, compactedIndex: compactedIndex, compactedTerm: compactedTerm,
                membership: membership, reset: reset))
        let seg = try segmentFor(record.count)
        try seg.file.write(record, at: seg.size)
        seg.size += UInt64(record.count)
        try syncFile(seg)
    }

    private func installSnapshot(_ s: Snapshot) throws {
        guard s.metadata.index > snapshotMeta.index else { return }
        try writeSnapshotFile(s)
        snapshotMeta = s.metadata
        membership = s.metadata.membership
        locations.removeAll()
        offset = s.metadata.index
        offsetTerm = s.metadata.term
        cache.reset(next: offset + 1)
        try appendState(reset: true, compactedIndex: offset, compactedTerm: offsetTerm)
        let current = segments.last?.sequence
        removeSegments { $0.sequence != current }
        removeOldSnapshots()
    }

    private func writeSnapshotFile(_ s: Snapshot) throws {
        try SnapshotWriter(fs: fs, directory: directory, metadata: s.metadata).writeFile(s)
    }

    private func removeSegments(where dead: (Segment) -> Bool) {
        guard segments.count > 1 else { return }
        var removed = false
        var kept: [Segment] = []
        for (i, s) in segments.enumerated() {
            if i < segments.count - 1 && dead(s) {
                s.file.close()
                try? fs.remove(s.path)
                segmentBySequence[s.sequence] = nil
                removed = true
            } else {
                kept.append(s)
            }
        }
        segments = kept
        if removed { try? fs.syncDirectory(directory) }
    }

    private func snapshotNames() -> [(index: UInt64, name: String)] {
        let names = (try? fs.list(directory)) ?? []
        return names.compactMap { name -> (UInt64, String)? in
            guard name.hasPrefix("snap-"), name.hasSuffix(".snap") else { return nil }
            let parts = name.dropFirst(5).dropLast(5).split(separator: "-")
            guard parts.count == 2, let idx = UInt64(parts[0], radix: 16) else { return nil }
            return (idx, name)
        }.sorted { $0.0 < $1.0 }
    }

    private func removeOldSnapshots() {
        let all = snapshotNames()
        guard all.count > options.keepSnapshots else { return }
        for s in all.prefix(all.count - options.keepSnapshots) { try? fs.remove(join(directory, s.name)) }
    }

    // MARK: Recovery

    private func recover() throws {
        let names = try fs.list(directory)
        for name in names where name.hasSuffix(".tmp") { try fs.remove(join(directory, name)) }

        if let newest = snapshotNames().last {
            let path = join(directory, newest.name)
            let file = try fs.open(path, create: false)
            defer { file.close() }
            let bytes = try file.read(at: 0, count: Int(try file.size()))
            snapshotMeta = try SnapshotFile.decode(bytes, file: path).metadata
            membership = snapshotMeta.membership
        }

        let walNames = names.filter { $0.hasPrefix("wal-") && $0.hasSuffix(".log") }.sorted()
        var offsetKnown = true
        for (k, name) in walNames.enumerated() {
            guard let sequence = UInt64(name.dropFirst(4).dropLast(4), radix: 16) else { continue }
            let path = join(directory, name)
            let file = try fs.open(path, create: false)
            let bytes = try file.read(at: 0, count: Int(try file.size()))
            let seg = Segment(sequence: sequence, path: path, file: file, size: 0)
            let isLast = k == walNames.count - 1
            var pos = 0
            while pos < bytes.count {
                guard WAL.validRecord(in: bytes, at: pos) else {
                    // A record of a format this build does not know is never taken for a torn
                    // write (cutting it off would lose what a newer build committed).
                    if let version = WAL.otherVersion(in: bytes, at: pos) {
                        throw StorageFailure.corrupt(
                            file: path, offset: UInt64(pos),
                            reason: "WAL record format version \(version) is unknown to this build (it reads version \(WAL.version)); a newer nodelease wrote this directory")
                    }
                    if isLast && !WAL.anyValidRecord(in: bytes, after: pos) {
                        log("\(path): cut off a torn write of \(bytes.count - pos) bytes at offset \(pos) (a write that never completed)")
                        try file.truncate(to: UInt64(pos))
                        if options.fsync { try file.sync() }
                        break
                    }
                    throw StorageFailure.corrupt(
                        file: path, offset: UInt64(pos), reason: "record header or checksum does not match")
                }
                var r = ByteReader(bytes, at: pos + 4)
                let length = Int(try r.u32())
                _ = try r.u32()
                do {
                    try replayRecord(bytes, at: pos, length: length, segment: seg, offsetKnown: &offsetKnown)
                } catch DecodeError.truncated, DecodeError.invalid {
                    throw StorageFailure.corrupt(file: path, offset: UInt64(pos), reason: "record does not decode")
                }
                pos += WAL.headerSize + length
            }
            seg.size = UInt64(pos)
            segments.append(seg)
            segmentBySequence[sequence] = seg
        }
        if !offsetKnown {
            throw StorageFailure.corrupt(
                file: segments.first?.path ?? directory, offset: 0,
                reason: "the log starts at \(offset + 1) but no snapshot or compaction record covers the entries before it")
        }
        writtenHardState = hardState

        let snap = snapshotMeta
        if snap.index > 0 {
            // The configuration at the snapshot's index; the core reads the configuration
            // entries after it from the log. (State records may name an older one: a snapshot
            // file is written without one.)
            membership = snap.membership
            let last = offset + locations.count
            if snap.index < offset {
                throw StorageFailure.corrupt(
                    file: join(directory, SnapshotFile.name(snap)), offset: 0,
                    reason: "snapshot at \(snap.index) is older than the log's compaction point \(offset)")
            }
            if snap.index > last || (try? term(snap.index)) != snap.term {
                // A snapshot installed from the leader whose log record did not make it.
                locations.removeAll()
                offset = snap.index
                offsetTerm = snap.term
            }
        } else if offset > 0 {
            throw StorageFailure.corrupt(file: directory, offset: 0, reason: "the log was compacted to \(offset) but there is no snapshot")
        }
        cache.reset(next: offset + locations.count + 1)
        let last = offset + locations.count
        if hardState.commit > last {
            log("hard state commit \(hardState.commit) is past the last entry \(last); using \(last)")
            hardState.commit = last
        }
        try loadDirectoryID()
        if segments.isEmpty { try startSegment() }
    }

    /// The file `ID`: version 1 (written before formats carried versions) is the id alone, 16
    /// hex digits; version 2 is `nodelease-directory 2`, then the id on the next line.
    static let directoryIDHeader = "nodelease-directory"
    static let directoryIDVersion = 2

    static func parseDirectoryID(_ bytes: [UInt8], file path: String) throws -> UInt64 {
        let text = String(decoding: bytes, as: UTF8.self)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        var idLine = lines.first ?? ""
        if idLine.hasPrefix(directoryIDHeader + " ") {
            let v = idLine.dropFirst(directoryIDHeader.count + 1)
            guard Int(v) == directoryIDVersion else {
                throw StorageFailure.corrupt(
                    file: path, offset: UInt64(directoryIDHeader.utf8.count + 1),
                    reason: "directory id format version \(v) is unknown to this build (it reads versions 1 and \(directoryIDVersion)); a newer nodelease wrote it")
            }
            idLine = lines.count > 1 ? lines[1] : ""
        }
        guard let id = UInt64(idLine, radix: 16), id != 0 else {
            throw StorageFailure.corrupt(file: path, offset: 0, reason: "the directory id does not parse")
        }
        return id
    }

    private func loadDirectoryID() throws {
        let path = join(directory, "ID")
        if fs.exists(path) {
            let f = try fs.open(path, create: false)
            defer { f.close() }
            directoryID = try Self.parseDirectoryID(try f.read(at: 0, count: 128), file: path)
            return
        }
        let id = UInt64.random(in: 1...UInt64.max)
        let f = try fs.open(path + ".tmp", create: true)
        try f.write(Array("\(Self.directoryIDHeader) \(Self.directoryIDVersion)\n\(hex(id))\n".utf8), at: 0)
        try f.sync()
        f.close()
        try fs.rename(path + ".tmp", to: path)
        try fs.syncDirectory(directory)
        directoryID = id
    }

    private func replayRecord(_ bytes: [UInt8], at pos: Int, length: Int, segment: Segment, offsetKnown: inout Bool) throws {
        var r = ByteReader(bytes, at: pos + WAL.headerSize)
        guard let type = WAL.RecordType(rawValue: try r.u8()) else { throw DecodeError.invalid("record type") }
        switch type {
        case .state:
            hardState = try r.hardState()
            let compacted = LogIndex(try r.u64())
            let compactedTerm = Term(try r.u64())
            membership = try r.membership()
            let reset = try r.u8() == 1
            if reset {
                locations.removeAll()
                offset = compacted
                offsetTerm = compactedTerm
                offsetKnown = true
            } else if compacted > offset || (!offsetKnown && compacted == offset) {
                let n = min(offset.distance(to: compacted), locations.count)
                locations.removeFirst(n)
                offset = compacted
                offsetTerm = compactedTerm
                offsetKnown = true
            }
        case .batch:
            if try r.u8() == 1 { hardState = try r.hardState() }
            let count = Int(try r.u32())
            for _ in 0..<count {
                let start = r.position
                let e = try r.entry()
                let loc = Location(term: e.term, segment: segment.sequence, offset: UInt64(start), length: r.position - start)
                segment.maxIndex = max(segment.maxIndex, e.index)
                if e.index <= offset { continue }
                guard LogLocations.fits(loc) else {
                    throw StorageFailure.corrupt(
                        file: segment.path, offset: UInt64(start),
                        reason: "entry \(e.index) ends past 4 GiB in its segment, which this build does not read (it keeps offsets in 32 bits)")
                }
                let last = offset + locations.count
                if e.index <= last {
                    locations.removeSuffix(from: offset.distance(to: e.index) - 1)
                } else if e.index > last + 1 {
                    guard locations.isEmpty else {
                        throw StorageFailure.corrupt(
                            file: segment.path, offset: UInt64(pos), reason: "entry \(e.index) follows entry \(last)")
                    }
                    // The segments before this one were removed after a compaction; a later
                    // compaction record must cover the entries before this one.
                    offset = e.index - 1
                    offsetTerm = 0
                    offsetKnown = false
                }
                locations.append(loc)
            }
        }
    }
}

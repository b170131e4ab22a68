import Raft
import RaftStorage

/// A replica's disk in the simulator. Either the in-memory storage (fast, crashes keep a
/// prefix of the write in progress), or the real `DurableLog` on a `MemoryFileSystem`, where
/// a crash loses or tears whatever was not synced and restarting runs the real recovery.
final class SimDisk {
    private let membership: Membership
    private var memory: MemoryStorage?
    private var durable: DurableLog?
    private let fs: MemoryFileSystem?
    private(set) var notes: [String] = []

    init(membership: Membership, durable: Bool) throws {
        self.membership = membership
        if durable {
            let fs = MemoryFileSystem()
            self.fs = fs
            self.durable = try DurableLog(
                directory: "/data", fileSystem: fs, membership: membership,
                options: .init(segmentBytes: 4096, cacheBytes: 2048, followerCacheBytes: 512))
        } else {
            fs = nil
            memory = MemoryStorage(membership: membership)
        }
    }

    var isDurable: Bool { fs != nil }

    /// The durable log's entry cache follows the role, as a replica's does.
    func setLeader(_ isLeader: Bool) { durable?.setLeader(isLeader) }

    var storage: any RaftLogStorage { (durable as (any RaftLogStorage)?) ?? memory! }

    /// The storage, unless it is a durable log closed by a crash (until `reopen`).
    var openStorage: (any RaftLogStorage)? { (durable as (any RaftLogStorage)?) ?? memory }

    var hardState: HardState { (try? storage.initialState().0) ?? HardState() }

    func save(hardState: HardState?, entries: [Entry], snapshot: Snapshot?, sync: Bool) throws {
        if let durable {
            try durable.save(hardState: hardState, entries: entries, snapshot: snapshot, sync: sync)
        } else if let memory {
            if let snapshot { memory.applySnapshot(snapshot) }
            memory.append(entries)
            if let hardState { memory.setHardState(hardState) }
        }
    }

    func createSnapshot(at index: LogIndex, membership: Membership?, data: [UInt8]) throws {
        if let durable {
            try durable.createSnapshot(at: index, membership: membership, data: data)
        } else {
            try memory!.createSnapshot(at: index, membership: membership, data: data)
        }
    }

    func compact(through index: LogIndex) throws {
        if let durable { try durable.compact(through: index) } else { memory!.compact(through: index) }
    }

    /// The process dies while `inFlight` is being written. Returns what survived, for the
    /// trace, and the entries and hard state that did (for the checker).
    func crash(inFlight: Ready?, random: inout DeterministicGenerator) -> (note: String, entries: [Entry], hardState: HardState?) {
        if let durable, let fs {
            if let rd = inFlight, rd.hardState != nil || !rd.entries.isEmpty {
                // The write was issued; the power went before its fsync finished.
                fs.failSync = true
                try? durable.save(hardState: rd.hardState, entries: rd.entries, snapshot: nil, sync: true)
                fs.failSync = false
            }
            durable.close()
            self.durable = nil
            fs.crash(tear: &random)
            return ("disk keeps only what was synced, perhaps torn", [], nil)
        }
        guard let memory, let rd = inFlight, !rd.entries.isEmpty, rd.snapshot == nil else {
            return ("nothing was being written", [], nil)
        }
        // A prefix of the entries made it, and the hard state only if all did.
        let k = Int(random.next() % UInt64(rd.entries.count + 1))
        let kept = Array(rd.entries[0..<k])
        memory.append(kept)
        var hs: HardState?
        if k == rd.entries.count, let h = rd.hardState {
            memory.setHardState(h)
            hs = h
        }
        return ("\(k) of \(rd.entries.count) unsynced entries survive", kept, hs)
    }

    /// Reopens the disk after a crash (recovery runs for the durable log).
    func reopen() throws {
        guard let fs, durable == nil else { return }
        durable = try DurableLog(
            directory: "/data", fileSystem: fs, membership: membership,
            options: .init(segmentBytes: 4096, cacheBytes: 2048, followerCacheBytes: 512), log: { [weak self] in self?.notes.append($0) })
    }

    /// Every retained entry and the term before the first, for the checker after recovery.
    func retained() -> (entries: [Entry], previousTerm: Term?) {
        let s = storage
        guard let first = try? s.firstIndex(), let last = try? s.lastIndex(), last >= first,
            let es = try? s.entries(first, last + 1, maxBytes: .max)
        else { return ([], nil) }
        return (es, try? s.term(first - 1))
    }
}

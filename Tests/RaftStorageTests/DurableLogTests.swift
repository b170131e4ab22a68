import Foundation
import Raft
import RaftStorage
import Testing

let voters = Membership(voters: [1, 2, 3])

func entry(_ term: Term, _ index: LogIndex, _ text: String = "") -> Entry {
    Entry(term: term, index: index, data: Array((text.isEmpty ? "e\(index)" : text).utf8))
}

func entries(_ range: ClosedRange<UInt64>, term: Term) -> [Entry] {
    range.map { entry(term, LogIndex($0)) }
}

func open(_ fs: MemoryFileSystem, _ options: DurableLog.Options = .init(), log: @escaping (String) -> Void = { _ in }) throws -> DurableLog {
    try DurableLog(directory: "/data", fileSystem: fs, membership: voters, options: options, log: log)
}

struct DurableLogTests {
    @Test func roundTripOfEntriesAndHardState() throws {
        let fs = MemoryFileSystem()
        do {
            let log = try open(fs)
            try log.save(hardState: HardState(term: 2, vote: 1, commit: 3), entries: entries(1...5, term: 2), snapshot: nil, sync: true)
            log.close()
        }
        let log = try open(fs)
        #expect(try log.initialState().0 == HardState(term: 2, vote: 1, commit: 3))
        #expect(try log.retainedEntries() == entries(1...5, term: 2))
        #expect(try log.firstIndex() == 1 && log.lastIndex() == 5 && log.term(3) == 2 && log.term(0) == 0)
        #expect(throws: StorageError.unavailable) { try log.term(6) }
    }

    @Test func overwritingASuffixSurvivesRecovery() throws {
        let fs = MemoryFileSystem()
        do {
            let log = try open(fs)
            try log.save(hardState: HardState(term: 1), entries: entries(1...5, term: 1), snapshot: nil, sync: true)
            try log.save(hardState: HardState(term: 2), entries: [entry(2, 3, "new3"), entry(2, 4, "new4")], snapshot: nil, sync: true)
            #expect(try log.lastIndex() == 4)
            log.close()
        }
        let log = try open(fs)
        #expect(try log.retainedEntries().map(\.term) == [1, 1, 2, 2])
        #expect(try log.entries(3, 5, maxBytes: .max).map { String(decoding: $0.data, as: UTF8.self) } == ["new3", "new4"])
    }

    @Test func commitOnlyHardStateIsWrittenWithTheNextRecord() throws {
        let fs = MemoryFileSystem()
        let log = try open(fs)
        try log.save(hardState: HardState(term: 1, vote: 1, commit: 0), entries: entries(1...2, term: 1), snapshot: nil, sync: true)
        let syncs = fs.syncs
        try log.save(hardState: HardState(term: 1, vote: 1, commit: 2), entries: [], snapshot: nil, sync: false)
        #expect(fs.syncs == syncs, "a commit-only change costs no fsync")
        #expect(try log.initialState().0.commit == 2)
        try log.save(hardState: nil, entries: [entry(1, 3)], snapshot: nil, sync: true)
        log.close()
        #expect(try open(fs).initialState().0 == HardState(term: 1, vote: 1, commit: 2))
    }

    @Test func segmentsRollOverAndOldEntriesAreReadFromDisk() throws {
        let fs = MemoryFileSystem()
        let options = DurableLog.Options(segmentBytes: 512, cacheBytes: 256)
        do {
            let log = try open(fs, options)
            for i in stride(from: 1, through: 200, by: 4) {
                try log.save(hardState: HardState(term: 1), entries: entries(UInt64(i)...UInt64(i + 3), term: 1), snapshot: nil, sync: true)
            }
            #expect(try log.entries(1, 201, maxBytes: .max) == entries(1...200, term: 1))
            log.close()
        }
        let segments = try fs.list("/data").filter { $0.hasPrefix("wal-") }
        #expect(segments.count > 10)
        let log = try open(fs, options)
        #expect(try log.retainedEntries() == entries(1...200, term: 1))
        // maxBytes stops early but always returns at least one entry.
        #expect(try log.entries(10, 100, maxBytes: 1).count == 1)
    }

    @Test func snapshotAndCompactionRemoveOldSegments() throws {
        let fs = MemoryFileSystem()
        let options = DurableLog.Options(segmentBytes: 400)
        do {
            let log = try open(fs, options)
            for i in 1...100 {
                try log.save(hardState: HardState(term: 3, commit: LogIndex(UInt64(i))), entries: [entry(3, LogIndex(UInt64(i)))], snapshot: nil, sync: true)
            }
            let before = try fs.list("/data").filter { $0.hasPrefix("wal-") }.count
            try log.createSnapshot(at: 90, data: Array("state@90".utf8))
            try log.compact(through: 80)
            let after = try fs.list("/data").filter { $0.hasPrefix("wal-") }.count
            #expect(after < before)
            #expect(try log.firstIndex() == 81)
            #expect(throws: StorageError.compacted) { try log.entries(80, 82, maxBytes: .max) }
            log.close()
        }
        let log = try open(fs, options)
        #expect(try log.firstIndex() == 81 && log.lastIndex() == 100)
        #expect(try log.term(80) == 3)
        #expect(try log.snapshot().metadata.index == 90 && log.snapshot().data == Array("state@90".utf8))
        #expect(try log.retainedEntries() == entries(81...100, term: 3))
    }

    @Test func installedSnapshotReplacesTheLog() throws {
        let fs = MemoryFileSystem()
        do {
            let log = try open(fs)
            try log.save(hardState: HardState(term: 1), entries: entries(1...10, term: 1), snapshot: nil, sync: true)
            let snap = Snapshot(metadata: SnapshotMetadata(index: 50, term: 4, membership: voters), data: [1, 2, 3])
            try log.save(hardState: HardState(term: 4, commit: 50), entries: [], snapshot: snap, sync: true)
            #expect(try log.firstIndex() == 51 && log.lastIndex() == 50 && log.term(50) == 4)
            try log.save(hardState: nil, entries: [entry(4, 51)], snapshot: nil, sync: true)
            log.close()
        }
        let log = try open(fs)
        #expect(try log.firstIndex() == 51 && log.lastIndex() == 51)
        #expect(try log.snapshot().data == [1, 2, 3])
        #expect(try log.initialState().0.commit == 50)
    }

    /// Entries older than the cache come from their segment a run at a time (one read for
    /// many entries), stop at a segment's end, at the cache and at `maxBytes`, and read the
    /// newest copy of a rewritten suffix.
    @Test func entriesOutsideTheCacheAreReadInRuns() throws {
        let fs = MemoryFileSystem()
        // About 40 entries a segment; a cache of a few entries.
        let log = try open(fs, DurableLog.Options(segmentBytes: 2048, cacheBytes: 600, followerCacheBytes: 600))
        for i in 1...200 {
            try log.save(hardState: HardState(term: 1, commit: LogIndex(UInt64(i))), entries: [entry(1, LogIndex(UInt64(i)))], snapshot: nil, sync: true)
        }
        try log.save(hardState: HardState(term: 2), entries: [entry(2, 150, "new150"), entry(2, 151, "new151")], snapshot: nil, sync: true)
        let expected = entries(1...149, term: 1) + [entry(2, 150, "new150"), entry(2, 151, "new151")]
        let segments = try fs.list("/data").filter { $0.hasPrefix("wal-") }.count
        #expect(segments >= 5)
        let before = fs.reads
        #expect(try log.entries(1, 152, maxBytes: .max) == expected)
        // One read a segment, not one an entry.
        #expect(fs.reads - before <= segments)
        // A byte budget: the entries that fit (at least one), whatever the runs.
        func fitting(_ budget: Int) -> [Entry] {
            var fit: [Entry] = []
            var total = 0
            for e in expected[2...] {
                total += e.byteSize
                if !fit.isEmpty && total > budget { break }
                fit.append(e)
            }
            return fit
        }
        for budget in [100, 260, 1000, 3000] {
            #expect(try log.entries(3, 152, maxBytes: budget) == fitting(budget))
        }
        #expect(try log.entries(3, 152, maxBytes: 0) == [expected[2]])
        for lo in stride(from: 1, to: 152, by: 7) {
            #expect(try log.entries(LogIndex(UInt64(lo)), 152, maxBytes: .max) == Array(expected[(lo - 1)...]))
        }
    }

    /// The data is not held in memory: every `snapshot()` reads the file back and checks it, so
    /// damage after the write is reported instead of being sent to a peer; the log goes on.
    @Test func aSnapshotsDataIsReadBackFromItsFile() throws {
        let fs = MemoryFileSystem()
        var notes: [String] = []
        let log = try open(fs, log: { notes.append($0) })
        try log.save(hardState: HardState(term: 1, commit: 10), entries: entries(1...10, term: 1), snapshot: nil, sync: true)
        try log.createSnapshot(at: 8, data: Array("state@8".utf8))
        #expect(try log.snapshotMetadata().index == 8)
        #expect(try log.snapshot().data == Array("state@8".utf8))
        let name = try #require(try fs.list("/data").first { $0.hasPrefix("snap-") })
        let size = try #require(fs.contents("/data/" + name)).count
        fs.corrupt("/data/" + name, at: size - 2)
        // The metadata needs no read; the data does, and its checksum fails.
        #expect(try log.snapshotMetadata().index == 8)
        #expect(throws: StorageFailure.self) { try log.snapshot() }
        #expect(notes.contains { $0.contains("cannot read the snapshot back") })
        try log.save(hardState: nil, entries: [entry(1, 11)], snapshot: nil, sync: true)
        // The next snapshot replaces the damaged file.
        try log.createSnapshot(at: 10, data: Array("state@10".utf8))
        #expect(try log.snapshot().data == Array("state@10".utf8))
    }

    @Test func aSecondOpenOfTheDirectoryIsRefused() throws {
        let fs = MemoryFileSystem()
        let first = try open(fs)
        #expect(throws: StorageFailure.locked("/data/LOCK")) { try open(fs) }
        first.close()
        _ = try open(fs)
    }

    @Test func fsyncFailureStopsTheStorage() throws {
        let fs = MemoryFileSystem()
        var lines: [String] = []
        let log = try open(fs, log: { lines.append($0) })
        try log.save(hardState: HardState(term: 1), entries: entries(1...2, term: 1), snapshot: nil, sync: true)
        fs.failSync = true
        #expect(throws: StorageFailure.self) {
            try log.save(hardState: nil, entries: [entry(1, 3)], snapshot: nil, sync: true)
        }
        fs.failSync = false
        // No retry can pretend the earlier write is durable: the storage stays failed.
        do {
            try log.save(hardState: nil, entries: [entry(1, 4)], snapshot: nil, sync: true)
            Issue.record("a failed storage accepted a write")
        } catch let StorageFailure.failed(why) {
            #expect(why.contains("fsync"))
        }
        #expect(throws: StorageFailure.self) { try log.createSnapshot(at: 2, data: []) }
        #expect(lines.contains { $0.contains("storage failed") })
    }

    @Test func fsyncOffIsAnnouncedLoudly() throws {
        var lines: [String] = []
        _ = try open(MemoryFileSystem(), DurableLog.Options(fsync: false), log: { lines.append($0) })
        #expect(lines.contains { $0.contains("WARNING: fsync is disabled") })
    }
}

struct CrashRecoveryTests {
    /// Writes `synced` batches, then cuts the last batch at every byte offset (as a torn write
    /// would) and checks recovery keeps exactly the synced prefix.
    @Test func cutAtEveryByteOfTheLastRecord() throws {
        let fs = MemoryFileSystem()
        let path = "/data/wal-0000000000000001.log"
        var synced: [UInt8] = []
        do {
            let log = try open(fs)
            try log.save(hardState: HardState(term: 1, vote: 2), entries: entries(1...3, term: 1), snapshot: nil, sync: true)
            try log.save(hardState: HardState(term: 1, vote: 2, commit: 3), entries: entries(4...5, term: 1), snapshot: nil, sync: true)
            synced = fs.contents(path)!
            try log.save(hardState: HardState(term: 2, vote: 3, commit: 5), entries: entries(6...7, term: 2), snapshot: nil, sync: true)
            log.close()
        }
        let full = fs.contents(path)!
        #expect(full.count > synced.count)
        for cut in synced.count...full.count {
            // A prefix made it ...
            let crashFS = MemoryFileSystem()
            crashFS.setContents(path, Array(full[0..<cut]))
            var notes: [String] = []
            let log = try open(crashFS, log: { notes.append($0) })
            if cut == full.count {
                #expect(try log.lastIndex() == 7 && log.initialState().0.term == 2)
            } else {
                #expect(try log.lastIndex() == 5, "cut at \(cut)")
                #expect(try log.initialState().0 == HardState(term: 1, vote: 2, commit: 3))
                #expect(try log.retainedEntries() == entries(1...5, term: 1))
                if cut > synced.count { #expect(notes.contains { $0.contains("torn write of \(cut - synced.count) bytes") }) }
            }
            log.close()
            // ... or a later part did and the bytes before it are zeros.
            if cut > synced.count && cut < full.count {
                let holeFS = MemoryFileSystem()
                holeFS.setContents(path, Array(full[0..<synced.count]) + [UInt8](repeating: 0, count: cut - synced.count) + Array(full[cut...]))
                let l2 = try open(holeFS)
                #expect(try l2.lastIndex() == 5, "hole up to \(cut)")
                l2.close()
            }
        }
    }

    @Test func aFlippedByteInAMiddleRecordIsCorruption() throws {
        let fs = MemoryFileSystem()
        let path = "/data/wal-0000000000000001.log"
        do {
            let log = try open(fs)
            for i in 1...5 { try log.save(hardState: HardState(term: 1), entries: [entry(1, LogIndex(UInt64(i)))], snapshot: nil, sync: true) }
            log.close()
        }
        let size = fs.contents(path)!.count
        fs.corrupt(path, at: size / 2)
        do {
            _ = try open(fs)
            Issue.record("opened a corrupt log")
        } catch let StorageFailure.corrupt(file, offset, _) {
            #expect(file == path)
            #expect(offset > 0 && offset < UInt64(size))
        }
    }

    @Test func aFlippedByteInTheSnapshotIsCorruption() throws {
        let fs = MemoryFileSystem()
        do {
            let log = try open(fs)
            try log.save(hardState: HardState(term: 1), entries: entries(1...5, term: 1), snapshot: nil, sync: true)
            try log.createSnapshot(at: 5, data: Array(repeating: 7, count: 100))
            log.close()
        }
        let name = try #require(try fs.list("/data").first { $0.hasPrefix("snap-") })
        fs.corrupt("/data/" + name, at: 40)
        #expect(throws: StorageFailure.self) { try open(fs) }
        do { _ = try open(fs) } catch let e as StorageFailure {
            #expect(e.description.contains(name))
            #expect(e.description.contains("refusing to start"))
        }
    }

    /// Random batches with crashes at random points that lose or tear unsynced data: every
    /// batch acknowledged (save returned) survives, and nothing else appears.
    @Test(arguments: 1...40)
    func randomCrashesKeepEveryAcknowledgedBatch(seed: UInt64) throws {
        var random = DeterministicGenerator(seed: seed)
        let fs = MemoryFileSystem()
        let options = DurableLog.Options(segmentBytes: 300 + Int(random.next() % 2000), cacheBytes: 200)
        var acknowledged: [Entry] = []
        var term: Term = 1
        var snapshotAt: LogIndex = 0
        for _ in 0..<8 {
            let log = try open(fs, options)
            var stored = try log.entries(log.firstIndex(), log.lastIndex() + 1, maxBytes: .max)
            let first = try log.firstIndex()
            if let last = stored.last, last.data == Array("unacked".utf8) {
                // The unacknowledged write reached the disk whole: allowed, and now part of the log.
                stored.removeLast()
                acknowledged.removeAll { $0.index >= last.index }
                acknowledged.append(last)
                stored.append(last)
            }
            #expect(stored == acknowledged.filter { $0.index >= first }, "seed \(seed)")
            for _ in 0..<Int(random.next() % 20) {
                var next = (acknowledged.last?.index ?? 0) + 1
                if random.chance(0.15) && next > snapshotAt + 3 {
                    // Overwrite a suffix (a new leader's log), never below the snapshot.
                    next = next - Int(random.next() % UInt64(min(3, snapshotAt.distance(to: next) - 1)) + 1)
                    term = term.next
                }
                let n = 1 + Int(random.next() % 5)
                let batch = (0..<n).map { entry(term, next + $0, "s\(seed)-\(next + $0)") }
                try log.save(hardState: HardState(term: term), entries: batch, snapshot: nil, sync: true)
                acknowledged.removeAll { $0.index >= next }
                acknowledged += batch
                if random.chance(0.1), let last = acknowledged.last, last.index > snapshotAt + 5 {
                    snapshotAt = last.index - 2
                    try log.createSnapshot(at: snapshotAt, data: [1])
                    try log.compact(through: snapshotAt - 1)
                }
            }
            // One more batch is written but its fsync fails: never acknowledged. The crash
            // loses it, tears it, or (rarely) keeps it whole.
            fs.failSync = true
            let pending = entry(term, (acknowledged.last?.index ?? 0) + 1, "unacked")
            #expect(throws: StorageFailure.self) { try log.save(hardState: nil, entries: [pending], snapshot: nil, sync: true) }
            fs.failSync = false
            log.close()
            fs.crash(tear: &random)
        }
    }
}

/// The entry cache holds less while not leader.
@Suite struct EntryCacheRoleTests {
    @Test func aFollowerKeepsTheSmallerCacheAndALeaderTheLarger() throws {
        let fs = MemoryFileSystem()
        let options = DurableLog.Options(segmentBytes: 1 << 20, cacheBytes: 4096, followerCacheBytes: 1024)
        let log = try DurableLog(directory: "/data", fileSystem: fs, membership: Membership(voters: [1]), options: options)
        var records: [Entry] = []
        for i in 1...100 { records.append(Entry(term: 1, index: LogIndex(UInt64(i)), data: [UInt8](repeating: 7, count: 40))) }
        // A new replica is a follower.
        try log.save(hardState: HardState(term: 1), entries: Array(records[0..<50]), snapshot: nil, sync: true)
        #expect(log.cacheUse.limit == 1024)
        #expect(log.cacheUse.bytes <= 1024 && log.cacheUse.bytes > 512)
        log.setLeader(true)
        try log.save(hardState: nil, entries: Array(records[50..<100]), snapshot: nil, sync: true)
        #expect(log.cacheUse.limit == 4096)
        #expect(log.cacheUse.bytes > 2048 && log.cacheUse.bytes <= 4096)
        log.setLeader(false)
        #expect(log.cacheUse.bytes <= 1024)
        // Whatever the cache holds, every entry is still read back (older ones from disk).
        #expect(try log.entries(1, 101, maxBytes: .max) == records)
        log.close()
    }

    /// An entry that leaves the cache leaves memory: its slot is reclaimed a thousand at a
    /// time, but it held on to the entry's data until then (ten times the limit here).
    @Test func droppedEntriesDoNotStayInMemory() throws {
        let fs = MemoryFileSystem()
        let options = DurableLog.Options(segmentBytes: 1 << 20, cacheBytes: 4096, followerCacheBytes: 4096)
        let log = try DurableLog(directory: "/data", fileSystem: fs, membership: Membership(voters: [1]), options: options)
        for i in 1...1500 {
            let e = Entry(term: 1, index: LogIndex(UInt64(i)), data: [UInt8](repeating: 7, count: 40))
            try log.save(hardState: HardState(term: 1), entries: [e], snapshot: nil, sync: false)
            #expect(log.cacheDataHeld <= 4096)
        }
        log.close()
    }
}

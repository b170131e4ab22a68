import Foundation
import Raft
import RaftStorage
import Testing

/// The same storage on the real file system, in a temporary directory.
struct PosixStorageTests {
    func tempDirectory() -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("nodelease-test-\(UUID().uuidString)").path
        return path
    }

    @Test func roundTripOnDisk() throws {
        let dir = tempDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            let log = try DurableLog(directory: dir, membership: voters, options: .init(segmentBytes: 1024))
            for i in stride(from: 1, through: 100, by: 10) {
                try log.save(hardState: HardState(term: 1, vote: 1, commit: LogIndex(UInt64(i))), entries: entries(UInt64(i)...UInt64(i + 9), term: 1), snapshot: nil, sync: true)
            }
            try log.createSnapshot(at: 60, data: Array("sixty".utf8))
            try log.compact(through: 50)
            log.close()
        }
        let log = try DurableLog(directory: dir, membership: voters)
        #expect(try log.firstIndex() == 51 && log.lastIndex() == 100)
        #expect(try log.retainedEntries() == entries(51...100, term: 1))
        #expect(try log.snapshot().data == Array("sixty".utf8))
        #expect(try log.initialState().0.commit == 91)
    }

    @Test func theDataDirectoryIsLockedWhileOpen() throws {
        let dir = tempDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let first = try DurableLog(directory: dir, membership: voters)
        #expect(throws: StorageFailure.locked(dir + "/LOCK")) { try DurableLog(directory: dir, membership: voters) }
        first.close()
        let second = try DurableLog(directory: dir, membership: voters)
        second.close()
    }

    @Test func aTornTailOnDiskIsCutOff() throws {
        let dir = tempDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            let log = try DurableLog(directory: dir, membership: voters)
            try log.save(hardState: HardState(term: 1), entries: entries(1...3, term: 1), snapshot: nil, sync: true)
            log.close()
        }
        let path = dir + "/wal-0000000000000001.log"
        let handle = try #require(FileHandle(forWritingAtPath: path))
        handle.seekToEndOfFile()
        handle.write(Data([0x4E, 0x57, 0x4C, 0x31, 0xff, 0, 0, 0, 1, 2]))  // half a record
        handle.closeFile()
        var notes: [String] = []
        let log = try DurableLog(directory: dir, membership: voters, log: { notes.append($0) })
        #expect(try log.lastIndex() == 3)
        #expect(notes.contains { $0.contains("torn write of 10 bytes") })
    }
}

import ChildProcess
import Foundation
import Raft
import RaftStorage
import Testing

/// A real process appends to a real log and is killed with SIGKILL at random moments; every
/// entry it acknowledged must be there when the log is opened again.
struct KillTests {
    static var writer: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("nodelease-microbench")
    }

    @Test func sigkillAtAnyMomentKeepsEveryAcknowledgedEntry() throws {
        #expect(FileManager.default.isExecutableFile(atPath: Self.writer.path), "missing \(Self.writer.path)")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("nodelease-kill-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var random = DeterministicGenerator(seed: 99)
        var acknowledged: UInt64 = 0
        for round in 0..<8 {
            let process = try ChildProcess(Self.writer.path, ["storage-writer", "--dir", dir, "--seed", String(round + 1)], stdout: .pipe)
            let output = try #require(process.standardOutput)
            // Let it acknowledge a random number of batches, then kill it mid-flight.
            let target = 5 + Int(random.next() % 60)
            var seen = 0
            var buffer = Data()
            let deadline = Date().addingTimeInterval(30)
            while seen < target && Date() < deadline {
                let chunk = output.availableData
                if chunk.isEmpty { break }
                buffer.append(chunk)
                while let nl = buffer.firstIndex(of: 10) {
                    let line = String(decoding: buffer[buffer.startIndex..<nl], as: UTF8.self)
                    buffer.removeSubrange(buffer.startIndex...nl)
                    if line.hasPrefix("acked "), let n = UInt64(line.dropFirst(6)) {
                        acknowledged = max(acknowledged, n)
                        seen += 1
                    }
                }
            }
            process.signal(SIGKILL)
            process.waitUntilExit()
            // Lines written before the kill but not read yet are acknowledgements too.
            buffer.append(output.readDataToEndOfFile())
            for line in String(decoding: buffer, as: UTF8.self).split(separator: "\n") where line.hasPrefix("acked ") {
                if let n = UInt64(line.dropFirst(6)) { acknowledged = max(acknowledged, n) }
            }
            #expect(seen > 0, "round \(round): the writer acknowledged nothing")

            let log = try DurableLog(directory: dir, membership: Membership(voters: [1]))
            let last = try log.lastIndex()
            #expect(last.rawValue >= acknowledged, "round \(round): acknowledged \(acknowledged), recovered \(last)")
            let first = try log.firstIndex()
            let entries = try log.entries(first, last + 1, maxBytes: .max)
            #expect(entries.allSatisfy { $0.data == Array("entry-\($0.index.rawValue)".utf8) })
            #expect(entries.count == first.distance(to: last) + 1)
            log.close()
        }
    }
}

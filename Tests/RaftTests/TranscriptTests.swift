import Foundation
import RaftSimulator
import Testing

/// Protocol transcripts: each file in `testdata/` is a list of commands for `InteractionEnv`
/// with the output they must produce. Run with `NODELEASE_REWRITE=1` to rewrite the expected
/// output from the actual one, then review the diff.
struct TranscriptTests {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("testdata")

    static var files: [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { $0.hasSuffix(".txt") }.sorted()
    }

    struct Block {
        var leading: [String]
        var command: String
        var expected: [String]
    }

    static func parse(_ text: String) throws -> ([Block], [String]) {
        var blocks: [Block] = []
        var leading: [String] = []
        let lines = text.components(separatedBy: "\n")
        var i = 0
        while i < lines.count {
            let line = lines[i]
            if line.isEmpty || line.hasPrefix("#") {
                leading.append(line)
                i += 1
                continue
            }
            guard i + 1 < lines.count, lines[i + 1] == "----" else {
                throw TranscriptError.malformed(line: i + 1, "expected ---- after the command")
            }
            var expected: [String] = []
            i += 2
            while i < lines.count && !lines[i].isEmpty {
                expected.append(lines[i])
                i += 1
            }
            blocks.append(Block(leading: leading, command: line, expected: expected))
            leading = []
        }
        return (blocks, leading)
    }

    enum TranscriptError: Error { case malformed(line: Int, String) }

    @Test func thereAreTranscripts() {
        #expect(Self.files.count >= 8, "testdata should hold the protocol transcripts")
    }

    @Test(arguments: files)
    func transcript(_ name: String) throws {
        let url = Self.directory.appendingPathComponent(name)
        let text = try String(contentsOf: url, encoding: .utf8)
        let (blocks, trailing) = try Self.parse(text)
        let env = InteractionEnv()
        var rewritten: [String] = []
        for (n, block) in blocks.enumerated() {
            let actual = env.run(block.command)
            let actualLines = actual.isEmpty ? [] : actual.components(separatedBy: "\n")
            if n > 0 { rewritten.append("") }
            rewritten.append(contentsOf: block.leading.filter { !$0.isEmpty })
            rewritten.append(block.command)
            rewritten.append("----")
            rewritten.append(contentsOf: actualLines)
            if ProcessInfo.processInfo.environment["NODELEASE_REWRITE"] == nil {
                #expect(
                    actualLines == block.expected,
                    "\(name): `\(block.command)` gave:\n\(actual)\nexpected:\n\(block.expected.joined(separator: "\n"))")
            }
        }
        if ProcessInfo.processInfo.environment["NODELEASE_REWRITE"] != nil {
            var out = rewritten
            let comments = trailing.filter { !$0.isEmpty }
            if !comments.isEmpty { out += [""] + comments }
            try (out.joined(separator: "\n") + "\n").write(to: url, atomically: true, encoding: .utf8)
        }
    }
}

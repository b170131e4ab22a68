import NIOCore
import NIOEmbedded
import Raft
import RaftTransport
import Testing

let membership = Membership(voters: [1, 2, 3])

let sampleFrames: [Frame] = [
    .hello(clusterID: "mail-eu", from: 1, to: 2, incarnation: 0xdead_beef),
    .welcome,
    .refused(reason: "cluster id does not match"),
    .message(Message(kind: .vote, from: 1, to: 2, term: 7, logTerm: 6, index: 41, leaderTransfer: true)),
    .forward([1, 0, 0, 0, 0, 0, 0, 0, 7, 2]),
    .message(
        Message(
            kind: .append, from: 1, to: 3, term: 7, logTerm: 7, index: 40,
            entries: [Entry(term: 7, index: 41, data: Array("acquire mx1".utf8)), Entry(term: 7, index: 42, kind: .noop)],
            commit: 39)),
    .message(Message(kind: .appendResponse, from: 3, to: 1, term: 7, logTerm: 5, index: 40, reject: true, rejectHint: 33)),
    .message(Message(kind: .heartbeat, from: 1, to: 2, term: 7, commit: 40, context: 12)),
    .message(
        Message(
            kind: .snapshot, from: 1, to: 2, term: 7,
            snapshot: Snapshot(metadata: SnapshotMetadata(index: 100, term: 6, membership: membership), data: [1, 2, 3, 4]))),
]

struct FrameTests {
    @Test func everyFrameRoundTrips() throws {
        for f in sampleFrames {
            let bytes = f.encoded()
            #expect(try Frame(body: Array(bytes[4...])) == f)
        }
    }

    func decodeAll(_ chunks: [[UInt8]]) throws -> [Frame] {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder()))
        var out: [Frame] = []
        for c in chunks {
            try channel.writeInbound(ByteBuffer(bytes: c))
            while let f = try channel.readInbound(as: Frame.self) { out.append(f) }
        }
        _ = try channel.finish()
        return out
    }

    @Test func framesSplitAtEveryByteDecodeTheSame() throws {
        let stream = sampleFrames.flatMap { $0.encoded() }
        for cut in 0...stream.count {
            #expect(try decodeAll([Array(stream[..<cut]), Array(stream[cut...])]) == sampleFrames, "cut at \(cut)")
        }
        #expect(try decodeAll(stream.map { [$0] }) == sampleFrames)
    }

    @Test func anOversizedLengthIsRefusedBeforeBuffering() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder()))
        #expect(throws: FrameError.tooLarge(Int(UInt32.max))) {
            try channel.writeInbound(ByteBuffer(bytes: [0xff, 0xff, 0xff, 0xff, 1, 4]))
        }
    }

    @Test func unknownVersionsAndTypesAreRefused() {
        #expect(throws: FrameError.unsupportedVersion(9)) { try Frame(body: [9, 1]) }
        #expect(throws: FrameError.self) { try Frame(body: [1, 77]) }
        #expect(throws: FrameError.self) { try Frame(body: [1]) }
    }

    /// Random bytes and damaged frames: decoding fails cleanly or yields a frame, never crashes.
    @Test func fuzzedInputNeverCrashes() throws {
        var random = DeterministicGenerator(seed: 7)
        let valid = sampleFrames.map { Array($0.encoded()[4...]) }
        var decoded = 0
        for i in 0..<20_000 {
            var body: [UInt8]
            if i % 2 == 0 {
                body = (0..<Int(random.next() % 96)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            } else {
                body = valid[Int(random.next() % UInt64(valid.count))]
                for _ in 0..<(1 + Int(random.next() % 4)) where !body.isEmpty {
                    body[Int(random.next() % UInt64(body.count))] = UInt8(truncatingIfNeeded: random.next())
                }
                if random.chance(0.3) { body = Array(body.prefix(Int(random.next() % UInt64(body.count + 1)))) }
            }
            if (try? Frame(body: body)) != nil { decoded += 1 }
        }
        #expect(decoded > 0, "some damaged frames still decode (a payload byte changed)")
        // And through the channel handler, as a stream.
        for _ in 0..<200 {
            let junk = (0..<Int(random.next() % 300)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder()))
            _ = try? channel.writeInbound(ByteBuffer(bytes: junk))
            _ = try? channel.finish()
        }
    }
}

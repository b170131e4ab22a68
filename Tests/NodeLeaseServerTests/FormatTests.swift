import Foundation
import LeaseRegistry
import NodeLeaseServer
import Raft
import RaftStorage
import RaftTransport
import Testing

/// Golden files (Tests/Golden/FORMAT/vN.bin) of every persisted or transmitted format: the
/// bytes this build writes for a fixed sample, committed. Each test checks that the encoder
/// still writes the current version's file byte for byte (a format change must come with a
/// new version) and that every committed version, older ones included, still reads as the
/// sample. `NODELEASE_WRITE_GOLDEN=1 swift test --filter FormatTests` writes the current
/// versions' files that are missing; it never rewrites one.
@Suite struct FormatTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Golden")

    /// The committed file for `format` version `version`, written from `current` first when
    /// asked to and missing.
    static func golden(_ format: String, _ version: Int, current: [UInt8]? = nil) throws -> [UInt8] {
        let url = root.appendingPathComponent(format).appendingPathComponent("v\(version).bin")
        if let current, ProcessInfo.processInfo.environment["NODELEASE_WRITE_GOLDEN"] == "1", !FileManager.default.fileExists(atPath: url.path) {
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data(current).write(to: url)
        }
        return [UInt8](try Data(contentsOf: url))
    }

    /// Every committed version of `format`, ascending. The first files were written by this
    /// build; registry-command v1 and registry-snapshot v3 were derived from its v2 (less the
    /// cluster version's command) and v4 by
    /// the older layouts the decoders document (no key and leader time; no registry index).
    static func versions(_ format: String) throws -> [Int] {
        try FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent(format).path)
            .compactMap { $0.hasPrefix("v") && $0.hasSuffix(".bin") ? Int($0.dropFirst().dropLast(4)) : nil }.sorted()
    }

    /// Length-prefixed items in one file.
    static func pack(_ items: [[UInt8]]) -> [UInt8] {
        var w = ByteWriter()
        for i in items { w.blob(i) }
        return w.bytes
    }

    static func unpack(_ bytes: [UInt8]) throws -> [[UInt8]] {
        var r = ByteReader(bytes)
        var out: [[UInt8]] = []
        while r.remaining > 0 { out.append(try r.blob()) }
        return out
    }

    // MARK: The sample

    static let membership = Membership(members: [
        Member(id: 1, role: .voter, peerAddress: "127.0.0.1:7501", clientAddress: "127.0.0.1:7401"),
        Member(id: 2, role: .voter, peerAddress: "127.0.0.1:7502", clientAddress: "127.0.0.1:7402"),
        Member(id: 3, role: .learner, peerAddress: "127.0.0.1:7503", clientAddress: "127.0.0.1:7403"),
    ])

    /// One command of every kind, keyed and not.
    static let commands: [TimedCommand] = [
        TimedCommand(.configureIdempotency(windowSeconds: 600, maxKeys: 100_000), now: 1_765_000_000, leaderNanos: 1_000),
        TimedCommand(
            .acquire(hostname: "mx1.example.org", holder: "stalwart-1", ttlSeconds: 30, idRange: 1...511), now: 1_765_000_001, requestID: 7,
            key: IdempotencyKey(origin: .client, value: "9b2f6a1e-client-key"), leaderNanos: 2_000),
        TimedCommand(
            .acquire(hostname: "mx2.example.org", holder: "stalwart-2", ttlSeconds: 60, idRange: 1...511), now: 1_765_000_002, requestID: 8,
            key: IdempotencyKey(origin: .replica, value: "r1-000008"), leaderNanos: 3_000),
        TimedCommand(.renew(leaseID: 2), now: 1_765_000_003, requestID: 9, key: IdempotencyKey(origin: .client, value: "renew-1"), leaderNanos: 4_000),
        TimedCommand(.release(leaseID: 3), now: 1_765_000_004, requestID: 10, key: IdempotencyKey(origin: .client, value: "release-1"), leaderNanos: 5_000),
        TimedCommand(.expire(leaseID: 99, renewalIndex: 4), now: 1_765_000_005, leaderNanos: 6_000),
        TimedCommand(.retire(nodeID: NodeID(2), statusIndex: 5), now: 1_765_000_006, leaderNanos: 7_000),
        TimedCommand(.forget(nodeID: NodeID(5)), now: 1_765_000_007, requestID: 11, key: IdempotencyKey(origin: .client, value: "forget-1"), leaderNanos: 8_000),
        TimedCommand(.registerReplica(replica: 2, dataDirectoryID: 0xdead_beef), now: 1_765_000_008, leaderNanos: 9_000),
        TimedCommand(.setClusterVersion(2), now: 1_765_000_009, leaderNanos: 10_000),
    ]

    /// Cluster version 3's: the raise, then two writes that came without a key, with replica
    /// 2's session stamp (entry format version 3).
    static let sessionCommands: [TimedCommand] = [
        TimedCommand(.setClusterVersion(3), now: 1_765_000_010, leaderNanos: 11_000),
        TimedCommand(
            .acquire(hostname: "mx3.example.org", holder: "stalwart-3", ttlSeconds: 30, idRange: 1...511), now: 1_765_000_011,
            requestID: 0x5_0000_0002, leaderNanos: 12_000, session: SessionStamp(replica: 2, base: 0x5_0000_0000, done: 0x5_0000_0001)),
        TimedCommand(
            .renew(leaseID: 2), now: 1_765_000_012, requestID: 0x5_0000_0003, leaderNanos: 13_000,
            session: SessionStamp(replica: 2, base: 0x5_0000_0000, done: 0x5_0000_0002)),
    ]

    /// The registry after the sample commands, at indexes 1... (at cluster version 2).
    static var registry: LeaseRegistry { registry(commands) }

    /// The same after cluster version 3's commands too.
    static var registryAtVersion3: LeaseRegistry { registry(commands + sessionCommands) }

    /// The same before the cluster version moved (what a cluster of the first release has).
    static var registryAtVersion1: LeaseRegistry { registry(commands.dropLast()) }

    static func registry(_ commands: some Collection<TimedCommand>) -> LeaseRegistry {
        var r = LeaseRegistry()
        for (i, c) in commands.enumerated() { _ = r.apply(c, index: UInt64(i + 1), term: 2) }
        return r
    }

    static var entries: [Entry] {
        var out = commands.enumerated().map { Entry(term: 2, index: LogIndex(UInt64($0.offset + 1)), data: $0.element.encoded()) }
        var w = ByteWriter()
        w.membership(membership)
        out.append(Entry(term: 2, index: LogIndex(UInt64(out.count + 1)), kind: .configChange, data: w.bytes))
        out.append(Entry(term: 3, index: LogIndex(UInt64(out.count + 1)), kind: .noop))
        return out
    }

    static func temporaryDirectory() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("nodelease-golden-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    // MARK: The formats

    @Test func registryCommands() throws {
        let current = Self.pack(Self.commands.map { $0.encoded() })
        #expect(try Self.golden("registry-command", 2, current: current) == current)
        // Version 3 is written only for the session-stamped writes (the raise is version 2).
        let stamped = Self.pack(Self.sessionCommands.dropFirst().map { $0.encoded() })
        #expect(try Self.golden("registry-command", 3, current: stamped) == stamped)
        #expect(Self.sessionCommands[0].encoded().first == 2)
        for v in try Self.versions("registry-command") {
            let decoded = try Self.unpack(try Self.golden("registry-command", v)).map { TimedCommand(decoding: $0) }
            // Version 1 had neither idempotency keys nor leader time (nor the cluster version).
            let expected =
                v >= 3
                ? Array(Self.sessionCommands.dropFirst())
                : v >= 2 ? Self.commands : Self.commands.dropLast().map { c in TimedCommand(c.command, now: c.now, requestID: c.requestID) }
            #expect(decoded == expected.map { Optional($0) }, "registry-command v\(v)")
        }
        // A later version, or a kind this build does not know, is named, never applied as malformed.
        var newer = Self.commands[1].encoded()
        newer[0] = 4
        #expect(TimedCommand(decoding: newer) == nil)
        #expect(TimedCommand.unknownFormat(newer) == "registry command format version 4 is unknown to this build (it reads versions 1 to 3)")
        // A replica playing a build of cluster version 2 does not read version 3.
        #expect(
            TimedCommand.unknownFormat(Self.sessionCommands[1].encoded(), supporting: 2)
                == "registry command format version 3 is unknown to this build (it reads versions 1 to 2)")
        var kind = Self.commands[3].encoded()
        let kindAt = kind.count - 17  // renew's kind, then its time and lease id (u64 each)
        #expect(kind[kindAt] == 2)
        kind[kindAt] = 42
        #expect(TimedCommand.unknownFormat(kind)?.hasPrefix("registry command kind 42 is unknown") == true)
        #expect(TimedCommand.unknownFormat([2, 0, 0]) == nil, "a truncated entry of a known version is malformed, not unknown")
        // A replica playing a build of cluster version 1 does not know the cluster version's command.
        let raise = Self.commands.last!.encoded()
        #expect(TimedCommand.unknownFormat(raise) == nil)
        #expect(TimedCommand.unknownFormat(raise, supporting: 1) == "registry command kind 9 is unknown to this build (it knows kinds 1...8)")
    }

    @Test func registrySnapshot() throws {
        // At cluster version 1 the registry is still written as version 4, which the first
        // release reads; from cluster version 2 as version 5, from 3 as version 6.
        let atVersion1 = Self.registryAtVersion1.snapshot()
        #expect(try Self.golden("registry-snapshot", 4, current: atVersion1) == atVersion1)
        let atVersion2 = Self.registry.snapshot()
        #expect(try Self.golden("registry-snapshot", 5, current: atVersion2) == atVersion2)
        let current = Self.registryAtVersion3.snapshot()
        #expect(try Self.golden("registry-snapshot", 6, current: current) == current)
        #expect(Self.registryAtVersion3.sessionCounts == (1, 2))
        for v in try Self.versions("registry-snapshot") {
            let sample = v >= 6 ? Self.registryAtVersion3 : v >= 5 ? Self.registry : Self.registryAtVersion1
            let r = try LeaseRegistry(snapshot: try Self.golden("registry-snapshot", v))
            #expect(r.nodes() == sample.nodes(), "registry-snapshot v\(v)")
            #expect(r.appliedIndex == sample.appliedIndex)
            #expect(r.replicaDirectories == sample.replicaDirectories)
            #expect(r.clusterVersion == sample.clusterVersion)
            if v >= 3 { #expect(r.rememberedKeys == sample.rememberedKeys && r.idempotencyWindow == sample.idempotencyWindow) }
            if v >= 4 { #expect(r.registryIndex == sample.registryIndex) }
            if v >= 6 { #expect(r == sample, "registry-snapshot v\(v): sessions included") }
        }
        var newer = current
        newer[LeaseRegistry.snapshotVersionOffset] = 7
        #expect(throws: LeaseRegistry.SnapshotError.unknownVersion(7, known: 2...6)) { try LeaseRegistry(snapshot: newer) }
        #expect(
            LeaseRegistry.SnapshotError.unknownVersion(7, known: 2...6).description
                == "registry snapshot format version 7 is unknown to this build (it reads versions 2 to 6)")
        // Replicas playing builds of cluster versions 2 and 1 refuse versions 6 and 5 by name.
        #expect(throws: LeaseRegistry.SnapshotError.unknownVersion(6, known: 2...5)) { try LeaseRegistry(snapshot: current, supporting: 2) }
        #expect(throws: LeaseRegistry.SnapshotError.unknownVersion(5, known: 2...4)) { try LeaseRegistry(snapshot: atVersion2, supporting: 1) }
        #expect(try LeaseRegistry(snapshot: atVersion1, supporting: 1).count == Self.registryAtVersion1.count)
    }

    @Test func writeAheadLog() throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = try DurableLog(directory: dir, membership: Self.membership)
        try log.save(hardState: HardState(term: 3, vote: 1, commit: 9), entries: Self.entries, snapshot: nil, sync: true)
        log.close()
        let name = "wal-0000000000000001.log"
        let current = [UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(name)")))
        #expect(try Self.golden("wal", 1, current: current) == current)
        for v in try Self.versions("wal") {
            let d = try Self.temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: d) }
            try Data(try Self.golden("wal", v)).write(to: URL(fileURLWithPath: "\(d)/\(name)"))
            let read = try DurableLog(directory: d, membership: .empty)
            defer { read.close() }
            #expect(read.hardState == HardState(term: 3, vote: 1, commit: 9), "wal v\(v)")
            #expect(read.membership == Self.membership)
            #expect(try read.entries(1, LogIndex(UInt64(Self.entries.count + 1)), maxBytes: .max) == Self.entries)
        }
        // A record of a later format is refused by name, never cut off as a torn write.
        let d = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: d) }
        var newer = current
        let second = 12 + Int(UInt32(newer[4]) | UInt32(newer[5]) << 8 | UInt32(newer[6]) << 16 | UInt32(newer[7]) << 24)
        newer[second + 3] = UInt8(ascii: "2")
        try Data(newer).write(to: URL(fileURLWithPath: "\(d)/\(name)"))
        #expect(
            throws: StorageFailure.corrupt(
                file: "\(d)/\(name)", offset: UInt64(second),
                reason: "WAL record format version 2 is unknown to this build (it reads version 1); a newer nodelease wrote this directory")
        ) { try DurableLog(directory: d, membership: .empty) }
        #expect(try Data(contentsOf: URL(fileURLWithPath: "\(d)/\(name)")).count == newer.count, "nothing was cut off")
    }

    @Test func snapshotFile() throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = Self.registry.snapshot()
        let meta = SnapshotMetadata(index: 9, term: 2, membership: Self.membership)
        let log = try DurableLog(directory: dir, membership: Self.membership)
        try log.save(hardState: HardState(term: 2, vote: nil, commit: 9), entries: [], snapshot: Snapshot(metadata: meta, data: data), sync: true)
        log.close()
        let name = "snap-0000000000000009-0000000000000002.snap"
        let current = [UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(name)")))
        #expect(try Self.golden("snapshot-file", 1, current: current) == current)
        for v in try Self.versions("snapshot-file") {
            let d = try Self.temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: d) }
            try Data(try Self.golden("snapshot-file", v)).write(to: URL(fileURLWithPath: "\(d)/\(name)"))
            let read = try DurableLog(directory: d, membership: .empty)
            defer { read.close() }
            #expect(try read.snapshot() == Snapshot(metadata: meta, data: data), "snapshot-file v\(v)")
        }
        let d = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: d) }
        var newer = current
        newer[8] = 2
        try Data(newer).write(to: URL(fileURLWithPath: "\(d)/\(name)"))
        #expect(
            throws: StorageFailure.corrupt(
                file: "\(d)/\(name)", offset: 8,
                reason: "snapshot file format version 2 is unknown to this build (it reads version 1); a newer nodelease wrote it")
        ) { try DurableLog(directory: d, membership: .empty) }
    }

    static let frames: [Frame] = [
        .hello(
            clusterID: "nodelease", from: 1, to: 2, incarnation: 0x1234_5678, dataDirectoryID: 0xdead_beef, clientAddress: "127.0.0.1:7401",
            peerAddress: "127.0.0.1:7501"),
        .welcome,
        .refused(reason: "cluster id does not match"),
        .message(Message(kind: .append, from: 1, to: 2, term: 3, logTerm: 2, index: 0, entries: FormatTests.entries, commit: 9)),
        .message(Message(kind: .appendResponse, from: 2, to: 1, term: 3, index: 11, reject: true, rejectHint: 4)),
        .message(Message(kind: .vote, from: 1, to: 3, term: 4, logTerm: 3, index: 11, leaderTransfer: true)),
        .message(Message(kind: .heartbeat, from: 1, to: 2, term: 3, commit: 9, context: 77)),
        .message(
            Message(
                kind: .snapshot, from: 1, to: 3, term: 3,
                snapshot: Snapshot(metadata: SnapshotMetadata(index: 9, term: 2, membership: FormatTests.membership), data: [1, 2, 3]))),
        .forward(FormatTests.commands[1].encoded()),
    ]

    @Test func peerFrames() throws {
        let current = Self.pack(Self.frames.map { $0.encoded() })
        #expect(try Self.golden("peer-frame", 1, current: current) == current)
        for v in try Self.versions("peer-frame") {
            let decoded = try Self.unpack(try Self.golden("peer-frame", v)).map { try Frame(body: Array($0.dropFirst(4))) }
            #expect(decoded == Self.frames, "peer-frame v\(v)")
        }
        var newer = Self.frames[0].encoded()
        newer[4] = 2
        #expect(throws: FrameError.unsupportedVersion(2)) { try Frame(body: Array(newer.dropFirst(4))) }
    }

    @Test func backupFile() throws {
        let sample = Backup(
            clusterID: "nodelease", index: 9, term: 2, takenAtMillis: 1_765_000_009_000, takenBy: 1, membership: Self.membership,
            data: Self.registry.snapshot())
        let current = sample.encoded()
        #expect(try Self.golden("backup", 1, current: current) == current)
        for v in try Self.versions("backup") {
            #expect(try Backup(decoding: try Self.golden("backup", v), file: "v\(v)") == sample, "backup v\(v)")
        }
    }

    @Test func dataDirectoryID() throws {
        // Version 1 (the id alone) predates format versions; this build writes version 2.
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let made = try DurableLog(directory: dir, membership: Self.membership)
        let id = made.directoryID
        made.close()
        let written = try String(contentsOfFile: "\(dir)/ID", encoding: .utf8)
        let digits = String(id, radix: 16)
        #expect(written == "nodelease-directory 2\n" + String(repeating: "0", count: 16 - digits.count) + digits + "\n")
        #expect(try Self.versions("directory-id") == [1, 2])
        for v in try Self.versions("directory-id") {
            let d = try Self.temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: d) }
            try Data(try Self.golden("directory-id", v)).write(to: URL(fileURLWithPath: "\(d)/ID"))
            let read = try DurableLog(directory: d, membership: Self.membership)
            #expect(read.directoryID == 0x0123_4567_89ab_cdef, "directory-id v\(v)")
            read.close()
        }
        let d = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: d) }
        try Data("nodelease-directory 3\n0123456789abcdef\n".utf8).write(to: URL(fileURLWithPath: "\(d)/ID"))
        #expect(
            throws: StorageFailure.corrupt(
                file: "\(d)/ID", offset: 20,
                reason: "directory id format version 3 is unknown to this build (it reads versions 1 and 2); a newer nodelease wrote it")
        ) { try DurableLog(directory: d, membership: Self.membership) }
    }

    @Test func clusterIdentity() throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try ClusterIdentity.write(directory: dir, clusterID: "nodelease-restored")
        let current = [UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(dir)/CLUSTER")))
        #expect(try Self.golden("cluster-identity", 1, current: current) == current)
        for v in try Self.versions("cluster-identity") {
            try Data(try Self.golden("cluster-identity", v)).write(to: URL(fileURLWithPath: "\(dir)/CLUSTER"))
            #expect(try ClusterIdentity.read(directory: dir) == "nodelease-restored", "cluster-identity v\(v)")
        }
        try Data("nodelease-cluster 2\nx\n".utf8).write(to: URL(fileURLWithPath: "\(dir)/CLUSTER"))
        #expect(
            throws: StorageFailure.corrupt(
                file: "\(dir)/CLUSTER", offset: 18, reason: "cluster identity format version 2 is unknown to this build (it reads version 1)")
        ) { try ClusterIdentity.read(directory: dir) }
    }
}

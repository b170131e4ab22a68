import Foundation
import Logging
import LeaseRegistry
import NIOConcurrencyHelpers
import NIOCore
import NodeLeaseClient
import NodeLeaseServer
import Raft
import RaftStorage
import Testing

@Suite(.serialized)
struct BackupTests {
    /// The restore drill of issue 19: a backup taken under load, every data directory
    /// destroyed, a new cluster restored from the backup. Its registry is the backup's; nodes
    /// whose leases predate the backup renew them, those granted after get 404 and acquire
    /// again with a fencing token above every one the old cluster gave; a keyed request from
    /// before the backup is still answered from its first outcome.
    @Test func restoreDrill() async throws {
        let c = try LocalCluster { $0.clusterID = "drill-a" }
        try await c.startAll()
        let leader = await c.leader()!
        var leases: [String: (id: String, token: Int)] = [:]
        for i in 1...12 {
            let r = try await c.post(leader, "/v1/leases", #"{"hostname":"mx\#(i).example.org","holder":"a","ttlSeconds":120}"#)
            #expect(r.status == 200)
            leases["mx\(i).example.org"] = (r.json["leaseId"] as! String, r.json["fencingToken"] as! Int)
        }
        #expect(try await c.request(leader, "DELETE", "/v1/leases/\(leases["mx3.example.org"]!.id)").status == 200)
        let keyed = try await c.request(
            leader, "POST", "/v1/leases", body: #"{"hostname":"keyed.example.org","holder":"a","ttlSeconds":120}"#,
            headers: ["Idempotency-Key": "drill-key-1"])
        #expect(keyed.status == 200)

        // Load while the backup is taken: new hosts and renewals, through every replica.
        let stop = NIOLockedValueBox(false)
        let renewing = leases["mx1.example.org"]!.id
        let load = Task {
            var n = 0
            while !stop.withLockedValue({ $0 }) {
                n += 1
                let id = ReplicaID(UInt64(1 + n % 3))
                _ = try? await c.post(id, "/v1/leases", #"{"hostname":"load\#(n).example.org","holder":"l","ttlSeconds":120}"#)
                _ = try? await c.post(id, "/v1/leases/\(renewing)/renew", "")
            }
            return n
        }
        try await Task.sleep(for: .milliseconds(300))
        let client = NodeLeaseClient(endpoints: (1...3).map { c.url(ReplicaID(UInt64($0)), "") }, timeout: .seconds(10))
        // Bad restore arguments are refused before anything is written.
        #expect(throws: ConfigError.self) {
            try Restore.restore(
                Backup(clusterID: "x", index: 1, term: 1, takenAtMillis: 0, takenBy: 1, membership: .empty, data: []),
                into: c.base + "/never", replica: 1, membership: ServerConfig.voters(c.configs[ReplicaID(1)]!.peers), clusterID: "y", indexGap: 1)
        }
        #expect(!FileManager.default.fileExists(atPath: c.base + "/never"))
        let sink = MemorySink()
        let answer = try await client.backup(into: sink)
        try await Task.sleep(for: .milliseconds(300))
        stop.withLockedValue { $0 = true }
        let loaded = await load.value
        #expect(loaded > 2, "the load ran while the backup was taken")

        // Granted after the backup: must be unknown to the restored cluster.
        var after: [String: (id: String, token: Int)] = [:]
        for i in 1...3 {
            let r = try await c.post(leader, "/v1/leases", #"{"hostname":"after\#(i).example.org","holder":"a","ttlSeconds":120}"#)
            #expect(r.status == 200)
            after["after\(i).example.org"] = (r.json["leaseId"] as! String, r.json["fencingToken"] as! Int)
        }
        let oldStatus = try await c.get(leader, "/v1/status").json
        let oldCommit = oldStatus["commitIndex"] as! Int

        let backup = try Backup(decoding: sink.bytes, file: "answer")
        #expect(backup.clusterID == "drill-a")
        #expect(backup.index.rawValue == answer.index)
        #expect(Int(backup.index.rawValue) < oldCommit)
        let expected = try LeaseRegistry(snapshot: backup.data)
        #expect(expected.node(hostname: "mx1.example.org")?.status == .active)
        #expect(expected.node(hostname: "mx3.example.org")?.status == .inactive)
        #expect(expected.node(hostname: "after1.example.org") == nil)
        #expect(expected.rememberedKeys > 0)

        // Every disk lost.
        await c.stopAll()
        for i in 1...3 { try FileManager.default.removeItem(atPath: c.configs[ReplicaID(UInt64(i))]!.dataDir) }

        let membership = ServerConfig.voters(c.configs[ReplicaID(1)]!.peers)
        let dir1 = c.configs[ReplicaID(1)]!.dataDir
        #expect(throws: ConfigError.self) {
            try Restore.restore(backup, into: dir1, replica: ReplicaID(1), membership: membership, clusterID: "drill-a")
        }
        for i in 1...3 {
            let id = ReplicaID(UInt64(i))
            let out = try Restore.restore(backup, into: c.configs[id]!.dataDir, replica: id, membership: membership, clusterID: "drill-b")
            #expect(out.nodes == expected.count)
            #expect(out.index.rawValue == backup.index.rawValue + Restore.defaultIndexGap)
            #expect(out.term.rawValue == backup.term.rawValue + Restore.termGap)
        }
        #expect(throws: ConfigError.self) {
            try Restore.restore(backup, into: dir1, replica: ReplicaID(1), membership: membership, clusterID: "drill-b")
        }
        // A restored directory is never started as the old cluster.
        #expect(throws: ConfigError.self) { _ = try NodeLeaseReplica(config: c.configs[ReplicaID(1)]!, logger: Logger(label: "refused")) }
        // Nor is one whose restore did not finish (its marker is still there).
        var unfinished = c.configs[ReplicaID(1)]!
        unfinished.dataDir = c.base + "/unfinished"
        unfinished.clusterID = "drill-b"
        try FileManager.default.createDirectory(atPath: unfinished.dataDir, withIntermediateDirectories: true)
        try Data().write(to: URL(fileURLWithPath: unfinished.dataDir + "/" + ClusterIdentity.restoringMarker))
        #expect(throws: ConfigError.self) { _ = try NodeLeaseReplica(config: unfinished, logger: Logger(label: "refused")) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: unfinished.dataDir) == [ClusterIdentity.restoringMarker], "nothing opened it")
        #expect(!FileManager.default.fileExists(atPath: c.configs[ReplicaID(2)]!.dataDir + "/" + ClusterIdentity.restoringMarker))

        for i in 1...3 { c.configs[ReplicaID(UInt64(i))]!.clusterID = "drill-b" }
        try await c.startAll()
        let restoredLeader = await c.leader()!
        let nodes = try await c.get(ReplicaID(2), "/v1/cluster/nodes?consistency=linearizable")
        #expect(nodes.status == 200)
        let got = nodes.array.map { "\($0["nodeId"] as! Int) \($0["hostname"] as! String) \($0["status"] as! String)" }
        let want = expected.nodes().map { "\($0.nodeID.rawValue) \($0.hostname) \($0.status)" }
        #expect(got == want)

        // A lease from before the backup renews, with its fencing token.
        let renewed = try await c.post(restoredLeader, "/v1/leases/\(leases["mx2.example.org"]!.id)/renew", "")
        #expect(renewed.status == 200)
        #expect(renewed.json["fencingToken"] as? Int == leases["mx2.example.org"]!.token)
        // One granted after it is unknown, and acquiring again gives a larger token than any.
        let highest = after.values.map(\.token).max()!
        for (host, lease) in after {
            #expect(try await c.post(restoredLeader, "/v1/leases/\(lease.id)/renew", "").status == 404)
            let again = try await c.post(restoredLeader, "/v1/leases", #"{"hostname":"\#(host)","holder":"a","ttlSeconds":120}"#)
            #expect(again.status == 200)
            #expect((again.json["fencingToken"] as? Int ?? 0) > highest)
        }
        // The idempotency window came along.
        let replay = try await c.request(
            restoredLeader, "POST", "/v1/leases", body: #"{"hostname":"keyed.example.org","holder":"a","ttlSeconds":120}"#,
            headers: ["Idempotency-Key": "drill-key-1"])
        #expect(replay.status == 200)
        #expect(replay.headers["idempotent-replayed"] == "true")
        #expect(replay.json["leaseId"] as? String == keyed.json["leaseId"] as? String)
        let status = try await c.get(restoredLeader, "/v1/status").json
        #expect(status["clusterId"] as? String == "drill-b")
        await c.stopAll()
    }

    @Test func backupFilesRoundTripAndRefuseWhatTheyCannotRead() throws {
        var registry = LeaseRegistry()
        _ = registry.apply(.acquire(hostname: "mx1.example.org", holder: "h", ttlSeconds: 30, idRange: 1...511), now: 1_000_000_000, index: 7)
        let b = Backup(
            clusterID: "c", index: 7, term: 2, takenAtMillis: 1_700_000_000_000, takenBy: ReplicaID(1),
            membership: Membership(voters: [ReplicaID(1), ReplicaID(2), ReplicaID(3)]), data: registry.snapshot())
        let bytes = b.encoded()
        #expect(try Backup(decoding: bytes, file: "f") == b)
        // The pieces a replica streams make the same file.
        var crc = ByteWriter()
        crc.u32(b.checksum(header: b.header()))
        #expect(b.header() + b.data + crc.bytes == bytes)

        var newer = bytes
        newer[8] = 9  // the version, little-endian u32 after the 8-byte magic
        #expect(throws: StorageFailure.corrupt(
            file: "x.backup", offset: 8,
            reason: "backup format version 9 is unknown to this build (it reads versions 1 to 1): a newer nodelease wrote it, or the file is damaged (its checksum does not match)")) {
            try Backup(decoding: newer, file: "x.backup")
        }
        // Intact (its checksum matches): only a newer build can have written it.
        var intact = Array(newer.dropLast(4))
        var w = ByteWriter()
        w.u32(CRC32C.checksum(intact))
        intact += w.bytes
        #expect(throws: StorageFailure.corrupt(
            file: "x.backup", offset: 8,
            reason: "backup format version 9 is unknown to this build (it reads versions 1 to 1): a newer nodelease wrote it; use that one")) {
            try Backup(decoding: intact, file: "x.backup")
        }
        #expect(try Backup(decoding: bytes, file: "f").dataOffset == bytes.count - 4 - b.data.count)
        var damaged = bytes
        damaged[20] ^= 1
        #expect(throws: StorageFailure.self) { try Backup(decoding: damaged, file: "f") }
        #expect(throws: StorageFailure.self) { try Backup(decoding: Array(bytes.dropLast(5)), file: "f") }
        #expect(throws: StorageFailure.self) { try Backup(decoding: Array("NLSNAP01".utf8) + bytes.dropFirst(8), file: "f") }
    }
}

/// A backup streamed into memory.
final class MemorySink: DownloadSink {
    private let box = NIOLockedValueBox<[UInt8]>([])
    func reset() { box.withLockedValue { $0 = [] } }
    func write(_ bytes: ByteBuffer) { box.withLockedValue { $0 += Array(bytes.readableBytesView) } }
    var bytes: [UInt8] { box.withLockedValue { $0 } }
}

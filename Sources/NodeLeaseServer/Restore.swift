import Foundation
import LeaseRegistry
import Raft
import RaftStorage

/// The cluster a data directory belongs to, in the file `CLUSTER`:
///
///     nodelease-cluster 1
///     <cluster id>
///
/// Written at a directory's first start (or by a restore); a later start with another
/// `--cluster-id` is refused, so a restored cluster's directories (which have a new id) can
/// never be started as, or rejoin, the cluster they were restored from.
public enum ClusterIdentity {
    public static let fileName = "CLUSTER"
    /// Present while `nodelease snapshot restore` writes the directory: no replica starts on it.
    public static let restoringMarker = "RESTORING"
    static let header = "nodelease-cluster"
    static let version = 1

    /// The cluster id recorded in `directory`, nil when none is.
    public static func read(directory: String) throws -> String? {
        let path = (directory as NSString).appendingPathComponent(fileName)
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let lines = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
        let head = lines.first?.split(separator: " ") ?? []
        guard head.count == 2, head[0] == header, let v = Int(head[1]) else {
            throw StorageFailure.corrupt(file: path, offset: 0, reason: "not a cluster identity file (it should start with \"\(header) \(version)\")")
        }
        guard v == version else {
            throw StorageFailure.corrupt(
                file: path, offset: UInt64(header.utf8.count + 1),
                reason: "cluster identity format version \(v) is unknown to this build (it reads version \(version))")
        }
        guard lines.count >= 2, !lines[1].isEmpty else {
            throw StorageFailure.corrupt(file: path, offset: UInt64(lines[0].utf8.count + 1), reason: "no cluster id after the header")
        }
        return String(lines[1])
    }

    /// Writes `clusterID` as `directory`'s cluster, durably (temporary file, fsync, rename).
    public static func write(directory: String, clusterID: String) throws {
        try PosixFileSystem().replaceAtomically(
            (directory as NSString).appendingPathComponent(fileName), in: directory, with: Array("\(header) \(version)\n\(clusterID)\n".utf8))
    }

    /// Records `clusterID` in a directory that has none; refuses one recorded for another cluster.
    /// Refuses a directory a restore is writing, or did not finish (before anything opens it).
    static func checkNotRestoring(directory: String) throws {
        if FileManager.default.fileExists(atPath: (directory as NSString).appendingPathComponent(restoringMarker)) {
            throw ConfigError(
                "--data-dir",
                "a restore into \(directory) did not finish (it holds \(restoringMarker)): delete the directory and run nodelease snapshot restore again")
        }
    }

    static func check(directory: String, clusterID: String) throws {
        guard let recorded = try read(directory: directory) else {
            try write(directory: directory, clusterID: clusterID)
            return
        }
        guard recorded == clusterID else {
            throw ConfigError(
                "--cluster-id",
                "the data directory \(directory) belongs to cluster \"\(recorded)\", not \"\(clusterID)\"; a restored cluster has a new id "
                    + "(the one `nodelease snapshot restore` printed), and a directory never changes cluster")
        }
    }
}

/// Builds a new cluster's data directory from a backup (`nodelease snapshot restore`).
public enum Restore {
    /// How far above the backup's index the restored log starts: fencing tokens and lease ids
    /// are log indexes, so every grant of the restored cluster is above every grant the old one
    /// made after the backup, as long as it wrote fewer entries than this after it (2^40: three
    /// years at 10,000 writes a second). A client holding a lease granted after the backup then
    /// gets 404 for it, never another node's lease that happens to have the same id.
    public static let defaultIndexGap: UInt64 = 1 << 40
    /// `--index-gap` may be 2^32 to 2^48, and the restored log must start at or below 2^53 (the
    /// integers every JSON client reads exactly): a smaller gap could hand out again a lease id
    /// the old cluster granted after the backup, so a renew of it would reach another node's lease.
    public static let indexGaps: ClosedRange<UInt64> = (1 << 32)...(1 << 48)
    public static let maxIndex: UInt64 = 1 << 53
    /// How far above the backup's term the restored cluster starts: a replica of the old
    /// cluster, however many elections it held after the backup, then never has a log as
    /// up to date as the restored cluster's, so it can never win its votes (were it started
    /// with the new cluster id by mistake, it could only follow, and be overwritten).
    public static let termGap: UInt64 = 1 << 32

    public struct Outcome: Sendable {
        public var index: LogIndex
        public var term: Term
        public var nodes: Int
        public var counts: (active: Int, stale: Int, inactive: Int)
        public var idempotencyKeys: Int
    }

    /// Writes `directory` (which must be missing or empty) as replica `replica` of the new
    /// cluster `clusterID` with the configuration `membership`, starting from `backup`.
    public static func restore(
        _ backup: Backup, into directory: String, replica: ReplicaID, membership: Membership, clusterID: String, indexGap: UInt64 = defaultIndexGap
    ) throws -> Outcome {
        guard clusterID != backup.clusterID else {
            throw ConfigError(
                "--cluster-id",
                "must differ from the backed-up cluster's (\"\(backup.clusterID)\"): a restored cluster must never be confused with, or rejoin, the old one")
        }
        guard !clusterID.isEmpty, clusterID.utf8.count <= 128, !clusterID.contains("\n") else {
            throw ConfigError("--cluster-id", "must be 1 to 128 characters on one line")
        }
        guard membership.voters.contains(replica) else { throw ConfigError("--peers", "must include this replica (\(replica))") }
        guard indexGaps.contains(indexGap) else {
            throw ConfigError("--index-gap", "must be between 2^32 and 2^48 (\(indexGaps.lowerBound) to \(indexGaps.upperBound))")
        }
        guard backup.index.rawValue < maxIndex - indexGap else {
            throw ConfigError("--index-gap", "the restored log would start above 2^53 (the backup is at index \(backup.index))")
        }
        guard backup.term.rawValue < UInt64.max - termGap else {
            throw StorageFailure.invalid("the backup's term \(backup.term) leaves no room for the restored cluster's (2^32 above it)")
        }
        var registry = try LeaseRegistry(snapshot: backup.data)
        guard registry.appliedIndex <= backup.index.rawValue else {
            throw StorageFailure.invalid("the backup's registry was applied at \(registry.appliedIndex), past its index \(backup.index)")
        }
        let fm = FileManager.default
        if fm.fileExists(atPath: directory) {
            let present = try fm.contentsOfDirectory(atPath: directory)
            guard present.isEmpty else {
                throw ConfigError("--data-dir", "\(directory) is not empty (\(present.count) entries): a restore writes a new directory and never overwrites one")
            }
        } else {
            try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        let index = LogIndex(backup.index.rawValue + indexGap)
        let term = Term(backup.term.rawValue + termGap)
        registry.rebase(restoredAt: index.rawValue)
        // A marker first, removed last: a restore that stops half way (an error, a crash, a
        // power cut) leaves a directory no replica starts on, as the new cluster or the old one.
        let fs = PosixFileSystem()
        let marker = (directory as NSString).appendingPathComponent(ClusterIdentity.restoringMarker)
        do {
            let f = try fs.open(marker, create: true)
            try f.write(Array("a restore into this directory has not finished\n".utf8), at: 0)
            try f.sync()
            f.close()
            try fs.syncDirectory(directory)
            try ClusterIdentity.write(directory: directory, clusterID: clusterID)
            let storage = try DurableLog(directory: directory, membership: membership)
            let snapshot = Snapshot(metadata: SnapshotMetadata(index: index, term: term, membership: membership), data: registry.snapshot())
            do {
                try storage.save(hardState: HardState(term: term, vote: nil, commit: index), entries: [], snapshot: snapshot, sync: true)
                storage.close()
            } catch {
                storage.close()
                throw error
            }
            try fs.remove(marker)
            try fs.syncDirectory(directory)
        } catch {
            // The directory was missing or empty: nothing of value is in it.
            for name in (try? fm.contentsOfDirectory(atPath: directory)) ?? [] where name != ClusterIdentity.restoringMarker {
                try? fm.removeItem(atPath: (directory as NSString).appendingPathComponent(name))
            }
            try? fm.removeItem(atPath: marker)
            throw error
        }
        return Outcome(index: index, term: term, nodes: registry.count, counts: registry.counts(), idempotencyKeys: registry.rememberedKeys)
    }
}

import ArgumentParser
import Foundation
import LeaseRegistry
import NodeLeaseClient
import NIOCore
import NodeLeaseServer
import Raft
import RaftStorage

/// `nodelease snapshot ...`: backups of the registry, and new clusters restored from them.
struct SnapshotCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Back up the registry, inspect a backup, or build a new cluster's data directories from one.",
        discussion: """
            save asks the cluster for a snapshot at a committed index (admin role) and writes it \
            atomically; inspect prints what a file holds; restore writes one replica's data directory \
            of a new cluster (a new cluster id) from it: run it once per replica, then start them.
            """,
        subcommands: [Save.self, Inspect.self, RestoreCommand.self])

    struct Save: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "save", abstract: "Write a backup of the registry to FILE.")
        @Argument(help: "Where to write the backup (replaced atomically if it exists).") var file: String
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let c = try client.client()
            let started = ContinuousClock.now
            let tmp = file + ".tmp-\(getpid())"
            let sink = FileSink(path: tmp)
            defer { try? FileManager.default.removeItem(atPath: tmp) }
            let answer = try await clientCall { () async throws(NodeLeaseError) in
                try await c.backup(into: sink, timeout: .seconds(max(client.timeout, 60)))
            }
            // Durable, then read back and checked before it replaces anything: a damaged
            // answer never replaces a good backup.
            let bytes: [UInt8]
            let backup: Backup
            let registry: LeaseRegistry
            do { try sink.finish() } catch {
                FileHandle.standardError.write(Data("nodelease: cannot write the backup to \(tmp): \(error)\n".utf8))
                throw ExitCode(1)
            }
            do {
                bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: tmp)))
                backup = try Backup(decoding: bytes, file: "the answer of \(answer.replica)")
                registry = try LeaseRegistry(snapshot: backup.data)
            } catch {
                FileHandle.standardError.write(Data("nodelease: the backup received is not usable: \(error)\n".utf8))
                throw ExitCode(1)
            }
            do {
                let fs = PosixFileSystem()
                try fs.rename(tmp, to: file)
                let dir = (file as NSString).deletingLastPathComponent
                try fs.syncDirectory(dir.isEmpty ? "." : dir)
            } catch {
                FileHandle.standardError.write(Data("nodelease: cannot write \(file): \(error)\n".utf8))
                throw ExitCode(1)
            }
            let elapsed = (ContinuousClock.now - started).components
            let ms = Double(elapsed.seconds) * 1000 + Double(elapsed.attoseconds) / 1e15
            if client.json {
                print(Describe.json(backup, registry, bytes: bytes, file: file))
            } else {
                let n = registry.counts()
                print(
                    "saved \(file): cluster \(backup.clusterID), index \(backup.index), term \(backup.term), \(registry.count) nodes "
                        + "(\(n.active) active, \(n.stale) stale, \(n.inactive) inactive), \(Describe.size(bytes.count)), "
                        + "crc32c \(Describe.crc(bytes)), from replica \(backup.takenBy) in \(Int(ms)) ms")
            }
        }
    }

    /// The temporary file a backup streams into: created new (never through a link) and
    /// readable by its owner only (a backup holds every holder and remembered outcome),
    /// emptied when an attempt starts again. A local failure (a full disk) is kept, not
    /// thrown: thrown, it would look like a network error and be retried against every replica.
    final class FileSink: DownloadSink, @unchecked Sendable {
        let path: String
        private let lock = NSLock()
        private var file: (any StorageFile)?
        private var offset: UInt64 = 0
        private var failure: (any Error)?

        init(path: String) { self.path = path }

        func reset() {
            lock.withLock {
                guard failure == nil else { return }
                do {
                    if file == nil {
                        let fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0o600)
                        guard fd >= 0 else { throw StorageFailure.io("create \(path)", errno: errno) }
                        close(fd)
                        file = try PosixFileSystem().open(path, create: false)
                    }
                    try file!.truncate(to: 0)
                    offset = 0
                } catch {
                    failure = error
                }
            }
        }

        func write(_ bytes: ByteBuffer) {
            lock.withLock {
                guard failure == nil, let file else { return }
                do {
                    try file.write(Array(bytes.readableBytesView), at: offset)
                    offset += UInt64(bytes.readableBytes)
                } catch {
                    failure = error
                }
            }
        }

        /// The failure kept, if any; else fsync and close.
        func finish() throws {
            try lock.withLock {
                if let failure { throw failure }
                guard let file else { throw StorageFailure.invalid("nothing was received") }
                try file.sync()
                file.close()
                self.file = nil
            }
        }
    }

    struct Inspect: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "inspect", abstract: "Print a backup's cluster, index, term, node counts and checksum, after checking it.")
        @Argument(help: "A file written by `nodelease snapshot save`.") var file: String
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let (bytes, backup, registry) = try Describe.load(file)
            if json {
                print(Describe.json(backup, registry, bytes: bytes, file: file))
                return
            }
            let n = registry.counts()
            let taken = Date(timeIntervalSince1970: Double(backup.takenAtMillis) / 1000)
            print(
                Render.table([
                    ["file", file],
                    ["format", "NodeLease backup, version \(backup.formatVersion)"],
                    ["cluster", backup.clusterID],
                    ["index", "\(backup.index)"],
                    ["term", "\(backup.term)"],
                    ["taken", "\(ISO8601DateFormatter().string(from: taken)) by replica \(backup.takenBy)"],
                    ["replicas", "\(backup.membership)"],
                    ["nodes", "\(registry.count) (\(n.active) active, \(n.stale) stale, \(n.inactive) inactive)"],
                    ["idempotency keys", "\(registry.rememberedKeys) (window \(registry.idempotencyWindow.seconds) s, \(registry.idempotencyWindow.maxKeys) keys)"],
                    ["replica sessions", "\(registry.sessionCounts.sessions) (request numbers kept: \(registry.sessionCounts.numbers))"],
                    ["size", Describe.size(bytes.count)],
                    ["crc32c", Describe.crc(bytes) + " (checked)"],
                ]))
        }
    }

    struct RestoreCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "restore",
            abstract: "Write one replica's data directory of a new cluster from a backup.",
            discussion: """
                Run it once for each replica of the new cluster, with the same --peers and --cluster-id, \
                then start the replicas with those. The new cluster's log starts --index-gap entries \
                above the backup's index, so its fencing tokens and lease ids are above every one the \
                old cluster granted; every active lease starts its full TTL again when a leader is elected.
                """)
        @Argument(help: "A file written by `nodelease snapshot save`.") var file: String
        @Option(help: "The new data directory (missing or empty).") var dataDir: String
        @Option(help: "This replica's id in the new cluster.") var replicaId: UInt64
        @Option(help: "Every replica of the new cluster, ID=HOST:PORT,... (peer addresses), as `serve` takes them.") var peers: String
        @Option(help: "The new cluster's id; must differ from the backed-up cluster's.") var clusterId: String
        @Option(help: "How many indexes above the backup's the new log starts (2^40; 2^32 to 2^48).") var indexGap: UInt64 = Restore.defaultIndexGap

        func run() async throws {
            let (_, backup, _) = try Describe.load(file)
            do {
                let membership = ServerConfig.voters(try ServerConfig.parsePeers(peers))
                let out = try Restore.restore(
                    backup, into: dataDir, replica: ReplicaID(replicaId), membership: membership, clusterID: clusterId, indexGap: indexGap)
                print(
                    "restored \(dataDir): replica \(replicaId) of cluster \(clusterId) (from \(backup.clusterID) at index \(backup.index), term \(backup.term)); "
                        + "log starts at index \(out.index), term \(out.term); \(out.nodes) nodes (\(out.counts.active) active, "
                        + "\(out.counts.stale) stale, \(out.counts.inactive) inactive), \(out.idempotencyKeys) idempotency keys")
                print("start it with: nodelease serve --replica-id \(replicaId) --cluster-id \(clusterId) --peers \(peers) --data-dir \(dataDir) ...")
            } catch {
                FileHandle.standardError.write(Data("nodelease: \(error)\n".utf8))
                throw ExitCode(1)
            }
        }
    }
}

/// Reading and describing backup files.
enum Describe {
    /// Reads and checks `file` (the backup's own checksum, then the registry's); exits 1 with
    /// the reader's message (file, offset, reason) when it is not a backup this build reads.
    static func load(_ file: String) throws -> ([UInt8], Backup, LeaseRegistry) {
        guard let data = FileManager.default.contents(atPath: file) else {
            FileHandle.standardError.write(Data("nodelease: cannot read \(file)\n".utf8))
            throw ExitCode(1)
        }
        let bytes = [UInt8](data)
        do {
            let backup = try Backup(decoding: bytes, file: file)
            do {
                return (bytes, backup, try LeaseRegistry(snapshot: backup.data))
            } catch {
                throw StorageFailure.corrupt(
                    file: file, offset: UInt64(backup.dataOffset), reason: "the registry inside the backup (from this offset) does not decode: \(error)")
            }
        } catch {
            FileHandle.standardError.write(Data("nodelease: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }

    static func crc(_ bytes: [UInt8]) -> String {
        let s = String(Backup.storedChecksum(bytes) ?? 0, radix: 16)
        return String(repeating: "0", count: max(0, 8 - s.count)) + s
    }

    static func size(_ n: Int) -> String {
        n < 10_000 ? "\(n) bytes" : n < 10_000_000 ? "\(n / 1000) kB" : "\(n / 1_000_000) MB"
    }

    static func json(_ b: Backup, _ r: LeaseRegistry, bytes: [UInt8], file: String) -> String {
        let n = r.counts()
        return "{\"file\":\(Render.q(file)),\"version\":\(b.formatVersion),\"clusterId\":\(Render.q(b.clusterID)),\"index\":\(b.index),"
            + "\"term\":\(b.term),\"takenAtMillis\":\(b.takenAtMillis),\"takenBy\":\(b.takenBy),\"nodes\":\(r.count),"
            + "\"active\":\(n.active),\"stale\":\(n.stale),\"inactive\":\(n.inactive),\"idempotencyKeys\":\(r.rememberedKeys),"
            + "\"replicaSessions\":\(r.sessionCounts.sessions),\"sessionRequests\":\(r.sessionCounts.numbers),"
            + "\"bytes\":\(bytes.count),\"crc32c\":\"\(crc(bytes))\"}"
    }
}

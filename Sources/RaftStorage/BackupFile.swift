import Raft

/// A backup (`nodelease snapshot save`, `GET /v1/snapshot`): the state machine's snapshot at a
/// committed index, with what a restore and an operator need to know about where it came from.
///
///     "NLBACKUP" | version u32 | cluster id (u32 length + UTF-8) | index u64 | term u64
///     | taken at (Unix milliseconds) u64 | taken by (replica id) u64 | membership
///     | data (u32 length + bytes) | crc32c u32 (of everything before it)
///
/// `data` is the registry's own snapshot (versioned and checksummed by itself). Integers are
/// little-endian. A reader meets an unknown version before anything else it could misread.
public struct Backup: Sendable, Equatable {
    public static let magic: [UInt8] = Array("NLBACKUP".utf8)
    /// The version this build writes; it reads every version up to it.
    public static let version: UInt32 = 1

    public var clusterID: String
    public var index: LogIndex
    public var term: Term
    public var takenAtMillis: UInt64
    public var takenBy: ReplicaID
    /// The configuration at `index` (informational: a restore makes its own from `--peers`).
    public var membership: Membership
    public var data: [UInt8]
    /// The format version the file was written in (`version` for one made here).
    public private(set) var formatVersion: UInt32 = Backup.version
    /// Where `data` starts in the file (after its length), for messages; 0 for one made here.
    public private(set) var dataOffset = 0

    public init(clusterID: String, index: LogIndex, term: Term, takenAtMillis: UInt64, takenBy: ReplicaID, membership: Membership, data: [UInt8]) {
        self.clusterID = clusterID
        self.index = index
        self.term = term
        self.takenAtMillis = takenAtMillis
        self.takenBy = takenBy
        self.membership = membership
        self.data = data
    }

    /// Equal content (where a file was read from does not count).
    public static func == (a: Backup, b: Backup) -> Bool {
        a.clusterID == b.clusterID && a.index == b.index && a.term == b.term && a.takenAtMillis == b.takenAtMillis && a.takenBy == b.takenBy
            && a.membership == b.membership && a.data == b.data
    }

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: data.count + 256)
        w.bytes = header()
        w.bytes.append(contentsOf: data)
        w.u32(CRC32C.checksum(w.bytes))
        return w.bytes
    }

    /// The file in three parts, to stream it without another copy of `data`: everything before
    /// the data (its length included), the data, then the checksum of both (`checksum`).
    public func header() -> [UInt8] {
        var w = ByteWriter(capacity: 256)
        w.bytes.append(contentsOf: Self.magic)
        w.u32(Self.version)
        w.string(clusterID)
        w.u64(index.rawValue)
        w.u64(term.rawValue)
        w.u64(takenAtMillis)
        w.u64(takenBy.rawValue)
        w.membership(membership)
        w.u32(UInt32(data.count))
        return w.bytes
    }

    /// The checksum that ends the file, over `header` (this backup's `header()`) then `data`.
    public func checksum(header: [UInt8]) -> UInt32 {
        data.withUnsafeBytes { CRC32C.checksum($0, continuing: CRC32C.checksum(header)) }
    }

    /// The checksum stored in the last four bytes of an encoded backup.
    public static func storedChecksum(_ bytes: [UInt8]) -> UInt32? {
        guard bytes.count >= 4 else { return nil }
        var r = ByteReader(bytes, at: bytes.count - 4)
        return try? r.u32()
    }

    /// Decodes a backup; throws `StorageFailure.corrupt` naming `file` and the offset on any
    /// damage, and on a version this build does not know (naming it) before reading further.
    public init(decoding bytes: [UInt8], file: String) throws {
        func corrupt(_ offset: Int, _ why: String) -> StorageFailure {
            .corrupt(file: file, offset: UInt64(offset), reason: why)
        }
        guard bytes.count >= Self.magic.count + 4, Array(bytes[0..<Self.magic.count]) == Self.magic else {
            throw corrupt(0, "not a NodeLease backup (it does not start with \"NLBACKUP\")")
        }
        var r = ByteReader(bytes, at: Self.magic.count)
        let version = try r.u32()
        let body = bytes.count - 4
        let intact = bytes.count >= Self.magic.count + 8 && Self.storedChecksum(bytes) == CRC32C.checksum(bytes[0..<body])
        guard version >= 1, version <= Self.version else {
            // The checksum tells a newer file (intact, if it keeps this layout's checksum) from
            // a damaged version field.
            throw corrupt(
                Self.magic.count,
                "backup format version \(version) is unknown to this build (it reads versions 1 to \(Self.version)): "
                    + (intact ? "a newer nodelease wrote it; use that one" : "a newer nodelease wrote it, or the file is damaged (its checksum does not match)"))
        }
        guard bytes.count >= Self.magic.count + 8 else { throw corrupt(bytes.count, "backup file too short") }
        guard intact else {
            throw corrupt(body, "backup checksum mismatch (the file is damaged or incomplete)")
        }
        formatVersion = version
        r = ByteReader(Array(bytes[0..<body]), at: Self.magic.count + 4)
        do {
            clusterID = try r.string()
            index = LogIndex(try r.u64())
            term = Term(try r.u64())
            takenAtMillis = try r.u64()
            takenBy = ReplicaID(try r.u64())
            membership = try r.membership()
            dataOffset = r.position + 4
            data = try r.blob()
        } catch {
            throw corrupt(r.position, "backup body does not decode")
        }
        guard r.remaining == 0 else { throw corrupt(r.position, "trailing bytes after the backup's data") }
    }
}

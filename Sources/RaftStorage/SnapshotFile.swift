import Raft

/// Snapshot files: `snap-<index>-<term>.snap`, written to a temporary name, fsynced, renamed
/// into place and the directory fsynced, so a crash leaves either the old or the new one.
///
///     "NLSNAP01" | version u32 | index u64 | term u64 | membership | data (u32 length + bytes) | crc32c u32
enum SnapshotFile {
    static let magic: [UInt8] = Array("NLSNAP01".utf8)
    static let version: UInt32 = 1

    static func name(_ m: SnapshotMetadata) -> String {
        "snap-\(hex(m.index.rawValue))-\(hex(m.term.rawValue)).snap"
    }

    static func encode(_ s: Snapshot) -> [UInt8] {
        var w = ByteWriter(capacity: s.data.count + 64)
        w.bytes.append(contentsOf: magic)
        w.u32(version)
        w.u64(s.metadata.index.rawValue)
        w.u64(s.metadata.term.rawValue)
        w.membership(s.metadata.membership)
        w.blob(s.data)
        w.u32(CRC32C.checksum(w.bytes))
        return w.bytes
    }

    /// Where the data of the snapshot with `metadata` starts in its file (after its length).
    static func dataOffset(_ metadata: SnapshotMetadata) -> Int {
        var w = ByteWriter()
        w.membership(metadata.membership)
        return magic.count + 4 + 8 + 8 + w.bytes.count + 4
    }

    /// Decodes a snapshot file; throws `StorageFailure.corrupt` naming the file on any damage.
    static func decode(_ bytes: [UInt8], file: String) throws -> Snapshot {
        func corrupt(_ offset: Int, _ why: String) -> StorageFailure {
            .corrupt(file: file, offset: UInt64(offset), reason: why)
        }
        guard bytes.count >= magic.count + 4 + 16 + 4 + 4 + 4 else { throw corrupt(0, "snapshot file too short") }
        guard Array(bytes[0..<magic.count]) == magic else { throw corrupt(0, "not a snapshot file") }
        // The version before the checksum: a later format may place its checksum elsewhere.
        var head = ByteReader(bytes, at: magic.count)
        let v = try head.u32()
        guard v == version else {
            throw corrupt(magic.count, "snapshot file format version \(v) is unknown to this build (it reads version \(version)); a newer nodelease wrote it")
        }
        let body = bytes.count - 4
        var tail = ByteReader(bytes, at: body)
        let stored = try tail.u32()
        guard CRC32C.checksum(bytes[0..<body]) == stored else { throw corrupt(0, "snapshot checksum mismatch") }
        var r = ByteReader(bytes, at: magic.count)
        do {
            _ = try r.u32()
            let index = LogIndex(try r.u64())
            let term = Term(try r.u64())
            let membership = try r.membership()
            let data = try r.blob()
            return Snapshot(metadata: SnapshotMetadata(index: index, term: term, membership: membership), data: data)
        } catch let e as StorageFailure {
            throw e
        } catch {
            throw corrupt(r.position, "snapshot body does not decode")
        }
    }
}

func hex(_ v: UInt64) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: max(0, 16 - s.count)) + s
}

import Raft

/// The on-disk record format of the write-ahead log.
///
/// A segment file `wal-<sequence>.log` is a sequence of records:
///
///     magic u32 "NWL1" | length u32 | crc32c u32 (of the payload) | payload (length bytes)
///
/// The payload starts with a type byte. `state` records (the first record of every segment,
/// and after compaction or a snapshot install) carry the hard state, the compaction point and
/// the membership; `batch` records carry one `Ready`'s entries and hard state, so one group
/// commit is one record and one fsync. Integers are little-endian.
enum WAL {
    static let magic: UInt32 = 0x314C_574E  // "NWL1"
    /// The format version: the magic's last character. A later format changes it ("NWL2").
    static let version = 1
    static let headerSize = 12
    /// Upper bound on one record, so a damaged length field cannot make us read gigabytes.
    static let maxRecord = 1 << 30

    enum RecordType: UInt8 {
        case state = 1
        case batch = 2
    }

    struct State {
        var hardState: HardState
        /// Entries up to here are gone from the log (a snapshot covers them).
        var compactedIndex: LogIndex
        var compactedTerm: Term
        var membership: Membership
        /// The log is replaced by a snapshot: forget every entry, whatever its index.
        var reset: Bool
    }

    static func frame(_ payload: [UInt8]) -> [UInt8] {
        var w = ByteWriter(capacity: payload.count + headerSize)
        w.u32(magic)
        w.u32(UInt32(payload.count))
        w.u32(CRC32C.checksum(payload))
        w.bytes.append(contentsOf: payload)
        return w.bytes
    }

    static func encodeState(_ s: State) -> [UInt8] {
        var w = ByteWriter()
        w.u8(RecordType.state.rawValue)
        w.hardState(s.hardState)
        w.u64(s.compactedIndex.rawValue)
        w.u64(s.compactedTerm.rawValue)
        w.membership(s.membership)
        w.u8(s.reset ? 1 : 0)
        return frame(w.bytes)
    }

    /// Encodes a batch; `positions` receives, for each entry, its offset and length inside
    /// the framed record.
    static func encodeBatch(hardState: HardState?, entries: [Entry], positions: inout [(Int, Int)]) -> [UInt8] {
        var w = ByteWriter(capacity: 32 + entries.reduce(0) { $0 + $1.data.count + 24 })
        w.u8(RecordType.batch.rawValue)
        if let hs = hardState {
            w.u8(1)
            w.hardState(hs)
        } else {
            w.u8(0)
        }
        w.u32(UInt32(entries.count))
        positions.removeAll(keepingCapacity: true)
        for e in entries {
            let start = w.bytes.count
            w.entry(e)
            positions.append((headerSize + start, w.bytes.count - start))
        }
        return frame(w.bytes)
    }

    /// Whether a valid record starts at `offset` of `bytes`.
    static func validRecord(in bytes: [UInt8], at offset: Int) -> Bool {
        var r = ByteReader(bytes, at: offset)
        guard let m = try? r.u32(), m == magic, let len = try? r.u32(), let crc = try? r.u32() else { return false }
        let n = Int(len)
        guard n > 0, n <= maxRecord, r.remaining >= n else { return false }
        return bytes.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[r.position..<(r.position + n)])) } == crc
    }

    /// The version of a record of another format version starting at `offset` ("NWL" and a
    /// digit other than ours), nil if there is none.
    static func otherVersion(in bytes: [UInt8], at offset: Int) -> Int? {
        guard offset + 4 <= bytes.count, bytes[offset] == 0x4E, bytes[offset + 1] == 0x57, bytes[offset + 2] == 0x4C else { return nil }
        let c = bytes[offset + 3]
        guard c >= 0x30, c <= 0x39, Int(c - 0x30) != version else { return nil }
        return Int(c - 0x30)
    }

    /// Whether any valid record starts after `offset`: tells damage in the middle of a
    /// segment (corruption) from a torn write at its end.
    static func anyValidRecord(in bytes: [UInt8], after offset: Int) -> Bool {
        var i = offset + 1
        while i + headerSize <= bytes.count {
            // The magic's first byte, then the full check.
            if bytes[i] == 0x4E && validRecord(in: bytes, at: i) { return true }
            i += 1
        }
        return false
    }
}

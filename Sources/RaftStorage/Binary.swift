import Raft

/// Little-endian encoding helpers for the WAL and snapshot formats.
struct ByteWriter {
    var bytes: [UInt8] = []

    init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u32(_ v: UInt32) {
        withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
    }
    mutating func u64(_ v: UInt64) {
        withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
    }
    mutating func blob(_ b: [UInt8]) {
        u32(UInt32(b.count))
        bytes.append(contentsOf: b)
    }
}

struct ByteReader {
    let bytes: [UInt8]
    var position: Int

    init(_ bytes: [UInt8], at position: Int = 0) {
        self.bytes = bytes
        self.position = position
    }

    var remaining: Int { bytes.count - position }

    mutating func u8() throws -> UInt8 {
        guard remaining >= 1 else { throw DecodeError.truncated }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func u32() throws -> UInt32 {
        guard remaining >= 4 else { throw DecodeError.truncated }
        var v: UInt32 = 0
        for i in 0..<4 { v |= UInt32(bytes[position + i]) << (8 * i) }
        position += 4
        return v
    }

    mutating func u64() throws -> UInt64 {
        guard remaining >= 8 else { throw DecodeError.truncated }
        var v: UInt64 = 0
        for i in 0..<8 { v |= UInt64(bytes[position + i]) << (8 * i) }
        position += 8
        return v
    }

    mutating func blob(max: Int = Int(UInt32.max)) throws -> [UInt8] {
        let n = Int(try u32())
        guard n <= max, remaining >= n else { throw DecodeError.truncated }
        defer { position += n }
        return Array(bytes[position..<(position + n)])
    }
}

enum DecodeError: Error {
    case truncated
    case invalid(String)
}

extension ByteWriter {
    mutating func entry(_ e: Entry) {
        u64(e.term.rawValue)
        u64(e.index.rawValue)
        u8(e.kind.rawValue)
        blob(e.data)
    }

    mutating func membership(_ m: Membership) {
        u32(UInt32(m.voters.count))
        for v in m.voters { u64(v.rawValue) }
    }

    mutating func hardState(_ hs: HardState) {
        u64(hs.term.rawValue)
        u64(hs.vote?.rawValue ?? 0)
        u64(hs.commit.rawValue)
    }
}

extension ByteReader {
    mutating func entry() throws -> Entry {
        let term = Term(try u64())
        let index = LogIndex(try u64())
        guard let kind = EntryKind(rawValue: try u8()) else { throw DecodeError.invalid("entry kind") }
        return Entry(term: term, index: index, kind: kind, data: try blob())
    }

    mutating func membership() throws -> Membership {
        let n = Int(try u32())
        guard n <= 64 else { throw DecodeError.invalid("membership of \(n) voters") }
        var voters: [ReplicaID] = []
        for _ in 0..<n { voters.append(ReplicaID(try u64())) }
        return Membership(voters: voters)
    }

    mutating func hardState() throws -> HardState {
        let term = Term(try u64())
        let vote = try u64()
        let commit = LogIndex(try u64())
        return HardState(term: term, vote: vote == 0 ? nil : ReplicaID(vote), commit: commit)
    }
}

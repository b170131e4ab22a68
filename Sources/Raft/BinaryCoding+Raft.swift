/// Encodings of the core's types, shared by the WAL, snapshots and the peer transport.
extension ByteWriter {
    public mutating func entry(_ e: Entry) {
        u64(e.term.rawValue)
        u64(e.index.rawValue)
        u8(e.kind.rawValue)
        blob(e.data)
    }

    public mutating func membership(_ m: Membership) {
        u32(UInt32(m.voters.count))
        for v in m.voters { u64(v.rawValue) }
    }

    public mutating func hardState(_ hs: HardState) {
        u64(hs.term.rawValue)
        u64(hs.vote?.rawValue ?? 0)
        u64(hs.commit.rawValue)
    }
}

extension ByteReader {
    public mutating func entry() throws -> Entry {
        let term = Term(try u64())
        let index = LogIndex(try u64())
        guard let kind = EntryKind(rawValue: try u8()) else { throw DecodeError.invalid("entry kind") }
        return Entry(term: term, index: index, kind: kind, data: try blob())
    }

    public mutating func membership() throws -> Membership {
        let n = Int(try u32())
        guard n <= 64 else { throw DecodeError.invalid("membership of \(n) voters") }
        var voters: [ReplicaID] = []
        for _ in 0..<n { voters.append(ReplicaID(try u64())) }
        return Membership(voters: voters)
    }

    public mutating func hardState() throws -> HardState {
        let term = Term(try u64())
        let vote = try u64()
        let commit = LogIndex(try u64())
        return HardState(term: term, vote: vote == 0 ? nil : ReplicaID(vote), commit: commit)
    }
}

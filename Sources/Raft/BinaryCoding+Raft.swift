/// Encodings of the core's types, shared by the WAL, snapshots and the peer transport.
extension ByteWriter {
    public mutating func entry(_ e: Entry) {
        u64(e.term.rawValue)
        u64(e.index.rawValue)
        u8(e.kind.rawValue)
        blob(e.data)
    }

    /// A configuration. The first version wrote only the voters (a count of at most 64, then
    /// the ids); the next ones start with a tag that count can never be: `formatTag` (members,
    /// removed ids, index) and `formatTagWithKeys` (the same and the recent keyed changes).
    /// All three are read.
    public mutating func membership(_ m: Membership) {
        u32(Membership.formatTagWithKeys)
        u32(UInt32(m.members.count))
        for x in m.members {
            u64(x.id.rawValue)
            u8(x.role.rawValue)
            string(x.peerAddress)
            string(x.clientAddress)
        }
        u32(UInt32(m.removed.count))
        for id in m.removed { u64(id.rawValue) }
        u64(m.index.rawValue)
        u32(UInt32(m.recentChanges.count))
        for c in m.recentChanges {
            string(String(c.key.prefix(255)))
            string(String(c.change.prefix(1000)))
            u64(c.index.rawValue)
        }
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
        let first = try u32()
        if first != Membership.formatTag && first != Membership.formatTagWithKeys {
            let n = Int(first)
            guard n <= 64 else { throw DecodeError.invalid("membership of \(n) voters") }
            var voters: [ReplicaID] = []
            for _ in 0..<n { voters.append(ReplicaID(try u64())) }
            return Membership(voters: voters)
        }
        let n = Int(try u32())
        guard n <= Membership.maxMembers else { throw DecodeError.invalid("membership of \(n) members") }
        var members: [Member] = []
        for _ in 0..<n {
            let id = ReplicaID(try u64())
            guard let role = MemberRole(rawValue: try u8()) else { throw DecodeError.invalid("member role") }
            members.append(Member(id: id, role: role, peerAddress: try string(), clientAddress: try string()))
        }
        let k = Int(try u32())
        guard k <= Membership.maxRemoved else { throw DecodeError.invalid("membership with \(k) removed ids") }
        var removed: [ReplicaID] = []
        for _ in 0..<k { removed.append(ReplicaID(try u64())) }
        var m = Membership(members: members, removed: removed)
        m.index = LogIndex(try u64())
        if first == Membership.formatTagWithKeys {
            let n = Int(try u32())
            guard n <= Membership.maxRecentChanges else { throw DecodeError.invalid("membership with \(n) recent changes") }
            for _ in 0..<n {
                m.recentChanges.append(RecentChange(key: try string(), change: try string(), index: LogIndex(try u64())))
            }
        }
        return m
    }

    public mutating func hardState() throws -> HardState {
        let term = Term(try u64())
        let vote = try u64()
        let commit = LogIndex(try u64())
        return HardState(term: term, vote: vote == 0 ? nil : ReplicaID(vote), commit: commit)
    }
}

extension Membership {
    /// The payload of a `configChange` entry.
    public var encoded: [UInt8] {
        var w = ByteWriter()
        w.membership(self)
        return w.bytes
    }

    /// Reads the payload of a `configChange` entry.
    public static func decode(_ bytes: [UInt8]) throws -> Membership {
        var r = ByteReader(bytes)
        return try r.membership()
    }
}

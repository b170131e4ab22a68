import Raft

/// A change to the registry, as proposed by the leader and replicated through the log.
public enum LeaseCommand: Sendable, Hashable {
    case acquire(hostname: String, holder: String, ttlSeconds: UInt32, idRange: ClosedRange<UInt32>)
    case renew(leaseID: UInt64)
    case release(leaseID: UInt64)
    /// Leader-side expiry of a lease whose deadline passed. Takes effect only if the lease was
    /// not renewed since the leader decided (its `renewalIndex` is unchanged).
    case expire(leaseID: UInt64, renewalIndex: UInt64)
    /// A stale node past the retention period becomes inactive, if it has not changed since.
    case retire(nodeID: NodeID, statusIndex: UInt64)
    /// An operator removes a stale or inactive node.
    case forget(nodeID: NodeID)
    /// The cluster saw coordinator replica `replica` take part with the data directory
    /// `dataDirectoryID`. Peers then refuse that replica if it comes back with another
    /// directory: an emptied directory has forgotten its votes.
    case registerReplica(replica: UInt64, dataDirectoryID: UInt64)
    /// How long and how many idempotency keys every replica remembers (shared/API.md,
    /// "Exactly once"). Decided in the log, so every replica evicts the same keys at the
    /// same index; the leader proposes it when its configuration differs from the registry's.
    case configureIdempotency(windowSeconds: UInt64, maxKeys: UInt32)
    /// The cluster version moves up to `version` (ClusterVersion.swift): proposed by the
    /// leader once every member supports it. Cluster version 2 and later only.
    case setClusterVersion(UInt32)

    /// Whether a client asked for this change (and so it may carry an idempotency key).
    public var isClientWrite: Bool {
        switch self {
        case .acquire, .renew, .release, .forget: true
        case .expire, .retire, .registerReplica, .configureIdempotency, .setClusterVersion: false
        }
    }
}

/// A command with the leader's wall-clock time (Unix seconds) at which it was proposed.
/// `apply` never reads a clock: every replica computes the same state from the same log.
public struct TimedCommand: Sendable, Hashable {
    public var command: LeaseCommand
    public var now: UInt64
    /// Chosen by the replica that received the client's request (0: none), so that replica
    /// can find the command's result when it applies, whoever proposed it.
    public var requestID: UInt64
    /// The idempotency key of the client's logical request (shared/API.md, "Exactly once"),
    /// or one the accepting replica chose; nil for the leader's own commands. The registry
    /// answers a repeated key with the first outcome instead of applying it again.
    public var key: IdempotencyKey?
    /// The proposing leader's monotonic clock (nanoseconds; 0: not stamped). Consecutive
    /// entries of one term measure the leader time that idempotency keys are remembered for,
    /// unaffected by wall-clock steps.
    public var leaderNanos: UInt64
    /// In place of a key (cluster version 3 on), for a write that came without one: the
    /// accepting replica's session, in which `requestID` is the request's number, and the
    /// numbers below which that replica is done. Makes the replica's own re-sends apply once
    /// without the registry remembering an outcome per write (`RequestSession`).
    public var session: SessionStamp?

    public init(
        _ command: LeaseCommand, now: UInt64, requestID: UInt64 = 0, key: IdempotencyKey? = nil, leaderNanos: UInt64 = 0,
        session: SessionStamp? = nil
    ) {
        self.command = command
        self.now = now
        self.requestID = requestID
        self.key = key
        self.leaderNanos = leaderNanos
        self.session = session
    }

    /// Version 1 entries (written before idempotency keys) still decode. Version 3 is
    /// version 2 with a session stamp in the key's place, written only for a command that
    /// carries one (cluster version 3 on); every other command is still written as version 2.
    static let version: UInt8 = 3

    /// The newest entry format a replica supporting cluster versions up to `supported` reads.
    public static func readableVersion(_ supported: UInt32) -> UInt8 { supported >= 3 ? 3 : 2 }

    /// The entry payload: version, request id, leader nanoseconds, key (flag, then the key; or
    /// flag 3 and the session stamp), type, time, fields (little-endian).
    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 96)
        w.u8(session == nil ? 2 : 3)
        w.u64(requestID)
        w.u64(leaderNanos)
        if let session {
            w.u8(SessionStamp.flag)
            w.u64(session.replica)
            w.u64(session.base)
            w.u64(session.done)
        } else if let key {
            w.u8(key.origin.rawValue)
            w.string(key.value)
        } else {
            w.u8(0)
        }
        command.encode(now: now, into: &w)
        return w.bytes
    }

    /// Why an entry payload is of a format this build does not know, a version or a command
    /// kind a newer build wrote (`supported`: the newest cluster version the replica supports,
    /// lower for a replica that plays an older build); nil for one it knows (whether it
    /// decodes or is malformed). A
    /// replica must stop at such an entry, never apply it as malformed: the replicas that know
    /// it apply it for real, and the states would part.
    public static func unknownFormat(_ bytes: [UInt8], supporting supported: UInt32 = ClusterVersion.newest) -> String? {
        guard let version = bytes.first else { return nil }
        let readable = readableVersion(supported)
        if version > readable {
            return "registry command format version \(version) is unknown to this build (it reads versions 1 to \(readable))"
        }
        guard version >= 1 else { return nil }
        var r = ByteReader(bytes, at: 1)
        guard let kind = try? { () throws -> UInt8 in
            _ = try r.u64()
            if version >= 2 {
                _ = try r.u64()
                let flag = try r.u8()
                if version >= 3 && flag == SessionStamp.flag {
                    _ = (try r.u64(), try r.u64(), try r.u64())
                } else if flag != 0 {
                    _ = try r.string()
                }
            }
            return try r.u8()
        }() else { return nil }
        let known = ClusterVersion.commandKinds(supported)
        return known.contains(kind) ? nil : "registry command kind \(kind) is unknown to this build (it knows kinds \(known))"
    }

    /// Decodes an entry payload; nil for anything malformed or of an unknown version.
    public init?(decoding bytes: [UInt8]) {
        var r = ByteReader(bytes)
        do {
            let version = try r.u8()
            guard (1...Self.version).contains(version) else { return nil }
            requestID = try r.u64()
            key = nil
            session = nil
            leaderNanos = 0
            if version >= 2 {
                leaderNanos = try r.u64()
                let flag = try r.u8()
                if version >= 3 {
                    // Version 3 is written only for a session stamp.
                    guard flag == SessionStamp.flag else { return nil }
                    session = SessionStamp(replica: try r.u64(), base: try r.u64(), done: try r.u64())
                    guard requestID > session!.base, session!.done <= requestID else { return nil }
                } else if flag != 0 {
                    guard let origin = IdempotencyKey.Origin(rawValue: flag) else { return nil }
                    key = IdempotencyKey(origin: origin, value: try r.string())
                }
            }
            guard let (command, now) = try LeaseCommand.decode(&r) else { return nil }
            self.command = command
            self.now = now
            guard r.remaining == 0 else { return nil }
        } catch {
            return nil
        }
    }
}

/// What a replica puts in a write that came without an idempotency key (cluster version 3 on):
/// its session (the replica and the base its request numbers start above, drawn at random at
/// each start) and `done`, a number such that every request of the session below it is
/// finished at the replica: answered, or timed out and never sent again. The entry's
/// `requestID` is the request's number. The registry keeps, for each session, `done` and the
/// numbers at or above it that applied: a command whose number is below `done`, or already
/// applied, changes nothing (`RequestSession`). Sessions are the Raft dissertation's client
/// sessions (section 6.3), the client here being the replica that accepted the request.
public struct SessionStamp: Sendable, Hashable {
    public var replica: UInt64
    public var base: UInt64
    public var done: UInt64

    public init(replica: UInt64, base: UInt64, done: UInt64) {
        self.replica = replica
        self.base = base
        self.done = done
    }

    /// The key flag of a stamped entry (format version 3).
    static let flag: UInt8 = 3
}

/// The key that makes a client write exactly-once. Client keys and the keys a replica chooses
/// for requests that came without one live in separate namespaces, so they never collide.
public struct IdempotencyKey: Sendable, Hashable, CustomStringConvertible {
    public enum Origin: UInt8, Sendable, Hashable {
        /// From the `Idempotency-Key` header.
        case client = 1
        /// Chosen by the replica that accepted a request without the header.
        case replica = 2
    }
    public var origin: Origin
    public var value: String

    public init(origin: Origin, value: String) {
        self.origin = origin
        self.value = value
    }

    /// A client's key: 1 to 64 printable ASCII characters (shared/API.md).
    public static func client(_ raw: String) throws(LeaseError) -> IdempotencyKey {
        let bytes = Array(raw.utf8)
        guard !bytes.isEmpty, bytes.count <= 64, bytes.allSatisfy({ $0 >= 0x20 && $0 < 0x7f }) else {
            throw .invalid(field: "Idempotency-Key", message: "must be 1 to 64 printable ASCII characters")
        }
        return IdempotencyKey(origin: .client, value: raw)
    }

    /// The key a replica gives a request that came without one: its id and the request's
    /// number (unique across restarts: each start draws a random base), the number in base 62.
    /// Up to replica 999 it fits in 15 bytes, which Swift keeps inside the string itself: no
    /// allocation for each of the up to 100,000 keys the window remembers (the hexadecimal
    /// form, `3-` and the number, took 18 bytes and one; the dot keeps the two forms apart while
    /// keys of both are remembered, during a rolling upgrade).
    public static func replica(_ replica: UInt64, request: UInt64) -> IdempotencyKey {
        var count = 1
        var rest = request / 62
        while rest > 0 {
            count += 1
            rest /= 62
        }
        let digits = String(unsafeUninitializedCapacity: count) { text in
            var n = request
            for i in (0..<count).reversed() {
                let d = UInt8(n % 62)
                text[i] = d < 10 ? 48 + d : d < 36 ? 55 + d : 61 + d
                n /= 62
            }
            return count
        }
        return IdempotencyKey(origin: .replica, value: "\(replica)." + digits)
    }

    public var description: String { origin == .client ? value : "(replica) \(value)" }
}

extension LeaseCommand {
    /// Type, time and fields of a command.
    func encode(now: UInt64, into w: inout ByteWriter) {
        switch self {
        case .acquire(let hostname, let holder, let ttl, let range):
            w.u8(1)
            w.u64(now)
            w.string(hostname)
            w.string(holder)
            w.u32(ttl)
            w.u32(range.lowerBound)
            w.u32(range.upperBound)
        case .renew(let id):
            w.u8(2)
            w.u64(now)
            w.u64(id)
        case .release(let id):
            w.u8(3)
            w.u64(now)
            w.u64(id)
        case .expire(let id, let renewal):
            w.u8(4)
            w.u64(now)
            w.u64(id)
            w.u64(renewal)
        case .retire(let node, let statusIndex):
            w.u8(5)
            w.u64(now)
            w.u32(node.rawValue)
            w.u64(statusIndex)
        case .forget(let node):
            w.u8(6)
            w.u64(now)
            w.u32(node.rawValue)
        case .registerReplica(let replica, let dir):
            w.u8(7)
            w.u64(now)
            w.u64(replica)
            w.u64(dir)
        case .configureIdempotency(let window, let maxKeys):
            w.u8(8)
            w.u64(now)
            w.u64(window)
            w.u32(maxKeys)
        case .setClusterVersion(let version):
            w.u8(9)
            w.u64(now)
            w.u32(version)
        }
    }

    /// The command and its time; nil for an unknown type or bad fields.
    static func decode(_ r: inout ByteReader) throws -> (LeaseCommand, UInt64)? {
        let type = try r.u8()
        let now = try r.u64()
        let command: LeaseCommand
        switch type {
        case 1:
            let hostname = try r.string()
            let holder = try r.string()
            let ttl = try r.u32()
            let lo = try r.u32()
            let hi = try r.u32()
            guard lo <= hi else { return nil }
            command = .acquire(hostname: hostname, holder: holder, ttlSeconds: ttl, idRange: lo...hi)
        case 2: command = .renew(leaseID: try r.u64())
        case 3: command = .release(leaseID: try r.u64())
        case 4: command = .expire(leaseID: try r.u64(), renewalIndex: try r.u64())
        case 5: command = .retire(nodeID: NodeID(try r.u32()), statusIndex: try r.u64())
        case 6: command = .forget(nodeID: NodeID(try r.u32()))
        case 7: command = .registerReplica(replica: try r.u64(), dataDirectoryID: try r.u64())
        case 8: command = .configureIdempotency(windowSeconds: try r.u64(), maxKeys: try r.u32())
        case 9: command = .setClusterVersion(try r.u32())
        default: return nil
        }
        return (command, now)
    }

    /// What the request asked for, for telling a retry from another request under the same
    /// key: a 64-bit FNV-1a hash of the command's type and fields (its time left out).
    public var fingerprint: UInt64 {
        var w = ByteWriter(capacity: 64)
        encode(now: 0, into: &w)
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in w.bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return h
    }
}

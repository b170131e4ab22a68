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
}

/// A command with the leader's wall-clock time (Unix seconds) at which it was proposed.
/// `apply` never reads a clock: every replica computes the same state from the same log.
public struct TimedCommand: Sendable, Hashable {
    public var command: LeaseCommand
    public var now: UInt64
    /// Chosen by the replica that received the client's request (0: none), so that replica
    /// can find the command's result when it applies, whoever proposed it.
    public var requestID: UInt64

    public init(_ command: LeaseCommand, now: UInt64, requestID: UInt64 = 0) {
        self.command = command
        self.now = now
        self.requestID = requestID
    }

    static let version: UInt8 = 1

    /// The entry payload: version, request id, type, time, fields (little-endian).
    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 64)
        w.u8(Self.version)
        w.u64(requestID)
        switch command {
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
        }
        return w.bytes
    }

    /// Decodes an entry payload; nil for anything malformed or of an unknown version.
    public init?(decoding bytes: [UInt8]) {
        var r = ByteReader(bytes)
        do {
            guard try r.u8() == Self.version else { return nil }
            requestID = try r.u64()
            let type = try r.u8()
            now = try r.u64()
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
            default: return nil
            }
            guard r.remaining == 0 else { return nil }
        } catch {
            return nil
        }
    }
}

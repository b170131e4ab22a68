import Raft

/// What a command did.
public enum LeaseReply: Sendable, Hashable {
    /// acquire or renew: the (new or renewed) lease.
    case lease(Lease)
    /// release, expire, retire or forget: the node as it is now (for forget: as it was).
    case node(NodeRecord)
    /// registerReplica: the directory recorded for the replica.
    case replica(replica: UInt64, dataDirectoryID: UInt64)
}

/// The replicated state machine of node-ID leases (shared/API.md). Pure and deterministic:
/// the same commands at the same log indexes give the same state on every replica.
public struct LeaseRegistry: Sendable {
    private var nodes: [NodeID: NodeRecord] = [:]
    /// Every registered node ID, ascending: listing and scans iterate this, never the dictionary.
    public private(set) var order: [NodeID] = []
    private var byHostname: [String: NodeID] = [:]
    private var byLease: [UInt64: NodeID] = [:]
    /// The log index of the last command applied.
    public private(set) var appliedIndex: UInt64 = 0
    /// Coordinator replica id → the id of the data directory it took part with.
    public private(set) var replicaDirectories: [UInt64: UInt64] = [:]
    /// Derived (not snapshotted): all IDs in `cursorLower..<cursor` are taken.
    private var cursorLower: UInt64 = 0
    private var cursor: UInt64 = 0

    public init() {}

    // MARK: Reading

    public var count: Int { order.count }

    public func node(_ id: NodeID) -> NodeRecord? { nodes[id] }

    public func node(hostname: String) -> NodeRecord? { byHostname[hostname].flatMap { nodes[$0] } }

    public func lease(_ leaseID: UInt64) -> NodeRecord? { byLease[leaseID].flatMap { nodes[$0] } }

    /// Every node, by node ID, optionally only those with `status`.
    public func nodes(status: NodeStatus? = nil) -> [NodeRecord] {
        var out: [NodeRecord] = []
        out.reserveCapacity(status == nil ? order.count : 16)
        for id in order {
            let r = nodes[id]!
            if status == nil || r.status == status { out.append(r) }
        }
        return out
    }

    /// Counts by status (kept up to date as commands apply).
    public func counts() -> (active: Int, stale: Int, inactive: Int) {
        (statusCounts[0], statusCounts[1], statusCounts[2])
    }
    private var statusCounts = [0, 0, 0]

    private mutating func count(_ status: NodeStatus, _ delta: Int) {
        statusCounts[Int(status.rawValue) - 1] += delta
    }

    // MARK: Applying

    /// Applies the entry payload at log `index`. A payload that does not decode changes
    /// nothing (apart from the applied index) and reports `invalid`.
    public mutating func apply(entry data: [UInt8], index: UInt64) -> Result<LeaseReply, LeaseError> {
        guard let timed = TimedCommand(decoding: data) else {
            appliedIndex = max(appliedIndex, index)
            return .failure(.invalid(field: "command", message: "the log entry does not decode"))
        }
        return apply(timed.command, now: timed.now, index: index)
    }

    /// Applies one command at log `index` (also the fencing token of a new grant).
    public mutating func apply(_ command: LeaseCommand, now: UInt64, index: UInt64) -> Result<LeaseReply, LeaseError> {
        appliedIndex = max(appliedIndex, index)
        do {
            switch command {
            case .acquire(let hostname, let holder, let ttl, let range):
                return .success(.lease(try acquire(hostname: hostname, holder: holder, ttl: ttl, range: range, now: now, index: index)))
            case .renew(let leaseID):
                guard let id = byLease[leaseID] else { throw LeaseError.leaseNotFound }
                nodes[id]!.lastRenewal = max(nodes[id]!.lastRenewal, now)
                nodes[id]!.renewalIndex = index
                return .success(.lease(nodes[id]!.lease))
            case .release(let leaseID):
                guard let id = byLease[leaseID] else { throw LeaseError.leaseNotFound }
                setStatus(id, .inactive, now: now, index: index)
                return .success(.node(nodes[id]!))
            case .expire(let leaseID, let renewalIndex):
                guard let id = byLease[leaseID], nodes[id]!.renewalIndex == renewalIndex else {
                    throw LeaseError.leaseNotFound
                }
                setStatus(id, .stale, now: now, index: index)
                return .success(.node(nodes[id]!))
            case .retire(let id, let statusIndex):
                guard let r = nodes[id], r.status == .stale, r.statusIndex == statusIndex else {
                    throw LeaseError.nodeNotFound
                }
                setStatus(id, .inactive, now: now, index: index)
                return .success(.node(nodes[id]!))
            case .forget(let id):
                guard let r = nodes[id] else { throw LeaseError.nodeNotFound }
                guard r.status != .active else { throw LeaseError.nodeActive(id) }
                remove(id)
                return .success(.node(r))
            case .registerReplica(let replica, let dir):
                // The first directory seen is the one that counts.
                if replicaDirectories[replica] == nil { replicaDirectories[replica] = dir }
                return .success(.replica(replica: replica, dataDirectoryID: replicaDirectories[replica]!))
            }
        } catch let e as LeaseError {
            return .failure(e)
        } catch {
            return .failure(.invalid(field: "command", message: "\(error)"))
        }
    }

    private mutating func acquire(hostname raw: String, holder rawHolder: String, ttl: UInt32, range: ClosedRange<UInt32>, now: UInt64, index: UInt64) throws -> Lease {
        let hostname = try Validation.hostname(raw)
        let holder = try Validation.holder(rawHolder)
        guard ttl >= 1 else { throw LeaseError.invalid(field: "ttlSeconds", message: "must be at least 1") }
        if let id = byHostname[hostname] {
            var r = nodes[id]!
            if r.status == .active {
                guard r.holder == holder else {
                    let end = r.lastRenewal + UInt64(r.ttlSeconds)
                    throw LeaseError.hostnameInUse(nodeID: id, holder: r.holder, expiresInSeconds: end > now ? end - now : 0)
                }
                // The same installation asks again (a restart, a retry): the same lease, renewed.
                r.lastRenewal = max(r.lastRenewal, now)
                r.ttlSeconds = ttl
                r.renewalIndex = index
                nodes[id] = r
                return r.lease
            }
            // Stale or inactive: the hostname gets its ID back under a new lease.
            if r.holder != holder { r.transitions += 1 }
            count(r.status, -1)
            count(.active, 1)
            grant(&r, holder: holder, ttl: ttl, now: now, index: index)
            nodes[id] = r
            byLease[r.leaseID] = id
            return r.lease
        }
        // A new hostname: the smallest free ID, else the ID inactive the longest.
        if let id = smallestFree(in: range) {
            var r = NodeRecord(
                nodeID: id, hostname: hostname, status: .active, leaseID: 0, holder: holder, ttlSeconds: ttl,
                acquiredAt: now, lastRenewal: now, transitions: 0, renewalIndex: index, statusSince: now, statusIndex: index)
            grant(&r, holder: holder, ttl: ttl, now: now, index: index)
            insert(r)
            return r.lease
        }
        guard let id = longestInactive(in: range) else { throw LeaseError.nodeIDsExhausted }
        var r = nodes[id]!
        byHostname[r.hostname] = nil
        r.hostname = hostname
        r.transitions += 1
        count(r.status, -1)
        count(.active, 1)
        grant(&r, holder: holder, ttl: ttl, now: now, index: index)
        nodes[id] = r
        byHostname[hostname] = id
        byLease[r.leaseID] = id
        return r.lease
    }

    private func grant(_ r: inout NodeRecord, holder: String, ttl: UInt32, now: UInt64, index: UInt64) {
        r.leaseID = index
        r.holder = holder
        r.ttlSeconds = ttl
        r.acquiredAt = now
        r.lastRenewal = now
        r.renewalIndex = index
        r.status = .active
        r.statusSince = now
        r.statusIndex = index
    }

    private mutating func setStatus(_ id: NodeID, _ status: NodeStatus, now: UInt64, index: UInt64) {
        let r = nodes[id]!
        if r.status == .active && status != .active { byLease[r.leaseID] = nil }
        count(r.status, -1)
        count(status, 1)
        nodes[id]!.status = status
        nodes[id]!.statusSince = now
        nodes[id]!.statusIndex = index
    }

    private mutating func insert(_ r: NodeRecord) {
        nodes[r.nodeID] = r
        count(r.status, 1)
        byHostname[r.hostname] = r.nodeID
        if r.status == .active { byLease[r.leaseID] = r.nodeID }
        var lo = 0
        var hi = order.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if order[mid] < r.nodeID { lo = mid + 1 } else { hi = mid }
        }
        order.insert(r.nodeID, at: lo)
    }

    private mutating func remove(_ id: NodeID) {
        guard let r = nodes.removeValue(forKey: id) else { return }
        count(r.status, -1)
        byHostname[r.hostname] = nil
        if r.status == .active { byLease[r.leaseID] = nil }
        if let k = binarySearch(id) { order.remove(at: k) }
        let raw = UInt64(id.rawValue)
        if raw >= cursorLower && raw < cursor { cursor = raw }
    }

    private func binarySearch(_ id: NodeID) -> Int? {
        var lo = 0
        var hi = order.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if order[mid] < id { lo = mid + 1 } else { hi = mid }
        }
        return lo < order.count && order[lo] == id ? lo : nil
    }

    /// The smallest ID of `range` that no node holds (never used, or forgotten).
    private mutating func smallestFree(in range: ClosedRange<UInt32>) -> NodeID? {
        let lower = UInt64(range.lowerBound)
        if cursorLower != lower || cursor < lower {
            cursorLower = lower
            cursor = lower
        }
        while cursor <= UInt64(range.upperBound) && nodes[NodeID(UInt32(cursor))] != nil { cursor += 1 }
        return cursor <= UInt64(range.upperBound) ? NodeID(UInt32(cursor)) : nil
    }

    private func longestInactive(in range: ClosedRange<UInt32>) -> NodeID? {
        var best: NodeRecord?
        for id in order where range.contains(id.rawValue) {
            let r = nodes[id]!
            guard r.status == .inactive else { continue }
            if best == nil || r.statusIndex < best!.statusIndex { best = r }
        }
        return best?.nodeID
    }
}

extension LeaseRegistry: Equatable {
    /// Equal registries hold the same records and applied index (derived caches aside).
    public static func == (a: LeaseRegistry, b: LeaseRegistry) -> Bool {
        a.appliedIndex == b.appliedIndex && a.order == b.order && a.order.allSatisfy { a.nodes[$0] == b.nodes[$0] }
            && a.replicaDirectories == b.replicaDirectories
    }
}

// MARK: Snapshots

extension LeaseRegistry {
    static let snapshotMagic: [UInt8] = Array("NLREG".utf8)
    static let snapshotVersion: UInt8 = 2

    /// The whole registry in a compact, versioned binary form with a CRC-32C checksum.
    public func snapshot() -> [UInt8] {
        var w = ByteWriter(capacity: 64 + order.count * 96)
        w.bytes.append(contentsOf: Self.snapshotMagic)
        w.u8(Self.snapshotVersion)
        w.u64(appliedIndex)
        w.u32(UInt32(order.count))
        for id in order {
            let r = nodes[id]!
            w.u32(r.nodeID.rawValue)
            w.string(r.hostname)
            w.u8(r.status.rawValue)
            w.u64(r.leaseID)
            w.string(r.holder)
            w.u32(r.ttlSeconds)
            w.u64(r.acquiredAt)
            w.u64(r.lastRenewal)
            w.u64(r.transitions)
            w.u64(r.renewalIndex)
            w.u64(r.statusSince)
            w.u64(r.statusIndex)
        }
        w.u32(UInt32(replicaDirectories.count))
        for k in replicaDirectories.keys.sorted() {
            w.u64(k)
            w.u64(replicaDirectories[k]!)
        }
        w.u32(CRC32C.checksum(w.bytes))
        return w.bytes
    }

    public enum SnapshotError: Error, Equatable {
        case badMagic, unknownVersion(UInt8), checksumMismatch, malformed(String)
    }

    /// Rebuilds a registry from `snapshot()` output; throws on any damage.
    public init(snapshot bytes: [UInt8]) throws {
        self.init()
        guard bytes.isEmpty == false else { return }
        guard bytes.count >= Self.snapshotMagic.count + 1 + 8 + 4 + 4, Array(bytes.prefix(Self.snapshotMagic.count)) == Self.snapshotMagic else {
            throw SnapshotError.badMagic
        }
        let body = bytes.count - 4
        var tail = ByteReader(bytes, at: body)
        guard try tail.u32() == CRC32C.checksum(bytes[0..<body]) else { throw SnapshotError.checksumMismatch }
        var r = ByteReader(Array(bytes[0..<body]), at: Self.snapshotMagic.count)
        do {
            let version = try r.u8()
            guard version == Self.snapshotVersion else { throw SnapshotError.unknownVersion(version) }
            appliedIndex = try r.u64()
            let n = Int(try r.u32())
            var last: NodeID?
            for _ in 0..<n {
                let id = NodeID(try r.u32())
                let hostname = try r.string()
                guard let status = NodeStatus(rawValue: try r.u8()) else { throw SnapshotError.malformed("status") }
                let rec = NodeRecord(
                    nodeID: id, hostname: hostname, status: status, leaseID: try r.u64(), holder: try r.string(),
                    ttlSeconds: try r.u32(), acquiredAt: try r.u64(), lastRenewal: try r.u64(), transitions: try r.u64(),
                    renewalIndex: try r.u64(), statusSince: try r.u64(), statusIndex: try r.u64())
                guard last == nil || last! < id, byHostname[hostname] == nil else {
                    throw SnapshotError.malformed("records out of order or duplicated")
                }
                last = id
                nodes[id] = rec
                count(status, 1)
                order.append(id)
                byHostname[hostname] = id
                if status == .active { byLease[rec.leaseID] = id }
            }
            let replicas = Int(try r.u32())
            for _ in 0..<replicas { replicaDirectories[try r.u64()] = try r.u64() }
            guard r.remaining == 0 else { throw SnapshotError.malformed("trailing bytes") }
        } catch let e as SnapshotError {
            throw e
        } catch {
            throw SnapshotError.malformed("truncated")
        }
    }
}

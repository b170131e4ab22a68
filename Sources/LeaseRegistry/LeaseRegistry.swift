import Raft

/// What a command did.
public enum LeaseReply: Sendable, Hashable {
    /// acquire or renew: the (new or renewed) lease.
    case lease(Lease)
    /// release, expire, retire or forget: the node as it is now (for forget: as it was).
    case node(NodeRecord)
    /// setClusterVersion: the cluster version now in force.
    case clusterVersion(UInt32)
    /// registerReplica: the directory recorded for the replica.
    case replica(replica: UInt64, dataDirectoryID: UInt64)
    /// configureIdempotency: the window now in force.
    case idempotency(IdempotencyWindow)
}

/// The outcome of one applied log entry.
public struct Applied: Sendable, Hashable {
    public var result: Result<LeaseReply, LeaseError>
    /// The command's idempotency key had been applied before: `result` is that first outcome,
    /// and nothing changed now.
    public var replayed: Bool
    /// The index of the entry the outcome belongs to (for a replay, the first one's).
    public var index: UInt64
    /// A repeat of a replica session's request (or one its replica gave up on): nothing changed,
    /// and no outcome is kept to answer with (`result` says so; `replayed` is true too).
    public var discarded: Bool = false

    /// What a discarded repeat reports.
    static func discarded(index: UInt64) -> Applied {
        Applied(
            result: .failure(.invalid(field: "request", message: "a repeat of a request that already applied or was given up; not applied again")),
            replayed: true, index: index, discarded: true)
    }
}

/// How long and how many idempotency keys the registry remembers (shared/API.md, "Exactly
/// once"). Set through the log (`configureIdempotency`), so all replicas agree.
public struct IdempotencyWindow: Sendable, Hashable {
    /// Leader seconds a key is remembered, at least.
    public var seconds: UInt64
    /// At most this many keys are remembered; the oldest go first.
    public var maxKeys: Int

    public init(seconds: UInt64 = 600, maxKeys: Int = 100_000) {
        self.seconds = seconds
        self.maxKeys = maxKeys
    }
}

/// The first outcome of a keyed command.
struct Remembered: Sendable, Hashable {
    var fingerprint: UInt64
    /// The outcome, encoded as in snapshots: a few dozen bytes on the heap, where the decoded
    /// enum took about 140 bytes inline in each of the dictionary's buckets (a full window of
    /// 100,000 keys of 45 characters went from 563 to 413 bytes a key). Decoded only for a replay.
    var outcome: [UInt8]
    var index: UInt64
    /// The registry clock (nanoseconds) when it applied.
    var at: UInt64

    init(fingerprint: UInt64, result: Result<LeaseReply, LeaseError>, index: UInt64, at: UInt64) {
        var w = ByteWriter(capacity: 128)
        w.outcome(result)
        // An exact copy: the writer's spare capacity would otherwise stay with every key.
        self.outcome = [UInt8](unsafeUninitializedCapacity: w.bytes.count) { buffer, n in
            n = buffer.initialize(from: w.bytes).1
        }
        self.fingerprint = fingerprint
        self.index = index
        self.at = at
    }

    init(fingerprint: UInt64, outcome: [UInt8], index: UInt64, at: UInt64) {
        self.fingerprint = fingerprint
        self.outcome = outcome
        self.index = index
        self.at = at
    }

    var result: Result<LeaseReply, LeaseError> {
        var r = ByteReader(outcome)
        // Written by `init` just above: it always decodes.
        return (try? r.outcome()) ?? .failure(.invalid(field: "command", message: "a remembered outcome does not decode"))
    }
}

/// The replicated state machine of node-ID leases (shared/API.md). Pure and deterministic:
/// the same commands at the same log indexes give the same state on every replica.
public struct LeaseRegistry: Sendable {
    private var nodes = NodeTable()
    /// Every registered node ID, ascending: listing and scans iterate this, never the dictionary.
    public private(set) var order = SortedChunks<NodeID>()
    /// Derived (not snapshotted): stale and inactive nodes by (status index, node ID), so the
    /// retention scan reads only stale nodes and reusing "the ID inactive the longest" does
    /// not scan the registry.
    private var staleByAge = SortedChunks<StatusKey>()
    private var inactiveByAge = SortedChunks<StatusKey>()
    /// Each node by its hostname, and each active lease by its id (RecordIndex.swift: the keys
    /// are read from the records).
    private var byHostname = RecordIndex<String>()
    private var byLease = RecordIndex<UInt64>()
    /// The log index of the last command applied.
    public private(set) var appliedIndex: UInt64 = 0
    /// The log index of the last entry that changed any node's ID, hostname or status (a
    /// grant, release, expiry, retirement or forget; never a renewal): what a watcher of the
    /// registry waits on (shared/API.md, "Watching the registry").
    public private(set) var registryIndex: UInt64 = 0
    /// Coordinator replica id → the id of the data directory it took part with.
    public private(set) var replicaDirectories: [UInt64: UInt64] = [:]
    /// Derived (not snapshotted): every ID in `cursorLower..<cursor` is taken or in
    /// `freeBelowCursor` (forgotten since the cursor passed it), so the smallest free ID is
    /// found without walking the registry.
    private var cursorLower: UInt64 = 0
    private var cursor: UInt64 = 0
    private var freeBelowCursor = SortedChunks<NodeID>()
    /// Outcomes of keyed commands by key, and the keys in the order they applied, which is
    /// also the order of their `at` (both in pieces: ChunkedStorage.swift).
    private var remembered = ShardedDictionary<IdempotencyKey, Remembered>()
    private var rememberedOrder = ChunkedArray<IdempotencyKey>()
    /// Replica sessions of writes that came without a key (cluster version 3 on).
    private var sessions = RequestSessions()
    public private(set) var idempotencyWindow = IdempotencyWindow()
    /// The cluster version agreed through the log (ClusterVersion.swift); 1 until raised.
    public private(set) var clusterVersion: UInt32 = 1
    /// Leader time as the log tells it, in nanoseconds: 0 until the first
    /// `configureIdempotency` entry (so every replica starts it at the same index), then
    /// moved by the monotonic time between consecutive stamped entries of one term (one
    /// leader). A new leader's first entry does not move it, and wall-clock steps never do:
    /// keys may be kept longer than the window, never shorter.
    public private(set) var clock: UInt64 = 0
    private var lastStamp: (term: UInt64, nanos: UInt64) = (0, 0)

    /// Rules broken on purpose (simulator mutants and the fault build's planted bugs; never set
    /// in a normal server). Not part of snapshots.
    public var faults: RegistryFaults = []

    public init() {}

    /// How many idempotency keys are remembered now.
    public var rememberedKeys: Int { remembered.count }

    /// How many replica sessions are kept, and the request numbers they hold.
    public var sessionCounts: (sessions: Int, numbers: Int) { (sessions.all.count, sessions.numbersKept) }

    // MARK: Reading

    public var count: Int { order.count }

    public func node(_ id: NodeID) -> NodeRecord? { nodes[id] }

    public func node(hostname: String) -> NodeRecord? { nodeID(hostname: hostname).flatMap { nodes[$0] } }

    public func lease(_ leaseID: UInt64) -> NodeRecord? { nodeID(lease: leaseID).flatMap { nodes[$0] } }

    private func nodeID(hostname: String) -> NodeID? {
        byHostname.find(hostname) { id in nodes.reading(id) { $0.hostname == hostname } ?? false }
    }

    /// The node holding active lease `leaseID`.
    private func nodeID(lease leaseID: UInt64) -> NodeID? {
        byLease.find(leaseID) { id in nodes.reading(id) { $0.leaseID == leaseID && $0.status == .active } ?? false }
    }

    /// Lease `leaseID` is active and its latest renewal is `renewalIndex` (what the leader's
    /// deadline heap asks of each entry; no record is copied out).
    public func isActive(lease leaseID: UInt64, renewalIndex: UInt64) -> Bool {
        guard let id = nodeID(lease: leaseID) else { return false }
        return nodes.reading(id) { $0.status == .active && $0.renewalIndex == renewalIndex } ?? false
    }

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

    /// How many nodes `nodes(status:)` gives (`statusCounts` is kept by status, as
    /// `count(_:_:)` indexes it).
    public func count(of status: NodeStatus?) -> Int {
        status.map { statusCounts[Int($0.rawValue) - 1] } ?? count
    }
    private var statusCounts = [0, 0, 0]

    private mutating func count(_ status: NodeStatus, _ delta: Int) {
        statusCounts[Int(status.rawValue) - 1] += delta
    }

    // MARK: Applying

    /// Applies the entry payload at log `index`. A payload that does not decode changes
    /// nothing (apart from the applied index) and reports `invalid`.
    public mutating func apply(entry data: [UInt8], index: UInt64) -> Result<LeaseReply, LeaseError> {
        applied(entry: data, index: index).result
    }

    /// Applies the entry payload at log `index` (of `term`), with what a client's answer needs.
    public mutating func applied(entry data: [UInt8], index: UInt64, term: UInt64 = 0) -> Applied {
        guard let timed = TimedCommand(decoding: data) else {
            appliedIndex = max(appliedIndex, index)
            return Applied(result: .failure(.invalid(field: "command", message: "the log entry does not decode")), replayed: false, index: index)
        }
        return apply(timed, index: index, term: term)
    }

    /// Applies a decoded entry. A client write whose key was applied before is not applied
    /// again: the answer is the first outcome (or `idempotencyKeyMismatch` if the key came
    /// with a different request).
    public mutating func apply(_ timed: TimedCommand, index: UInt64, term: UInt64 = 0) -> Applied {
        if timed.leaderNanos != 0 {
            if clock != 0 && term == lastStamp.term && timed.leaderNanos > lastStamp.nanos {
                clock += timed.leaderNanos - lastStamp.nanos
            }
            if term != lastStamp.term || timed.leaderNanos > lastStamp.nanos { lastStamp = (term, timed.leaderNanos) }
        }
        if case .configureIdempotency = timed.command, clock == 0 { clock = 1 }
        forgetExpiredKeys()
        if let stamp = timed.session, timed.command.isClientWrite {
            let new = sessions.admit(stamp, number: timed.requestID, clock: clock, ignoreApplied: faults.contains(.sessionRepeatsApply))
            guard new else {
                appliedIndex = max(appliedIndex, index)
                return .discarded(index: index)
            }
            return Applied(result: apply(timed.command, now: timed.now, index: index), replayed: false, index: index)
        }
        guard let key = timed.key, timed.command.isClientWrite else {
            return Applied(result: apply(timed.command, now: timed.now, index: index), replayed: false, index: index)
        }
        let fingerprint = timed.command.fingerprint
        if let first = remembered[key] {
            appliedIndex = max(appliedIndex, index)
            guard first.fingerprint == fingerprint else {
                return Applied(result: .failure(.idempotencyKeyMismatch), replayed: false, index: index)
            }
            return Applied(result: first.result, replayed: true, index: first.index)
        }
        let result = apply(timed.command, now: timed.now, index: index)
        remember(key, Remembered(fingerprint: fingerprint, result: result, index: index, at: clock))
        return Applied(result: result, replayed: false, index: index)
    }

    private mutating func remember(_ key: IdempotencyKey, _ outcome: Remembered) {
        remembered[key] = outcome
        rememberedOrder.append(key)
        forgetExpiredKeys()
    }

    /// Drops the oldest keys while there are too many or they are older than the window, and
    /// the sessions idle for longer than the window.
    private mutating func forgetExpiredKeys() {
        var window = idempotencyWindow
        if faults.contains(.forgetKeysEarly) { window = IdempotencyWindow(seconds: window.seconds / 2, maxKeys: window.maxKeys / 2) }
        let (span, overflow) = window.seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if !sessions.isEmpty && !overflow { sessions.forget(idleLongerThan: span, clock: clock) }
        while let key = rememberedOrder.first {
            let at = remembered[key]!.at
            let expired = clock != 0 && !overflow && at < clock && clock - at > span
            guard remembered.count > window.maxKeys || expired else { break }
            remembered[key] = nil
            rememberedOrder.removeFirst()
        }
    }

    /// Applies one command at log `index` (also the fencing token of a new grant).
    public mutating func apply(_ command: LeaseCommand, now: UInt64, index: UInt64) -> Result<LeaseReply, LeaseError> {
        appliedIndex = max(appliedIndex, index)
        do {
            switch command {
            case .acquire(let hostname, let holder, let ttl, let range):
                return .success(.lease(try acquire(hostname: hostname, holder: holder, ttl: ttl, range: range, now: now, index: index)))
            case .renew(let leaseID):
                guard let id = nodeID(lease: leaseID) else { throw LeaseError.leaseNotFound }
                nodes[id]!.lastRenewal = max(nodes[id]!.lastRenewal, now)
                nodes[id]!.renewalIndex = index
                return .success(.lease(nodes[id]!.lease))
            case .release(let leaseID):
                guard let id = nodeID(lease: leaseID) else { throw LeaseError.leaseNotFound }
                setStatus(id, .inactive, now: now, index: index)
                return .success(.node(nodes[id]!))
            case .expire(let leaseID, let renewalIndex):
                guard let id = nodeID(lease: leaseID), nodes[id]!.renewalIndex == renewalIndex || faults.contains(.expireIgnoresRenewal) else {
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
                registryIndex = max(registryIndex, index)
                return .success(.node(r))
            case .registerReplica(let replica, let dir):
                // The first directory seen is the one that counts.
                if replicaDirectories[replica] == nil { replicaDirectories[replica] = dir }
                return .success(.replica(replica: replica, dataDirectoryID: replicaDirectories[replica]!))
            case .setClusterVersion(let version):
                // Only up: a late or repeated proposal of a lower one changes nothing.
                clusterVersion = max(clusterVersion, version)
                return .success(.clusterVersion(clusterVersion))
            case .configureIdempotency(let seconds, let maxKeys):
                guard seconds >= 1, maxKeys >= 1 else {
                    throw LeaseError.invalid(field: "idempotency", message: "the window and the key limit must be at least 1")
                }
                idempotencyWindow = IdempotencyWindow(seconds: seconds, maxKeys: Int(maxKeys))
                forgetExpiredKeys()
                return .success(.idempotency(idempotencyWindow))
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
        if let id = nodeID(hostname: hostname) {
            var r = nodes[id]!
            if r.status == .active {
                guard r.holder == holder else {
                    let end = r.lastRenewal + UInt64(r.ttlSeconds)
                    throw LeaseError.hostnameInUse(nodeID: id, holder: r.holder, expiresInSeconds: end > now ? end - now : 0)
                }
                // The same installation asks again (a restart, a retry): the same lease, renewed.
                if faults.contains(.reacquireGrantsNewLease) {
                    byLease.remove(r.leaseID, id)
                    grant(&r, holder: holder, ttl: ttl, now: now, index: index)
                    nodes[id] = r
                    byLease.insert(r.leaseID, id)
                    return r.lease
                }
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
            byLease.insert(r.leaseID, id)
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
        byHostname.remove(r.hostname, id)
        r.hostname = hostname
        r.transitions += 1
        count(r.status, -1)
        count(.active, 1)
        grant(&r, holder: holder, ttl: ttl, now: now, index: index)
        nodes[id] = r
        byHostname.insert(hostname, id)
        byLease.insert(r.leaseID, id)
        return r.lease
    }

    private mutating func grant(_ r: inout NodeRecord, holder: String, ttl: UInt32, now: UInt64, index: UInt64) {
        untrackAge(r)
        registryIndex = max(registryIndex, index)
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
        registryIndex = max(registryIndex, index)
        if r.status == .active && status != .active { byLease.remove(r.leaseID, id) }
        untrackAge(r)
        count(r.status, -1)
        count(status, 1)
        nodes[id]!.status = status
        nodes[id]!.statusSince = now
        nodes[id]!.statusIndex = index
        trackAge(nodes[id]!)
    }

    private mutating func trackAge(_ r: NodeRecord) {
        switch r.status {
        case .stale: staleByAge.insert(StatusKey(r))
        case .inactive: inactiveByAge.insert(StatusKey(r))
        case .active: break
        }
    }

    private mutating func untrackAge(_ r: NodeRecord) {
        switch r.status {
        case .stale: staleByAge.remove(StatusKey(r))
        case .inactive: inactiveByAge.remove(StatusKey(r))
        case .active: break
        }
    }

    private mutating func insert(_ r: NodeRecord) {
        nodes[r.nodeID] = r
        count(r.status, 1)
        byHostname.insert(r.hostname, r.nodeID)
        if r.status == .active { byLease.insert(r.leaseID, r.nodeID) }
        trackAge(r)
        order.insert(r.nodeID)
        freeBelowCursor.remove(r.nodeID)
    }

    private mutating func remove(_ id: NodeID) {
        guard let r = nodes.removeValue(forKey: id) else { return }
        count(r.status, -1)
        byHostname.remove(r.hostname, id)
        if r.status == .active { byLease.remove(r.leaseID, id) }
        untrackAge(r)
        order.remove(id)
        let raw = UInt64(id.rawValue)
        if raw >= cursorLower && raw < cursor { freeBelowCursor.insert(id) }
    }

    /// The smallest ID of `range` that no node holds (never used, or forgotten).
    private mutating func smallestFree(in range: ClosedRange<UInt32>) -> NodeID? {
        let lower = UInt64(range.lowerBound)
        if cursorLower != lower || cursor < lower {
            cursorLower = lower
            cursor = lower
            freeBelowCursor = SortedChunks()
        }
        if let id = freeBelowCursor.first {
            return id.rawValue <= range.upperBound ? id : nil
        }
        while cursor <= UInt64(range.upperBound) && nodes[NodeID(UInt32(cursor))] != nil { cursor += 1 }
        return cursor <= UInt64(range.upperBound) ? NodeID(UInt32(cursor)) : nil
    }

    /// The inactive node of `range` with the oldest status (the smaller ID on a tie). Only
    /// nodes outside the range (after the range was narrowed) are passed over.
    private func longestInactive(in range: ClosedRange<UInt32>) -> NodeID? {
        for key in inactiveByAge where range.contains(key.nodeID.rawValue) { return key.nodeID }
        return nil
    }

    /// Stale nodes, oldest status first: what the leader's retention scan reads.
    public func staleNodes() -> LazyMapSequence<SortedChunks<StatusKey>, NodeRecord> {
        let nodes = self.nodes
        return staleByAge.lazy.map { nodes[$0.nodeID]! }
    }
}

extension LeaseRegistry: Equatable {
    /// Equal registries hold the same records and applied index (derived caches aside).
    public static func == (a: LeaseRegistry, b: LeaseRegistry) -> Bool {
        a.appliedIndex == b.appliedIndex && a.registryIndex == b.registryIndex && a.order == b.order && a.order.allSatisfy { a.nodes[$0] == b.nodes[$0] }
            && a.replicaDirectories == b.replicaDirectories && a.idempotencyWindow == b.idempotencyWindow
            && a.clock == b.clock && a.lastStamp == b.lastStamp && a.rememberedInOrder.elementsEqual(b.rememberedInOrder) { $0.0 == $1.0 && $0.1 == $1.1 }
            && a.sessions == b.sessions && a.clusterVersion == b.clusterVersion
    }

    /// The remembered outcomes, oldest first.
    var rememberedInOrder: [(IdempotencyKey, Remembered)] {
        rememberedOrder.map { ($0, remembered[$0]!) }
    }
}

// MARK: Snapshots

extension LeaseRegistry {
    static let snapshotMagic: [UInt8] = Array("NLREG".utf8)
    /// Version 3 added the idempotency keys, version 4 the registry index; versions 2 and 3
    /// still load (with no keys; with the applied index as the registry index, which may wake
    /// a watcher once for nothing but never lets one miss a change). Version 5 (cluster
    /// version 2 on) adds the cluster version; a registry still at cluster version 1 is
    /// written as version 4, which every replica of the first release reads. Version 6
    /// (cluster version 3 on) adds the replica sessions.
    static let snapshotVersion: UInt8 = 6

    /// The whole registry in a compact, versioned binary form with a CRC-32C checksum.
    public func snapshot() -> [UInt8] {
        var w = ByteWriter(capacity: 64 + order.count * 96)
        w.bytes.append(contentsOf: Self.snapshotMagic)
        w.u8(clusterVersion >= 3 ? 6 : clusterVersion >= 2 ? 5 : 4)
        w.u64(appliedIndex)
        w.u64(registryIndex)
        if clusterVersion >= 2 { w.u32(clusterVersion) }
        w.u32(UInt32(order.count))
        for id in order { w.record(nodes[id]!) }
        w.u32(UInt32(replicaDirectories.count))
        for k in replicaDirectories.keys.sorted() {
            w.u64(k)
            w.u64(replicaDirectories[k]!)
        }
        w.u64(idempotencyWindow.seconds)
        w.u32(UInt32(idempotencyWindow.maxKeys))
        w.u64(clock)
        w.u64(lastStamp.term)
        w.u64(lastStamp.nanos)
        w.u32(UInt32(remembered.count))
        for key in rememberedOrder {
            let m = remembered[key]!
            w.u8(key.origin.rawValue)
            w.string(key.value)
            w.u64(m.fingerprint)
            w.u64(m.index)
            w.u64(m.at)
            w.bytes.append(contentsOf: m.outcome)
        }
        if clusterVersion >= 3 { sessions.encode(into: &w) }
        w.u32(CRC32C.checksum(w.bytes))
        return w.bytes
    }

    /// This registry as the first state of a cluster restored from a backup of it
    /// (`nodelease snapshot restore`), whose log starts at `index`: applied there, with a
    /// registry index there too (so a watcher of the old cluster starts again), and no data
    /// directories recorded (the restored replicas' directories are new; the old ones' ids must
    /// not refuse them). Nodes, leases, the ID cursor and the idempotency window are kept.
    public mutating func rebase(restoredAt index: UInt64) {
        precondition(index >= appliedIndex, "a restored log starts at or after the backup's index")
        appliedIndex = index
        registryIndex = index
        replicaDirectories = [:]
    }

    public enum SnapshotError: Error, Equatable, CustomStringConvertible {
        case badMagic, unknownVersion(UInt8, known: ClosedRange<UInt8>), checksumMismatch, malformed(String)

        public var description: String {
            switch self {
            case .badMagic: "not a registry snapshot"
            case .unknownVersion(let v, let known):
                "registry snapshot format version \(v) is unknown to this build (it reads versions \(known.lowerBound) to \(known.upperBound))"
            case .checksumMismatch: "registry snapshot checksum mismatch"
            case .malformed(let why): "registry snapshot does not decode: \(why)"
            }
        }
    }

    /// Where a snapshot's version byte is, for messages.
    public static let snapshotVersionOffset = snapshotMagic.count

    /// Rebuilds a registry from `snapshot()` output; throws on any damage, and on a version a
    /// build supporting cluster versions up to `supported` does not read.
    public init(snapshot bytes: [UInt8], supporting supported: UInt32 = ClusterVersion.newest) throws {
        let known = ClusterVersion.snapshotVersions(supported)
        self.init()
        guard bytes.isEmpty == false else { return }
        guard bytes.count >= Self.snapshotMagic.count + 1 + 8 + 4 + 4, Array(bytes.prefix(Self.snapshotMagic.count)) == Self.snapshotMagic else {
            throw SnapshotError.badMagic
        }
        // The version before the checksum: a later format may place its checksum elsewhere.
        guard known.contains(bytes[Self.snapshotVersionOffset]) else {
            throw SnapshotError.unknownVersion(bytes[Self.snapshotVersionOffset], known: known)
        }
        let body = bytes.count - 4
        var tail = ByteReader(bytes, at: body)
        guard try tail.u32() == CRC32C.checksum(bytes[0..<body]) else { throw SnapshotError.checksumMismatch }
        var r = ByteReader(Array(bytes[0..<body]), at: Self.snapshotMagic.count)
        do {
            let version = try r.u8()
            appliedIndex = try r.u64()
            registryIndex = version >= 4 ? try r.u64() : appliedIndex
            if version >= 5 {
                clusterVersion = try r.u32()
                // Written as version 5 at cluster version 2 only, as 6 from 3 on.
                guard clusterVersion >= 2, (clusterVersion >= 3) == (version >= 6) else {
                    throw SnapshotError.malformed("cluster version \(clusterVersion) in a version \(version) snapshot")
                }
                guard clusterVersion <= supported else {
                    throw SnapshotError.malformed("cluster version \(clusterVersion) is newer than this build supports (\(supported))")
                }
            }
            guard registryIndex <= appliedIndex else { throw SnapshotError.malformed("registry index beyond the applied index") }
            let n = Int(try r.u32())
            let expected = min(n, r.remaining / 69)  // 69: the smallest encoded record
            nodes.reserve(expected)
            byHostname.reserveCapacity(expected)
            var last: NodeID?
            for _ in 0..<n {
                let rec = try r.record()
                let (id, hostname, status) = (rec.nodeID, rec.hostname, rec.status)
                guard last == nil || last! < id, nodeID(hostname: hostname) == nil else {
                    throw SnapshotError.malformed("records out of order or duplicated")
                }
                last = id
                nodes[id] = rec
                count(status, 1)
                order.append(id)
                trackAge(rec)
                byHostname.insert(hostname, id)
                if status == .active {
                    // Two active records with one lease id: which one a renewal found would
                    // depend on the index's layout, which differs between processes.
                    guard nodeID(lease: rec.leaseID) == nil else { throw SnapshotError.malformed("a lease id held twice") }
                    byLease.insert(rec.leaseID, id)
                }
            }
            let replicas = Int(try r.u32())
            for _ in 0..<replicas { replicaDirectories[try r.u64()] = try r.u64() }
            if version >= 3 {
                let seconds = try r.u64()
                let maxKeys = try r.u32()
                guard seconds >= 1, maxKeys >= 1 else { throw SnapshotError.malformed("idempotency window") }
                idempotencyWindow = IdempotencyWindow(seconds: seconds, maxKeys: Int(maxKeys))
                clock = try r.u64()
                lastStamp = (try r.u64(), try r.u64())
                let keys = Int(try r.u32())
                var lastAt: UInt64 = 0
                for _ in 0..<keys {
                    guard let origin = IdempotencyKey.Origin(rawValue: try r.u8()) else { throw SnapshotError.malformed("key origin") }
                    let key = IdempotencyKey(origin: origin, value: try r.string())
                    let fingerprint = try r.u64()
                    let index = try r.u64()
                    let at = try r.u64()
                    // Decoded to check it, kept as the bytes it was read from.
                    let start = r.position
                    _ = try r.outcome()
                    let m = Remembered(fingerprint: fingerprint, outcome: Array(r.bytes[start..<r.position]), index: index, at: at)
                    guard remembered[key] == nil, at >= lastAt else { throw SnapshotError.malformed("idempotency keys duplicated or out of order") }
                    lastAt = at
                    remembered[key] = m
                    rememberedOrder.append(key)
                }
            }
            if version >= 6 {
                guard let s = try RequestSessions.decode(&r) else { throw SnapshotError.malformed("replica sessions out of order") }
                sessions = s
            }
            guard r.remaining == 0 else { throw SnapshotError.malformed("trailing bytes") }
        } catch let e as SnapshotError {
            throw e
        } catch {
            throw SnapshotError.malformed("truncated")
        }
    }
}

// MARK: Snapshot encoding of records and outcomes

extension ByteWriter {
    mutating func record(_ r: NodeRecord) {
        u32(r.nodeID.rawValue)
        string(r.hostname)
        u8(r.status.rawValue)
        u64(r.leaseID)
        string(r.holder)
        u32(r.ttlSeconds)
        u64(r.acquiredAt)
        u64(r.lastRenewal)
        u64(r.transitions)
        u64(r.renewalIndex)
        u64(r.statusSince)
        u64(r.statusIndex)
    }

    /// A command's outcome: a tag, then its fields.
    mutating func outcome(_ result: Result<LeaseReply, LeaseError>) {
        switch result {
        case .success(.lease(let l)):
            u8(1)
            u64(l.leaseID)
            u32(l.nodeID.rawValue)
            string(l.hostname)
            string(l.holder)
            u64(l.fencingToken)
            u32(l.ttlSeconds)
            u64(l.acquiredAt)
            u64(l.lastRenewal)
            u64(l.transitions)
        case .success(.node(let n)):
            u8(2)
            record(n)
        case .success(.replica(let replica, let dir)):
            u8(3)
            u64(replica)
            u64(dir)
        case .success(.idempotency(let w)):
            u8(4)
            u64(w.seconds)
            u32(UInt32(w.maxKeys))
        case .success(.clusterVersion(let v)):
            u8(5)
            u32(v)
        case .failure(.hostnameInUse(let id, let holder, let expires)):
            u8(16)
            u32(id.rawValue)
            string(holder)
            u64(expires)
        case .failure(.nodeIDsExhausted): u8(17)
        case .failure(.leaseNotFound): u8(18)
        case .failure(.nodeNotFound): u8(19)
        case .failure(.nodeActive(let id)):
            u8(20)
            u32(id.rawValue)
        case .failure(.invalid(let field, let message)):
            u8(21)
            string(field)
            string(message)
        case .failure(.idempotencyKeyMismatch): u8(22)
        }
    }
}

extension ByteReader {
    mutating func record() throws -> NodeRecord {
        let id = NodeID(try u32())
        let hostname = try string()
        guard let status = NodeStatus(rawValue: try u8()) else { throw LeaseRegistry.SnapshotError.malformed("status") }
        return NodeRecord(
            nodeID: id, hostname: hostname, status: status, leaseID: try u64(), holder: try string(),
            ttlSeconds: try u32(), acquiredAt: try u64(), lastRenewal: try u64(), transitions: try u64(),
            renewalIndex: try u64(), statusSince: try u64(), statusIndex: try u64())
    }

    mutating func outcome() throws -> Result<LeaseReply, LeaseError> {
        switch try u8() {
        case 1:
            return .success(.lease(Lease(
                leaseID: try u64(), nodeID: NodeID(try u32()), hostname: try string(), holder: try string(),
                fencingToken: try u64(), ttlSeconds: try u32(), acquiredAt: try u64(), lastRenewal: try u64(),
                transitions: try u64())))
        case 2: return .success(.node(try record()))
        case 3: return .success(.replica(replica: try u64(), dataDirectoryID: try u64()))
        case 4: return .success(.idempotency(IdempotencyWindow(seconds: try u64(), maxKeys: Int(try u32()))))
        case 5: return .success(.clusterVersion(try u32()))
        case 16: return .failure(.hostnameInUse(nodeID: NodeID(try u32()), holder: try string(), expiresInSeconds: try u64()))
        case 17: return .failure(.nodeIDsExhausted)
        case 18: return .failure(.leaseNotFound)
        case 19: return .failure(.nodeNotFound)
        case 20: return .failure(.nodeActive(NodeID(try u32())))
        case 21: return .failure(.invalid(field: try string(), message: try string()))
        case 22: return .failure(.idempotencyKeyMismatch)
        default: throw LeaseRegistry.SnapshotError.malformed("outcome")
        }
    }
}

/// Registry rules that can be broken on purpose, to show that the checkers notice.
public struct RegistryFaults: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// An expiry applies even if the lease was renewed after the expiry was decided.
    public static let expireIgnoresRenewal = RegistryFaults(rawValue: 1 << 0)
    /// The same holder acquiring its live lease again gets a new lease instead of the same one.
    public static let reacquireGrantsNewLease = RegistryFaults(rawValue: 1 << 1)
    /// Idempotency keys are forgotten at half the window's time and half its key limit.
    public static let forgetKeysEarly = RegistryFaults(rawValue: 1 << 2)
    /// A replica session's request applies again when re-sent (its applied numbers are not
    /// consulted; only those below the session's `done` are refused).
    public static let sessionRepeatsApply = RegistryFaults(rawValue: 1 << 3)
}

/// Orders stale and inactive nodes by when they took that status (then by ID).
public struct StatusKey: Comparable, Sendable {
    var statusIndex: UInt64
    var nodeID: NodeID

    init(_ r: NodeRecord) {
        statusIndex = r.statusIndex
        nodeID = r.nodeID
    }

    public static func < (a: StatusKey, b: StatusKey) -> Bool {
        a.statusIndex != b.statusIndex ? a.statusIndex < b.statusIndex : a.nodeID < b.nodeID
    }
}

import Raft

/// The leader's view of lease deadlines. Pure: time comes in as arguments (the leader's
/// monotonic clock in nanoseconds for deadlines, its wall clock in seconds for retention), and
/// the output is commands to propose.
///
/// Rules (shared/API.md, "Consistency and time"):
/// - a live lease's deadline is the monotonic instant this leader applied its latest acquire or
///   renew, plus its TTL;
/// - on becoming leader, once its own first entry has committed, every live lease gets
///   now + TTL, so a failover never shortens a lease;
/// - past-deadline leases become `expire` commands (conditional on no renewal since), at most
///   `maxCommandsPerTick` at a time; stale nodes past the retention period become `retire`;
/// - a leader that cannot hear a quorum proposes nothing.
public struct LeaseExpiry: Sendable {
    public struct Config: Sendable {
        /// How long a node stays stale before it is retired (becomes inactive).
        public var retentionSeconds: UInt64
        /// Upper bound on commands proposed per call of `due`, so a mass expiry cannot
        /// starve client traffic.
        public var maxCommandsPerTick: Int
        /// An expire or retire that has not applied after this long is proposed again.
        public var retryNanos: UInt64
        /// How often stale nodes are scanned for retention.
        public var retireScanNanos: UInt64
        /// The leader waits TTL × (1 + margin) before expiring, so a holder whose clock runs
        /// slower than the leader's by less than this still stops first.
        public var clockRateMargin: Double

        public init(
            retentionSeconds: UInt64 = 86_400, maxCommandsPerTick: Int = 64, retryNanos: UInt64 = 2_000_000_000,
            retireScanNanos: UInt64 = 1_000_000_000, clockRateMargin: Double = 0.01
        ) {
            self.clockRateMargin = clockRateMargin
            self.retentionSeconds = retentionSeconds
            self.maxCommandsPerTick = maxCommandsPerTick
            self.retryNanos = retryNanos
            self.retireScanNanos = retireScanNanos
        }
    }

    struct Deadline: Sendable, Equatable {
        var at: UInt64
        var renewalIndex: UInt64
    }

    public let config: Config
    public private(set) var isLeader = false
    /// Deadlines are known (the leader's first entry has applied).
    public private(set) var isReady = false
    private var deadlines: [UInt64: Deadline] = [:]
    /// Min-heap of (deadline, lease id); entries that no longer match `deadlines` are skipped.
    private var heap = MinHeap<Due>()
    private var inFlight: [UInt64: UInt64] = [:]
    private var retiresInFlight: [NodeID: UInt64] = [:]
    private var lastRetireScan: UInt64?

    public init(config: Config = Config()) { self.config = config }

    /// How many live leases have a deadline.
    public var trackedLeases: Int { deadlines.count }

    /// The deadline this leader holds for a lease, if any (nanoseconds, monotonic).
    public func deadline(of leaseID: UInt64) -> UInt64? { deadlines[leaseID]?.at }

    /// This replica became leader: it knows no deadlines until its first entry applies.
    public mutating func becameLeader() {
        reset()
        isLeader = true
    }

    /// This replica is no longer leader: it forgets everything.
    public mutating func lostLeadership() {
        reset()
    }

    private mutating func reset() {
        isLeader = false
        isReady = false
        deadlines = [:]
        heap = MinHeap()
        inFlight = [:]
        retiresInFlight = [:]
        lastRetireScan = nil
    }

    /// The leader's first entry of its term has applied: every live lease restarts its full
    /// TTL from `now`.
    public mutating func leaderReady(now: UInt64, registry: LeaseRegistry) {
        guard isLeader else { return }
        isReady = true
        for r in registry.nodes(status: .active) {
            set(r.leaseID, Deadline(at: now + ttlNanos(r.ttlSeconds), renewalIndex: r.renewalIndex))
        }
    }

    private func ttlNanos(_ ttl: UInt32) -> UInt64 {
        UInt64((Double(ttl) * 1e9 * (1 + config.clockRateMargin)).rounded(.up))
    }

    /// A command applied on this replica (leader or not) changed `node`; `now` is the
    /// monotonic instant of the apply.
    public mutating func applied(_ node: NodeRecord, now: UInt64) {
        guard isLeader && isReady else { return }
        if node.status == .active {
            if deadlines[node.leaseID]?.renewalIndex != node.renewalIndex {
                set(node.leaseID, Deadline(at: now + ttlNanos(node.ttlSeconds), renewalIndex: node.renewalIndex))
            }
            inFlight[node.leaseID] = nil
        } else {
            deadlines[node.leaseID] = nil
            inFlight[node.leaseID] = nil
            retiresInFlight[node.nodeID] = nil
        }
    }

    private mutating func set(_ lease: UInt64, _ d: Deadline) {
        deadlines[lease] = d
        push((d.at, lease))
        // Every renewal leaves its old deadline in the heap until that instant comes (a TTL
        // later): at 10,000 renewals a second and a 30 s TTL, 300,000 stale entries. Rebuilt
        // from the live deadlines (O(n), bottom-up) once the stale ones are the majority, that
        // is after at least n + 1024 pushes: O(1) a push amortized, and the heap stays within
        // about twice the live leases.
        if heap.count > 2 * deadlines.count + 1024 { compactHeap() }
    }

    /// The heap rebuilt from `deadlines` alone: it pops exactly what the old heap would have
    /// (an entry that does not match its lease's deadline is skipped anyway).
    private mutating func compactHeap() {
        heap = MinHeap(deadlines.map { Due(at: $0.value.at, lease: $0.key) })
    }

    /// Entries in the deadline heap, stale ones included (bounded by about twice the leases).
    public var queuedDeadlines: Int { heap.count }

    /// The commands to propose now.
    public mutating func due(now: UInt64, wallSeconds: UInt64, registry: LeaseRegistry, hasQuorum: Bool) -> [TimedCommand] {
        guard isLeader && isReady && hasQuorum else { return [] }
        var out: [TimedCommand] = []
        var retry: [(UInt64, UInt64)] = []
        while out.count < config.maxCommandsPerTick, let top = heap.min, top.at <= now {
            popMin()
            guard let d = deadlines[top.lease], d.at == top.at else { continue }  // superseded
            if let sent = inFlight[top.lease], now < sent + config.retryNanos {
                retry.append((top.at, top.lease))
                continue
            }
            guard let r = registry.lease(top.lease) else {
                // Ended (released or expired) meanwhile.
                deadlines[top.lease] = nil
                inFlight[top.lease] = nil
                continue
            }
            guard r.renewalIndex == d.renewalIndex else {
                // Renewed in a way the apply hook did not report: count it as renewed now,
                // which can only lengthen the lease.
                set(top.lease, Deadline(at: now + ttlNanos(r.ttlSeconds), renewalIndex: r.renewalIndex))
                continue
            }
            inFlight[top.lease] = now
            retry.append((top.at, top.lease))
            out.append(TimedCommand(.expire(leaseID: top.lease, renewalIndex: d.renewalIndex), now: wallSeconds))
        }
        // Keep in-flight ones in the heap until their expire applies.
        for item in retry { push(item) }

        if out.count < config.maxCommandsPerTick, lastRetireScan.map({ now >= $0 + config.retireScanNanos }) ?? true {
            lastRetireScan = now
            for r in registry.staleNodes() {
                guard out.count < config.maxCommandsPerTick else { break }
                guard r.statusSince + config.retentionSeconds <= wallSeconds else { continue }
                if let sent = retiresInFlight[r.nodeID], now < sent + config.retryNanos { continue }
                retiresInFlight[r.nodeID] = now
                out.append(TimedCommand(.retire(nodeID: r.nodeID, statusIndex: r.statusIndex), now: wallSeconds))
            }
        }
        return out
    }

    private mutating func push(_ item: (at: UInt64, lease: UInt64)) { heap.insert(Due(at: item.at, lease: item.lease)) }

    private mutating func popMin() { heap.removeMin() }

    /// A deadline in the heap, ordered by instant, then lease.
    struct Due: Comparable, Sendable {
        var at: UInt64
        var lease: UInt64

        static func < (a: Due, b: Due) -> Bool { a.at != b.at ? a.at < b.at : a.lease < b.lease }
    }
}

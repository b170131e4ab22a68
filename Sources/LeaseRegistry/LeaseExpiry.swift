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

    public let config: Config
    public private(set) var isLeader = false
    /// Deadlines are known (the leader's first entry has applied).
    public private(set) var isReady = false
    /// Min-heap of (deadline, lease id, the renewal it follows). A lease's deadline is its
    /// entry for the renewal the registry holds now; an entry for an older renewal is skipped
    /// when it comes up, as is one for a lease that ended. (A dictionary of each lease's
    /// current deadline told them apart before: 3.2 MB at 65,536 leases, and a write per
    /// renewal.) Every change to a live lease reaches `applied` or `leaderReady`, so its
    /// current renewal always has an entry.
    private var heap = MinHeap<Due>()
    private var inFlight: [UInt64: UInt64] = [:]
    private var retiresInFlight: [NodeID: UInt64] = [:]
    private var lastRetireScan: UInt64?

    public init(config: Config = Config()) { self.config = config }

    /// The deadline this leader holds for a lease's current renewal in `registry`, if any
    /// (nanoseconds, monotonic): a scan of the heap, for tests and diagnostics.
    public func deadline(of leaseID: UInt64, in registry: LeaseRegistry) -> UInt64? {
        guard isReady, let r = registry.lease(leaseID), r.status == .active else { return nil }
        return heap.elements.filter { $0.lease == leaseID && $0.renewalIndex == r.renewalIndex }.map(\.at).min()
    }

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
            heap.insert(Due(at: now + ttlNanos(r.ttlSeconds), lease: r.leaseID, renewalIndex: r.renewalIndex))
        }
    }

    private func ttlNanos(_ ttl: UInt32) -> UInt64 {
        UInt64((Double(ttl) * 1e9 * (1 + config.clockRateMargin)).rounded(.up))
    }

    /// A command applied on this replica (leader or not) changed `node`, as `registry` now
    /// holds it; `now` is the monotonic instant of the apply.
    public mutating func applied(_ node: NodeRecord, now: UInt64, registry: LeaseRegistry) {
        guard isLeader && isReady else { return }
        if node.status == .active {
            // A change that is not a renewal keeps the renewal index: the older entry for it
            // comes up first and is the deadline; this one is skipped, or dropped by a
            // rebuild, once the lease is renewed or ends.
            heap.insert(Due(at: now + ttlNanos(node.ttlSeconds), lease: node.leaseID, renewalIndex: node.renewalIndex))
            compactIfNeeded(registry)
        } else {
            retiresInFlight[node.nodeID] = nil
        }
        inFlight[node.leaseID] = nil
    }

    /// Every renewal leaves its old deadline in the heap until that instant comes (a TTL
    /// later): at 10,000 renewals a second and a 30 s TTL, 300,000 stale entries. The heap is
    /// rebuilt from the entries still current (O(n), bottom-up) once it holds more than twice
    /// the active leases and 1024 more, that is after at least n + 1024 pushes: O(1) a push
    /// amortized, and the heap stays within about twice the live leases. It pops what the old
    /// heap would have: what it drops would have been skipped.
    private mutating func compactIfNeeded(_ registry: LeaseRegistry) {
        guard heap.count > 2 * registry.counts().active + 1024 else { return }
        heap = MinHeap(heap.elements.filter { e in registry.lease(e.lease).map { $0.status == .active && $0.renewalIndex == e.renewalIndex } ?? false })
    }

    /// Entries in the deadline heap, stale ones included (bounded by about twice the leases).
    public var queuedDeadlines: Int { heap.count }

    /// The commands to propose now.
    public mutating func due(now: UInt64, wallSeconds: UInt64, registry: LeaseRegistry, hasQuorum: Bool) -> [TimedCommand] {
        guard isLeader && isReady && hasQuorum else { return [] }
        var out: [TimedCommand] = []
        var retry: [Due] = []
        while out.count < config.maxCommandsPerTick, let top = heap.min, top.at <= now {
            heap.removeMin()
            guard let r = registry.lease(top.lease), r.status == .active else {
                // Ended (released or expired) meanwhile.
                inFlight[top.lease] = nil
                continue
            }
            // Renewed since: its entry for that renewal comes later.
            guard r.renewalIndex == top.renewalIndex else { continue }
            if let sent = inFlight[top.lease], now < sent + config.retryNanos {
                retry.append(top)
                continue
            }
            inFlight[top.lease] = now
            retry.append(top)
            out.append(TimedCommand(.expire(leaseID: top.lease, renewalIndex: top.renewalIndex), now: wallSeconds))
        }
        // Keep in-flight ones in the heap until their expire applies.
        for item in retry { heap.insert(item) }

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

    /// A deadline in the heap, ordered by instant, then lease, then renewal.
    struct Due: Comparable, Sendable {
        var at: UInt64
        var lease: UInt64
        var renewalIndex: UInt64

        static func < (a: Due, b: Due) -> Bool {
            a.at != b.at ? a.at < b.at : a.lease != b.lease ? a.lease < b.lease : a.renewalIndex < b.renewalIndex
        }
    }
}

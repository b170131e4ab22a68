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
    /// Where the sweep of stale entries looks next (a position in the heap's array order).
    private var sweepAt = 0

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
        sweepAt = 0
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
            // comes up first and is the deadline; this one is skipped, or swept, once the
            // lease is renewed or ends.
            heap.insert(Due(at: now + ttlNanos(node.ttlSeconds), lease: node.leaseID, renewalIndex: node.renewalIndex))
            sweep(registry)
            compactIfNeeded(registry)
        } else {
            retiresInFlight[node.nodeID] = nil
        }
        inFlight[node.leaseID] = nil
    }

    /// Every renewal leaves its old deadline in the heap until that instant comes (a TTL
    /// later): at 10,000 renewals a second and a 30 s TTL, 300,000 stale entries. Each push
    /// looks at `sweepPerPush` entries, in the heap's array order from where the last one
    /// stopped, and removes those no longer current: with k looked at a push the heap settles
    /// where a k-th of it is stale, k / (k - 1) times the live leases (1.5x). What it removes
    /// would have been skipped when it came up. It replaced a rebuild at twice the live
    /// leases, whose filter stalled the leader's driver for 16-21 ms at 65,536 leases
    /// (`nodelease-microbench expiry`: now 1.2 ms at most, at 0.7-1.0 us a renewal against
    /// 0.3-0.4, with 98,303 entries at most against 132,096).
    static let sweepPerPush = 3

    private mutating func sweep(_ registry: LeaseRegistry) {
        for _ in 0..<Self.sweepPerPush {
            guard !heap.isEmpty else { return }
            if sweepAt >= heap.count { sweepAt = 0 }
            let e = heap.element(at: sweepAt)
            if registry.isActive(lease: e.lease, renewalIndex: e.renewalIndex) {
                sweepAt += 1
            } else {
                heap.remove(at: sweepAt)
            }
        }
    }

    /// The rebuild from the entries still current (O(n), bottom-up), for what the sweep
    /// cannot keep up with: more than twice the active leases and 1024 more (a burst of
    /// changes to live leases while many have ended, say).
    private mutating func compactIfNeeded(_ registry: LeaseRegistry) {
        guard heap.count > 2 * registry.counts().active + 1024 else { return }
        heap = MinHeap(heap.elements.filter { registry.isActive(lease: $0.lease, renewalIndex: $0.renewalIndex) })
        sweepAt = 0
    }

    /// Entries in the deadline heap, stale ones included (about 1.5x the leases, at most twice and 1024 more).
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

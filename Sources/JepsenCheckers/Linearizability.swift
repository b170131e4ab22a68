/// Linearizability of lease operations against a sequential model of one hostname's registry
/// entry, with the search of Wing and Gong as improved by Lowe (the one Knossos and Porcupine
/// use): walk the history's call and return events in time order, linearize an operation at
/// its call when the model accepts it, back out when a return arrives for an operation not yet
/// linearized, and remember (linearized set, model state) pairs already explored.
///
/// The history is split per hostname: operations on different hostnames commute, so each
/// hostname's sub-history is checked on its own (P-compositionality).
///
/// Operations with an unknown outcome (`info`: a timeout, a dropped connection, a 503) may
/// take effect at any time after their call, or never: their return is at infinity and the
/// model lets them have an effect or none. A lease may expire at any point the model allows
/// (the leader decides expiry; no client asks for it), but never earlier than TTL after the
/// earliest moment its last grant or renewal can have applied (the call of that operation):
/// the leader waits longer than the TTL on a clock that runs at most about 1% off.
///
/// The model is nondeterministic (expiry, unknown outcomes), so the search runs over sets of
/// model states (the power-set construction Porcupine uses), which keeps the nondeterminism
/// out of the search tree.
public enum Linearizability {
    /// What the run allowed that the model must know about.
    public struct Options: Sendable {
        /// How long a node stays stale before the leader may retire it (make it inactive),
        /// already shortened by any slack (wall-clock faults, whole-second rounding). nil: it
        /// is never retired within the run.
        public var retentionNanos: UInt64?
        /// IDs can move between hostnames (a small range: an inactive hostname's ID may go to
        /// another hostname, which leaves the first one absent).
        public var idReuse: Bool
        /// Forgets of unknown outcome (the node ID, and when they were invoked): after one is
        /// invoked, a stale or inactive entry with that ID (or an unknown one) may vanish.
        public var unknownForgets: [(node: UInt32, invoke: UInt64)]
        public init(retentionNanos: UInt64? = nil, idReuse: Bool = false, unknownForgets: [(node: UInt32, invoke: UInt64)] = []) {
            self.retentionNanos = retentionNanos
            self.idReuse = idReuse
            self.unknownForgets = unknownForgets
        }
    }

    /// Per-hostname results of one check.
    public struct Report: Sendable {
        public var anomalies: [Anomaly] = []
        /// Operations checked, per hostname.
        public var operations: [String: Int] = [:]
        /// Search steps taken, over all hostnames.
        public var steps = 0
        /// Hostnames whose search ran out of budget (verdict unknown for them).
        public var gaveUp: [String] = []
        public init() {}
    }

    /// Checks acquire, renew, release and linearizable reads. `budget` bounds the search steps
    /// per hostname; running out is reported as an anomaly (unknown is not valid).
    /// `budget` nil: 100 steps per operation of the hostname, at least 100,000 (a valid history
    /// needs about one step per operation; invalid ones with many unknown outcomes can need
    /// exponentially many). The search's memory is bounded too: past `maxCached` explored
    /// configurations (a few KB each) it gives up the same way.
    public static func check(_ history: [HistoryOp], options: Options = Options(), budget: Int? = nil, maxCached: Int = 200_000) -> Report {
        var report = Report()
        var byHost: [String: [HistoryOp]] = [:]
        // The hostnames the history writes: others in a registry read (holders outside the
        // history, such as the keepers) have no model here.
        let all = LeaseCheckers.leaseHostnames(history)
        let followed = Set(all)
        for op in history {
            // A read of the whole registry is one read per hostname (linearizability is local:
            // checking each hostname's reads on their own is weaker, never stronger).
            for o in op.kind == .read ? LeaseCheckers.perHostname(op, hostnames: all) : [op] where relevant(o) && followed.contains(o.hostname) {
                byHost[o.hostname, default: []].append(o)
            }
        }
        for host in byHost.keys.sorted() {
            let ops = byHost[host]!
            report.operations[host] = ops.count
            var search = Search(ops: ops, options: options, budget: budget ?? max(100_000, 100 * ops.count), maxCached: maxCached)
            let result = search.run()
            report.steps += search.steps
            switch result {
            case .linearizable: break
            case .gaveUp(let op, let depth):
                report.gaveUp.append(host)
                report.anomalies.append(
                    Anomaly(
                        checker: "linearizability",
                        detail: "\(host): search gave up after \(search.steps) steps (verdict unknown); stuck at \(describe(op)) with \(depth) of \(ops.count) operations linearized"))
            case .notLinearizable(let op, let states):
                report.anomalies.append(
                    Anomaly(
                        checker: "linearizability",
                        detail: "\(host): no linearization explains \(describe(op)); states the model allowed just before: \(states)"))
            }
        }
        return report
    }

    /// Operations the model knows: writes with a result it can interpret, and linearizable
    /// reads that answered. A read with an unknown outcome has no effect, so it is dropped.
    static func relevant(_ op: HistoryOp) -> Bool {
        switch op.kind {
        case .read: return op.linearizable == true && op.outcome == .ok
        case .forget:
            // A forget that removed a node names its hostname in the answer; one of unknown
            // outcome may remove whichever hostname had the ID (the model lets any stale or
            // inactive entry vanish when the run has unknown forgets); a refused one changed
            // nothing.
            return op.outcome == .ok
        case .acquire, .renew, .release:
            switch op.outcome {
            case .ok: return op.leaseId != nil
            case .info: return op.kind == .acquire || op.leaseId != nil
            case .fail:
                // Failures the model gives a meaning to; others (a malformed request) are
                // definite no-ops with nothing to check.
                return (op.kind == .acquire && (op.error == "hostname_in_use" || op.error == "node_ids_exhausted"))
                    || (op.kind != .acquire && op.error == "lease_not_found")
            }
        }
    }

    static func describe(_ op: HistoryOp) -> String {
        var s = "\(op.kind.rawValue) by process \(op.process) (\(op.holder)) [\(op.invoke)ns, \(op.outcome == .info ? "?" : "\(op.complete)ns")] → \(op.outcome.rawValue)"
        if let l = op.leaseId { s += " lease \(l)" }
        if let n = op.nodeId { s += " node \(n)" }
        if let st = op.status { s += " status \(st)" }
        if let e = op.error { s += " \(e)" }
        if op.kind == .read, op.nodeId == nil { s += " (hostname absent)" }
        return s
    }
}

/// The sequential model: one hostname's registry entry.
struct EntryState: Hashable, Sendable, CustomStringConvertible {
    /// The hostname is registered (it was granted at least once).
    var exists = false
    /// Its node ID, when known (an unknown-outcome first grant leaves it unknown).
    var node: UInt32?
    /// The current or last lease; nil when it came from an unknown-outcome acquire.
    var lease: String?
    var holder: String?
    /// The last known fencing token: a lower bound for the next grant's.
    var token: UInt64 = 0
    var live = false
    /// The last lease ended by a release, or the node was retired after staying stale
    /// (inactive), rather than by expiry (stale).
    var released = false
    /// The earliest time the last grant or renewal can have applied, and the lease's TTL.
    var renewedAt: UInt64 = 0
    var ttl: UInt64 = 0
    /// The earliest instant the entry can have become stale (when it is stale).
    var staleSince: UInt64 = 0

    var status: String { live ? "active" : (released ? "inactive" : "stale") }

    var description: String {
        guard exists else { return "absent" }
        return "{node \(node.map(String.init) ?? "?") lease \(lease ?? "?") holder \(holder ?? "?") \(status)}"
    }
}

extension EntryState {
    /// The states this operation can lead to from `self`, with the leader's own changes
    /// (expiry, retirement, the ID going to another hostname) possibly happening just before
    /// it. `horizon` is the latest instant the operation can take effect at: the earliest
    /// completion among the operations not yet linearized (itself included; infinite when all
    /// of them have unknown outcomes). A change that needs time to have passed may only come
    /// before the operation if the horizon is late enough. Empty: the operation's observed
    /// result is impossible here.
    func after(_ op: HistoryOp, horizon: UInt64, options: Linearizability.Options) -> [EntryState] {
        var starts = [self]
        var i = 0
        while i < starts.count {
            for t in starts[i].spontaneous(horizon: horizon, options: options) where !starts.contains(t) { starts.append(t) }
            i += 1
        }
        var out: [EntryState] = []
        for s in starts { s.apply(op, into: &out) }
        return out
    }

    /// The changes the leader may make on its own, one step from `self`, before `horizon`.
    private func spontaneous(horizon: UInt64, options: Linearizability.Options) -> [EntryState] {
        var out: [EntryState] = []
        if live {
            // Expiry: not before the lease's earliest deadline (the leader waits at least the
            // TTL after applying the last grant or renewal, which cannot precede its call).
            if horizon >= renewedAt &+ ttl {
                var e = self
                e.live = false
                e.released = false
                e.staleSince = renewedAt &+ ttl
                out.append(e)
            }
            return out
        }
        guard exists else { return out }
        if !released, let r = options.retentionNanos, horizon >= staleSince &+ r {
            // Retirement: stale for the retention period, then inactive.
            var e = self
            e.released = true
            out.append(e)
        }
        let forgotten = options.unknownForgets.contains { f in horizon >= f.invoke && (node == nil || node == f.node) }
        if (released && options.idReuse) || forgotten {
            // An inactive entry's ID may go to another hostname, or a forget of unknown outcome
            // may remove a stale or inactive node: this hostname is then absent.
            out.append(EntryState(token: token))
        }
        return out
    }

    private func apply(_ op: HistoryOp, into out: inout [EntryState]) {
        let ttlNanos = UInt64(op.ttlSeconds ?? 0) * 1_000_000_000
        switch (op.kind, op.outcome) {
        case (.acquire, .ok):
            guard let l = op.leaseId, let n = op.nodeId else { return }
            if let known = node, known != n { return }
            if live {
                // Only the same holder gets its own lease back, renewed.
                guard holder == op.holder else { return }
                if let current = lease {
                    guard current == l, op.fencingToken == nil || op.fencingToken == token else { return }
                } else if let t = op.fencingToken, t <= token {
                    return
                }
                var s = self
                s.node = n
                s.lease = l
                if let t = op.fencingToken { s.token = t }
                s.renewedAt = max(renewedAt, op.invoke)
                s.ttl = ttlNanos
                out.append(s)
            } else {
                // A new grant: a fresh lease and a larger token.
                if let previous = lease, previous == l { return }
                if let t = op.fencingToken, t <= token { return }
                out.append(
                    EntryState(
                        exists: true, node: n, lease: l, holder: op.holder, token: op.fencingToken ?? token, live: true, released: false,
                        renewedAt: op.invoke, ttl: ttlNanos))
            }
        case (.acquire, .fail):
            if op.error == "node_ids_exhausted" {
                // Only a hostname without an ID can find none free.
                if !exists { out.append(self) }
            } else if live && holder != op.holder {
                // hostname_in_use: another holder's lease was live.
                out.append(self)
            }
        case (.forget, .ok):
            // The node was registered, not active, and is gone with its hostname.
            guard exists, !live else { return }
            if let n = op.nodeId, let known = node, known != n { return }
            out.append(EntryState(token: token))
        case (.forget, _):
            out.append(self)
        case (.acquire, .info):
            out.append(self)
            if live {
                if holder == op.holder {
                    var s = self
                    s.renewedAt = max(renewedAt, op.invoke)
                    s.ttl = max(ttl, ttlNanos)
                    out.append(s)
                }
            } else {
                out.append(
                    EntryState(
                        exists: true, node: node, lease: nil, holder: op.holder, token: token, live: true, released: false,
                        renewedAt: op.invoke, ttl: ttlNanos))
            }
        case (.renew, .ok):
            guard live, matches(op) else { return }
            if let n = op.nodeId, let known = node, known != n { return }
            var s = self
            if s.lease == nil { s.lease = op.leaseId }
            if let n = op.nodeId { s.node = n }
            s.renewedAt = max(renewedAt, op.invoke)
            if ttlNanos > 0 { s.ttl = ttlNanos }
            out.append(s)
        case (.renew, .fail), (.release, .fail):
            // lease_not_found: that lease was not live. (An unknown lease may be another one.)
            if !live || lease != op.leaseId { out.append(self) }
        case (.renew, .info):
            out.append(self)
            if live && matches(op) {
                var s = self
                s.renewedAt = max(renewedAt, op.invoke)
                out.append(s)
            }
        case (.release, .ok):
            guard live, matches(op) else { return }
            if let n = op.nodeId, let known = node, known != n { return }
            var s = self
            s.live = false
            s.released = true
            out.append(s)
        case (.release, .info):
            out.append(self)
            if live && matches(op) {
                var s = self
                s.live = false
                s.released = true
                out.append(s)
            }
        case (.read, _):
            guard let n = op.nodeId else {
                if !exists { out.append(self) }
                return
            }
            guard exists, node == nil || node == n, op.status == status else { return }
            var s = self
            s.node = n
            out.append(s)
        }
    }

    /// The operation names this state's lease (or the lease is unknown and held by the same
    /// holder, who may have learnt it).
    private func matches(_ op: HistoryOp) -> Bool {
        if let l = lease { return l == op.leaseId }
        return holder == op.holder
    }
}

/// One Wing-Gong-Lowe search over one hostname's operations.
struct Search {
    enum Result {
        case linearizable
        case notLinearizable(HistoryOp, [EntryState])
        /// The budget ran out; the operation the search was stuck at (its deepest point), and
        /// how many operations it had linearized there.
        case gaveUp(HistoryOp, depth: Int)
    }

    /// A set of model states, kept sorted by description so equal sets compare equal.
    typealias States = [EntryState]

    private let ops: [HistoryOp]
    private let options: Linearizability.Options
    private let budget: Int
    private let maxCached: Int
    private(set) var steps = 0

    // The event list: 2 entries per operation (call, return), doubly linked, in time order.
    // Entry 0 is a sentinel head.
    private var next: [Int]
    private var prev: [Int]
    private var opOf: [Int]
    private var isCall: [Bool]
    private var time: [UInt64]
    private var returnEntry: [Int]

    init(ops: [HistoryOp], options: Linearizability.Options, budget: Int, maxCached: Int = 1_000_000) {
        self.ops = ops
        self.options = options
        self.budget = budget
        self.maxCached = maxCached
        struct Event { var time: UInt64; var call: Bool; var op: Int }
        var events: [Event] = []
        for (i, op) in ops.enumerated() {
            events.append(Event(time: op.invoke, call: true, op: i))
            // An unknown outcome never returns: it may take effect at any later time.
            events.append(Event(time: op.outcome == .info ? UInt64.max : op.complete, call: false, op: i))
        }
        // Time order; at equal times calls first (the more permissive reading), then by op.
        events.sort { a, b in
            if a.time != b.time { return a.time < b.time }
            if a.call != b.call { return a.call }
            return a.op < b.op
        }
        let n = events.count
        next = Array(0...n).map { $0 + 1 }
        next[n] = -1
        prev = Array(-1..<n)
        opOf = [-1] + events.map(\.op)
        isCall = [false] + events.map(\.call)
        time = [0] + events.map(\.time)
        returnEntry = Array(repeating: 0, count: ops.count)
        for (k, e) in events.enumerated() where !e.call { returnEntry[e.op] = k + 1 }
    }

    private mutating func lift(_ entry: Int) {
        // Unlink the call entry and its return entry.
        for e in [entry, returnEntry[opOf[entry]]] {
            next[prev[e]] = next[e]
            if next[e] >= 0 { prev[next[e]] = prev[e] }
        }
    }

    private mutating func unlift(_ entry: Int) {
        for e in [returnEntry[opOf[entry]], entry] {
            if next[e] >= 0 { prev[next[e]] = e }
            next[prev[e]] = e
        }
    }

    /// The earliest completion among the operations not linearized yet: the first return
    /// event left in the list (an unknown outcome's return is at infinity).
    private func horizon() -> UInt64 {
        var e = next[0]
        while e >= 0 {
            if !isCall[e] { return time[e] }
            e = next[e]
        }
        return UInt64.max
    }

    struct Key: Hashable {
        var linearized: [UInt64]
        var states: States
    }

    mutating func run() -> Result {
        var states: States = [EntryState()]
        var linearized = [UInt64](repeating: 0, count: (ops.count + 63) / 64)
        var cache: Set<Key> = []
        var stack: [(entry: Int, states: States)] = []
        var entry = next[0]
        // The deepest point reached, for the report when no linearization exists.
        var deepest = (depth: -1, op: 0, states: states)
        while next[0] >= 0 {
            steps += 1
            if steps > budget || cache.count > maxCached {
                let at = deepest.depth >= 0 ? ops[deepest.op] : ops[max(0, opOf[entry])]
                return .gaveUp(at, depth: max(deepest.depth, stack.count))
            }
            if isCall[entry] {
                let op = ops[opOf[entry]]
                let h = horizon()
                var after: States = []
                for s in states {
                    for t in s.after(op, horizon: h, options: options) where !after.contains(t) { after.append(t) }
                }
                if !after.isEmpty {
                    after.sort { $0.description < $1.description || ($0.description == $1.description && $0.renewedAt < $1.renewedAt) }
                    let i = opOf[entry]
                    linearized[i / 64] |= 1 << UInt64(i % 64)
                    if cache.insert(Key(linearized: linearized, states: after)).inserted {
                        stack.append((entry, states))
                        states = after
                        lift(entry)
                        entry = next[0]
                        continue
                    }
                    linearized[i / 64] &= ~(1 << UInt64(i % 64))
                }
                entry = next[entry]
            } else {
                // A return for an operation not linearized yet: back out the last choice.
                if stack.count > deepest.depth { deepest = (stack.count, opOf[entry], states) }
                guard let (e, s) = stack.popLast() else {
                    return .notLinearizable(ops[deepest.op], deepest.states)
                }
                let i = opOf[e]
                linearized[i / 64] &= ~(1 << UInt64(i % 64))
                states = s
                unlift(e)
                entry = next[e]
            }
        }
        return .linearizable
    }
}

import Foundation

/// One client operation as the Jepsen workload saw it. Times are monotonic nanoseconds since
/// the test started, on the one clock every process of the test shares.
public struct HistoryOp: Codable, Sendable, Hashable {
    public enum Kind: String, Codable, Sendable, CaseIterable {
        case acquire, renew, release, read
        /// Forget a node (`DELETE /v1/cluster/nodes/{nodeId}`); `hostname` is the one the
        /// answer named (or the one the client believed, when it has no answer).
        case forget
    }
    public enum Outcome: String, Codable, Sendable {
        /// Succeeded (2xx).
        case ok
        /// Definitely did not happen (a 4xx answer, or 503 which never reports success).
        case fail
        /// Unknown: a timeout or a dropped connection.
        case info
    }

    public var process: Int
    public var kind: Kind
    public var hostname: String
    public var holder: String
    public var invoke: UInt64
    public var complete: UInt64
    public var outcome: Outcome
    /// For acquire/renew/release: the lease involved, when known.
    public var leaseId: String?
    public var nodeId: UInt32?
    public var fencingToken: UInt64?
    public var ttlSeconds: UInt32?
    /// The replica asked; the log index the answer reflects (for a write, the entry that
    /// applied it); for reads, whether linearizable, and what it said of this hostname.
    public var replica: Int?
    public var index: UInt64?
    public var linearizable: Bool?
    public var status: String?
    public var error: String?
    /// For reads that recorded the whole registry: every entry, in the answer's order.
    public var registry: [RegistryEntry]?
    /// A write's idempotency key (shared by a retry of the same request).
    public var key: String?
    /// The second copy of a hedged write (same request, same key, sent to another replica at
    /// the same time): only the idempotency check reads it.
    public var hedge: Bool?

    public init(process: Int, kind: Kind, hostname: String, holder: String, invoke: UInt64, complete: UInt64, outcome: Outcome) {
        self.process = process
        self.kind = kind
        self.hostname = hostname
        self.holder = holder
        self.invoke = invoke
        self.complete = complete
        self.outcome = outcome
    }
}

/// One ClusterNode as a read saw it.
public struct RegistryEntry: Codable, Sendable, Hashable {
    public var nodeId: UInt32
    public var hostname: String
    public var status: String
    public var holder: String?
    public var fencingToken: UInt64?
    public init(nodeId: UInt32, hostname: String, status: String, holder: String? = nil, fencingToken: UInt64? = nil) {
        self.nodeId = nodeId
        self.hostname = hostname
        self.status = status
        self.holder = holder
        self.fencingToken = fencingToken
    }
}

/// A finding of a checker.
public struct Anomaly: Codable, Sendable, Hashable, CustomStringConvertible {
    public var checker: String
    public var detail: String
    public init(checker: String, detail: String) {
        self.checker = checker
        self.detail = detail
    }
    public var description: String { "\(checker): \(detail)" }
}

/// Checks on a history of lease operations. Each returns its anomalies (empty: valid).
public enum LeaseCheckers {
    /// No two holders' holder-side validity windows for one node ID overlap. A holder may use
    /// its node ID from the moment an acquire or renew answered ok until that operation's
    /// invocation plus the TTL (it sent the request no earlier than it invoked it), or until it
    /// invoked a release.
    ///
    /// A holder that has asked to release a lease never trusts that lease again: the release
    /// may still take effect (its outcome may be unknown), even if a later acquire by the same
    /// holder hands the same lease back. Such grants open no window.
    public static func leaseSafety(_ history: [HistoryOp]) -> [Anomaly] {
        struct Window { var holder: String; var start: UInt64; var end: UInt64 }
        var windows: [UInt32: [Window]] = [:]
        let releases = history.filter { $0.kind == .release }
        for op in history where (op.kind == .acquire || op.kind == .renew) && op.outcome == .ok {
            guard let node = op.nodeId, let ttl = op.ttlSeconds else { continue }
            if releases.contains(where: { $0.holder == op.holder && $0.leaseId == op.leaseId && $0.invoke < op.invoke }) { continue }
            var end = op.invoke + UInt64(ttl) * 1_000_000_000
            // The holder stops when it starts to release.
            for r in releases where r.holder == op.holder && r.leaseId == op.leaseId && r.invoke >= op.complete {
                end = min(end, r.invoke)
            }
            guard end > op.complete else { continue }
            windows[node, default: []].append(Window(holder: op.holder, start: op.complete, end: end))
        }
        var out: [Anomaly] = []
        for node in windows.keys.sorted() {
            let ws = windows[node]!.sorted { $0.start < $1.start }
            for i in ws.indices {
                for j in (i + 1)..<ws.count where ws[j].start < ws[i].end && ws[j].holder != ws[i].holder {
                    out.append(
                        Anomaly(
                            checker: "lease-safety",
                            detail: "node \(node): \(ws[i].holder) held it until \(ws[i].end)ns and \(ws[j].holder) from \(ws[j].start)ns"))
                    if out.count > 20 { return out }
                }
            }
        }
        return out
    }

    /// Fencing tokens of grants of one node ID increase in real-time order: a grant that
    /// completed before another was invoked has the smaller token.
    public static func fencing(_ history: [HistoryOp]) -> [Anomaly] {
        var grants: [UInt32: [(token: UInt64, invoke: UInt64, complete: UInt64)]] = [:]
        var seen: Set<String> = []
        for op in history where op.kind == .acquire && op.outcome == .ok {
            guard let node = op.nodeId, let token = op.fencingToken, let id = op.leaseId, seen.insert(id).inserted else { continue }
            grants[node, default: []].append((token, op.invoke, op.complete))
        }
        var out: [Anomaly] = []
        for node in grants.keys.sorted() {
            let gs = grants[node]!
            for a in gs {
                for b in gs where a.complete < b.invoke && a.token >= b.token {
                    out.append(Anomaly(checker: "fencing", detail: "node \(node): token \(b.token) granted after token \(a.token)"))
                }
            }
        }
        return out
    }

    /// A lease belongs to one hostname and one node ID for good, and carries one fencing token
    /// in every answer (grant, renewal). Without ID reuse or forgets, also one node ID per
    /// hostname and one hostname per node ID across every acknowledged grant.
    public static func mapping(_ history: [HistoryOp], fixedIDs: Bool = true) -> [Anomaly] {
        var idOf: [String: UInt32] = [:]
        var hostOf: [UInt32: String] = [:]
        var lease: [String: (host: String, node: UInt32?, token: UInt64?)] = [:]
        var out: [Anomaly] = []
        for op in history where (op.kind == .acquire || op.kind == .renew) && op.outcome == .ok {
            guard let node = op.nodeId else { continue }
            if let l = op.leaseId {
                if let known = lease[l] {
                    if known.host != op.hostname || (known.node != nil && known.node != node) {
                        out.append(Anomaly(checker: "mapping", detail: "lease \(l) was \(known.host) node \(known.node ?? 0), then \(op.hostname) node \(node)"))
                    }
                    if let t = op.fencingToken, let k = known.token, t != k {
                        out.append(Anomaly(checker: "mapping", detail: "lease \(l) answered fencing token \(k), then \(t)"))
                    }
                    if known.token == nil, let t = op.fencingToken { lease[l]!.token = t }
                } else {
                    lease[l] = (op.hostname, node, op.fencingToken)
                }
            }
            guard fixedIDs else { continue }
            if let other = idOf[op.hostname], other != node {
                out.append(Anomaly(checker: "mapping", detail: "\(op.hostname) had node \(other) and then \(node)"))
            }
            if let other = hostOf[node], other != op.hostname {
                out.append(Anomaly(checker: "mapping", detail: "node \(node) was \(other) and then \(op.hostname)"))
            }
            idOf[op.hostname] = node
            hostOf[node] = op.hostname
            if out.count > 50 { break }
        }
        return out
    }

    /// Reads at one log index show one registry, whichever replica answered: every replica
    /// applies the same entries in the same order, status changes included.
    public static func sameIndexReads(_ history: [HistoryOp]) -> [Anomaly] {
        var seen: [UInt64: (registry: [RegistryEntry], replica: Int)] = [:]
        var out: [Anomaly] = []
        for op in history where op.kind == .read && op.outcome == .ok {
            guard let i = op.index, let r = op.registry else { continue }
            let shown = r.map { RegistryEntry(nodeId: $0.nodeId, hostname: $0.hostname, status: $0.status) }
            if let first = seen[i] {
                if first.registry != shown {
                    out.append(
                        Anomaly(
                            checker: "same-index-reads",
                            detail: "index \(i): replica \(first.replica) showed \(describe(first.registry)), replica \(op.replica ?? 0) \(describe(shown))"))
                    if out.count > 20 { break }
                }
            } else {
                seen[i] = (shown, op.replica ?? 0)
            }
        }
        return out
    }

    /// Election safety: at most one replica leads each term (from the leadership claims the
    /// replicas' status showed during the run).
    public static func electionSafety(_ claims: [(term: UInt64, replica: Int)]) -> [Anomaly] {
        var byTerm: [UInt64: Set<Int>] = [:]
        for c in claims { byTerm[c.term, default: []].insert(c.replica) }
        return byTerm.keys.sorted().compactMap { t in
            let rs = byTerm[t]!
            return rs.count > 1 ? Anomaly(checker: "election", detail: "term \(t) had leaders \(rs.sorted())") : nil
        }
    }

    static func describe(_ r: [RegistryEntry]) -> String {
        "[" + r.map { "\($0.nodeId) \($0.hostname) \($0.status)" }.joined(separator: ", ") + "]"
    }

    /// Copies of one request (same idempotency key) that both got a definite answer got the
    /// same one: a repeat is answered with the first outcome, never applied again.
    public static func idempotency(_ history: [HistoryOp]) -> [Anomaly] {
        var byKey: [String: [HistoryOp]] = [:]
        for op in history where op.kind != .read && op.outcome != .info && op.error != "not_delivered" {
            if let k = op.key { byKey[k, default: []].append(op) }
        }
        var out: [Anomaly] = []
        for k in byKey.keys.sorted() {
            let ops = byKey[k]!
            guard let first = ops.first else { continue }
            for o in ops.dropFirst() where o.outcome != first.outcome || o.error != first.error || o.leaseId != first.leaseId || o.nodeId != first.nodeId {
                out.append(
                    Anomaly(
                        checker: "idempotency",
                        detail: "key \(k): \(first.kind.rawValue) answered \(first.outcome.rawValue) \(first.error ?? first.leaseId ?? "") on replica \(first.replica ?? 0), and \(o.outcome.rawValue) \(o.error ?? o.leaseId ?? "") on replica \(o.replica ?? 0)"))
            }
            if out.count > 20 { break }
        }
        return out
    }

    /// A linearizable read reflects every write acknowledged before it began: its index is at
    /// least the index of each such write's entry.
    public static func readsSeeAcknowledgedWrites(_ history: [HistoryOp]) -> [Anomaly] {
        let writes = history.filter { $0.kind != .read && $0.outcome == .ok && $0.index != nil }.sorted { $0.complete < $1.complete }
        var out: [Anomaly] = []
        var k = 0
        var highest: (index: UInt64, op: HistoryOp?) = (0, nil)
        for op in history.filter({ $0.kind == .read && $0.linearizable == true && $0.outcome == .ok }).sorted(by: { $0.invoke < $1.invoke }) {
            while k < writes.count && writes[k].complete < op.invoke {
                if writes[k].index! > highest.index { highest = (writes[k].index!, writes[k]) }
                k += 1
            }
            guard let i = op.index, let w = highest.op, i < highest.index else { continue }
            out.append(
                Anomaly(
                    checker: "read-after-write",
                    detail: "linearizable read on replica \(op.replica ?? 0) at \(op.invoke)ns answered index \(i), but \(w.kind.rawValue) by process \(w.process) was acknowledged at index \(highest.index) (\(w.complete)ns) before it began"))
            if out.count > 20 { break }
        }
        return out
    }

    /// Every acknowledged change is in the final linearizable read: each hostname that was
    /// ever granted is there with its node ID, and a hostname whose last change that could
    /// have taken effect is an acknowledged release is not active.
    public static func finalState(_ history: [HistoryOp], final: [String: (nodeId: UInt32, status: String)]) -> [Anomaly] {
        var out: [Anomaly] = []
        var lastGrant: [String: HistoryOp] = [:]
        for op in history where op.kind == .acquire && op.outcome == .ok { lastGrant[op.hostname] = op }
        for (host, op) in lastGrant.sorted(by: { $0.key < $1.key }) {
            guard let f = final[host] else {
                out.append(Anomaly(checker: "final-state", detail: "acknowledged grant of \(host) is missing from the final read"))
                continue
            }
            if let n = op.nodeId, n != f.nodeId {
                out.append(Anomaly(checker: "final-state", detail: "\(host) was granted node \(n), the final read says \(f.nodeId)"))
            }
        }
        return out
    }

    /// Reads from one replica by one process never go back in index.
    public static func readMonotonicity(_ history: [HistoryOp]) -> [Anomaly] {
        var last: [String: UInt64] = [:]
        var out: [Anomaly] = []
        for op in history.sorted(by: { $0.invoke < $1.invoke }) where op.kind == .read && op.outcome == .ok {
            guard let r = op.replica, let i = op.index else { continue }
            let key = "\(op.process)/\(r)"
            if let l = last[key], i < l {
                out.append(Anomaly(checker: "read-index", detail: "process \(op.process) read index \(i) from replica \(r) after \(l)"))
            }
            last[key] = max(last[key] ?? 0, i)
        }
        return out
    }
}

extension LeaseCheckers {
    /// Every read that answered with an index (follower or linearizable) shows, for each
    /// hostname, a state the registry really had at that index: stale is allowed, wrong is not.
    /// The writes' own indexes (each write's answer carries the index of the entry that applied
    /// it) place the known changes on the log; expiries, retirements, IDs moving to another
    /// hostname and unknown-outcome writes have no known index, so the rules only use what
    /// they cannot change:
    ///
    /// - between two successful operations on one lease (grant, renewal, or the entry just
    ///   before its release) the lease was live: the hostname is there, `active`, with the
    ///   lease's node ID;
    /// - right after a release, with no acquire of unknown outcome that could have come
    ///   between, the status is `inactive` (or, when IDs can move, the hostname is absent);
    /// - after a grant or renewal, `inactive` needs a release of unknown outcome that could have
    ///   come between, or a retirement (not before the TTL and the retention have passed since
    ///   that grant or renewal was invoked);
    /// - without ID reuse or forgets, the node ID is the hostname's one, and a hostname is
    ///   absent only before its first known change.
    public static func indexedReads(_ history: [HistoryOp], options: Linearizability.Options = .init()) -> [Anomaly] {
        enum Change { case live, released, forgotten }
        struct Event {
            var index: UInt64
            var lease: String
            var node: UInt32?
            var change: Change
            /// When the lease could have been retired at the earliest (grants and renewals).
            var retireAfter: UInt64 = .max
        }
        var events: [String: [Event]] = [:]
        var nodeOf: [String: UInt32] = [:]
        var unknownAcquires: [String: [UInt64]] = [:]
        var unknownReleases: [String: [UInt64]] = [:]
        let forgets = history.contains { $0.kind == .forget && $0.outcome != .fail }
        let fixedIDs = !options.idReuse && !forgets
        let writtenHostnames = leaseHostnames(history)
        for op in history where op.kind != .read {
            if op.outcome == .info {
                if op.kind == .acquire { unknownAcquires[op.hostname, default: []].append(op.invoke) }
                if op.kind == .release { unknownReleases[op.hostname, default: []].append(op.invoke) }
                continue
            }
            guard op.outcome == .ok, let i = op.index else { continue }
            if op.kind == .forget {
                events[op.hostname, default: []].append(Event(index: i, lease: "-", node: op.nodeId, change: .forgotten))
                continue
            }
            guard let l = op.leaseId else { continue }
            if let n = op.nodeId { nodeOf[op.hostname] = n }
            switch op.kind {
            case .acquire, .renew:
                let retire = options.retentionNanos.map { op.invoke &+ UInt64(op.ttlSeconds ?? 0) * 1_000_000_000 &+ $0 } ?? .max
                events[op.hostname, default: []].append(Event(index: i, lease: l, node: op.nodeId, change: .live, retireAfter: retire))
            case .release:
                // Live just before the release applied, inactive from its entry on.
                if i > 0 { events[op.hostname, default: []].append(Event(index: i - 1, lease: l, node: op.nodeId, change: .live)) }
                events[op.hostname, default: []].append(Event(index: i, lease: l, node: op.nodeId, change: .released))
            case .read, .forget: break
            }
        }
        for k in events.keys { events[k]!.sort { ($0.index, $0.change == .live ? 0 : 1) < ($1.index, $1.change == .live ? 0 : 1) } }
        var out: [Anomaly] = []
        for read in history where read.kind == .read && read.outcome == .ok {
            guard let i = read.index else { continue }
            for op in Self.perHostname(read, hostnames: writtenHostnames) {
                let es = events[op.hostname] ?? []
                let prev = es.last { $0.index <= i }
                let next = es.first { $0.index > i }
                let unknownAcquireBefore = (unknownAcquires[op.hostname] ?? []).contains { $0 < op.complete }
                let unknownReleaseBefore = (unknownReleases[op.hostname] ?? []).contains { $0 < op.complete }
                let kind = op.linearizable == true ? "linearizable" : "follower"
                let at = "\(kind) read of \(op.hostname) at index \(i) on replica \(op.replica ?? 0)"
                let liveThroughout = prev.map { p in p.change == .live && next.map { $0.change == .live && $0.lease == p.lease } == true } ?? false
                guard let n = op.nodeId, let status = op.status else {
                    if let p = prev, liveThroughout || (fixedIDs && p.change != .forgotten) || (p.change == .released && !options.idReuse && !forgets) {
                        out.append(Anomaly(checker: "indexed-reads", detail: "\(at): absent, but lease \(p.lease) was known at index \(p.index)"))
                    }
                    continue
                }
                if fixedIDs, let known = nodeOf[op.hostname], known != n {
                    out.append(Anomaly(checker: "indexed-reads", detail: "\(at): node \(n), but the hostname's node is \(known)"))
                }
                guard let p = prev else { continue }
                if liveThroughout, status != "active" || (!fixedIDs && p.node != nil && p.node != n) {
                    out.append(
                        Anomaly(
                            checker: "indexed-reads",
                            detail: "\(at): \(status) node \(n), but lease \(p.lease) of node \(p.node.map(String.init) ?? "?") was live at indexes \(p.index) and \(next!.index)"))
                } else if p.change == .released, status != "inactive", !unknownAcquireBefore {
                    out.append(Anomaly(checker: "indexed-reads", detail: "\(at): \(status), but lease \(p.lease) was released at index \(p.index)"))
                } else if p.change == .live, status == "inactive", !unknownReleaseBefore, op.complete < p.retireAfter {
                    out.append(
                        Anomaly(
                            checker: "indexed-reads",
                            detail: "\(at): inactive, but lease \(p.lease) was live at index \(p.index) and no release could have come between"))
                }
                if out.count > 50 { return out }
            }
        }
        return out
    }

    /// The hostnames whose leases the history acquires, renews or releases: the ones the
    /// model and the indexed reads follow (a forget's answer may name another).
    public static func leaseHostnames(_ history: [HistoryOp]) -> [String] {
        Set(history.filter { $0.kind == .acquire || $0.kind == .renew || $0.kind == .release }.map(\.hostname)).sorted()
    }

    /// A read as one read per hostname of `hostnames`: as its registry shows it (when it
    /// recorded the whole registry), absent if not there; a read that recorded only its own
    /// hostname stays as it is.
    public static func perHostname(_ read: HistoryOp, hostnames: [String]) -> [HistoryOp] {
        guard let registry = read.registry else { return [read] }
        var out: [HistoryOp] = []
        var seen: Set<String> = []
        let wanted = Set(hostnames)
        for e in registry where wanted.contains(e.hostname) {
            var o = read
            o.registry = nil
            o.hostname = e.hostname
            o.nodeId = e.nodeId
            o.status = e.status
            out.append(o)
            seen.insert(e.hostname)
        }
        for h in hostnames.sorted() where !seen.contains(h) {
            var o = read
            o.registry = nil
            o.hostname = h
            o.nodeId = nil
            o.status = nil
            out.append(o)
        }
        return out
    }

    /// For each heal of a fault, the time from the heal to the completion of the next
    /// successful write (nil: no write succeeded after it). `heals` are times in nanoseconds.
    public static func healToWrite(_ history: [HistoryOp], heals: [UInt64]) -> [UInt64?] {
        let completions = history.filter { $0.kind != .read && $0.outcome == .ok }.map(\.complete).sorted()
        return heals.map { h in
            var lo = 0
            var hi = completions.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if completions[mid] <= h { lo = mid + 1 } else { hi = mid }
            }
            return lo < completions.count ? completions[lo] - h : nil
        }
    }
}

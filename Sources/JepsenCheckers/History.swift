import Foundation

/// One client operation as the Jepsen workload saw it. Times are monotonic nanoseconds since
/// the test started, on the one clock every process of the test shares.
public struct HistoryOp: Codable, Sendable, Hashable {
    public enum Kind: String, Codable, Sendable {
        case acquire, renew, release, read
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
    /// For reads: the replica, the index it answered at, and what it said of this hostname.
    public var replica: Int?
    public var index: UInt64?
    public var linearizable: Bool?
    public var status: String?
    public var error: String?

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

    /// One node ID per hostname and one hostname per node ID across every acknowledged grant
    /// (the test's ID range is large enough that IDs are never reused).
    public static func mapping(_ history: [HistoryOp]) -> [Anomaly] {
        var idOf: [String: UInt32] = [:]
        var hostOf: [UInt32: String] = [:]
        var out: [Anomaly] = []
        for op in history where (op.kind == .acquire || op.kind == .renew) && op.outcome == .ok {
            guard let node = op.nodeId else { continue }
            if let other = idOf[op.hostname], other != node {
                out.append(Anomaly(checker: "mapping", detail: "\(op.hostname) had node \(other) and then \(node)"))
            }
            if let other = hostOf[node], other != op.hostname {
                out.append(Anomaly(checker: "mapping", detail: "node \(node) was \(other) and then \(op.hostname)"))
            }
            idOf[op.hostname] = node
            hostOf[node] = op.hostname
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

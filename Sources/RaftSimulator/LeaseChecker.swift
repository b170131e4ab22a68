import LeaseRegistry
import Raft

/// Checks the lease invariants of ARCHITECTURE.md from observations in true (simulated)
/// time, in microseconds. Like `SafetyChecker`, it only sees observations, so tests can feed
/// it broken histories.
public struct LeaseChecker: Sendable {
    public enum Rule: String, Sendable {
        case twoHolders = "two holders of one node ID"
        case holderOutlivedLease = "a holder stops before its lease expires"
        case fencing = "fencing tokens"
        case mapping = "one ID per hostname, one hostname per ID"
        case earlyExpiry = "early expiry"
        case registryDivergence = "registries differ at one index"
    }

    public struct Belief: Sendable, Hashable {
        public var holder: String
        public var start: UInt64
        public var end: UInt64
    }

    public private(set) var failures: [(Rule, String)] = []
    /// Per node ID, the recent belief intervals of holders.
    private var beliefs: [NodeID: [Belief]] = [:]
    private var lastToken: [NodeID: UInt64] = [:]
    private var hostnameOfID: [NodeID: String] = [:]
    private var idOfHostname: [String: NodeID] = [:]
    private var digests: [UInt64: UInt64] = [:]

    public init() {}

    public var ok: Bool { failures.isEmpty }

    private mutating func fail(_ r: Rule, _ s: String) {
        if failures.count < 8 { failures.append((r, s)) }
    }

    /// `holder` believes it holds `nodeID` over `start..<end` (true time). Another holder's
    /// belief in the same ID must not overlap it.
    public mutating func believe(_ nodeID: NodeID, holder: String, from start: UInt64, until end: UInt64) {
        guard end > start else { return }
        var list = beliefs[nodeID] ?? []
        for b in list where b.holder != holder && b.end > start && b.start < end {
            fail(
                .twoHolders,
                "\(b.holder) believes it holds node \(nodeID) until \(b.end)us, and \(holder) from \(start)us")
        }
        if let k = list.lastIndex(where: { $0.holder == holder }), list[k].end >= start {
            list[k].end = max(list[k].end, end)
        } else {
            list.append(Belief(holder: holder, start: start, end: end))
        }
        // Keep the list short: beliefs that ended long ago cannot overlap new ones.
        if list.count > 16 { list.removeFirst(list.count - 16) }
        beliefs[nodeID] = list
    }

    /// `holder` stopped believing at `time` (lease lost, or released).
    public mutating func stopBelieving(_ nodeID: NodeID, holder: String, at time: UInt64) {
        guard var list = beliefs[nodeID], let k = list.lastIndex(where: { $0.holder == holder }) else { return }
        list[k].end = min(list[k].end, max(time, list[k].start))
        beliefs[nodeID] = list
    }

    /// A grant applied for the first time (at log index `index`).
    public mutating func observeGrant(nodeID: NodeID, hostname: String, token: UInt64) {
        if let last = lastToken[nodeID], token <= last {
            fail(.fencing, "node \(nodeID) was granted token \(token) after token \(last)")
        }
        lastToken[nodeID] = token
        if let other = idOfHostname[hostname], other != nodeID, hostnameOfID[other] == hostname {
            fail(.mapping, "hostname \(hostname) holds node \(nodeID) and node \(other)")
        }
        if let h = hostnameOfID[nodeID], h != hostname, idOfHostname[h] == nodeID {
            // Reuse of an inactive ID by another hostname is allowed only if the old
            // hostname's binding was dropped; the registry reports that through `unbind`.
            fail(.mapping, "node \(nodeID) is bound to \(h) and \(hostname)")
        }
        hostnameOfID[nodeID] = hostname
        idOfHostname[hostname] = nodeID
    }

    /// The binding of `nodeID` to its hostname ended (the ID went to another hostname, or
    /// the node was forgotten).
    public mutating func unbind(nodeID: NodeID) {
        if let h = hostnameOfID.removeValue(forKey: nodeID), idOfHostname[h] == nodeID { idOfHostname[h] = nil }
    }

    /// An expire took effect at `time`; the leader applied the lease's last renewal at
    /// `renewedAt`. With leader clocks at most `maxRate` times fast, the lease must have lived
    /// at least `ttl / maxRate`.
    public mutating func observeExpiry(nodeID: NodeID, at time: UInt64, renewedAt: UInt64, ttlSeconds: UInt32, maxRate: Double) {
        let minimum = UInt64(Double(ttlSeconds) * 1e6 / maxRate)
        if time < renewedAt + minimum {
            fail(
                .earlyExpiry,
                "node \(nodeID) expired \(time - renewedAt)us after its last renewal applied; TTL \(ttlSeconds)s")
        }
    }

    /// The lease of `holder` on `nodeID` expired (the expire command took effect) at `time`:
    /// the holder must already have stopped believing in it.
    public mutating func observeLeaseEnded(_ nodeID: NodeID, holder: String, at time: UInt64) {
        guard let b = beliefs[nodeID]?.last(where: { $0.holder == holder }), b.end > time else { return }
        fail(
            .holderOutlivedLease,
            "\(holder) believed it held node \(nodeID) until \(b.end)us, but its lease expired at \(time)us")
    }

    /// A replica's registry digest after applying `index`: all replicas must agree.
    public mutating func observeDigest(index: UInt64, digest: UInt64, replica: ReplicaID) {
        if let d = digests[index] {
            if d != digest { fail(.registryDivergence, "replica \(replica) differs from others at index \(index)") }
        } else {
            digests[index] = digest
        }
    }
}

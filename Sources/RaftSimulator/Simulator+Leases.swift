import LeaseRegistry
import Raft
import ReplicaCore

/// The lease workload: mail nodes that acquire a node ID for their hostname, renew it (on
/// time, late, or after a pause past their TTL), release it, and share hostnames on purpose;
/// every replica runs the real registry and the leader runs the real `LeaseExpiry`.
extension Simulation {
    /// A mail server holding (or trying to hold) a node ID.
    struct MailNode {
        var hostname: String
        var holder: String
        /// Its clock runs at this rate against true time.
        var rate: Double
        var op: UInt64?
        /// The op's idempotency key and command, the same on every attempt.
        var key = ""
        var command: LeaseCommand?
        var opKind: OpKind = .acquire
        var submitted = false
        var sentLocal: UInt64 = 0
        var leaderHint: Int?
        /// The lease it holds, and the end of its belief in its own clock (nanoseconds).
        var lease: Lease?
        var deadlineLocal: UInt64 = 0
        /// The lease the current renew or release is about.
        var opLease: Lease?
        /// Leases this node asked to release: never trusted again, even when an acquire hands
        /// one back (the release, if its outcome was unknown, may still land later).
        var released: Set<UInt64> = []
        /// A lease an acquire handed back although it was released: released again first.
        var releaseAgain: Lease?

        enum OpKind { case acquire, renew, release }
    }

    static let wallEpoch: UInt64 = 1_767_225_600

    /// A replica's monotonic clock (nanoseconds), running at its drifting rate.
    func localNanos(_ i: Int) -> UInt64 { UInt64(Double(now) * replicas[i].rate * 1000) }

    func wallSeconds(_ i: Int) -> UInt64 { Self.wallEpoch + localNanos(i) / 1_000_000_000 }

    func mailLocal(_ c: Int) -> UInt64 { UInt64(Double(now) * mailNodes[c].rate * 1000) }

    /// True time (microseconds) at which mail node `c`'s clock reads `local`.
    func mailTrue(_ c: Int, local: UInt64) -> UInt64 { UInt64(Double(local) / 1000 / mailNodes[c].rate) }

    func setUpMailNodes() {
        let hostnames = max(1, options.clients - 1)
        for c in 0..<options.clients {
            let rate = 1 + (Double(random.next() % 2001) / 1000 - 1) * knobs.drift
            mailNodes.append(MailNode(hostname: "mx\(c % hostnames).example.org", holder: "holder-\(c)", rate: rate))
        }
    }

    // MARK: Mail node actions

    func mailStep(_ c: Int) {
        guard !clientsStopped, !mailNodes[c].submitted else { return }
        if mailNodes[c].op == nil {
            nextOp += 1
            mailNodes[c].op = nextOp
            let holding = mailNodes[c].lease != nil && mailLocal(c) < mailNodes[c].deadlineLocal
            if !holding {
                if let l = mailNodes[c].lease { leaseChecker.stopBelieving(l.nodeID, holder: mailNodes[c].holder, at: now) }
                mailNodes[c].lease = nil
                mailNodes[c].opKind = .acquire
                if let l = mailNodes[c].releaseAgain {
                    mailNodes[c].opKind = .release
                    mailNodes[c].opLease = l
                    mailNodes[c].releaseAgain = nil
                }
            } else {
                mailNodes[c].opKind = random.chance(0.08) ? .release : .renew
                mailNodes[c].opLease = mailNodes[c].lease
                if mailNodes[c].opKind == .release {
                    // The node stops using its ID before it asks to release it.
                    let l = mailNodes[c].lease!
                    leaseChecker.stopBelieving(l.nodeID, holder: mailNodes[c].holder, at: now)
                    mailNodes[c].lease = nil
                }
            }
            if mailNodes[c].opKind == .release { mailNodes[c].released.insert(mailNodes[c].opLease!.leaseID) }
            mailNodes[c].sentLocal = mailLocal(c)
            mailNodes[c].key = "op-\(nextOp)"
            keySubmittedAt[mailNodes[c].key] = now
            switch mailNodes[c].opKind {
            case .acquire:
                mailNodes[c].command = .acquire(
                    hostname: mailNodes[c].hostname, holder: mailNodes[c].holder, ttlSeconds: knobs.leaseTTL, idRange: 1...4)
            case .renew:
                mailNodes[c].command = .renew(leaseID: mailNodes[c].opLease!.leaseID)
                if knobs.keylessRenewals && random.chance(0.5) { keylessOps.insert(nextOp) }
            case .release:
                mailNodes[c].command = .release(leaseID: mailNodes[c].opLease!.leaseID)
            }
            // The op's own deadline; each attempt also has the replica's request timeout.
            queue.push(.clientTimeout(c, op: nextOp), at: now + micros(ms: 1500))
        }
        let op = mailNodes[c].op!
        // Any replica: followers forward to the leader. A retry goes to a random one.
        guard let target = pickReplica(hint: nil), replicas[target].core != nil else { return retry(c) }
        // A keyless renewal: each attempt is a request of its own (renewing twice is harmless);
        // the replica's session stamp keeps its own re-sends from applying twice.
        let key = keylessOps.contains(op) ? nil : IdempotencyKey(origin: .client, value: mailNodes[c].key)
        let id = replicas[target].core!.submit(mailNodes[c].command!, key: key, now: localNanos(target), wall: wallSeconds(target))
        replicas[target].requests[id] = (c, op)
        mailNodes[c].submitted = true
        trace("mail \(c) (\(mailNodes[c].hostname)) op \(op) \(mailNodes[c].opKind) key \(mailNodes[c].key) at \(target + 1)")
        coreCarryOut(target)
    }

    /// An operation ended: `reply` is the registry's answer when it committed.
    func mailDone(_ c: Int, op: UInt64, outcome: Outcome, reply: (any Sendable)?) {
        guard mailNodes[c].op == op else { return }
        let holder = mailNodes[c].holder
        let kind = mailNodes[c].opKind
        mailNodes[c].op = nil
        mailNodes[c].submitted = false
        switch (outcome, reply as? Result<LeaseReply, LeaseError>) {
        case (.ok, .success(.lease(let l))?) where mailNodes[c].released.contains(l.leaseID):
            // A lease it asked to release came back: not trusted; released again, then a new
            // acquire gets a new lease.
            mailNodes[c].releaseAgain = l
        case (.ok, .success(.lease(let l))?):
            // Valid until the send instant plus the TTL, by the node's own clock.
            let sent = mailNodes[c].sentLocal
            mailNodes[c].lease = l
            mailNodes[c].deadlineLocal = sent + UInt64(l.ttlSeconds) * 1_000_000_000
            if options.leaseFaults.contains(.holderIgnoresDeadline) {
                // Broken on purpose: trusts the lease until told otherwise.
                mailNodes[c].deadlineLocal = sent + UInt64(l.ttlSeconds) * 10_000_000_000
            }
            leaseChecker.believe(l.nodeID, holder: holder, from: now, until: mailTrue(c, local: mailNodes[c].deadlineLocal))
            if kind == .acquire { result.acknowledgedWrites += 1 }
        case (.ok, .failure(.leaseNotFound)?):
            // The lease is gone: stop using the ID at once.
            if let l = mailNodes[c].lease { leaseChecker.stopBelieving(l.nodeID, holder: holder, at: now) }
            mailNodes[c].lease = nil
        case (.ok, _):
            break  // hostname in use, release done, ...
        case (.failed, _), (.indeterminate, _):
            result.indeterminateOperations += 1  // the belief stays as it was
        }
        // Next action: renew at a third of the TTL, sometimes late, sometimes very late (a
        // pause past the TTL); retry a refused acquire soon.
        var delayMs: UInt64 = 20 + random.next() % 60
        if let l = mailNodes[c].lease {
            let ttlMs = UInt64(l.ttlSeconds) * 1000
            let roll = random.next() % 100
            delayMs = roll < 80 ? ttlMs / 3 : roll < 95 ? ttlMs * 9 / 10 : ttlMs * 3 / 2
        }
        queue.push(.client(c), at: now + micros(ms: delayMs))
    }

    // MARK: Replica side

    /// Called for every entry a replica applies in the lease workload. `reusedID`: an acquire
    /// gave a new hostname an ID another hostname had.
    func leaseApplied(_ i: Int, entry e: Entry, registry: LeaseRegistry, reusedID: Bool, reply: Result<LeaseReply, LeaseError>?) {
        let firstApply = e.index > highestApplied
        if firstApply { highestApplied = e.index }
        if e.index.rawValue % 8 == 0 {
            leaseChecker.observeDigest(index: e.index.rawValue, digest: FNV1a.hash(registry.snapshot()), replica: replicas[i].id)
        }
        guard e.kind == .normal, let timed = TimedCommand(decoding: e.data), case .success(let outcome)? = reply else { return }
        let record: NodeRecord?
        switch outcome {
        case .lease(let l): record = registry.node(l.nodeID)
        case .node(let n): record = registry.node(n.nodeID) ?? n
        case .replica, .idempotency, .clusterVersion: record = nil
        }
        guard let record else { return }
        // When each renewal first applied (the leader applies a committed entry first).
        if record.status == .active {
            let key = RenewalKey(lease: record.leaseID, renewal: record.renewalIndex)
            if renewalApplied[key] == nil { renewalApplied[key] = now }
        }
        guard firstApply else { return }
        switch timed.command {
        case .acquire:
            if record.renewalIndex == record.leaseID && record.leaseID == e.index.rawValue {
                if reusedID { leaseChecker.unbind(nodeID: record.nodeID) }
                leaseChecker.observeGrant(nodeID: record.nodeID, hostname: record.hostname, token: record.leaseID)
            }
        case .expire(let lease, let renewal):
            let at = renewalApplied[RenewalKey(lease: lease, renewal: renewal)] ?? 0
            leaseChecker.observeExpiry(
                nodeID: record.nodeID, at: now, renewedAt: at, ttlSeconds: record.ttlSeconds, maxRate: 1 + knobs.drift)
            leaseChecker.observeLeaseEnded(record.nodeID, holder: record.holder, at: now)
        case .forget:
            leaseChecker.unbind(nodeID: record.nodeID)
        default:
            break
        }
    }
}

struct RenewalKey: Hashable {
    var lease: UInt64
    var renewal: UInt64
}

/// Deliberately broken lease behaviour, to prove the lease checker catches it.
public struct LeaseFaults: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Holders keep using their node ID long past send instant + TTL, until a renewal fails.
    public static let holderIgnoresDeadline = LeaseFaults(rawValue: 1 << 0)
    /// A new leader does not restart lease countdowns: it expires every lease at once.
    public static let noFailoverReset = LeaseFaults(rawValue: 1 << 1)
    /// The registry ignores idempotency keys: a re-sent or retried write applies again.
    public static let ignoreIdempotencyKeys = LeaseFaults(rawValue: 1 << 2)
    /// The registry forgets idempotency keys at half the window (time and key limit).
    public static let forgetKeysEarly = LeaseFaults(rawValue: 1 << 3)
    /// A replica session's re-sent write applies again (`RegistryFaults.sessionRepeatsApply`).
    public static let sessionRepeatsApply = LeaseFaults(rawValue: 1 << 4)
}

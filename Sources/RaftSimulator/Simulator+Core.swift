import LeaseRegistry
import Raft
import ReplicaCore

/// The lease workload's replicas run `ReplicaCore`, the same value the server's actor runs:
/// this is the simulator's shell around it (the server's is `RaftDriver`). It feeds the core
/// each replica's drifting clocks, delivers its messages and forwards through the faulty
/// network, persists its Readies on the simulated disk after a random fsync latency, and
/// answers the mail nodes' requests with what the core decided.
extension Simulation {
    func coreConfig(_ i: Int) -> ReplicaCore.Config {
        var c = ReplicaCore.Config(replicaID: replicas[i].id)
        c.requestTimeoutNanos = 400_000_000
        c.readResendNanos = UInt64(knobs.heartbeatTicks) * knobs.tickMicros * 3000
        c.writeResendNanos = 150_000_000
        c.expiry = .init(retentionSeconds: 2)
        c.idempotencyWindow = knobs.idempotencyWindow
        c.dataDirectoryID = UInt64(i + 1) << 32 | UInt64(replicas[i].epoch)
        c.requestIDBase = UInt64(i + 1) << 56 | UInt64(replicas[i].epoch) << 40
        c.breakFailoverReset = options.leaseFaults.contains(.noFailoverReset)
        c.reportRegistryWithEntries = true
        c.breakExactlyOnce = options.leaseFaults.contains(.ignoreIdempotencyKeys)
        if options.leaseFaults.contains(.forgetKeysEarly) { c.registryFaults.insert(.forgetKeysEarly) }
        if options.leaseFaults.contains(.sessionRepeatsApply) { c.registryFaults.insert(.sessionRepeatsApply) }
        return c
    }

    func startCore(_ i: Int, node: RaftNode, registry: LeaseRegistry) {
        replicas[i].core = ReplicaCore(config: coreConfig(i), node: node, registry: registry)
        replicas[i].requests = [:]
    }

    func coreTick(_ i: Int) {
        // With keyless renewals the leader hears every running replica's cluster version (the
        // server's leader asks them every 2 s), so the cluster moves to the newest.
        var versions: [ReplicaID: PeerVersion] = [:]
        if knobs.keylessRenewals && replicas[i].core!.node.role == .leader {
            for j in replicas.indices where j != i && replicas[j].up {
                if let core = replicas[j].core {
                    versions[replicas[j].id] = PeerVersion(supported: ClusterVersion.newest, applied: core.registry.clusterVersion)
                }
            }
        }
        replicas[i].core!.tick(now: localNanos(i), wall: wallSeconds(i), peerVersions: versions)
        coreCarryOut(i)
    }

    func coreDeliver(_ i: Int, _ m: Message) {
        replicas[i].core!.step([m], now: localNanos(i))
        coreCarryOut(i)
    }

    func corePersisted(_ i: Int) {
        guard let rd = replicas[i].inFlight else { return }
        guard persistInFlight(i, rd) else { return }
        replicas[i].inFlight = nil
        replicas[i].core!.persisted(now: localNanos(i))
        coreCarryOut(i)
        maybeSnapshot(i)
        coreCarryOut(i)
    }

    /// Carries out the core's effects, then starts its next Ready when none is in flight.
    func coreCarryOut(_ i: Int) {
        guard replicas[i].core != nil else { return }
        observeLeadership(i)
        var rounds = 0
        while replicas[i].core != nil {
            if replicas[i].inFlight == nil && replicas[i].core!.needsPump { replicas[i].core!.pump(now: localNanos(i), wall: wallSeconds(i)) }
            let effects = replicas[i].core!.takeEffects()
            if effects.isEmpty { break }
            var unsent: [(data: [UInt8], queuedAt: UInt64)] = []
            for effect in effects { carryOut(i, effect, unsent: &unsent) }
            replicas[i].core?.forwardFailed(unsent)
            rounds += 1
            if rounds > 1000 {
                checker.recordFailure(.liveness, "replica \(replicas[i].id)'s core keeps producing effects without input")
                break
            }
        }
        observeLeadership(i)
        watchIndexes(i)
    }

    private func observeLeadership(_ i: Int) {
        guard let node = replicas[i].core?.node, node.role == .leader, replicas[i].ledTerm != node.term else { return }
        observeNewLeader(i)
    }

    private func carryOut(_ i: Int, _ effect: ReplicaCore.Effect, unsent: inout [(data: [UInt8], queuedAt: UInt64)]) {
        switch effect {
        case .send(let messages):
            send(messages)
        case .persist(let rd):
            schedulePersist(i, rd)
        case .forward(let data, let to, let queuedAt):
            let j = Int(to.rawValue) - 1
            if !unsent.isEmpty || blocked.contains(i * 16 + j) || !replicas[j].up {
                // No connection to the leader: the shell gives it back, as the server's does.
                unsent.append((data, queuedAt))
            } else if !random.chance(dropRate) {
                let delay = knobs.minDelayMicros + random.next() % (knobs.maxDelayMicros - knobs.minDelayMicros + 1)
                queue.push(.forwarded(j, data, epoch: replicas[j].epoch), at: now + delay)
            }
        case .writeDone(let id, let w):
            let entry = replicas[i].justApplied.removeValue(forKey: id)
            guard let owner = replicas[i].requests.removeValue(forKey: id) else { return }
            answered(i, client: owner.client, op: owner.op, request: id, w, entry: entry)
        case .readDone(let id, let index):
            guard let required = replicas[i].coreReads.removeValue(forKey: id) else { return }
            result.reads += 1
            checker.observeRead(
                replica: replicas[i].id, index: replicas[i].core!.node.appliedIndex, requiredIndex: required,
                detail: "linearizable read \(id) at read index \(index), \(now / 1000)ms")
        case .timedOut(let id):
            if replicas[i].coreReads.removeValue(forKey: id) != nil { return }
            guard let owner = replicas[i].requests.removeValue(forKey: id) else { return }
            trace("mail \(owner.client) op \(owner.op): request timed out at replica \(i + 1)")
            mailRetry(owner.client, op: owner.op)
        case .applied(let e, let applied, let reusedID, let registry):
            coreApplied(i, e, applied, reusedID: reusedID, registry: registry!)
        case .installedSnapshot(let m):
            result.snapshotsInstalled += 1
            replicas[i].appliedIndex = m.index
            trace("replica \(replicas[i].id) installs snapshot \(m.term)/\(m.index)")
        case .leaderChanged(let l):
            trace("replica \(replicas[i].id) learns leader \(l.map(\.description) ?? "none")")
        case .roleChanged(let role, let term):
            replicas[i].disk.setLeader(role == .leader)
            trace("replica \(replicas[i].id) is \(role.rawValue) in term \(term)")
        case .proposedExpiry(let n):
            trace("replica \(replicas[i].id) proposes \(n) expiry commands")
        case .confChangeDone(let id, let r):
            trace("replica \(replicas[i].id) membership request \(id): \(r)")
        case .fatal(let why, _):
            checker.recordFailure(.divergentState, "replica \(replicas[i].id): \(why)")
        }
    }

    private func coreApplied(_ i: Int, _ e: Entry, _ applied: Applied?, reusedID: Bool, registry: LeaseRegistry) {
        let node = replicas[i].core!.node
        checker.observeApply(replicas[i].id, entry: e, currentTerm: node.term)
        replicas[i].appliedIndex = e.index
        let firstApply = e.index > highestApplied
        let timed = TimedCommand(decoding: e.data)
        if let timed, timed.requestID != 0, replicas[i].requests[timed.requestID] != nil { replicas[i].justApplied[timed.requestID] = e }
        // A request of a replica session (a keyless renewal) changes the registry at most once,
        // however often its replica re-sent it, while its session is kept (forgotten after the
        // window's time idle, in leader time, which runs at most `drift` fast).
        if let applied, firstApply, let s = timed?.session, !applied.discarded {
            let request = SessionRequest(replica: s.replica, base: s.base, number: timed!.requestID)
            let session = SessionRequest(replica: s.replica, base: s.base, number: 0)
            if let first = sessionApplications[request] {
                let idle = (now - min(now, sessionLastApplied[session] ?? 0)) * 1000
                let window = knobs.idempotencyWindow
                if Double(idle) * (1 + 2 * knobs.drift) >= Double(window.seconds) * 1e9 {
                    result.keysReapplied += 1
                    trace("keyless request \(request.number - request.base) of replica \(request.replica) applied again at \(e.index) after its session idled out")
                } else {
                    checker.recordFailure(
                        .exactlyOnce,
                        "keyless request \(request.number - request.base) of replica \(request.replica) applied twice: at index \(first.index) and again at \(e.index)")
                }
            } else {
                sessionApplications[request] = Application(index: e.index, result: applied.result, sequence: 0)
            }
            sessionLastApplied[session] = now
        }
        // A keyless write before cluster version 3 (a key its replica chose): its first
        // application, which its answer must match.
        if let applied, firstApply, let t = timed, t.key?.origin == .replica, !applied.replayed, t.requestID != 0,
            let replica = t.key!.value.split(separator: ".").first.flatMap({ UInt64($0) }),
            sessionApplications[SessionRequest(replica: replica, base: 0, number: t.requestID)] == nil
        {
            sessionApplications[SessionRequest(replica: replica, base: 0, number: t.requestID)] = Application(
                index: e.index, result: applied.result, sequence: 0)
        }
        // Every first application of a keyed command that the registry remembers (not a
        // replay, not a mismatch) counts toward the key limit.
        if let applied, firstApply, let key = timed?.key, !applied.replayed, applied.result != .failure(.idempotencyKeyMismatch) {
            // Exactly once: a client key's command changes the registry at most once while the
            // key is remembered (API.md: for the window's time, and while fewer than the key
            // limit of newer keys applied).
            if key.origin == .client {
                if let last = applications[key.value]?.last {
                    let newer = keyedApplications - last.sequence
                    let window = knobs.idempotencyWindow
                    // The window runs in leader time from the entry's proposal, which can be
                    // long before it applies, but never before the mail node first sent it; and
                    // leader time runs at most `drift` fast against true time.
                    let since = keySubmittedAt[key.value] ?? now
                    let age = (now - min(now, since)) * 1000
                    let evicted = newer >= window.maxKeys || Double(age) * (1 + 2 * knobs.drift) >= Double(window.seconds) * 1e9
                    if !evicted {
                        checker.recordFailure(
                            .exactlyOnce,
                            "request \(key.value) applied twice: at index \(last.index) and again at \(e.index) (\(newer) newer keys, \(age / 1_000_000)ms after it was first sent; window \(window.seconds)s, \(window.maxKeys) keys)")
                    } else {
                        result.keysReapplied += 1
                        trace("key \(key.value) applied again at \(e.index) after it left the window")
                    }
                }
                applications[key.value, default: []].append(
                    Application(index: e.index, result: applied.result, sequence: keyedApplications + 1))
            }
            keyedApplications += 1
        }
        leaseApplied(i, entry: e, registry: registry, reusedID: reusedID, reply: applied?.result)
    }

    /// A mail node's request was answered (200 or an API error): it must match exactly one
    /// application of its key, with that application's outcome.
    private func answered(_ i: Int, client c: Int, op: UInt64, request id: UInt64, _ w: ReplicaCore.WriteResult, entry: Entry?) {
        // Every answer is checked, also one that comes after the op ended (through another
        // replica, or past the op's deadline).
        let key = "op-\(op)"
        trace("mail \(c) op \(op) answered at replica \(i + 1): \(w.result) index \(w.index)\(w.replayed ? " (replayed)" : "")")
        if keylessOps.contains(op) {
            // No key: each attempt is a request of its own (its copies are checked as they
            // apply); the answer must be its application's, through its session or, before
            // cluster version 3, the key its replica chose.
            let replica = replicas[i].id.rawValue
            let base = replicas[i].core!.config.requestIDBase
            let first =
                sessionApplications[SessionRequest(replica: replica, base: base, number: id)]
                ?? sessionApplications[SessionRequest(replica: replica, base: 0, number: id)]
            if let first {
                if first.result != w.result || first.index != w.index {
                    checker.recordFailure(
                        .exactlyOnce,
                        "keyless op \(op) was answered \(w.result) at index \(w.index), but it applied as \(first.result) at \(first.index)")
                }
            } else {
                checker.recordFailure(.exactlyOnce, "keyless op \(op) was answered at replica \(i + 1) but never applied")
            }
        } else if let all = applications[key] {
            if !all.contains(where: { $0.result == w.result && $0.index == w.index }) {
                let first = all[0]
                checker.recordFailure(
                    .exactlyOnce,
                    "request \(key) was answered \(w.result) at index \(w.index), but it applied as \(first.result) at \(first.index)")
            }
        } else {
            checker.recordFailure(.exactlyOnce, "request \(key) was answered at replica \(i + 1) but never applied")
        }
        if !w.replayed, let entry, entry.index == w.index {
            acknowledged.append(Waiter(index: entry.index, term: entry.term, client: c, op: op, command: entry.data))
        }
        // A later read, anywhere, must reflect what an answer acknowledged (a replay too).
        highestAcknowledged = max(highestAcknowledged, w.index)
        if faultsOver { progressAfterHeal = true }
        guard mailNodes[c].op == op else { return }
        mailDone(c, op: op, outcome: .ok, reply: w.result)
    }

    /// The request's attempt ended without an answer (timeout, crash): the mail node sends
    /// the same request, with the same key, to another replica while the op's deadline allows.
    func mailRetry(_ c: Int, op: UInt64) {
        guard mailNodes[c].op == op else { return }
        mailNodes[c].submitted = false
        retry(c)
    }

    /// A mail node reads the registry at a random replica, as a node or an operator would: half
    /// the time a linearizable read through the core (it must reflect every write acknowledged
    /// before it began), half the time a local read, which a replica serves only once caught up
    /// after a start and which must never be older than one it served before.
    func leaseRead(_ c: Int) {
        guard !clientsStopped else { return }
        defer { queue.push(.leaseRead(c), at: now + micros(ms: 30 + random.next() % 120)) }
        guard let i = pickReplica(hint: nil), replicas[i].core != nil else { return }
        if random.chance(0.5) {
            let id = replicas[i].core!.read(now: localNanos(i))
            replicas[i].coreReads[id] = highestAcknowledged
            coreCarryOut(i)
        } else if replicas[i].core!.mayServeLocalRead(confirmed: false) {
            let index = replicas[i].core!.node.appliedIndex
            if index < replicas[i].servedLocal {
                checker.recordFailure(
                    .linearizableRead,
                    "replica \(replicas[i].id) served a local read at index \(index) after serving one at \(replicas[i].servedLocal) (a restart must catch up first)")
            }
            replicas[i].servedLocal = max(replicas[i].servedLocal, index)
        }
    }

    /// A dial to a crashed replica is refused: its followers hear of it soon, as the server's
    /// transport reports it.
    func reportUnreachable(crashed i: Int) {
        for j in replicas.indices where j != i && replicas[j].up {
            guard let node = replicas[j].core?.node, node.leader == replicas[i].id else { continue }
            queue.push(.peerUnreachable(j, peer: i, epoch: replicas[j].epoch), at: now + micros(ms: 1 + random.next() % 50))
        }
    }
}

import Foundation
import JepsenCheckers

/// One client process: a mail node that acquires its hostname's node ID, renews it, releases
/// it now and then, acquires again as the same holder (a restart), reads the whole registry
/// from random replicas, and forgets stale or inactive nodes now and then. Every operation is
/// recorded with its outcome; a timeout, a dropped connection or a 503 is unknown (`info`).
///
/// Renewals are planned once per lease period: most at a third of the TTL, some near the
/// holder-side deadline, and some after it (the holder no longer trusts the lease by then, but
/// the leader may not have expired it yet: such a renewal races the leader's expiry, which is
/// where the expiry rules are tested). A write with an unknown outcome is sometimes retried
/// once through another replica under the same `Idempotency-Key`; the pair is one operation.
/// A fifth of the writes go without a key, once: the accepting replica's session stamp is
/// then all that keeps its own re-sends from applying twice.
struct Worker: Sendable {
    let process: Int
    let hostname: String
    let holder: String
    let ttl: UInt32
    let cluster: TestCluster
    let history: HistoryLog
    let end: ContinuousClock.Instant
    let seed: UInt64
    let interval: Duration
    /// Forget stale or inactive nodes now and then (the small-ID-range workload).
    let forgets: Bool
    /// The fenced resource, written while this holder believes it holds its ID.
    let fenced: FencedStore
    /// Every worker's hostname (forgets choose among these).
    let workerHostnames: Set<String>

    struct Held {
        var id: String
        var node: UInt32
        var token: UInt64?
        var sentAt: UInt64
        /// When the next renewal (or release) is planned.
        var due: UInt64
    }

    var ttlNanos: UInt64 { UInt64(ttl) * 1_000_000_000 }

    /// When to renew a lease whose last successful renewal was sent at `sent`.
    func plan(_ sent: UInt64, _ random: inout SplitMix) -> UInt64 {
        let roll = random.below(100)
        if roll < 65 { return sent + ttlNanos / 3 }
        if roll < 75 { return sent + ttlNanos * UInt64(850 + random.below(135)) / 1000 }
        // In the last 1.5 % of the TTL before the holder-side deadline: the leader must not
        // have expired the lease yet (it waits 1 % longer than the TTL, on a clock that may run
        // up to 0.9 % fast in the drift nemesis).
        if roll < 90 { return sent + ttlNanos * UInt64(9850 + random.below(150)) / 10000 }
        // Late: at or past the holder-side deadline, within 3 % of the TTL after it.
        return sent + ttlNanos * UInt64(1000 + random.below(31)) / 1000
    }

    func run() async {
        var random = SplitMix(seed: seed)
        var held: Held?
        // Leases this holder asked to release: never trusted again, since the release may
        // still land even if an acquire hands the same lease back.
        var released: Set<String> = []
        // Requests go to members only: a random one (with the initial members, the same draw
        // as before there was a membership nemesis), another when it is no longer a member.
        var target = cluster.randomMember(&random)
        var lastSeen: [RegistryEntry] = []
        // A node that shut down or crashed does nothing but read until then.
        var downUntil: UInt64 = 0
        while ContinuousClock.now < end {
            var pause = interval
            if let h = held {
                let now = history.now()
                if h.due > now, h.due - now < UInt64(interval.components.seconds) * 1_000_000_000 + UInt64(interval.components.attoseconds / 1_000_000_000) {
                    pause = .nanoseconds(Int64(h.due - now))
                }
            }
            try? await Task.sleep(for: pause)
            if !cluster.isMember(target) { target = cluster.randomMember(&random) }
            let now = history.now()
            // Long past the deadline (a late renewal that never came): acquire afresh.
            if let h = held, now > h.sentAt + ttlNanos + ttlNanos / 20 { held = nil }
            let roll = random.below(100)
            if roll < 25 && (held == nil || held!.due > now + 50_000_000) {
                if let r = await read(&random) { lastSeen = r }
                continue
            }
            // Forget now and then a stale or inactive node of another worker (never the keepers'
            // hostname: the model has no history for it).
            if forgets && roll >= 25 && roll < 27,
                let victim = lastSeen.filter({ $0.status != "active" && $0.hostname != hostname && workerHostnames.contains($0.hostname) })
                    .randomElement(using: &random)
            {
                await forget(victim, target)
                continue
            }
            if random.below(4) == 0 { target = cluster.randomMember(&random) }
            if now < downUntil { continue }
            if let h = held, let token = h.token, now < h.sentAt + ttlNanos {
                // The resource this node ID guards, written while the lease is believed held.
                fenced.write(node: h.node, token: token, writer: holder, believedUntil: FencedStore.now() + (h.sentAt + ttlNanos - now))
            }
            if let h = held {
                if now < h.due { continue }
                let action = random.below(100)
                if action < 10 {
                    // A clean shutdown: release, stay down for a while.
                    released.insert(h.id)
                    held = nil
                    await write(.release, "DELETE", "/v1/leases/\(h.id)", nil, target, lease: h.id, &random)
                    downUntil = history.now() + UInt64(1 + random.below(4)) * 1_000_000_000
                    continue
                }
                if action < 18 {
                    // A crash: the lease is left to expire; back after a while.
                    held = nil
                    downUntil = now + UInt64(2 + random.below(10)) * 1_000_000_000
                    continue
                }
                let sent = history.now()
                let r: HistoryOp?
                if action < 28 {
                    // A restart: the same holder acquires again and must get its lease back
                    // while it is live.
                    r = await write(.acquire, "POST", "/v1/leases", acquireBody, target, lease: nil, &random)
                } else {
                    r = await write(.renew, "POST", "/v1/leases/\(h.id)/renew", "{}", target, lease: h.id, &random)
                }
                guard let r else { continue }
                if r.outcome == .ok, let id = r.leaseId, !released.contains(id) {
                    held = Held(id: id, node: r.nodeId ?? h.node, token: r.fencingToken ?? (id == h.id ? h.token : nil), sentAt: r.invoke, due: plan(r.invoke, &random))
                } else if r.outcome == .ok || (r.outcome == .fail && r.error != "not_delivered") {
                    // Refused (lease_not_found), or a lease this holder asked to release.
                    held = nil
                }
                _ = sent
            } else {
                let r = await write(.acquire, "POST", "/v1/leases", acquireBody, target, lease: nil, &random)
                if r?.outcome == .fail {
                    // Refused (another holder has the hostname, or no ID is free): back off for
                    // 0.3-3 s, so a lease that ran out often stays stale for a while before the
                    // hostname's other holder takes it back.
                    downUntil = history.now() + UInt64(300 + random.below(2700)) * 1_000_000
                }
                if let r, r.outcome == .ok, let id = r.leaseId, let node = r.nodeId {
                    if released.contains(id) {
                        // Our own earlier release of this very lease may still take effect:
                        // release it again and wait for a new grant.
                        await write(.release, "DELETE", "/v1/leases/\(id)", nil, target, lease: id, &random)
                    } else {
                        held = Held(id: id, node: node, token: r.fencingToken, sentAt: r.invoke, due: plan(r.invoke, &random))
                    }
                }
            }
        }
    }

    var acquireBody: String { "{\"hostname\":\"\(hostname)\",\"holder\":\"\(holder)\",\"ttlSeconds\":\(ttl)}" }

    /// A write. A fifth of them are hedged: the same request, under the same idempotency key,
    /// goes to two replicas at once (both answers must be the same: the second copy gets the
    /// first one's outcome); the other copy is kept, marked, for the idempotency check. An
    /// unknown outcome is retried once (half the time) through another replica under the
    /// same key, and the attempts are recorded as one operation. Another fifth go without a
    /// key, once (a retry without a key would be a new request).
    @discardableResult
    func write(
        _ kind: HistoryOp.Kind, _ method: String, _ path: String, _ body: String?, _ replica: Int, lease: String?, _ random: inout SplitMix
    ) async -> HistoryOp? {
        let key = "j\(process)-\(random.next() & 0xFFFF_FFFF_FFFF)"
        var o: HistoryOp
        let style = random.below(5)
        if style == 1 {
            o = await attempt(kind, method, path, body, replica, lease: lease, key: nil)
            history.add(o)
            return o
        }
        if style == 0 {
            let other = cluster.member(after: replica)
            async let a = attempt(kind, method, path, body, replica, lease: lease, key: key)
            async let b = attempt(kind, method, path, body, other, lease: lease, key: key)
            var (first, second) = await (a, b)
            // The recorded operation is the copy with a definite answer from the cluster, if
            // any; it started when the first copy did (the other copy may be the one that
            // applied), and is unknown if neither is definite but one may have applied.
            if !Self.definite(first) && (Self.definite(second) || second.outcome == .info) { swap(&first, &second) }
            o = first
            o.invoke = min(first.invoke, second.invoke)
            second.hedge = true
            history.add(second)
        } else {
            o = await attempt(kind, method, path, body, replica, lease: lease, key: key)
        }
        if o.outcome == .info && random.below(2) == 0 {
            try? await Task.sleep(for: .milliseconds(100))
            let again = await attempt(kind, method, path, body, cluster.member(after: replica), lease: lease, key: key)
            // A retry that was never delivered says nothing about the first attempt.
            if again.error != "not_delivered" {
                let invoke = o.invoke
                o = again
                o.invoke = invoke
            }
        }
        history.add(o)
        return o
    }

    /// An answer from the cluster (ok, or a refusal it decided), as opposed to an unknown
    /// outcome or a request that was never delivered.
    static func definite(_ o: HistoryOp) -> Bool { o.outcome == .ok || (o.outcome == .fail && o.error != "not_delivered") }

    private func attempt(_ kind: HistoryOp.Kind, _ method: String, _ path: String, _ body: String?, _ replica: Int, lease: String?, key: String?) async -> HistoryOp {
        var o = HistoryOp(process: process, kind: kind, hostname: hostname, holder: holder, invoke: history.now(), complete: 0, outcome: .info)
        o.leaseId = lease
        o.replica = replica
        o.key = key
        // A fresh connection for each write (`Connection: close`): a refused connection then
        // means the request was never sent (libcurl replays a request that died on a reused
        // connection, and a refusal of that replay says nothing about the first send).
        var headers = ["Connection": "close"]
        if let key { headers["Idempotency-Key"] = key }
        let answer = await cluster.request(replica, method, path, body: body, headers: headers, timeout: 2.5)
        o.complete = history.now()
        Self.record(answer, into: &o)
        return o
    }

    /// A write's answer into its operation: the fields a 200 carries (a forget's names the
    /// hostname it removed), the index of the entry that applied or refused it, and the outcome:
    /// 503 `no_leader` is unknown (the change may still commit), a refused connection (-1) a
    /// definite no-op, other statuses definite refusals; no answer leaves it unknown.
    static func record(_ answer: (Int, [String: Any], [String: String])?, into o: inout HistoryOp) {
        guard let (status, json, headers) = answer else { return }
        o.index = headers["x-nodelease-index"].flatMap(UInt64.init)
        switch status {
        case 200:
            o.outcome = .ok
            if let id = json["leaseId"] as? String { o.leaseId = id }
            if let n = json["nodeId"] as? Int { o.nodeId = UInt32(n) }
            if let h = json["hostname"] as? String { o.hostname = h }
            if let t = json["fencingToken"] as? Int { o.fencingToken = UInt64(t) }
            if let t = json["ttlSeconds"] as? Int { o.ttlSeconds = UInt32(t) }
            if let s = json["status"] as? String { o.status = s }
        case 503:
            o.outcome = .info
            o.error = json["error"] as? String
        case -1:
            o.outcome = .fail
            o.error = "not_delivered"
            o.index = nil
        default:
            o.outcome = .fail
            o.error = json["error"] as? String
        }
    }

    /// Forgets a node the last read showed stale or inactive. A success names the hostname it
    /// removed (the ID may have moved since the read); otherwise the op carries the one the
    /// read showed.
    func forget(_ victim: RegistryEntry, _ replica: Int) async {
        var o = HistoryOp(process: process, kind: .forget, hostname: victim.hostname, holder: holder, invoke: history.now(), complete: 0, outcome: .info)
        o.replica = replica
        o.nodeId = victim.nodeId
        let answer = await cluster.request(replica, "DELETE", "/v1/cluster/nodes/\(victim.nodeId)", headers: ["Connection": "close"], timeout: 2.5)
        o.complete = history.now()
        Self.record(answer, into: &o)
        history.add(o)
    }

    /// Reads the whole registry from a random replica (half the reads linearizable).
    func read(_ random: inout SplitMix) async -> [RegistryEntry]? {
        let replica = cluster.randomMember(&random)
        let linearizable = random.below(2) == 0
        var o = HistoryOp(process: process, kind: .read, hostname: hostname, holder: holder, invoke: history.now(), complete: 0, outcome: .info)
        o.replica = replica
        o.linearizable = linearizable
        let answer = await cluster.request(replica, "GET", "/v1/cluster/nodes" + (linearizable ? "?consistency=linearizable" : ""), timeout: 2.5)
        o.complete = history.now()
        if let (status, json, headers) = answer {
            o.outcome = status == 200 ? .ok : (status == 503 ? .info : .fail)
            if status == -1 { o.error = "not_delivered" }
            o.index = headers["x-nodelease-index"].flatMap(UInt64.init)
            if status == 200, let list = json["_array"] as? [[String: Any]] {
                o.registry = TestCluster.registry(list)
                if let me = o.registry!.first(where: { $0.hostname == hostname }) {
                    o.nodeId = me.nodeId
                    o.status = me.status
                }
            }
        }
        history.add(o)
        return o.registry
    }
}

/// Schedules faults from the seed, and heals each one before the next.
struct Nemesis: Sendable {
    let cluster: TestCluster
    let keepers: Keepers
    let leaders: LeaderLog
    let faults: Set<String>
    let seed: UInt64
    let log: NemesisLog
    let start: ContinuousClock.Instant

    func now() -> UInt64 { nanoseconds(since: start) }

    func run(until end: ContinuousClock.Instant) async {
        guard !faults.isEmpty else { return }
        if faults == ["upgrade"] {
            await upgradeAll(until: end)
            return
        }
        var random = SplitMix(seed: seed)
        let kinds = faults.sorted()
        var membershipRounds = 0
        try? await Task.sleep(for: .seconds(3))
        while ContinuousClock.now < end {
            let kind = kinds[random.below(kinds.count)]
            let hold = Duration.milliseconds(1500 + random.below(2500))
            // The replicas faults pick from: the current members (the membership nemesis changes
            // them; with 1...size, every pick is the draw it was before membership changes).
            let members = cluster.members
            let n = members.count
            switch kind {
            case "kill":
                // The leader often: kill one replica (or a minority), restart after a while.
                let count = random.below(3) == 0 ? (n - 1) / 2 : 1
                var victims: [Int] = []
                if random.below(2) == 0, let leader = await cluster.currentLeader() { victims.append(leader) }
                while victims.count < count {
                    let v = members[random.below(n)]
                    if !victims.contains(v) { victims.append(v) }
                }
                for v in victims { cluster.kill9(v) }
                let names = victims.map(String.init).joined(separator: ",")
                log.add(NemesisEvent(time: now(), fault: "kill", target: names, phase: "start"))
                try? await Task.sleep(for: hold)
                // Combined with a partition a third of the time (when partitions are on): the
                // victims come back cut off from the others, so they restart behind and stay
                // there for a while.
                let isolate = faults.contains("partition") && random.below(3) == 0
                if isolate {
                    let rest = members.filter { !victims.contains($0) }
                    cluster.partition([victims, rest])
                    log.add(NemesisEvent(time: now(), fault: "partition", target: "restarted \(names) isolated", phase: "start"))
                }
                for v in victims { try? cluster.start(v) }
                log.add(NemesisEvent(time: now(), fault: "kill", target: names, phase: "end"))
                if isolate {
                    try? await Task.sleep(for: hold)
                    cluster.healNetwork()
                    log.add(NemesisEvent(time: now(), fault: "partition", target: "restarted \(names) isolated", phase: "end"))
                }
            case "power":
                // A power cut of the whole cluster: every replica killed at once, all restarted
                // together (the fault build's lazy disk then loses what was not synced).
                cluster.killAll()
                log.add(NemesisEvent(time: now(), fault: "power", target: "all", phase: "start"))
                try? await Task.sleep(for: .milliseconds(300 + random.below(1200)))
                for v in members { try? cluster.start(v) }
                log.add(NemesisEvent(time: now(), fault: "power", target: "all", phase: "end"))
            case "disk":
                // A disk whose fsync fails (fault build): the replica must stop at once (it cannot
                // know what reached the disk), the others go on, and nothing acknowledged is lost.
                var v = members[random.below(n)]
                if random.below(2) == 0, let leader = await cluster.currentLeader() { v = leader }
                cluster.setDisk(v, "fail")
                log.add(NemesisEvent(time: now(), fault: "disk", target: "\(v): fsync fails", phase: "start"))
                let stopped = await cluster.waitForExit(v, seconds: Double(hold.components.seconds) + 1)
                cluster.setDisk(v, "")
                if stopped { try? cluster.start(v) }
                log.add(NemesisEvent(time: now(), fault: "disk", target: "\(v): fsync fails, " + (stopped ? "replica stopped" : "REPLICA DID NOT STOP"), phase: "end"))
                if !stopped { cluster.kill9(v); try? cluster.start(v) }
            case "disk-full":
                // The disk under one replica's data directory fills up (a size-limited tmpfs
                // whose free space a ballast file takes): its next write that needs space fails,
                // and it must stop (it cannot know what reached the disk). Then the space comes
                // back, it restarts, recovers its log (perhaps with a torn tail) and catches up;
                // nothing acknowledged may be lost. Only the initial replicas have the small
                // disks: one of those that are still members.
                let small = members.filter { cluster.isInitial($0) }
                guard !small.isEmpty else { break }
                var v = small[random.below(small.count)]
                if random.below(2) == 0, let leader = await cluster.currentLeader(), small.contains(leader) { v = leader }
                let logFrom = cluster.logSize(v)
                let taken = cluster.fillDisk(v)
                let left = cluster.freeBytes(v)
                log.add(NemesisEvent(
                    time: now(), fault: "disk-full", target: "\(v): disk full (\(taken >> 20) MiB ballast, \(left) bytes left)", phase: "start"))
                // A write that fits in a page the log already holds still succeeds: under load
                // the next one needs space within a second or two.
                var stopped = await cluster.waitForExit(v, seconds: max(5, Double(hold.components.seconds) + 1))
                cluster.emptyDisk(v)
                var outcome = "replica stopped, restarted"
                if !stopped {
                    // Still running: fine only if no write of its failed. One that failed and
                    // did not stop (or stops only now) is a fail-stop violation or a late stop.
                    let failed = cluster.log(v, after: logFrom).contains("No space left on device")
                    stopped = await cluster.waitForExit(v, seconds: 1)
                    if failed && !stopped {
                        outcome = "a write failed and the REPLICA DID NOT STOP"
                        cluster.kill9(v)
                        stopped = true
                    } else if stopped {
                        outcome = "replica stopped late, restarted"
                    } else {
                        outcome = "replica kept running (no write needed space)"
                    }
                }
                if stopped { try? cluster.start(v) }
                log.add(NemesisEvent(time: now(), fault: "disk-full", target: "\(v): disk full, " + outcome, phase: "end"))
            case "slow-disk":
                // Slow fsyncs (fault build): on every replica, or on the leader alone, 30 to
                // 150 ms each for a while. Commits then take that long, so renewals are still
                // in flight when the leader's countdowns run out: the expiry must not end a
                // lease renewed after it was decided.
                let ms = 30 + random.below(121)
                var slow = members
                if random.below(3) == 0, let leader = await cluster.currentLeader() { slow = [leader] }
                for v in slow { cluster.setDisk(v, "slow \(ms)") }
                let spec = "\(slow.count == n ? "all" : "\(slow[0])"): fsync +\(ms) ms"
                log.add(NemesisEvent(time: now(), fault: "slow-disk", target: spec, phase: "start"))
                try? await Task.sleep(for: hold * 3)
                for v in slow { cluster.setDisk(v, "") }
                log.add(NemesisEvent(time: now(), fault: "slow-disk", target: spec, phase: "end"))
            case "election-crash":
                // Slow disks everywhere, the leader killed, and the whole cluster powered off
                // right after a new leader shows itself: its voters' votes and the new term's
                // first entries are then still on their way to the disks (fault build).
                for v in members { cluster.setDisk(v, "slow 1000") }
                log.add(NemesisEvent(time: now(), fault: "election-crash", target: "all", phase: "start"))
                let old = await cluster.currentLeader()
                if let old { cluster.kill9(old) }
                let until = ContinuousClock.now + .seconds(8)
                search: while ContinuousClock.now < until {
                    for v in members where v != old {
                        if let (status, json, _) = await cluster.request(v, "GET", "/v1/status", timeout: 0.2), status == 200,
                            json["role"] as? String == "leader", let term = json["term"] as? Int
                        {
                            leaders.record(replica: v, term: UInt64(term), at: now())
                            break search
                        }
                    }
                    try? await Task.sleep(for: .milliseconds(20))
                }
                try? await Task.sleep(for: .milliseconds(random.below(300)))
                cluster.killAll()
                for v in members { cluster.setDisk(v, "") }
                try? await Task.sleep(for: .milliseconds(200))
                for v in members { try? cluster.start(v) }
                log.add(NemesisEvent(time: now(), fault: "election-crash", target: "all", phase: "end"))
            case "drift":
                // Monotonic clocks that run at different rates, within the 1 % margin the leader
                // adds (fault build only): the leader half the time, up to 0.9 % fast or slow.
                // Two times in three every replica runs 0.8-0.9 % fast (the dangerous way: the
                // leader's countdown ends sooner than the holders'), else one replica at any rate.
                var spec: String
                var drifted: [Int]
                if random.below(3) < 2 {
                    let rate = 1.0 + Double(8 + random.below(2)) / 1000
                    drifted = members
                    for v in drifted { cluster.setRate(v, rate) }
                    spec = String(format: "all: x%.3f", rate)
                } else {
                    var v = members[random.below(n)]
                    if random.below(2) == 0, let leader = await cluster.currentLeader() { v = leader }
                    let rate = 1.0 + Double(random.below(19) - 9) / 1000
                    drifted = [v]
                    cluster.setRate(v, rate)
                    spec = String(format: "%d: x%.3f", v, rate)
                }
                log.add(NemesisEvent(time: now(), fault: "drift", target: spec, phase: "start"))
                try? await Task.sleep(for: hold * 3)
                for v in drifted { cluster.setRate(v, 1.0) }
                log.add(NemesisEvent(time: now(), fault: "drift", target: spec, phase: "end"))
            case "pause" where keepers.count > 0 && random.below(3) == 0:
                // A holder's process (a LeaseKeeper) stops for a while: it must stop trusting its
                // lease in time, and a write it had decided on before the pause must be fenced.
                let k = random.below(keepers.count)
                keepers.pause(k)
                log.add(NemesisEvent(time: now(), fault: "pause", target: "keeper-\(k)", phase: "start"))
                try? await Task.sleep(for: hold + .seconds(2))
                keepers.resume(k)
                log.add(NemesisEvent(time: now(), fault: "pause", target: "keeper-\(k)", phase: "end"))
            case "pause":
                // The leader half the time.
                var v = members[random.below(n)]
                if random.below(2) == 0, let leader = await cluster.currentLeader() { v = leader }
                cluster.pause(v)
                log.add(NemesisEvent(time: now(), fault: "pause", target: "\(v)", phase: "start"))
                // Combined with a wall-clock bump a third of the time (when clock faults are on):
                // the replica wakes up to a clock that moved.
                let bump = faults.contains("clock") && random.below(3) == 0 ? ["+90", "-90", "+3600"][random.below(3)] : nil
                if let bump {
                    cluster.setClock(v, bump)
                    log.add(NemesisEvent(time: now(), fault: "clock", target: "\(v): \(bump) while paused", phase: "start"))
                }
                try? await Task.sleep(for: hold)
                cluster.resume(v)
                log.add(NemesisEvent(time: now(), fault: "pause", target: "\(v)", phase: "end"))
                if let bump {
                    try? await Task.sleep(for: hold)
                    cluster.setClock(v, "+0 x1")
                    log.add(NemesisEvent(time: now(), fault: "clock", target: "\(v): \(bump) while paused", phase: "end"))
                }
            case "partition":
                let all = members
                let shape = random.below(4)
                var description: String
                switch shape {
                case 0:
                    // Random halves.
                    var a: [Int] = []
                    var b: [Int] = []
                    for i in all { if random.below(2) == 0 { a.append(i) } else { b.append(i) } }
                    if a.isEmpty || b.isEmpty {
                        a = [all[0]]
                        b = Array(all.dropFirst())
                    }
                    cluster.partition([a, b])
                    description = "\(a) | \(b)"
                case 1:
                    let v = members[random.below(n)]
                    cluster.partition([[v], all.filter { $0 != v }])
                    description = "isolate \(v)"
                case 2:
                    // A majority ring: replicas in a shuffled ring each keep links to their
                    // nearest ring neighbours only, as few as still make a majority (with 4 or
                    // 5: itself and one on each side; with 6 or 7, two on each side), so each
                    // sees a majority but no two see the same one. With 3, one link is cut.
                    var ring = all
                    for i in stride(from: ring.count - 1, to: 0, by: -1) { ring.swapAt(i, random.below(i + 1)) }
                    var cut: [(Int, Int)] = []
                    if n <= 3 {
                        if n >= 2 { cut = [(ring[0], ring[1])] }
                    } else {
                        let reach = (n / 2 + 1) / 2
                        for i in 0..<n {
                            for j in (i + 1)..<n {
                                let d = min(j - i, n - (j - i))
                                if d > reach { cut.append((ring[i], ring[j])) }
                            }
                        }
                    }
                    cluster.dropLinks(cut)
                    description = "majority ring \(ring)"
                default:
                    let v = members[random.below(n)]
                    cluster.dropOneWay(from: [v], to: all.filter { $0 != v })
                    description = "\(v) -> others dropped"
                }
                log.add(NemesisEvent(time: now(), fault: "partition", target: description, phase: "start"))
                try? await Task.sleep(for: hold)
                cluster.healNetwork()
                log.add(NemesisEvent(time: now(), fault: "partition", target: description, phase: "end"))
            case "clock":
                // Wall-clock faults on one replica (the leader half the time): a bump by
                // seconds to an hour either way, or a rate change (libfaketime counts a rate
                // from the process's start, so it also jumps the clock), as NTP steps and bad
                // oscillators do. Nothing that decides a lease may depend on the wall clock.
                var v = members[random.below(n)]
                if random.below(2) == 0, let leader = await cluster.currentLeader() { v = leader }
                let bumps = ["+5", "-5", "+90", "-90", "+3600", "-3600"]
                let rates = ["+0 x0.5", "+0 x2", "+0 x0.9", "+0 x1.1"]
                let spec = random.below(3) == 0 ? rates[random.below(rates.count)] : bumps[random.below(bumps.count)]
                cluster.setClock(v, spec)
                log.add(NemesisEvent(time: now(), fault: "clock", target: "\(v): \(spec)", phase: "start"))
                try? await Task.sleep(for: hold)
                cluster.setClock(v, "+0 x1")
                log.add(NemesisEvent(time: now(), fault: "clock", target: "\(v): \(spec)", phase: "end"))
            case "membership":
                await changeMembership(round: membershipRounds, hold: hold, &random)
                membershipRounds += 1
            default:
                break
            }
            try? await Task.sleep(for: .milliseconds(1000 + random.below(2000)))
        }
    }

    /// One round of the `membership` nemesis: add a replica (a new id, while there are fewer
    /// than size + 2 members), remove a member (the leader half the time, while there are more
    /// than 3), or replace one (killed for good, removed, with `force=true` if the plain
    /// removal would lose the quorum, then a new one added). The first rounds of a run are
    /// scripted: two adds (growing to size + 2), a replacement, the leader's removal; random
    /// choices after that. A replica killed for good whose removal failed is removed first
    /// (forced) by the next round.
    func changeMembership(round: Int, hold: Duration, _ random: inout SplitMix) async {
        let members = cluster.members
        guard !members.isEmpty else { return }
        let canAdd = members.count < cluster.size + 2
        let canRemove = members.count > 3
        let script = ["add", "add", "replace", "remove-leader"]
        var action = round < script.count ? script[round] : ""
        if (action == "add" && !canAdd) || (action == "remove-leader" && !canRemove) { action = "" }
        if action.isEmpty {
            let choices = ["add", "remove", "replace"].filter { ($0 != "add" || canAdd) && ($0 != "remove" || canRemove) }
            action = choices[random.below(choices.count)]
        }
        if let dead = cluster.unremoved.first { action = "remove-dead \(dead)" }
        var target: String
        var failures: [String] = []
        func begin(_ target: String) {
            log.add(NemesisEvent(time: now(), fault: "membership", target: target, phase: "start"))
        }
        switch action {
        case "add":
            let id = cluster.nextReplicaId
            target = "add \(id)"
            begin(target)
            do { try await cluster.addReplica(id) } catch { failures.append("\(error)") }
        case "remove", "remove-leader":
            var v = members[random.below(members.count)]
            var leader: Int?
            if action == "remove-leader" || random.below(2) == 0 {
                // The scripted round waits a little for a leader to show itself.
                let until = ContinuousClock.now + .seconds(action == "remove-leader" ? 5 : 1)
                while leader == nil && ContinuousClock.now < until {
                    leader = await cluster.currentLeader()
                    if leader == nil { try? await Task.sleep(for: .milliseconds(200)) }
                }
            }
            if let leader { v = leader }
            target = "remove \(v)" + (leader != nil ? " (leader)" : "")
            begin(target)
            do { try await cluster.removeReplica(v, force: false) } catch { failures.append("\(error)") }
        case "replace":
            let v = members[random.below(members.count)]
            let id = cluster.nextReplicaId
            target = "replace \(v) by \(id)"
            begin(target)
            // Killed for good; the cluster runs without it for a while before the change.
            cluster.killForGood(v)
            try? await Task.sleep(for: hold)
            do {
                try await cluster.removeReplica(v, force: false)
            } catch let e as MembershipError where e.code == "would_lose_quorum" {
                target += " (forced)"
                do { try await cluster.removeReplica(v, force: true) } catch { failures.append("\(error)") }
            } catch {
                failures.append("\(error)")
            }
            do { try await cluster.addReplica(id) } catch { failures.append("\(error)") }
        default:
            // A replica killed for good whose removal failed in an earlier round.
            guard let dead = cluster.unremoved.first else { return }
            target = "remove \(dead) (killed earlier, forced)"
            begin(target)
            do { try await cluster.removeReplica(dead, force: true) } catch { failures.append("\(error)") }
        }
        let outcome = failures.isEmpty ? target : target + " FAILED: " + failures.joined(separator: "; ")
        if !failures.isEmpty { say("nemesis membership: \(outcome)") }
        log.add(NemesisEvent(time: now(), fault: "membership", target: outcome, phase: "end"))
    }
}

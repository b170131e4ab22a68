import Foundation
import JepsenCheckers

/// One client process: a mail node that acquires its hostname's node ID, renews it (sometimes
/// late), releases it now and then, and reads the registry from random replicas. Every
/// operation is recorded with its outcome; a timeout is recorded as unknown (`info`).
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

    func run() async {
        var random = SplitMix(seed: seed)
        var lease: (id: String, node: UInt32, sentAt: UInt64)?
        // Leases this holder asked to release: never trusted again, since the release may
        // still land even if an acquire hands the same lease back.
        var released: Set<String> = []
        var target = 1 + random.below(cluster.size)
        while ContinuousClock.now < end {
            try? await Task.sleep(for: interval)
            // The holder-side deadline: past it, this node stops believing it holds the ID.
            if let l = lease, history.now() >= l.sentAt + UInt64(ttl) * 1_000_000_000 { lease = nil }
            let roll = random.below(100)
            if roll < 25 {
                await read(&random)
                continue
            }
            if random.below(4) == 0 { target = 1 + random.below(cluster.size) }
            if let l = lease {
                // Renew at a third of the TTL after the last send, now and then late.
                let due = l.sentAt + UInt64(ttl) * 1_000_000_000 / (random.below(10) == 0 ? 1 : 3)
                if history.now() < due { continue }
                if random.below(12) == 0 {
                    released.insert(l.id)
                    lease = nil
                    await op(.release, "DELETE", "/v1/leases/\(l.id)", nil, target, lease: l.id)
                    continue
                }
                let sent = history.now()
                if let r = await op(.renew, "POST", "/v1/leases/\(l.id)/renew", "{}", target, lease: l.id) {
                    if r.outcome == .ok { lease = (l.id, l.node, sent) }
                    if r.outcome == .fail { lease = nil }
                }
            } else {
                let sent = history.now()
                let body = "{\"hostname\":\"\(hostname)\",\"holder\":\"\(holder)\",\"ttlSeconds\":\(ttl)}"
                if let r = await op(.acquire, "POST", "/v1/leases", body, target, lease: nil), r.outcome == .ok, let id = r.leaseId, let node = r.nodeId {
                    if released.contains(id) {
                        // Our own earlier release of this very lease may still take effect:
                        // release it again and wait for a new grant.
                        await op(.release, "DELETE", "/v1/leases/\(id)", nil, target, lease: id)
                    } else {
                        lease = (id, node, sent)
                    }
                }
            }
        }
    }

    @discardableResult
    func op(_ kind: HistoryOp.Kind, _ method: String, _ path: String, _ body: String?, _ replica: Int, lease: String?) async -> HistoryOp? {
        var o = HistoryOp(process: process, kind: kind, hostname: hostname, holder: holder, invoke: history.now(), complete: 0, outcome: .info)
        o.leaseId = lease
        o.replica = replica
        let answer = await cluster.request(replica, method, path, body: body, timeout: 2.5)
        o.complete = history.now()
        if let (status, json, headers) = answer {
            // The index of the entry that applied this write (or refused it).
            o.index = headers["x-nodelease-index"].flatMap(UInt64.init)
            switch status {
            case 200:
                o.outcome = .ok
                if let id = json["leaseId"] as? String { o.leaseId = id }
                if let n = json["nodeId"] as? Int { o.nodeId = UInt32(n) }
                if let t = json["fencingToken"] as? Int { o.fencingToken = UInt64(t) }
                if let t = json["ttlSeconds"] as? Int { o.ttlSeconds = UInt32(t) }
                if let s = json["status"] as? String { o.status = s }
            case 503:
                // no_leader never reports success, but the change may still commit later.
                o.outcome = .info
                o.error = json["error"] as? String
            default:
                o.outcome = .fail
                o.error = json["error"] as? String
            }
        }
        history.add(o)
        return o
    }

    func read(_ random: inout SplitMix) async {
        let replica = 1 + random.below(cluster.size)
        let linearizable = random.below(3) == 0
        var o = HistoryOp(process: process, kind: .read, hostname: hostname, holder: holder, invoke: history.now(), complete: 0, outcome: .info)
        o.replica = replica
        o.linearizable = linearizable
        let answer = await cluster.request(replica, "GET", "/v1/cluster/nodes" + (linearizable ? "?consistency=linearizable" : ""), timeout: 2.5)
        o.complete = history.now()
        if let (status, json, headers) = answer {
            o.outcome = status == 200 ? .ok : (status == 503 ? .info : .fail)
            o.index = headers["x-nodelease-index"].flatMap(UInt64.init)
            if let list = json["_array"] as? [[String: Any]], let me = list.first(where: { $0["hostname"] as? String == hostname }) {
                o.nodeId = (me["nodeId"] as? Int).map(UInt32.init)
                o.status = me["status"] as? String
            }
        }
        history.add(o)
    }
}

/// Schedules faults from the seed, and heals each one before the next.
struct Nemesis: Sendable {
    let cluster: TestCluster
    let faults: Set<String>
    let seed: UInt64
    let log: NemesisLog
    let start: ContinuousClock.Instant

    func now() -> UInt64 { nanoseconds(since: start) }

    func run(until end: ContinuousClock.Instant) async {
        guard !faults.isEmpty else { return }
        var random = SplitMix(seed: seed)
        let kinds = faults.sorted()
        let n = cluster.size
        try? await Task.sleep(for: .seconds(3))
        while ContinuousClock.now < end {
            let kind = kinds[random.below(kinds.count)]
            let hold = Duration.milliseconds(1500 + random.below(2500))
            switch kind {
            case "kill":
                // The leader often: kill one replica (or a minority), restart after a while.
                let count = random.below(3) == 0 ? (n - 1) / 2 : 1
                var victims: [Int] = []
                if random.below(2) == 0, let leader = await cluster.currentLeader() { victims.append(leader) }
                while victims.count < count {
                    let v = 1 + random.below(n)
                    if !victims.contains(v) { victims.append(v) }
                }
                for v in victims { cluster.kill9(v) }
                log.add(NemesisEvent(time: now(), fault: "kill", target: victims.map(String.init).joined(separator: ","), phase: "start"))
                try? await Task.sleep(for: hold)
                for v in victims { try? cluster.start(v) }
                log.add(NemesisEvent(time: now(), fault: "kill", target: victims.map(String.init).joined(separator: ","), phase: "end"))
            case "pause":
                let v = 1 + random.below(n)
                cluster.pause(v)
                log.add(NemesisEvent(time: now(), fault: "pause", target: "\(v)", phase: "start"))
                try? await Task.sleep(for: hold)
                cluster.resume(v)
                log.add(NemesisEvent(time: now(), fault: "pause", target: "\(v)", phase: "end"))
            case "partition":
                let all = Array(1...n)
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
                    let v = 1 + random.below(n)
                    cluster.partition([[v], all.filter { $0 != v }])
                    description = "isolate \(v)"
                case 2:
                    // A majority ring: replicas in a shuffled ring each keep links to their
                    // ring neighbours only, so each sees a majority (with 5: itself and two
                    // neighbours) but no two see the same one. With 3, one link is cut.
                    var ring = all
                    for i in stride(from: ring.count - 1, to: 0, by: -1) { ring.swapAt(i, random.below(i + 1)) }
                    var cut: [(Int, Int)] = []
                    if n == 3 {
                        cut = [(ring[0], ring[1])]
                    } else {
                        for i in 0..<n {
                            for j in (i + 1)..<n {
                                let d = min(j - i, n - (j - i))
                                if d > 1 { cut.append((ring[i], ring[j])) }
                            }
                        }
                    }
                    cluster.dropLinks(cut)
                    description = "majority ring \(ring)"
                default:
                    let v = 1 + random.below(n)
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
                var v = 1 + random.below(n)
                if random.below(2) == 0, let leader = await cluster.currentLeader() { v = leader }
                let bumps = ["+5", "-5", "+90", "-90", "+3600", "-3600"]
                let rates = ["+0 x0.5", "+0 x2", "+0 x0.9", "+0 x1.1"]
                let spec = random.below(3) == 0 ? rates[random.below(rates.count)] : bumps[random.below(bumps.count)]
                cluster.setClock(v, spec)
                log.add(NemesisEvent(time: now(), fault: "clock", target: "\(v): \(spec)", phase: "start"))
                try? await Task.sleep(for: hold)
                cluster.setClock(v, "+0 x1")
                log.add(NemesisEvent(time: now(), fault: "clock", target: "\(v): \(spec)", phase: "end"))
            default:
                break
            }
            try? await Task.sleep(for: .milliseconds(1000 + random.below(2000)))
        }
    }
}

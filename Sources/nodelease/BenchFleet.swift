import ArgumentParser
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Raft

/// `nodelease bench --op fleet`: a fleet of `--nodes` mail servers, each with its own lease,
/// each renewing every TTL/3 on a fixed schedule (open loop: a slow answer does not slow the
/// schedule down). Latency counts from the instant a renewal was due, not from when a busy
/// connection got round to sending it, so a cluster (or a client) that falls behind shows in
/// the percentiles instead of hiding in them. The fleet holds when p99 stays under 50 ms and no
/// lease expires (a renewal answered 404; from etcd, 200 with no TTL left). Each connection
/// registers its share and renews what it has registered meanwhile, so a fleet larger than
/// the cluster can register within a TTL still starts with every lease alive.
extension Bench {
    func runFleet(write: (String, Int), etcd: Bool) async throws {
        let n = nodes
        let connections = concurrency
        let ttlSeconds = ttl
        let period = Double(ttlSeconds) / 3
        let measured = duration ?? Double(3 * ttlSeconds)
        let clock = ContinuousClock()
        let pidList = Self.pidList(pids)
        // With --json, only the JSON object goes to stdout.
        let say: (String) -> Void = { [json] line in
            if json { FileHandle.standardError.write(Data((line + "\n").utf8)) } else { print(line) }
        }

        // One loop per connection registers its share of the nodes and, between
        // registrations, renews those already registered when they are due, so no lease waits
        // for the whole fleet to register. Node i renews at phase i/n of the period (the fleet
        // spread evenly, as in steady state), first within a period of its registration.
        // Renewals are measured once every connection has registered its share.
        let registration = BenchStats()
        let fromSchedule = BenchStats()
        let service = BenchStats()
        let expired = NIOLockedValueBox<Set<Int>>([])
        let missing = NIOLockedValueBox(0)
        // Set when the last connection has registered its share: (measuring from, until).
        let window = NIOLockedValueBox<(start: ContinuousClock.Instant, end: ContinuousClock.Instant)?>(nil)
        let registering = NIOLockedValueBox(connections)
        let shared = FleetRenewals.Shared(fromSchedule: fromSchedule, service: service, expired: expired, window: window)
        let t0 = clock.now
        let readTimeout = TimeAmount.milliseconds(Int64((period + 5) * 1000))
        let progress = Task {
            while !Task.isCancelled {
                guard (try? await Task.sleep(for: .seconds(1))) != nil else { break }
                let (r, _) = registration.counts()
                let (done, e) = fromSchedule.counts()
                FileHandle.standardError.write(Data("\r\(r) registered, \(done) renewals measured, \(e) errors   ".utf8))
            }
        }
        // Replica CPU from the start of the measured window.
        let cpuBefore = NIOLockedValueBox<[(String, Double)]>([])
        let ownBefore = NIOLockedValueBox(0.0)
        let sampler = Task {
            while window.withLockedValue({ $0 }) == nil { try? await Task.sleep(for: .milliseconds(20)) }
            if let w = window.withLockedValue({ $0 }) { try? await Task.sleep(until: w.start, clock: .continuous) }
            cpuBefore.withLockedValue { $0 = Self.cpuSeconds(pids: pidList) }
            ownBefore.withLockedValue { $0 = Self.ownCPUSeconds() }
        }
        await withTaskGroup(of: Void.self) { group in
            for w in 0..<connections {
                group.addTask {
                    let mine = Array(stride(from: w, to: n, by: connections))
                    var ids = [String](repeating: "", count: mine.count)
                    var next = 0
                    var due = MinHeap<FleetDue>()
                    var failures = 0
                    func finishRegistering() {
                        let last = registering.withLockedValue { left -> Bool in
                            left -= 1
                            return left == 0
                        }
                        if last {
                            let start = clock.now + .milliseconds(200)
                            window.withLockedValue { $0 = (start, start + .milliseconds(Int64(measured * 1000))) }
                        }
                    }
                    if mine.isEmpty { finishRegistering() }
                    while true {
                        if next == mine.count && due.isEmpty { return }
                        do {
                            try await HTTP1.withConnection(host: write.0, port: write.1, readTimeout: readTimeout) { c in
                                while true {
                                    if next == mine.count {
                                        // Registered: the rest runs on the connection's event loop.
                                        let end = try await FleetRenewals.run(
                                            c, ids: ids, fleetNumbers: mine, due: due, period: period, etcd: etcd, shared: shared)
                                        due = end.due
                                        if end.failed { throw ChannelError.eof }
                                        return
                                    }
                                    let now = clock.now
                                    let measuring = window.withLockedValue { $0 }
                                    if let top = due.min, top.at <= now {
                                        if let measuring, top.at >= measuring.end { return }
                                        due.removeMin()
                                        due.insert(FleetDue(at: top.at + .nanoseconds(Int64(period * 1e9)), k: top.k))
                                        let sent = clock.now
                                        let (uri, body) = FleetRenewals.renewal(of: ids[top.k], etcd: etcd)
                                        let r = try await c.request(.POST, uri, body)
                                        let answered = clock.now
                                        switch FleetRenewals.outcome(r, etcd: etcd) {
                                        case .renewed:
                                            if window.withLockedValue({ $0 }).map({ top.at >= $0.start }) ?? false {
                                                fromSchedule.record(answered - top.at, kind: "renew")
                                                service.record(answered - sent, kind: "renew")
                                            }
                                        case .expired:
                                            expired.withLockedValue { _ = $0.insert(mine[top.k]) }
                                            fromSchedule.error("lease expired")
                                        case .failed(let kind):
                                            fromSchedule.error(kind)
                                        }
                                    } else if next < mine.count {
                                        let i = mine[next]
                                        let body =
                                            etcd
                                            ? Data("{\"TTL\":\(ttlSeconds)}".utf8)
                                            : Data("{\"hostname\":\"fleet-\(i).example.org\",\"holder\":\"fleet\",\"ttlSeconds\":\(ttlSeconds)}".utf8)
                                        let sent = clock.now
                                        let r = try await c.request(.POST, etcd ? "/v3/lease/grant" : "/v1/leases", body)
                                        let obj = (try? JSONSerialization.jsonObject(with: Data(r.body))) as? [String: Any] ?? [:]
                                        if r.status == 200, let id = (etcd ? obj["ID"] : obj["leaseId"]) as? String {
                                            registration.record(clock.now - sent, kind: "acquire")
                                            ids[next] = id
                                            due.insert(FleetDue(at: Self.firstRenewal(of: i, n: n, period: period, from: t0, registeredAt: sent), k: next))
                                            next += 1
                                        } else {
                                            registration.error("acquire: http \(r.status)")
                                            failures += 1
                                            if failures >= 20 {
                                                missing.withLockedValue { $0 += mine.count - next }
                                                next = mine.count
                                            }
                                        }
                                        if next == mine.count { finishRegistering() }
                                    } else {
                                        return
                                    }
                                }
                            }
                            return
                        } catch {
                            (next < mine.count ? registration : fromSchedule).error("connection lost or timed out")
                            failures += next < mine.count ? 1 : 0
                            if failures >= 20 && next < mine.count {
                                missing.withLockedValue { $0 += mine.count - next }
                                next = mine.count
                                finishRegistering()
                            }
                            try? await Task.sleep(for: .milliseconds(100))
                        }
                    }
                }
            }
        }
        await sampler.value
        let registerTime = Self.seconds((window.withLockedValue { $0 }?.start ?? clock.now) - t0) - 0.2
        let reg = registration.summaries()
        let lostNodes = missing.withLockedValue { $0 }
        say("fleet: \(n) nodes, TTL \(ttlSeconds) s, each renewing every \(String(format: "%.1f", period)) s (\(Int(Double(n) / period)) renewals/s), \(connections) connections, \(Int(measured)) s")
        say("registered \(n - lostNodes) nodes in \(String(format: "%.1f", registerTime)) s (\(Int(Double(n - lostNodes) / registerTime)) acquires/s, renewing those registered meanwhile; acquire latency ms: \(reg.all.line))")
        guard lostNodes == 0 else {
            progress.cancel()
            say("could not register \(lostNodes) nodes: " + reg.errors.map { "\($0.key): \($0.value)" }.sorted().joined(separator: ", "))
            throw ExitCode(1)
        }
        progress.cancel()
        FileHandle.standardError.write(Data("\r".utf8))
        let cpuAfter = Self.cpuSeconds(pids: pidList)
        let cpu = zip(cpuBefore.withLockedValue { $0 }, cpuAfter).map { ($0.0, max(0, $1.1 - $0.1)) }
        let own = Self.ownCPUSeconds() - ownBefore.withLockedValue { $0 }
        let renewals = fromSchedule.summaries()
        let times = service.summaries()
        let lost = expired.withLockedValue { $0.count }
        let holds = renewals.all.p99 < 50 && lost == 0 && renewals.errors.isEmpty
        let cpuTotal = cpu.reduce(0) { $0 + $1.1 }
        if json {
            var o: [String: Any] = [
                "system": system, "op": "fleet", "nodes": n, "ttlSeconds": ttlSeconds, "concurrency": connections, "seconds": measured,
                "renewalsPerSecond": Double(renewals.all.count) / measured, "scheduledPerSecond": Double(n) / period,
                "expiredLeases": lost, "errors": renewals.errors, "holds": holds, "acquiresPerSecond": Double(n) / registerTime,
                "fromSchedule": renewals.all.json, "serviceTime": times.all.json,
            ]
            o["cpuMicrosPerRenewal"] = renewals.all.count == 0 ? 0 : cpuTotal * 1e6 / Double(renewals.all.count)
            o["loadGeneratorCpuSeconds"] = own
            o["rssBytes"] = Dictionary(uniqueKeysWithValues: Self.residentBytes(pids: pidList).map { ($0.0, $0.1) })
            let data = (try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys])) ?? Data()
            print(String(decoding: data, as: UTF8.self))
        } else {
            print("renewals: \(renewals.all.count) (\(Int(Double(renewals.all.count) / measured))/s)")
            print("  latency from the scheduled instant, ms: " + renewals.all.line)
            print("  service time (sent to answered), ms:    " + times.all.line)
            print("errors: " + (renewals.errors.isEmpty ? "none" : renewals.errors.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ")))
            print("expired leases: \(lost)")
            if !cpu.isEmpty {
                print(
                    "replica CPU s: " + cpu.map { "\($0.0) \(String(format: "%.2f", $0.1))" }.joined(separator: ", ")
                        + "  (\(renewals.all.count == 0 ? 0 : Int(cpuTotal * 1e6 / Double(renewals.all.count))) us per renewal in total)")
            }
            print(
                "load generator CPU s: \(String(format: "%.2f", own))  (\(renewals.all.count == 0 ? 0 : Int(own * 1e6 / Double(renewals.all.count))) us per renewal, this process)")
            let rss = Self.residentBytes(pids: pidList)
            if !rss.isEmpty { print("replica RSS MiB: " + rss.map { "\($0.0) \(String(format: "%.1f", Double($0.1) / 1_048_576))" }.joined(separator: ", ")) }
            print(holds ? "the fleet holds: p99 under 50 ms, no lease expired" : "the fleet does NOT hold (p99 must stay under 50 ms, with no lease expired and no error)")
        }
        if !holds { throw ExitCode(3) }
    }

    /// The first instant after `registeredAt` at node i's phase (t0 + period × i/n, modulo the
    /// period): at most a period after its registration.
    static func firstRenewal(
        of i: Int, n: Int, period: Double, from t0: ContinuousClock.Instant, registeredAt: ContinuousClock.Instant
    ) -> ContinuousClock.Instant {
        let phase = period * Double(i) / Double(n)
        let since = seconds(registeredAt - t0)
        let rounds = max(0, ((since - phase) / period).rounded(.up))
        var at = t0 + .nanoseconds(Int64((phase + rounds * period) * 1e9))
        if at <= registeredAt { at = at + .nanoseconds(Int64(period * 1e9)) }
        return at
    }

    /// etcd answers a keepalive of an expired lease with 200 and no TTL left.
    static func etcdKeepaliveExpired(_ body: [UInt8]) -> Bool {
        guard let obj = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] else { return true }
        let result = obj["result"] as? [String: Any] ?? obj
        guard let ttl = result["TTL"] else { return true }
        return (Int("\(ttl)") ?? 0) <= 0
    }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }
}

/// A renewal due: when, and which of the connection's nodes.
struct FleetDue: Comparable, Sendable {
    var at: ContinuousClock.Instant
    var k: Int

    static func < (a: FleetDue, b: FleetDue) -> Bool { a.at != b.at ? a.at < b.at : a.k < b.k }
}

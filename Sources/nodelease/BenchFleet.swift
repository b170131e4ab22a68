import ArgumentParser
import Foundation
import NIOConcurrencyHelpers

/// `nodelease bench --op fleet`: a fleet of `--nodes` mail servers, each with its own lease,
/// each renewing every TTL/3 on a fixed schedule (open loop: a slow answer does not slow the
/// schedule down). Latency counts from the instant a renewal was due, not from when a busy
/// connection got round to sending it, so a cluster (or a client) that falls behind shows in
/// the percentiles instead of hiding in them. The fleet holds when p99 stays under 50 ms and no
/// lease expires (a renewal answered 404).
extension Bench {
    func runFleet(write: (String, Int), etcd: Bool) async throws {
        let n = nodes
        let connections = concurrency
        let ttlSeconds = ttl
        let period = Double(ttlSeconds) / 3
        let measured = duration ?? Double(3 * ttlSeconds)
        let clock = ContinuousClock()
        let pidList = Self.pidList(pids)

        // 1. Register every node (closed loop, all connections).
        let leases = NIOLockedValueBox<[String]>(Array(repeating: "", count: n))
        let registration = BenchStats()
        let t0 = clock.now
        await withTaskGroup(of: Void.self) { group in
            for w in 0..<connections {
                group.addTask {
                    var i = w
                    var failures = 0
                    while i < n && failures < 20 {
                        do {
                            try await HTTP1.withConnection(host: write.0, port: write.1) { c in
                                while i < n {
                                    let body =
                                        etcd
                                        ? Data("{\"TTL\":\(ttlSeconds)}".utf8)
                                        : Data("{\"hostname\":\"fleet-\(i).example.org\",\"holder\":\"fleet\",\"ttlSeconds\":\(ttlSeconds)}".utf8)
                                    let sent = clock.now
                                    let r = try await c.request(.POST, etcd ? "/v3/lease/grant" : "/v1/leases", body)
                                    let obj = (try? JSONSerialization.jsonObject(with: Data(r.body))) as? [String: Any] ?? [:]
                                    if r.status == 200, let id = (etcd ? obj["ID"] : obj["leaseId"]) as? String {
                                        leases.withLockedValue { $0[i] = id }
                                        registration.record(clock.now - sent, kind: "acquire")
                                        i += connections
                                    } else {
                                        registration.error("acquire: http \(r.status)")
                                        failures += 1
                                        guard failures < 20 else { return }
                                    }
                                }
                            }
                        } catch {
                            registration.error("acquire: connection lost or timed out")
                            failures += 1
                            try? await Task.sleep(for: .milliseconds(100))
                        }
                    }
                }
            }
        }
        let registered = leases.withLockedValue { $0 }
        let registerTime = Self.seconds(clock.now - t0)
        let missing = registered.filter(\.isEmpty).count
        let reg = registration.summaries()
        // With --json, only the JSON object goes to stdout.
        let say: (String) -> Void = { [json] line in
            if json { FileHandle.standardError.write(Data((line + "\n").utf8)) } else { print(line) }
        }
        say("fleet: \(n) nodes, TTL \(ttlSeconds) s, each renewing every \(String(format: "%.1f", period)) s (\(Int(Double(n) / period)) renewals/s), \(connections) connections, \(Int(measured)) s")
        say("registered \(n - missing) nodes in \(String(format: "%.1f", registerTime)) s (\(Int(Double(n - missing) / registerTime)) acquires/s; acquire latency ms: \(reg.all.line))")
        guard missing == 0 else {
            say("could not register \(missing) nodes: " + reg.errors.map { "\($0.key): \($0.value)" }.sorted().joined(separator: ", "))
            throw ExitCode(1)
        }

        // 2. Renew on schedule. Node i is due at start + period * i / n, then every period.
        let fromSchedule = BenchStats()
        let service = BenchStats()
        let expired = NIOLockedValueBox<Set<Int>>([])
        let start = clock.now + .milliseconds(200)
        let end = start + .milliseconds(Int(measured * 1000))
        let cpuBefore = Self.cpuSeconds(pids: pidList)
        let progress = Task {
            while clock.now < end {
                guard (try? await Task.sleep(for: .seconds(1))) != nil else { break }
                let (done, e) = fromSchedule.counts()
                FileHandle.standardError.write(Data("\r\(done) renewals, \(e) errors   ".utf8))
            }
        }
        await withTaskGroup(of: Void.self) { group in
            for w in 0..<connections {
                group.addTask {
                    let mine = Array(stride(from: w, to: n, by: connections))
                    guard !mine.isEmpty else { return }
                    var round = 0
                    var k = 0
                    func due() -> ContinuousClock.Instant {
                        start + .nanoseconds(Int64((period * (Double(mine[k]) / Double(n) + Double(round)) * 1e9).rounded()))
                    }
                    while due() < end {
                        do {
                            try await HTTP1.withConnection(host: write.0, port: write.1) { c in
                                while true {
                                    let at = due()
                                    guard at < end else { return }
                                    if clock.now < at { try? await Task.sleep(until: at, clock: .continuous) }
                                    let i = mine[k]
                                    let id = registered[i]
                                    let sent = clock.now
                                    let r = try await c.request(
                                        .POST, etcd ? "/v3/lease/keepalive" : "/v1/leases/\(id)/renew", etcd ? Data("{\"ID\":\"\(id)\"}".utf8) : nil)
                                    let answered = clock.now
                                    if r.status == 200 {
                                        fromSchedule.record(answered - at, kind: "renew")
                                        service.record(answered - sent, kind: "renew")
                                    } else if r.status == 404 {
                                        expired.withLockedValue { _ = $0.insert(i) }
                                        fromSchedule.error("404 (lease expired)")
                                    } else {
                                        fromSchedule.error("http \(r.status)")
                                    }
                                    k += 1
                                    if k == mine.count { (k, round) = (0, round + 1) }
                                }
                            }
                        } catch {
                            fromSchedule.error("connection lost or timed out")
                            k += 1
                            if k == mine.count { (k, round) = (0, round + 1) }
                            try? await Task.sleep(for: .milliseconds(100))
                        }
                    }
                }
            }
        }
        progress.cancel()
        FileHandle.standardError.write(Data("\r".utf8))
        let cpuAfter = Self.cpuSeconds(pids: pidList)
        let cpu = zip(cpuBefore, cpuAfter).map { ($0.0, max(0, $1.1 - $0.1)) }
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
            let rss = Self.residentBytes(pids: pidList)
            if !rss.isEmpty { print("replica RSS MiB: " + rss.map { "\($0.0) \(String(format: "%.1f", Double($0.1) / 1_048_576))" }.joined(separator: ", ")) }
            print(holds ? "the fleet holds: p99 under 50 ms, no lease expired" : "the fleet does NOT hold (p99 must stay under 50 ms, with no lease expired and no error)")
        }
        if !holds { throw ExitCode(3) }
    }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }
}

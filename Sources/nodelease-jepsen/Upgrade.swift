import Foundation
import JepsenCheckers
import NIOConcurrencyHelpers

/// What one replica's status said of the cluster version at one moment.
struct VersionSample: Codable, Sendable, Hashable {
    var time: UInt64
    var replica: Int
    /// The cluster version in force there, and the newest it supports (1 for both when the
    /// status does not say: a replica of the first release).
    var clusterVersion: UInt32
    var supported: UInt32
}

/// Polls every member's status a few times a second for the cluster version (the `upgrade`
/// nemesis).
final class VersionLog: Sendable {
    private let samples = NIOLockedValueBox<[VersionSample]>([])

    func poll(_ cluster: TestCluster, history: HistoryLog, until end: ContinuousClock.Instant) async {
        while ContinuousClock.now < end {
            await sampleOnce(cluster, history: history)
            try? await Task.sleep(for: .milliseconds(200))
        }
    }

    func sampleOnce(_ cluster: TestCluster, history: HistoryLog) async {
        for i in cluster.members {
            guard let (status, json, _) = await cluster.request(i, "GET", "/v1/status", timeout: 0.3), status == 200 else { continue }
            let version = UInt32(json["clusterVersion"] as? Int ?? 1)
            let supported = UInt32(json["supportedClusterVersion"] as? Int ?? 1)
            samples.withLockedValue { $0.append(VersionSample(time: history.now(), replica: i, clusterVersion: version, supported: supported)) }
        }
    }

    /// Samples until every member reports `version`, or `seconds` pass; whether they all did.
    func waitForAll(_ cluster: TestCluster, history: HistoryLog, version: UInt32, seconds: Double) async -> Bool {
        let end = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while ContinuousClock.now < end {
            let before = all.count
            await sampleOnce(cluster, history: history)
            let round = all.dropFirst(before)
            if Set(round.filter { $0.clusterVersion >= version }.map(\.replica)) == Set(cluster.members) { return true }
            try? await Task.sleep(for: .milliseconds(300))
        }
        return false
    }

    var all: [VersionSample] { samples.withLockedValue { $0 }.sorted { ($0.time, $0.replica) < ($1.time, $1.replica) } }
}

extension Nemesis {
    /// The `upgrade` nemesis: after a quarter of the run, every member is upgraded one at a
    /// time (stopped with SIGTERM, started again as this build), those running as the older
    /// version last, a few seconds apart, while the workload runs.
    func upgradeAll(until end: ContinuousClock.Instant) async {
        let wait = max(Duration.seconds(3), (end - ContinuousClock.now) / 4)
        try? await Task.sleep(for: wait)
        let older = cluster.older.withLockedValue { $0 }
        let order = cluster.members.filter { !older.contains($0) } + older.sorted()
        for i in order {
            log.add(NemesisEvent(time: now(), fault: "upgrade", target: "\(i)", phase: "start"))
            var outcome = "\(i)"
            do {
                // Down for a few seconds, as while its binary is replaced: a gate that counted an
                // unreachable member as upgraded would move the version now.
                if try await !cluster.upgrade(i, down: .seconds(3)) { outcome += " (did not stop within 15 s of SIGTERM: killed)" }
                log.add(NemesisEvent(time: now(), fault: "upgrade", target: "\(i)", phase: "restarted"))
            } catch {
                outcome += " NOT RESTARTED: \(error)"
            }
            let ready = ContinuousClock.now + .seconds(20)
            var isReady = false
            while !isReady && ContinuousClock.now < ready {
                isReady = await cluster.request(i, "GET", "/readyz", timeout: 0.5)?.0 == 200
                if !isReady { try? await Task.sleep(for: .milliseconds(200)) }
            }
            if !isReady { outcome += " NOT READY within 20 s" }
            log.add(NemesisEvent(time: now(), fault: "upgrade", target: outcome, phase: "end"))
            try? await Task.sleep(for: .seconds(3))
        }
    }
}

/// The checks of a rolling upgrade (checker name `cluster-version`).
enum UpgradeChecks {
    static let checker = "cluster-version"

    /// - The cluster version never moves above what the older version supports (1, or what its
    ///   replicas reported before their upgrade: 2 for a 0.2 build) while a replica running as
    ///   the older version is still a member: no such sample before the last of them was
    ///   started again as this build (it is down for a few seconds before that).
    /// - No replica stopped on a command or snapshot it does not know (`halts`: such lines from
    ///   the replicas' logs).
    /// - Every older replica was upgraded, and once all were, every member reached the newest
    ///   version any replica supports.
    /// `olderVersion`: what the older replicas were limited to (nil for a real older binary:
    /// the most any of them reported supporting before its upgrade).
    static func check(older: [Int], olderVersion: UInt32? = nil, samples: [VersionSample], nemesis: [NemesisEvent], halts: [String]) -> [Anomaly] {
        var out: [Anomaly] = []
        let stops = nemesis.filter { $0.fault == "upgrade" && $0.phase == "restarted" }
        var lastOlderUp: UInt64 = 0
        var reported: UInt32 = 1
        for o in older {
            guard let stop = stops.first(where: { $0.target == "\(o)" }) else {
                out.append(Anomaly(checker: checker, detail: "replica \(o), started as the older version, was never upgraded (run too short?)"))
                continue
            }
            lastOlderUp = max(lastOlderUp, stop.time)
            for s in samples where s.replica == o && s.time < stop.time {
                reported = max(reported, s.supported)
                if let olderVersion, s.supported != olderVersion {
                    out.append(
                        Anomaly(
                            checker: checker,
                            detail: "replica \(o), started as the older version (cluster version \(olderVersion)), reported supporting \(s.supported) at \(s.time / 1_000_000) ms"))
                    break
                }
            }
        }
        let olderSupports = olderVersion ?? reported
        for e in nemesis where e.fault == "upgrade" && e.phase == "end" && e.target.contains("NOT") {
            out.append(Anomaly(checker: checker, detail: "upgrade of replica \(e.target)"))
        }
        let early = samples.filter { $0.clusterVersion > olderSupports && $0.time < lastOlderUp }
        if let first = early.first {
            out.append(
                Anomaly(
                    checker: checker,
                    detail: "replica \(first.replica) reported cluster version \(first.clusterVersion) at \(first.time / 1_000_000) ms, "
                        + "before the last replica running as the older version was started again upgraded (\(lastOlderUp / 1_000_000) ms); "
                        + "\(early.count) such samples"))
        }
        for h in halts { out.append(Anomaly(checker: checker, detail: "a replica stopped on what it does not know: \(h)")) }
        let newest = samples.map(\.supported).max() ?? 1
        var last: [Int: VersionSample] = [:]
        for s in samples { last[s.replica] = s }
        if !older.isEmpty, lastOlderUp > 0 {
            let behind = last.values.filter { $0.clusterVersion < newest }.map(\.replica).sorted()
            if !behind.isEmpty || last.isEmpty {
                out.append(
                    Anomaly(
                        checker: checker,
                        detail: "after every replica was upgraded, replicas \(behind.map(String.init).joined(separator: ",")) still report a cluster version below \(newest)"))
            }
        }
        return out
    }

    /// Lines of the replicas' logs where one stopped on a format it does not know.
    static func halts(dir: String, replicas: ClosedRange<Int>) -> [String] {
        var out: [String] = []
        for i in replicas {
            guard let text = try? String(contentsOfFile: "\(dir)/replica-\(i).log", encoding: .utf8) else { continue }
            for line in text.split(separator: "\n")
            where line.contains("unknown to this build") || line.contains("newer than this build supports") {
                out.append("replica \(i): \(line.suffix(400))")
            }
        }
        return out
    }
}

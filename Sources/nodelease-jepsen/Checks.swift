import ArgumentParser
import Foundation
import JepsenCheckers

/// Every checker over one run, and the availability figures.
struct Checks {
    var anomalies: [Anomaly] = []
    var linearizability = Linearizability.Report()
    /// Per heal (time in ns since start, fault): time to the next acknowledged write, in ms.
    var heals: [(time: UInt64, fault: String, ms: Double?)] = []
    var checkSeconds = 0.0
    var operations = 0
    var ok = 0
    /// Writes to the fenced resource: accepted, refused (a stale token, fenced off).
    var fencedWrites = (accepted: 0, refused: 0)

    /// The process id of the final linearizable read in the history.
    static let finalProcess = -1

    /// The final read as one linearizable read per hostname (absent ones included).
    static func finalReadOps(hostnames: [String], final: [String: (nodeId: UInt32, status: String)], invoke: UInt64, complete: UInt64) -> [HistoryOp] {
        hostnames.map { host in
            var o = HistoryOp(process: finalProcess, kind: .read, hostname: host, holder: "final-read", invoke: invoke, complete: complete, outcome: .ok)
            o.linearizable = true
            if let f = final[host] {
                o.nodeId = f.nodeId
                o.status = f.status
            }
            return o
        }
    }

    /// What the model must allow in this run: retirement after the retention (less a second
    /// of rounding; at any time after expiry when wall-clock faults ran, since retention is
    /// counted on the leader's wall clock), IDs moving when there are fewer than hostnames,
    /// and stale nodes vanishing when a forget's outcome is unknown.
    static func modelOptions(_ ops: [HistoryOp], info: RunInfo?) -> Linearizability.Options {
        guard let info else { return .init() }
        let retention: UInt64? =
            info.faults.contains("clock") ? 0 : UInt64(max(0, info.retentionSeconds - 1)) * 1_000_000_000
        let forgets = ops.filter { $0.kind == .forget && $0.outcome == .info }.compactMap { o in o.nodeId.map { (node: $0, invoke: o.invoke) } }
        return Linearizability.Options(retentionNanos: retention, idReuse: info.idReuse, unknownForgets: forgets)
    }

    static func run(
        ops: [HistoryOp], final: [String: (nodeId: UInt32, status: String)]?, nemesis: [NemesisEvent], info: RunInfo?, fenced: [FencedWrite] = []
    ) -> Checks {
        var c = Checks()
        let started = ContinuousClock.now
        // Hedged copies only count for the idempotency check.
        let all = ops
        c.anomalies += LeaseCheckers.idempotency(all)
        let ops = all.filter { $0.hedge != true }
        let options = modelOptions(ops, info: info)
        let fixedIDs = !options.idReuse && !ops.contains { $0.kind == .forget && $0.outcome != .fail }
        c.operations = ops.count
        c.ok = ops.filter { $0.outcome == .ok }.count
        c.anomalies += LeaseCheckers.leaseSafety(ops)
        c.anomalies += LeaseCheckers.fencing(ops)
        c.anomalies += LeaseCheckers.mapping(ops, fixedIDs: fixedIDs)
        if let final {
            // With IDs that move or are forgotten, the final read is held against the history
            // by the linearizability check alone.
            if fixedIDs { c.anomalies += LeaseCheckers.finalState(ops, final: final) }
        } else {
            c.anomalies.append(Anomaly(checker: "final-state", detail: "no final linearizable read succeeded within 30 s of healing"))
        }
        c.anomalies += LeaseCheckers.readMonotonicity(ops)
        c.anomalies += LeaseCheckers.indexedReads(ops, options: options)
        c.anomalies += LeaseCheckers.sameIndexReads(ops)
        c.anomalies += LeaseCheckers.readsSeeAcknowledgedWrites(ops)
        c.anomalies += FencedStore.check(fenced)
        // A replica whose fsync or write failed must stop (fail-stop): the disk nemeses say when one did not.
        for e in nemesis where (e.fault == "disk" || e.fault == "disk-full") && e.phase == "end" && e.target.contains("DID NOT STOP") {
            c.anomalies.append(Anomaly(checker: "fail-stop", detail: "replica \(e.target)"))
        }
        // With no other fault, every membership change must go through (an add within 20 s of
        // its request, promotion included): one that does not is a liveness failure of the
        // membership machinery. With other faults a change may fail for want of a quorum.
        if info?.faults == ["membership"] {
            for e in nemesis where e.fault == "membership" && e.phase == "end" && e.target.contains("FAILED") {
                c.anomalies.append(Anomaly(checker: "membership", detail: e.target))
            }
        }
        if let older = info?.older, !older.isEmpty {
            c.anomalies += UpgradeChecks.check(
                older: older, olderVersion: info?.olderVersion, samples: info?.versions ?? [], nemesis: nemesis, halts: info?.halts ?? [])
        }
        c.fencedWrites = (fenced.filter(\.accepted).count, fenced.filter { !$0.accepted }.count)
        c.anomalies += LeaseCheckers.electionSafety((info?.leaders ?? []).map { ($0.term, $0.replica) })
        c.linearizability = Linearizability.check(ops, options: options)
        c.anomalies += c.linearizability.anomalies
        let ends = nemesis.filter { $0.phase == "end" }
        let times = LeaseCheckers.healToWrite(ops, heals: ends.map(\.time))
        c.heals = zip(ends, times).map { ($0.time, $0.fault, $1.map { Double($0) / 1e6 }) }
        let d = ContinuousClock.now - started
        c.checkSeconds = Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
        return c
    }

    /// Prints the summary, the first anomalies and the verdict. A normal run throws exit code 1
    /// if invalid; a run with a planted bug throws it if no checker meant for the bug caught it.
    func printVerdict(info: RunInfo?) throws {
        say(summary)
        for a in anomalies.prefix(20) { say("  \(a)") }
        if anomalies.isEmpty {
            say("Everything looks good! ヽ(‘ー`)ノ  valid: true")
        } else {
            say("Analysis invalid! (ﾉಥ益ಥ）ﾉ ┻━┻  valid: false")
        }
        let by = Set(anomalies.map(\.checker)).sorted()
        if let name = info?.planted, let bug = PlantedBug.named(name) {
            let caughtBy = by.filter { bug.checkers.contains($0) }
            if caughtBy.isEmpty {
                say("planted bug \(name): NOT caught" + (by.isEmpty ? "" : " by a checker meant for it (only by \(by.joined(separator: ", ")))"))
                throw ExitCode(1)
            }
            say("planted bug \(name): caught by \(caughtBy.joined(separator: ", "))")
            return
        }
        if !anomalies.isEmpty { throw ExitCode(1) }
    }

    var summary: String {
        let lin = linearizability
        let opsChecked = lin.operations.values.reduce(0, +)
        let healMs = heals.compactMap(\.ms).sorted()
        var s = "\(operations) operations (\(ok) ok), \(heals.count) faults healed, \(anomalies.count) anomalies\n"
        s += "fenced resource: \(fencedWrites.accepted) writes accepted, \(fencedWrites.refused) refused (stale tokens)\n"
        s += "linearizability: \(opsChecked) operations over \(lin.operations.count) hostnames, \(lin.steps) search steps"
        s += String(format: ", checks took %.1f s", checkSeconds)
        if !healMs.isEmpty {
            s += String(format: "\nheal to next acknowledged write: median %.0f ms, max %.0f ms", healMs[healMs.count / 2], healMs.last!)
        }
        let never = heals.filter { $0.ms == nil }.count
        if never > 0 { s += " (\(never) heals with no write after them)" }
        return s
    }
}

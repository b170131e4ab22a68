import Foundation
import JepsenCheckers

/// Writes the store folder: the history (JSON lines and Jepsen's EDN), the verdict, and an
/// HTML page with a latency-over-time plot shaded by nemesis activity.
enum Report {
    /// The run's raw inputs to the checkers, so `--check DIR` can re-check them later.
    static func saveInputs(dir: String, ops: [HistoryOp], nemesis: [NemesisEvent], final: [String: (nodeId: UInt32, status: String)]?) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var jsonl = ""
        for op in ops { jsonl += String(decoding: try encoder.encode(op), as: UTF8.self) + "\n" }
        try jsonl.write(toFile: dir + "/history.jsonl", atomically: true, encoding: .utf8)
        try encoder.encode(nemesis).write(to: URL(fileURLWithPath: dir + "/nemesis.json"))
        if let final {
            let rows = final.keys.sorted().map { FinalRow(hostname: $0, nodeId: final[$0]!.nodeId, status: final[$0]!.status) }
            try encoder.encode(rows).write(to: URL(fileURLWithPath: dir + "/final.json"))
        }
    }

    static func loadInputs(dir: String) throws -> ([HistoryOp], [NemesisEvent], [String: (nodeId: UInt32, status: String)]?) {
        let decoder = JSONDecoder()
        let text = try String(contentsOfFile: dir + "/history.jsonl", encoding: .utf8)
        let ops = try text.split(separator: "\n").map { try decoder.decode(HistoryOp.self, from: Data($0.utf8)) }
        let nemesis = try decoder.decode([NemesisEvent].self, from: Data(contentsOf: URL(fileURLWithPath: dir + "/nemesis.json")))
        var final: [String: (nodeId: UInt32, status: String)]?
        if let data = try? Data(contentsOf: URL(fileURLWithPath: dir + "/final.json")) {
            final = [:]
            for r in try decoder.decode([FinalRow].self, from: data) { final![r.hostname] = (r.nodeId, r.status) }
        }
        return (ops.sorted { $0.invoke < $1.invoke }, nemesis, final)
    }

    static func saveRunInfo(dir: String, _ info: RunInfo) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        try encoder.encode(info).write(to: URL(fileURLWithPath: dir + "/run.json"))
    }

    /// The stored run's configuration (nil for runs stored before run.json existed).
    static func loadRunInfo(dir: String) -> RunInfo? {
        guard let data = try? Data(contentsOf: URL(fileURLWithPath: dir + "/run.json")) else { return nil }
        return try? JSONDecoder().decode(RunInfo.self, from: data)
    }

    struct FinalRow: Codable {
        var hostname: String
        var nodeId: UInt32
        var status: String
    }

    /// Intervals during which each kind of fault was active.
    static func faultIntervals(_ nemesis: [NemesisEvent]) -> [(fault: String, start: UInt64, end: UInt64)] {
        var intervals: [(String, UInt64, UInt64)] = []
        var open: [String: UInt64] = [:]
        for e in nemesis {
            let key = e.fault + " " + e.target
            if e.phase == "start" {
                open[key] = e.time
            } else if let s = open.removeValue(forKey: key) {
                intervals.append((e.fault, s, e.time))
            } else if let k = open.filter({ $0.key.hasPrefix(e.fault + " ") }).min(by: { $0.value < $1.value })?.key, let s = open.removeValue(forKey: k) {
                // An end whose target says how it went ("... FAILED: ...", "disk full, replica
                // stopped"): it ends the oldest open start of the same fault.
                intervals.append((e.fault, s, e.time))
            }
        }
        return intervals
    }

    static func write(dir: String, ops: [HistoryOp], nemesis: [NemesisEvent], checked: Checks, seed: UInt64, faults: [String]) throws {
        let edn = historyEDN(ops)
        try edn.write(toFile: dir + "/history.edn", atomically: true, encoding: .utf8)

        // Availability per phase: the fraction of operations that succeeded while each kind of
        // fault was active, and while none was.
        let intervals = faultIntervals(nemesis)
        func phase(_ t: UInt64) -> String { intervals.first { $0.start <= t && t <= $0.end }?.fault ?? "none" }
        var phases: [String: [String: Any]] = [:]
        for name in Set(ops.map { phase($0.invoke) }).sorted() {
            let xs = ops.filter { phase($0.invoke) == name }
            let writes = xs.filter { $0.kind != .read }
            phases[name] = [
                "operations": xs.count,
                "ok": Double(xs.filter { $0.outcome == .ok }.count) / Double(max(1, xs.count)),
                // Writes that got a definite answer (ok, or a definite refusal such as
                // hostname_in_use) rather than a timeout or 503.
                "writes-answered": Double(writes.filter { $0.outcome != .info }.count) / Double(max(1, writes.count)),
            ]
        }
        let healMs = checked.heals.compactMap(\.ms).sorted()
        let results: [String: Any] = [
            "valid": checked.anomalies.isEmpty,
            "seed": seed,
            "nemesis": faults,
            "operations": ops.count,
            "ok": ops.filter { $0.outcome == .ok }.count,
            "info": ops.filter { $0.outcome == .info }.count,
            "fail": ops.filter { $0.outcome == .fail }.count,
            "availability": phases,
            "heal-to-write-ms": [
                "each": checked.heals.map { ["at-ms": Double($0.time) / 1e6, "fault": $0.fault, "ms": $0.ms ?? -1] as [String: Any] },
                "median": healMs.isEmpty ? -1 : healMs[healMs.count / 2],
                "max": healMs.last ?? -1,
            ],
            "linearizability": [
                "operations": checked.linearizability.operations,
                "search-steps": checked.linearizability.steps,
                "gave-up": checked.linearizability.gaveUp,
            ],
            "check-seconds": checked.checkSeconds,
            "anomalies": checked.anomalies.map { ["checker": $0.checker, "detail": $0.detail] },
            "checkers": [
                "linearizability", "lease-safety", "fencing", "mapping", "final-state", "read-index", "indexed-reads", "same-index-reads",
                "read-after-write", "election",
            ],
            "per-operation": perKind(ops).map { k in
                [
                    "f": k.kind, "count": k.count, "ok": k.ok, "refused": k.refused, "unknown": k.unknown, "ok-per-second": k.okPerSecond,
                    "p50-ms": k.p50, "p99-ms": k.p99, "max-ms": k.max,
                ] as [String: Any]
            },
        ]
        let data = try JSONSerialization.data(withJSONObject: results, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: dir + "/results.json"))
        try html(ops: ops, intervals: intervals, phases: phases, checked: checked, seed: seed)
            .write(toFile: dir + "/report.html", atomically: true, encoding: .utf8)
    }

    /// A Jepsen history: every operation's `:invoke` and its completion (`:ok`, `:fail`, or
    /// `:info` for an unknown outcome) as separate events, interleaved in the order they
    /// happened, as Knossos and Elle read them.
    static func historyEDN(_ ops: [HistoryOp]) -> String {
        struct Event { var time: UInt64; var invoke: Bool; var op: HistoryOp }
        var events: [Event] = []
        for op in ops {
            events.append(Event(time: op.invoke, invoke: true, op: op))
            events.append(Event(time: max(op.complete, op.invoke), invoke: false, op: op))
        }
        events.sort { ($0.time, $0.invoke ? 0 : 1) < ($1.time, $1.invoke ? 0 : 1) }
        // Jepsen's rules for process ids: one operation outstanding per process, and a process
        // whose operation ended `:info` is never used again. So a hedged copy and each final
        // read get a process of their own, and a worker moves to a fresh process after each
        // unknown outcome (ids above 1000 are such fresh ones).
        var pid: [Int: Int] = [:]
        var edn = ""
        var nextFresh = 1000
        var current: [Int: Int] = [:]
        for e in events where e.invoke {
            let op = e.op
            let key = op.hashValue
            if op.hedge == true || op.process < 0 {
                pid[key] = nextFresh
                nextFresh += 1
            } else {
                pid[key] = current[op.process] ?? op.process
            }
            if op.outcome == .info && op.hedge != true && op.process >= 0 {
                current[op.process] = nextFresh
                nextFresh += 1
            }
        }
        for (i, e) in events.enumerated() {
            let op = e.op
            var value = "{:hostname \"\(op.hostname)\" :holder \"\(op.holder)\""
            if op.kind == .read && op.outcome == .ok && !e.invoke {
                let entries = (op.registry ?? []).map { "{:node \($0.nodeId) :hostname \"\($0.hostname)\" :status :\($0.status)}" }
                value += " :linearizable \(op.linearizable == true) :registry [\(entries.joined(separator: " "))]"
            } else if !e.invoke {
                value += " :node \(op.nodeId.map(String.init) ?? "nil") :lease \(op.leaseId.map { "\"\($0)\"" } ?? "nil")"
                if let t = op.fencingToken { value += " :token \(t)" }
                if let err = op.error { value += " :error :\(err)" }
            } else if let l = op.leaseId {
                value += " :lease \"\(l)\""
            }
            if !e.invoke, let x = op.index { value += " :log-index \(x)" }
            value += "}"
            let type = e.invoke ? "invoke" : op.outcome.rawValue
            edn += "{:index \(i), :time \(e.time), :process \(pid[op.hashValue] ?? op.process), :type :\(type), :f :\(op.kind.rawValue), :value \(value)}\n"
        }
        return edn
    }

    struct KindFigures {
        var kind: String
        var count: Int
        var ok: Int
        var refused: Int
        var unknown: Int
        var okPerSecond: Double
        var p50: Double
        var p99: Double
        var max: Double
    }

    /// Per operation type: counts by outcome, successful operations per second, and the
    /// latency of successful ones.
    static func perKind(_ ops: [HistoryOp]) -> [KindFigures] {
        let seconds = Double(max(1, (ops.map(\.complete).max() ?? 0) - (ops.map(\.invoke).min() ?? 0))) / 1e9
        return HistoryOp.Kind.allCases.compactMap { kind in
            let xs = ops.filter { $0.kind == kind && $0.process >= 0 }
            guard !xs.isEmpty else { return nil }
            let ok = xs.filter { $0.outcome == .ok }
            let lat = ok.map { Double($0.complete - $0.invoke) / 1e6 }.sorted()
            func q(_ p: Double) -> Double { lat.isEmpty ? 0 : lat[min(lat.count - 1, Int(Double(lat.count) * p))] }
            return KindFigures(
                kind: kind.rawValue, count: xs.count, ok: ok.count, refused: xs.filter { $0.outcome == .fail }.count,
                unknown: xs.filter { $0.outcome == .info }.count, okPerSecond: Double(ok.count) / seconds, p50: q(0.5), p99: q(0.99),
                max: lat.last ?? 0)
        }
    }

    /// Shading per kind of fault (and the legend's order).
    static let faultColors: [(fault: String, color: String)] = [
        ("partition", "#fbd5d5"), ("kill", "#d5e0fb"), ("pause", "#fbf0c8"), ("clock", "#d8f3d0"), ("power", "#dddddd"), ("drift", "#ead8fb"), ("disk", "#fbe0c8"), ("disk-full", "#f3c8b0"), ("slow-disk", "#f5e6b3"),
        ("election-crash", "#c8f0fb"), ("membership", "#c8fbe0"),
    ]

    static func html(
        ops: [HistoryOp], intervals: [(fault: String, start: UInt64, end: UInt64)], phases: [String: [String: Any]], checked: Checks, seed: UInt64
    ) -> String {
        let anomalies = checked.anomalies
        let (left, top, plotW, plotH) = (60.0, 10.0, 1000.0, 300.0)
        let tMax = Double(max(1, ops.map(\.complete).max() ?? 1))
        let lMax = max(10.0, ops.map { Double($0.complete - $0.invoke) / 1e6 }.max() ?? 10)
        func x(_ t: UInt64) -> Double { left + Double(t) / tMax * plotW }
        func y(_ ms: Double) -> Double { top + plotH - log10(1 + ms) / log10(1 + lMax) * plotH }
        var svg = "<svg xmlns='http://www.w3.org/2000/svg' width='\(Int(left + plotW + 20))' height='\(Int(top + plotH + 45))' font-size='11'>"
        let colorOf = Dictionary(uniqueKeysWithValues: faultColors.map { ($0.fault, $0.color) })
        for i in intervals {
            let w = max(1, x(i.end) - x(i.start))
            svg += "<rect x='\(x(i.start))' y='\(top)' width='\(w)' height='\(plotH)' fill='\(colorOf[i.fault] ?? "#eeeeee")' opacity='0.8'><title>\(i.fault)</title></rect>"
        }
        // Axes: time in seconds, latency in milliseconds (log scale).
        svg += "<line x1='\(left)' y1='\(top + plotH)' x2='\(left + plotW)' y2='\(top + plotH)' stroke='black'/>"
        svg += "<line x1='\(left)' y1='\(top)' x2='\(left)' y2='\(top + plotH)' stroke='black'/>"
        let seconds = Int(tMax / 1e9)
        let step = max(1, seconds / 10)
        for t in stride(from: 0, through: seconds, by: step) {
            let px = x(UInt64(t) * 1_000_000_000)
            svg += "<line x1='\(px)' y1='\(top + plotH)' x2='\(px)' y2='\(top + plotH + 4)' stroke='black'/>"
            svg += "<text x='\(px)' y='\(top + plotH + 16)' text-anchor='middle'>\(t)</text>"
        }
        svg += "<text x='\(left + plotW / 2)' y='\(top + plotH + 36)' text-anchor='middle'>time since start (s)</text>"
        for ms in [1.0, 10, 100, 1000, 10000] where ms <= lMax * 1.5 {
            svg += "<line x1='\(left - 4)' y1='\(y(ms))' x2='\(left)' y2='\(y(ms))' stroke='black'/>"
            svg += "<text x='\(left - 6)' y='\(y(ms) + 4)' text-anchor='end'>\(Int(ms))</text>"
        }
        svg += "<text x='12' y='\(top + plotH / 2)' transform='rotate(-90 12 \(top + plotH / 2))' text-anchor='middle'>latency (ms, log)</text>"
        // ok: green; a definite answer the contract allows (409 hostname_in_use, 404 ...): blue;
        // unknown (timeout, refused connection, 503): red.
        let colors: [HistoryOp.Outcome: String] = [.ok: "#1a7f37", .fail: "#0969da", .info: "#cf222e"]
        for op in ops where op.process >= 0 {
            let latency = Double(op.complete - op.invoke) / 1e6
            svg += "<circle cx='\(x(op.invoke))' cy='\(y(latency))' r='1.5' fill='\(colors[op.outcome]!)'/>"
        }
        svg += "</svg>"
        var legend = "<p>"
        legend += "<span style='color:#1a7f37'>&#9679; ok</span> &nbsp; <span style='color:#0969da'>&#9679; refused as the contract says (409, 404)</span>"
        legend += " &nbsp; <span style='color:#cf222e'>&#9679; unavailable or unknown (timeout, refused connection, 503)</span><br>"
        for (fault, color) in faultColors where intervals.contains(where: { $0.fault == fault }) {
            legend += "<span style='background:\(color);padding:0 6px;margin-right:6px'>\(fault)</span>"
        }
        legend += "</p>"
        var table = "<table border='1' cellpadding='3' style='border-collapse:collapse'><tr><th>operation</th><th>count</th><th>ok</th>"
        table += "<th>refused</th><th>unknown</th><th>ok/s</th><th>p50 ms</th><th>p99 ms</th><th>max ms</th></tr>"
        for k in perKind(ops) {
            table += "<tr><td>\(k.kind)</td><td>\(k.count)</td><td>\(k.ok)</td><td>\(k.refused)</td><td>\(k.unknown)</td>"
            table += String(format: "<td>%.1f</td><td>%.1f</td><td>%.1f</td><td>%.1f</td></tr>", k.okPerSecond, k.p50, k.p99, k.max)
        }
        table += "</table>"
        var avail = "<table border='1' cellpadding='3' style='border-collapse:collapse'><tr><th>phase</th><th>operations</th><th>ok</th><th>writes answered</th></tr>"
        for name in phases.keys.sorted() {
            let p = phases[name]!
            avail += "<tr><td>\(name)</td><td>\(p["operations"] as? Int ?? 0)</td>"
            avail += String(format: "<td>%.1f %%</td><td>%.1f %%</td></tr>", 100 * (p["ok"] as? Double ?? 0), 100 * (p["writes-answered"] as? Double ?? 0))
        }
        avail += "</table>"
        let verdict = anomalies.isEmpty ? "valid" : "INVALID"
        let list = anomalies.prefix(50).map { "<li>\(escape($0.description))</li>" }.joined()
        return """
            <!doctype html><html><head><meta charset='utf-8'><title>NodeLease Jepsen seed \(seed)</title></head>
            <body style='font-family:sans-serif'>
            <h1>NodeLease Jepsen run, seed \(seed): \(verdict)</h1>
            <p>Latency of every operation by the time it was invoked; shaded where a fault was active.</p>
            \(svg)
            \(legend)
            <h2>Per operation</h2>\(table)
            <h2>Availability per phase</h2>\(avail)
            <pre>\(escape(checked.summary))</pre>
            <h2>Anomalies</h2><ul>\(list.isEmpty ? "<li>none</li>" : list)</ul>
            </body></html>
            """
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}

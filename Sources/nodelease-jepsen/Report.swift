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
            }
        }
        return intervals
    }

    static func write(dir: String, ops: [HistoryOp], nemesis: [NemesisEvent], checked: Checks, seed: UInt64, faults: [String]) throws {
        var edn = ""
        for op in ops {
            // Jepsen's history: an :invoke and its completion per operation.
            let value = "{:hostname \"\(op.hostname)\" :node \(op.nodeId.map(String.init) ?? "nil") :lease \(op.leaseId.map { "\"\($0)\"" } ?? "nil")}"
            edn += "{:process \(op.process), :type :invoke, :f :\(op.kind.rawValue), :time \(op.invoke), :value \(value)}\n"
            edn += "{:process \(op.process), :type :\(op.outcome.rawValue), :f :\(op.kind.rawValue), :time \(op.complete), :value \(value)}\n"
        }
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
            "checkers": ["linearizability", "lease-safety", "fencing", "mapping", "final-state", "read-index", "indexed-reads"],
        ]
        let data = try JSONSerialization.data(withJSONObject: results, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: dir + "/results.json"))
        try html(ops: ops, intervals: intervals.map { ($0.start, $0.end) }, checked: checked, seed: seed)
            .write(toFile: dir + "/report.html", atomically: true, encoding: .utf8)
    }

    static func html(ops: [HistoryOp], intervals: [(UInt64, UInt64)], checked: Checks, seed: UInt64) -> String {
        let anomalies = checked.anomalies
        let width = 1000.0
        let height = 300.0
        let tMax = Double(max(1, ops.map(\.complete).max() ?? 1))
        let lMax = max(1.0, ops.map { Double($0.complete - $0.invoke) / 1e6 }.max() ?? 1)
        var svg = "<svg xmlns='http://www.w3.org/2000/svg' width='\(Int(width))' height='\(Int(height))'>"
        for (s, e) in intervals {
            let x = Double(s) / tMax * width
            let w = max(1, Double(e - s) / tMax * width)
            svg += "<rect x='\(x)' y='0' width='\(w)' height='\(height)' fill='#fde2e2'/>"
        }
        let colors: [HistoryOp.Outcome: String] = [.ok: "#1a7f37", .fail: "#cf222e", .info: "#bf8700"]
        for op in ops {
            let x = Double(op.invoke) / tMax * width
            let latency = Double(op.complete - op.invoke) / 1e6
            let y = height - (log10(1 + latency) / log10(1 + lMax)) * (height - 10)
            svg += "<circle cx='\(x)' cy='\(y)' r='1.5' fill='\(colors[op.outcome]!)'/>"
        }
        svg += "</svg>"
        let verdict = anomalies.isEmpty ? "valid" : "INVALID"
        let list = anomalies.prefix(50).map { "<li>\($0.description)</li>" }.joined()
        return """
            <!doctype html><html><head><meta charset='utf-8'><title>NodeLease Jepsen seed \(seed)</title></head>
            <body style='font-family:sans-serif'>
            <h1>NodeLease Jepsen run, seed \(seed): \(verdict)</h1>
            <p>Latency of every operation over time (log scale, up to \(Int(lMax)) ms); green ok, red fail, amber unknown;
            shaded: a fault was active.</p>
            \(svg)
            <pre>\(checked.summary)</pre>
            <h2>Anomalies</h2><ul>\(list.isEmpty ? "<li>none</li>" : list)</ul>
            </body></html>
            """
    }
}

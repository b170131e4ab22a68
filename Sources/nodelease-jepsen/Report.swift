import Foundation
import JepsenCheckers

/// Writes the store folder: the history (JSON lines and Jepsen's EDN), the verdict, and an
/// HTML page with a latency-over-time plot shaded by nemesis activity.
enum Report {
    static func write(dir: String, ops: [HistoryOp], nemesis: [NemesisEvent], anomalies: [Anomaly], seed: UInt64, faults: [String]) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var jsonl = ""
        var edn = ""
        for op in ops {
            jsonl += String(decoding: try encoder.encode(op), as: UTF8.self) + "\n"
            // Jepsen's history: an :invoke and its completion per operation.
            let value = "{:hostname \"\(op.hostname)\" :node \(op.nodeId.map(String.init) ?? "nil") :lease \(op.leaseId.map { "\"\($0)\"" } ?? "nil")}"
            edn += "{:process \(op.process), :type :invoke, :f :\(op.kind.rawValue), :time \(op.invoke), :value \(value)}\n"
            edn += "{:process \(op.process), :type :\(op.outcome.rawValue), :f :\(op.kind.rawValue), :time \(op.complete), :value \(value)}\n"
        }
        try jsonl.write(toFile: dir + "/history.jsonl", atomically: true, encoding: .utf8)
        try edn.write(toFile: dir + "/history.edn", atomically: true, encoding: .utf8)

        // Availability per phase: with and without an active fault.
        var intervals: [(UInt64, UInt64)] = []
        var open: [String: UInt64] = [:]
        for e in nemesis {
            let key = e.fault + e.target
            if e.phase == "start" { open[key] = e.time } else if let s = open.removeValue(forKey: key) { intervals.append((s, e.time)) }
        }
        func faulty(_ t: UInt64) -> Bool { intervals.contains { $0.0 <= t && t <= $0.1 } }
        let writes = ops.filter { $0.kind != .read }
        let duringFault = writes.filter { faulty($0.invoke) }
        let healthy = writes.filter { !faulty($0.invoke) }
        // Availability: the fraction of writes that got a definite answer (ok, or a definite
        // refusal such as hostname_in_use), not a timeout or 503.
        func rate(_ xs: [HistoryOp]) -> Double { xs.isEmpty ? 1 : Double(xs.filter { $0.outcome != .info }.count) / Double(xs.count) }
        let results: [String: Any] = [
            "valid": anomalies.isEmpty,
            "seed": seed,
            "nemesis": faults,
            "operations": ops.count,
            "ok": ops.filter { $0.outcome == .ok }.count,
            "info": ops.filter { $0.outcome == .info }.count,
            "fail": ops.filter { $0.outcome == .fail }.count,
            "availability": ["during-faults": rate(duringFault), "healthy": rate(healthy)],
            "anomalies": anomalies.map { ["checker": $0.checker, "detail": $0.detail] },
            "checkers": ["lease-safety", "fencing", "mapping", "final-state", "read-index"],
        ]
        let data = try JSONSerialization.data(withJSONObject: results, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: dir + "/results.json"))
        try html(ops: ops, intervals: intervals, anomalies: anomalies, seed: seed).write(toFile: dir + "/report.html", atomically: true, encoding: .utf8)
    }

    static func html(ops: [HistoryOp], intervals: [(UInt64, UInt64)], anomalies: [Anomaly], seed: UInt64) -> String {
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
            <h2>Anomalies</h2><ul>\(list.isEmpty ? "<li>none</li>" : list)</ul>
            </body></html>
            """
    }
}

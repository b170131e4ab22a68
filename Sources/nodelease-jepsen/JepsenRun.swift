import ArgumentParser
import Foundation
import JepsenCheckers
import NIOConcurrencyHelpers

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// The Jepsen-style test: real replicas, clients acting as mail nodes, a nemesis, and
/// checkers over the recorded history. `Jepsen/run` starts it inside a network namespace of
/// its own, so partitions are real packet drops (nftables) between the replicas' addresses.
@main
struct JepsenRun: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nodelease-jepsen", abstract: "Fault-injection test of a NodeLease cluster (run it through Jepsen/run).")

    @Option(help: "Replicas: 3 or 5.") var replicas: Int = 3
    @Option(help: "Seconds of workload under faults.") var timeLimit: Int = 60
    @Option(help: "Faults: any of partition, kill, pause, clock, all, none (comma-separated).") var nemesis: String = "partition,kill,pause"
    @Option(help: "Client processes (mail nodes).") var concurrency: Int = 6
    @Option(help: "Seed for the fault and workload schedule.") var seed: UInt64 = UInt64(Date().timeIntervalSince1970)
    @Option(help: "Target operations per second, over all clients.") var rate: Int = 50
    @Option(help: "The nodelease binary.") var binary: String = ".build/debug/nodelease"
    @Option(help: "Store folder for this run.") var store: String = ""
    @Option(help: "Re-run the checkers on a stored run's folder instead of testing.") var check: String = ""
    @Flag(help: "The runner is inside a network namespace of its own (partitions with nftables).") var netns = false

    func validate() throws {
        guard replicas == 3 || replicas == 5 else { throw ValidationError("--replicas must be 3 or 5") }
        guard timeLimit >= 5 else { throw ValidationError("--time-limit must be at least 5 seconds") }
        let known: Set<String> = ["partition", "kill", "pause", "clock", "all", "none"]
        for n in nemesis.split(separator: ",") where !known.contains(String(n)) {
            throw ValidationError("unknown nemesis \(n)")
        }
    }

    func run() async throws {
        if !check.isEmpty {
            // Re-check a stored run: its history, nemesis log and final read.
            var (ops, events, final) = try Report.loadInputs(dir: check)
            if let final, !ops.contains(where: { $0.process == Checks.finalProcess }) {
                // A run stored before the final read was part of the history: it came after
                // every operation completed, within a minute (the runner's waits are 30 s each).
                let after = (ops.map(\.complete).max() ?? 0) + 1
                ops += Checks.finalReadOps(
                    hostnames: Set(ops.map(\.hostname)).sorted(), final: final, invoke: after, complete: after + 60_000_000_000)
            }
            let checked = Checks.run(ops: ops, final: final, nemesis: events)
            try checked.printVerdict()
            return
        }
        var faults = Set(nemesis.split(separator: ",").map(String.init))
        if faults.contains("all") { faults = ["partition", "kill", "pause", "clock"] }
        var clockLibrary: String?
        if faults.contains("clock") {
            clockLibrary = TestCluster.findFaketime()
            if clockLibrary == nil {
                say("nemesis clock: not run (needs libfaketime: apt-get install faketime)")
                faults.remove("clock")
            }
        }
        if faults.contains("partition") && !netns {
            say("nemesis partition: not run (needs the network namespace that Jepsen/run creates)")
            faults.remove("partition")
        }
        let dir = store.isEmpty ? "Jepsen/store/nodelease/\(Int(Date().timeIntervalSince1970))" : store
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        say("store: \(dir)  seed: \(seed)  replicas: \(replicas)  nemesis: \(faults.sorted().joined(separator: ",")))")

        let cluster = TestCluster(size: replicas, binary: binary, dir: dir, distinctAddresses: netns, clockLibrary: clockLibrary)
        defer { cluster.stopAll() }
        try cluster.startAll()
        guard await cluster.waitForLeader(seconds: 30) else {
            say("no leader elected; see \(dir)/replica-*.log")
            throw ExitCode(2)
        }

        let clock = ContinuousClock()
        let start = clock.now
        let history = HistoryLog(start: start)
        let nemesisLog = NemesisLog()
        let end = start + .seconds(timeLimit)
        var random = SplitMix(seed: seed)
        let hostnames = max(1, concurrency / 2)
        let ttl: UInt32 = 4
        let activeFaults = faults

        await withTaskGroup(of: Void.self) { group in
            for p in 0..<concurrency {
                let worker = Worker(
                    process: p, hostname: "mx\(p % hostnames).jepsen.test", holder: "holder-\(p)", ttl: ttl, cluster: cluster,
                    history: history, end: end, seed: random.next(), interval: Duration.milliseconds(max(1, 1000 * concurrency / max(1, rate))))
                group.addTask { await worker.run() }
            }
            let nemesisSeed = random.next()
            group.addTask {
                await Nemesis(cluster: cluster, faults: activeFaults, seed: nemesisSeed, log: nemesisLog, start: start).run(until: end - .seconds(5))
            }
        }
        // Heal, let the cluster settle, and take the final linearizable read.
        cluster.healAll()
        _ = await cluster.waitForLeader(seconds: 30)
        let finalInvoke = history.now()
        let final = await cluster.finalRead()
        if let final {
            // The final read goes into the history as one linearizable read per hostname, so
            // the linearizability checker holds it against every acknowledged change.
            let hosts = Set(history.all.map(\.hostname)).sorted()
            for op in Checks.finalReadOps(hostnames: hosts, final: final, invoke: finalInvoke, complete: history.now()) { history.add(op) }
        }

        let ops = history.all
        let events = nemesisLog.all
        try Report.saveInputs(dir: dir, ops: ops, nemesis: events, final: final)
        let checked = Checks.run(ops: ops, final: final, nemesis: events)
        try Report.write(dir: dir, ops: ops, nemesis: events, checked: checked, seed: seed, faults: faults.sorted())
        try checked.printVerdict()
    }
}

func say(_ s: String) {
    FileHandle.standardOutput.write(Data((s + "\n").utf8))
}

/// Nanoseconds from `start` to now: the one time axis of a run's history and nemesis log.
func nanoseconds(since start: ContinuousClock.Instant) -> UInt64 {
    let d = ContinuousClock.now - start
    return UInt64(d.components.seconds) * 1_000_000_000 + UInt64(d.components.attoseconds / 1_000_000_000)
}

/// SplitMix64, for the test's schedule.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(max(1, n))) }
}

final class HistoryLog: Sendable {
    let start: ContinuousClock.Instant
    private let ops = NIOLockedValueBox<[HistoryOp]>([])
    init(start: ContinuousClock.Instant) { self.start = start }
    func now() -> UInt64 { nanoseconds(since: start) }
    func add(_ op: HistoryOp) { ops.withLockedValue { $0.append(op) } }
    var all: [HistoryOp] { ops.withLockedValue { $0 }.sorted { $0.invoke < $1.invoke } }
}

struct NemesisEvent: Codable, Sendable {
    var time: UInt64
    var fault: String
    var target: String
    var phase: String
}

final class NemesisLog: Sendable {
    private let events = NIOLockedValueBox<[NemesisEvent]>([])
    func add(_ e: NemesisEvent) { events.withLockedValue { $0.append(e) } }
    var all: [NemesisEvent] { events.withLockedValue { $0 } }
}

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
    @Option(help: "Faults: any of partition, kill, pause, clock, power, membership, disk-full, drift, disk, slow-disk, election-crash, all, none (comma-separated); membership adds, removes and replaces replicas (not part of all); disk-full needs root (it mounts a small tmpfs per replica), the last four need the fault build. upgrade (alone): the last replica starts as the older version, then every replica is upgraded one at a time.")
    var nemesis: String?
    @Option(help: "With --nemesis upgrade: the older version's binary (a build of the previous release); default: this build limited to cluster version 1.")
    var oldBinary: String?
    @Option(help: "With --nemesis upgrade and no --old-binary: the cluster version the older replicas support (1 plays a 0.1 build, 2 a 0.2 build).")
    var olderVersion: Int = 1
    @Option(help: "Client processes (mail nodes).") var concurrency: Int = 6
    @Option(help: "Seed for the fault and workload schedule.") var seed: UInt64 = UInt64(Date().timeIntervalSince1970)
    @Option(help: "Target operations per second, over all clients.") var rate: Int = 50
    @Option(help: "The nodelease binary.") var binary: String = ".build/debug/nodelease"
    @Option(help: "Store folder for this run.") var store: String = ""
    @Option(help: "Re-run the checkers on a stored run's folder instead of testing.") var check: String = ""
    @Flag(help: "The runner is inside a network namespace of its own (partitions with nftables).") var netns = false
    @Flag(help: "Run the replicas with mutual TLS between them, HTTPS and tokens (a throwaway CA for the run).") var tls = false
    @Option(help: "Hostnames the clients use (default: half the clients).") var hostnames: Int?
    @Option(help: "Node IDs the replicas hand out, LOW-HIGH (default: one fewer than the hostnames, so IDs are exhausted, retired and reused).")
    var idRange: String?
    @Option(help: "Seconds a stale node keeps its ID.") var retention: Int = 6
    @Flag(help: "The nodelease binary is a fault build (-DNODELEASE_FAULTS): lazy disk and clock-rate files on.") var faultBuild = false
    @Option(help: "Plant this bug in every replica (needs --fault-build); the run passes only if a checker meant for it reports it.")
    var planted: String?
    @Flag(help: "Print the names of the bugs the fault build can plant, one a line.") var listPlanted = false
    @Option(help: "Holders that are real LeaseKeepers in processes of their own (paused by the pause nemesis).") var keepers: Int = 2
    // A keeper process (started by the runner): its hostname, holder, the replicas, the store.
    @Option(help: .hidden) var keeper: String?
    @Option(help: .hidden) var keeperHolder: String = "keeper"
    @Option(help: .hidden) var endpoints: String = ""
    @Option(help: .hidden) var fencedStore: String = ""
    @Option(help: .hidden) var keeperTtl: Int = 4

    func validate() throws {
        guard replicas == 3 || replicas == 5 else { throw ValidationError("--replicas must be 3 or 5") }
        guard timeLimit >= 5 else { throw ValidationError("--time-limit must be at least 5 seconds") }
        let known: Set<String> = [
            "partition", "kill", "pause", "clock", "power", "membership", "drift", "disk", "disk-full", "slow-disk", "election-crash", "all", "none",
            "upgrade",
        ]
        for n in (nemesis ?? "").split(separator: ",") where !known.contains(String(n)) {
            throw ValidationError("unknown nemesis \(n)")
        }
        if faultNames.contains("upgrade") && faultNames.count > 1 { throw ValidationError("nemesis upgrade runs alone") }
        guard olderVersion == 1 || olderVersion == 2 else {
            throw ValidationError("--older-version must be 1 (plays a 0.1 build) or 2 (plays a 0.2 build): below this build's cluster version, 3")
        }
        if oldBinary != nil && !faultNames.contains("upgrade") { throw ValidationError("--old-binary needs --nemesis upgrade") }
        if let planted {
            guard PlantedBug.named(planted) != nil else {
                throw ValidationError("unknown planted bug \(planted); known: \(PlantedBug.all.map(\.name).joined(separator: ", "))")
            }
            guard faultBuild else { throw ValidationError("--planted needs --fault-build (Jepsen/run --planted builds it)") }
        }
        for f in ["drift", "disk", "slow-disk", "election-crash"] where (nemesis ?? "").split(separator: ",").contains(Substring(f)) && !faultBuild {
            throw ValidationError("nemesis \(f) needs --fault-build")
        }
    }

    /// The faults of this run: --nemesis, else the planted bug's, else partition,kill,pause.
    var faultNames: Set<String> {
        let spec = nemesis ?? planted.flatMap(PlantedBug.named)?.nemesis ?? "partition,kill,pause"
        var faults = Set(spec.split(separator: ",").map(String.init))
        if faults.contains("all") {
            faults.remove("all")
            faults.formUnion(["partition", "kill", "pause", "clock", "power", "membership"])
            if geteuid() == 0 { faults.insert("disk-full") }
            if faultBuild { faults.formUnion(["drift", "disk", "slow-disk", "election-crash"]) }
        }
        faults.remove("none")
        return faults
    }

    func run() async throws {
        if listPlanted {
            for b in PlantedBug.all { say(b.name) }
            return
        }
        if let keeper {
            let urls = endpoints.split(separator: ",").compactMap { URL(string: String($0)) }
            await KeeperProcess(hostname: keeper, holder: keeperHolder, endpoints: urls, store: FencedStore(path: fencedStore), ttl: keeperTtl).run()
            return
        }
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
            let info = Report.loadRunInfo(dir: check)
            let checked = Checks.run(ops: ops, final: final, nemesis: events, info: info, fenced: FencedStore.load(path: check + "/fenced.jsonl"))
            try checked.printVerdict(info: info)
            return
        }
        let faults = faultNames
        var clockLibrary: String?
        if faults.contains("clock") {
            clockLibrary = TestCluster.findFaketime()
            if clockLibrary == nil {
                // A run asked for clock faults that cannot make them is not a pass.
                say("nemesis clock: cannot run (needs libfaketime: apt-get install faketime); leave clock out of --nemesis to run without it")
                throw ExitCode(2)
            }
        }
        if faults.contains("partition") && !netns {
            // A run asked to partition that cannot is not a pass.
            say("nemesis partition: cannot run (needs root, iproute2 and nftables for the network namespace that Jepsen/run creates); "
                + "leave partition out of --nemesis to run without it")
            throw ExitCode(2)
        }
        let dir = store.isEmpty ? "Jepsen/store/nodelease/\(Int(Date().timeIntervalSince1970))" : store
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        say("store: \(dir)  seed: \(seed)  replicas: \(replicas)  nemesis: \(faults.isEmpty ? "none" : faults.sorted().joined(separator: ","))")

        let hostCount = hostnames ?? max(2, concurrency / 2)
        // One fewer ID than hostnames (the keepers share one more hostname).
        let range = idRange ?? "1-\(max(1, hostCount + (keepers > 0 ? 1 : 0) - 1))"
        let info = RunInfo(
            seed: seed, replicas: replicas, faults: faults.sorted(), hostnames: hostCount, idRange: range, retentionSeconds: retention,
            planted: planted, faultBuild: faultBuild, keepers: keepers)
        try Report.saveRunInfo(dir: dir, info)
        if let planted { say("planted bug: \(planted) (expected to be caught by \(PlantedBug.named(planted)!.checkers.joined(separator: " or ")))") }
        var security: JepsenTLS?
        if tls {
            let made = try JepsenTLS.make(dir: dir + "/tls", binary: binary)
            security = made
            // The keeper processes' client library reads these.
            setenv("NODELEASE_CA_FILE", made.caFile, 1)
            setenv("NODELEASE_TOKEN", made.token, 1)
            say("tls: mutual TLS between replicas, HTTPS and a token for the clients (CA \(made.caFile))")
        }
        let cluster = try TestCluster(
            size: replicas, binary: binary, dir: dir, distinctAddresses: netns, clockLibrary: clockLibrary, idRange: range,
            retentionSeconds: retention, planted: planted, faultBuild: faultBuild, tls: security, oldBinary: oldBinary,
            olderVersion: olderVersion)
        let upgrading = faults.contains("upgrade")
        if upgrading {
            // The last replica runs as the older version until the rolling upgrade reaches it.
            cluster.older.withLockedValue { $0 = [replicas] }
            say("upgrade: replica \(replicas) starts as the older version (\(oldBinary ?? "this build with --max-cluster-version \(olderVersion)")); every replica is then upgraded, it last")
        }
        if faults.contains("disk-full") {
            guard geteuid() == 0 else {
                say("nemesis disk-full: cannot run (needs root to mount a small tmpfs per replica); leave it out of --nemesis to run without it")
                throw ExitCode(2)
            }
            try cluster.mountSmallDisks()
        }
        // Runs after stopAll (defers run last first).
        defer { if faults.contains("disk-full") { cluster.unmountSmallDisks() } }
        defer { cluster.stopAll() }
        try cluster.startAll()
        // A replica that stops at once (one running as the older version that meets what it
        // does not know) is for the checkers to report, not a failure to start.
        guard await cluster.waitForLeader(seconds: 30, majority: upgrading) else {
            say("no leader elected; see \(dir)/replica-*.log")
            throw ExitCode(2)
        }

        let fenced = FencedStore(path: dir + "/fenced.jsonl")
        let keeperProcesses = Keepers()
        defer { keeperProcesses.stopAll() }
        if keepers > 0 {
            let me = URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL.path
            // The members at the start; the keepers' client library follows membership changes
            // by itself (it refreshes its endpoints from /v1/cluster/replicas every 30 s, and
            // at once when none of its endpoints can be reached).
            try keeperProcesses.start(
                count: keepers, binary: me, endpoints: cluster.members.map { cluster.url($0, "") }, store: fenced.path, dir: dir, ttl: 4)
        }

        let clock = ContinuousClock()
        let start = clock.now
        let history = HistoryLog(start: start)
        let nemesisLog = NemesisLog()
        let end = start + .seconds(timeLimit)
        var random = SplitMix(seed: seed)
        // Two TTLs: 4 s (even clients) and 8 s (odd ones): the longer one gives the 1 % margin
        // a wider edge to test (80 ms) against the leader's 20 ms tick.
        let activeFaults = faults
        let leaders = LeaderLog()
        let versions = VersionLog()
        let forgets = info.idReuse

        await withTaskGroup(of: Void.self) { group in
            for p in 0..<concurrency {
                let worker = Worker(
                    process: p, hostname: "mx\(p % hostCount).jepsen.test", holder: "holder-\(p)", ttl: p % 2 == 0 ? 4 : 8, cluster: cluster,
                    history: history, end: end, seed: random.next(), interval: Duration.milliseconds(max(1, 1000 * concurrency / max(1, rate))),
                    forgets: forgets, fenced: fenced, workerHostnames: Set((0..<hostCount).map { "mx\($0).jepsen.test" }))
                group.addTask { await worker.run() }
            }
            let nemesisSeed = random.next()
            group.addTask {
                await Nemesis(
                    cluster: cluster, keepers: keeperProcesses, leaders: leaders, faults: activeFaults, seed: nemesisSeed, log: nemesisLog, start: start)
                    .run(until: end - .seconds(5))
            }
            // Who claims to lead, in which term: two leaders of one term break election safety.
            group.addTask { await leaders.poll(cluster, history: history, until: end) }
            if upgrading { group.addTask { await versions.poll(cluster, history: history, until: end) } }
        }
        // Heal, let the cluster settle, and take the final linearizable read.
        cluster.healAll()
        for k in 0..<keeperProcesses.count { keeperProcesses.resume(k) }
        _ = await cluster.waitForLeader(seconds: 30)
        let finalInvoke = history.now()
        let final = await cluster.finalRead()
        if upgrading {
            // Every replica runs this build now: the cluster version should follow.
            let newest = versions.all.map(\.supported).max() ?? 1
            if await !versions.waitForAll(cluster, history: history, version: newest, seconds: 20) {
                say("upgrade: not every member reports cluster version \(newest) 20 s after the last upgrade")
            }
        }
        if faults.contains("membership") {
            // Who the test counts as members, and the configuration the cluster reports.
            let config = await cluster.configuration()
            let reported = config.map { c in "configuration \(c.configIndex): " + c.replicas.map { "\($0.id) \($0.role)" }.joined(separator: ", ") }
            say("members at the end: \(cluster.members.map(String.init).joined(separator: ",")); \(reported ?? "configuration: no answer")")
        }
        if let final {
            // The final read goes into the history as one linearizable read per hostname, so
            // the linearizability checker holds it against every acknowledged change.
            let hosts = Set(history.all.map(\.hostname)).sorted()
            for op in Checks.finalReadOps(hostnames: hosts, final: final, invoke: finalInvoke, complete: history.now()) { history.add(op) }
        }

        let ops = history.all
        let events = nemesisLog.all
        var stored = info
        stored.leaders = leaders.all
        if upgrading {
            stored.older = [replicas]
            stored.olderVersion = oldBinary == nil ? UInt32(olderVersion) : nil
            stored.versions = versions.all
            stored.halts = UpgradeChecks.halts(dir: dir, replicas: 1...cluster.lastReplicaId)
            let reached = stored.versions?.map(\.clusterVersion).max() ?? 1
            let moved = stored.versions?.first { $0.clusterVersion == reached && reached > 1 }
            say(
                "upgrade: cluster version \(moved.map { "\($0.clusterVersion)" } ?? "above 1") first reported at \(moved.map { "\($0.time / 1_000_000) ms by replica \($0.replica)" } ?? "no time")"
            )
        }
        try Report.saveRunInfo(dir: dir, stored)
        try Report.saveInputs(dir: dir, ops: ops, nemesis: events, final: final)
        keeperProcesses.stopAll()
        let checked = Checks.run(ops: ops, final: final, nemesis: events, info: stored, fenced: FencedStore.load(path: fenced.path))
        try Report.write(dir: dir, ops: ops, nemesis: events, checked: checked, seed: seed, faults: faults.sorted())
        say("replay: Jepsen/run \(replayArguments)")
        try checked.printVerdict(info: stored)
    }
}

extension JepsenRun {
    /// The command line that runs this test again with the same schedule.
    var replayArguments: String {
        var a = "--replicas \(replicas) --time-limit \(timeLimit) --concurrency \(concurrency) --rate \(rate) --seed \(seed)"
        a += " --nemesis \(faultNames.isEmpty ? "none" : faultNames.sorted().joined(separator: ","))"
        if let hostnames { a += " --hostnames \(hostnames)" }
        if let idRange { a += " --id-range \(idRange)" }
        if retention != 6 { a += " --retention \(retention)" }
        if tls { a += " --tls" }
        if let oldBinary { a += " --old-binary \(oldBinary)" }
        if olderVersion != 1 { a += " --older-version \(olderVersion)" }
        if let planted { a += " --planted \(planted)" } else if faultBuild { a += " --fault-build" }
        return a
    }
}

/// What a run was configured with (and the leaders it saw), stored as `run.json`.
struct RunInfo: Codable, Sendable {
    var seed: UInt64
    var replicas: Int
    var faults: [String]
    var hostnames: Int
    var idRange: String
    var retentionSeconds: Int
    var planted: String?
    var faultBuild: Bool
    /// Keeper processes (they share one more hostname).
    var keepers: Int
    var leaders: [LeaderClaim] = []
    /// The `upgrade` nemesis: the replicas started as the older version, the cluster versions
    /// the replicas reported, and log lines of replicas that stopped on what they did not know.
    var older: [Int]?
    /// The newest cluster version the older replicas support (what they were limited to;
    /// nil for a real older binary, whose own reports are then taken).
    var olderVersion: UInt32?
    var versions: [VersionSample]?
    var halts: [String]?

    /// Fewer IDs than hostnames: IDs move between hostnames.
    var idReuse: Bool {
        let parts = idRange.split(separator: "-").compactMap { Int($0) }
        guard parts.count == 2 else { return false }
        return parts[1] - parts[0] + 1 < hostnames + (keepers > 0 ? 1 : 0)
    }
}

/// A replica that said it was the leader of a term, and when.
struct LeaderClaim: Codable, Sendable, Hashable {
    var time: UInt64
    var replica: Int
    var term: UInt64
}

/// Polls every member's status a few times a second and keeps each leadership claim.
final class LeaderLog: Sendable {
    private let claims = NIOLockedValueBox<Set<LeaderClaim>>([])
    private let firstSeen = NIOLockedValueBox<[String: UInt64]>([:])

    func poll(_ cluster: TestCluster, history: HistoryLog, until end: ContinuousClock.Instant) async {
        while ContinuousClock.now < end {
            for i in cluster.members {
                if let (status, json, _) = await cluster.request(i, "GET", "/v1/status", timeout: 0.3), status == 200,
                    json["role"] as? String == "leader", let term = json["term"] as? Int
                {
                    record(replica: i, term: UInt64(term), at: history.now())
                }
            }
            try? await Task.sleep(for: .milliseconds(150))
        }
    }

    /// Keeps the first time a replica was seen leading a term.
    func record(replica: Int, term: UInt64, at t: UInt64) {
        let key = "\(replica)/\(term)"
        let fresh = firstSeen.withLockedValue { seen in
            if seen[key] != nil { return false }
            seen[key] = t
            return true
        }
        if fresh { claims.withLockedValue { _ = $0.insert(LeaderClaim(time: t, replica: replica, term: term)) } }
    }

    var all: [LeaderClaim] { claims.withLockedValue { $0 }.sorted { ($0.term, $0.time) < ($1.term, $1.time) } }
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
struct SplitMix: RandomNumberGenerator {
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

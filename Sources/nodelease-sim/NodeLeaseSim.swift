import ArgumentParser
import Raft
import RaftSimulator

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

@main
struct NodeLeaseSim: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nodelease-sim",
        abstract: "Runs the Raft core under seeded faults in a deterministic simulator.",
        discussion: """
            Each seed chooses the cluster size, timings and fault rates, partitions, crashes,
            pauses and message loss, then checks the Raft invariants after every step and
            requires the healed cluster to converge. A failing seed replays exactly:
              swift run -c release nodelease-sim --seed 1234 --trace
            """)

    @Option(help: "How many consecutive seeds to run.")
    var seeds: Int = 100

    @Option(help: "The first seed.")
    var first: UInt64 = 1

    @Option(help: "Run this one seed only (implies --seeds 1).")
    var seed: UInt64?

    @Option(help: "Cluster size (3 or 5); by default the seed chooses.")
    var replicas: Int?

    @Option(help: "Virtual milliseconds of faults before the network heals.")
    var faultMillis: UInt64 = 3000

    @Option(help: "Virtual milliseconds the healed cluster has to converge.")
    var livenessMillis: UInt64 = 3000

    @Option(
        name: .customLong("break"),
        help: ArgumentHelp(
            "Run a deliberately broken core to see the checkers catch it: \(FaultInjection.names.keys.sorted().joined(separator: ", ")).",
            valueName: "fault"))
    var breakRules: [String] = []

    @Option(help: "What the clients do: leases (mail nodes holding node IDs) or register (writes and linearizable reads).")
    var workload: String = "leases"

    @Option(
        name: .customLong("break-lease"),
        help: "Run deliberately broken lease behaviour: holder-ignores-deadline, no-failover-reset, ignore-idempotency-keys, forget-keys-early, session-repeats-apply.")
    var breakLease: [String] = []

    @Option(help: "Seeds run in parallel (default: one per core). Output stays in seed order.")
    var jobs: Int?

    @Flag(help: "Instead of seeds: compare the leader's flow-control policies on a slow follower (figures, deterministic).")
    var flowBench = false
    @Flag(help: "Print the event trace of each seed run.")
    var trace = false

    @Flag(help: "Print a summary line for every seed, not only failing ones.")
    var verbose = false

    func validate() throws {
        if let replicas, replicas != 1 && replicas != 3 && replicas != 5 {
            throw ValidationError("--replicas must be 1, 3 or 5")
        }
        if seeds < 1 { throw ValidationError("--seeds must be at least 1") }
        if SimulationOptions.Workload(rawValue: workload) == nil {
            throw ValidationError("--workload must be leases or register")
        }
        for name in breakLease where Self.leaseFaultNames[name] == nil {
            throw ValidationError("unknown fault \(name) for --break-lease")
        }
        for name in breakRules where FaultInjection.names[name] == nil {
            throw ValidationError("unknown fault \(name) for --break")
        }
    }

    func run() async throws {
        if flowBench {
            print("scenario                               policy       | entries sent  resent  appends  dropped | catch-up ticks  mean lag | committed")
            for scenario in FlowBenchmark.Scenario.standard {
                for policy in FullWindowPolicy.allCases {
                    let r = try FlowBenchmark.run(scenario, policy: policy)
                    func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
                    func left(_ s: String, _ n: Int) -> String { s.count >= n ? s : String(repeating: " ", count: n - s.count) + s }
                    print(
                        pad(scenario.name, 38) + " " + pad(policy.rawValue, 12) + " | " + left("\(r.entriesSent)", 12) + left("\(r.entriesResent)", 8)
                            + left("\(r.appendsSent)", 9) + left("\(r.dropped)", 9) + " | " + left(r.catchUpTicks.map { "\($0)" } ?? "never", 14)
                            + left("\(Int(r.meanLag.rounded()))", 10) + " | " + left("\(r.committed)", 9))
                }
            }
            return
        }
        let list: [UInt64] = seed.map { [$0] } ?? (0..<UInt64(seeds)).map { first &+ $0 }
        var faults: FaultInjection = []
        for name in breakRules { faults.insert(FaultInjection.names[name]!) }
        var leaseFaults: LeaseFaults = []
        for name in breakLease { leaseFaults.insert(Self.leaseFaultNames[name]!) }
        let workload = SimulationOptions.Workload(rawValue: self.workload)!
        let cores = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        let parallel = trace ? 1 : max(1, jobs ?? cores)
        var failed = 0
        let clock = ContinuousClock()
        let started = clock.now
        CrashReport.install()
        var next = 0
        while next < list.count {
            let chunk = Array(list[next..<min(list.count, next + parallel * 8)])
            next += chunk.count
            let results = await withTaskGroup(of: SimulationResult.self) { group in
                var pending = chunk[...]
                var out: [SimulationResult] = []
                func add(_ s: UInt64) {
                    let options = SimulationOptions(
                        seed: s, replicas: replicas, faultMillis: faultMillis, livenessMillis: livenessMillis,
                        trace: trace, faults: faults, workload: workload, leaseFaults: leaseFaults)
                    let line = "seed \(s) FAILED: it was running when the simulator crashed (a trap in the core or a checker, in this seed or another listed); replay: \(replayCommand(s))\n"
                    group.addTask {
                        let slot = CrashReport.running(line)
                        defer { CrashReport.done(slot) }
                        return Simulation(options: options).run()
                    }
                }
                for _ in 0..<parallel { if let s = pending.popFirst() { add(s) } }
                while let r = await group.next() {
                    out.append(r)
                    if let s = pending.popFirst() { add(s) }
                }
                return out.sorted { $0.seed < $1.seed }
            }
            for result in results {
                if trace { for line in result.trace { print(line) } }
                if !result.ok {
                    failed += 1
                    print("seed \(result.seed) FAILED: \(result.violations.map(\.description).joined(separator: "; ")); replay: \(replayCommand(result.seed))")
                } else if verbose || seed != nil {
                    print(result.summary)
                }
            }
        }
        let elapsed = clock.now - started
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let rate = seconds > 0 ? Double(list.count) / seconds : 0
        print("elapsed \(Int(seconds * 1000))ms with \(parallel) jobs, \(Int(rate * 10) / 10).\(Int(rate * 10) % 10) seeds/s")
        print("\(list.count) seeds, \(failed) failed")
        if failed > 0 { throw ExitCode.failure }
    }

    static let leaseFaultNames: [String: LeaseFaults] = [
        "holder-ignores-deadline": .holderIgnoresDeadline,
        "no-failover-reset": .noFailoverReset,
        "ignore-idempotency-keys": .ignoreIdempotencyKeys,
        "forget-keys-early": .forgetKeysEarly,
        "session-repeats-apply": .sessionRepeatsApply,
    ]

    func replayCommand(_ s: UInt64) -> String {
        var replay = "swift run -c release nodelease-sim --seed \(s) --trace"
        if let replicas { replay += " --replicas \(replicas)" }
        if faultMillis != 3000 { replay += " --fault-millis \(faultMillis)" }
        if livenessMillis != 3000 { replay += " --liveness-millis \(livenessMillis)" }
        for name in breakRules { replay += " --break \(name)" }
        for name in breakLease { replay += " --break-lease \(name)" }
        if workload != "leases" { replay += " --workload \(workload)" }
        return replay
    }
}

/// If a seed traps (a precondition in the core, a checker, an overflow), the process dies: the
/// seeds running then are printed as failing, with their replay commands, before it does. The
/// lines are written at each seed's start into fixed slots, so the signal handler only calls
/// write(2).
enum CrashReport {
    static let slots = 64
    static let slotBytes = 512
    nonisolated(unsafe) static let buffer: UnsafeMutablePointer<CChar> = {
        let b = UnsafeMutablePointer<CChar>.allocate(capacity: slots * slotBytes)
        b.initialize(repeating: 0, count: slots * slotBytes)
        return b
    }()
    nonisolated(unsafe) static let busy: UnsafeMutablePointer<Int32> = {
        let b = UnsafeMutablePointer<Int32>.allocate(capacity: slots)
        b.initialize(repeating: 0, count: slots)
        return b
    }()
    static let lock = NSLockLike()

    static func install() {
        for sig in [SIGILL, SIGTRAP, SIGSEGV, SIGBUS, SIGABRT, SIGFPE] {
            signal(sig) { sig in
                for i in 0..<CrashReport.slots where CrashReport.busy[i] != 0 {
                    let line = CrashReport.buffer + i * CrashReport.slotBytes
                    _ = write(1, line, strlen(line))
                }
                signal(sig, SIG_DFL)
                raise(sig)
            }
        }
    }

    /// Notes a seed's failure line; returns its slot.
    static func running(_ line: String) -> Int {
        lock.withLock {
            let slot = (0..<slots).first { busy[$0] == 0 } ?? 0
            let bytes = Array(line.utf8.prefix(slotBytes - 1))
            let start = buffer + slot * slotBytes
            for (k, b) in bytes.enumerated() { start[k] = CChar(bitPattern: b) }
            start[bytes.count] = 0
            busy[slot] = 1
            return slot
        }
    }

    static func done(_ slot: Int) { lock.withLock { busy[slot] = 0 } }
}

/// A mutex from pthreads (no Foundation here).
final class NSLockLike: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t> = {
        let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(m, nil)
        return m
    }()

    func withLock<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body()
    }
}

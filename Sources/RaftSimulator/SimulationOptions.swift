import LeaseRegistry
import Raft

/// What a simulation run is asked to do. Everything not given here is derived from the seed
/// (`Knobs`), and printed with the result so a failure replays exactly.
public struct SimulationOptions: Sendable {
    public var seed: UInt64
    /// 3 or 5; nil lets the seed choose.
    public var replicas: Int?
    /// Virtual milliseconds of the safety phase, during which faults happen.
    public var faultMillis: UInt64
    /// Virtual milliseconds after healing within which the cluster must elect a leader,
    /// resolve every proposal and converge.
    public var livenessMillis: UInt64
    public var clients: Int
    /// Record an event trace.
    public var trace: Bool
    /// Deliberately broken core behaviour (checker tests only).
    public var faults: FaultInjection
    /// What the clients do.
    public var workload: Workload
    /// Deliberately broken lease behaviour (checker tests only).
    public var leaseFaults: LeaseFaults

    public enum Workload: String, Sendable, CaseIterable {
        /// Mail nodes acquiring, renewing and releasing node-ID leases.
        case leases
        /// Clients writing and reading (ReadIndex) a replicated register.
        case register
    }

    public init(
        seed: UInt64, replicas: Int? = nil, faultMillis: UInt64 = 3000, livenessMillis: UInt64 = 3000,
        clients: Int = 3, trace: Bool = false, faults: FaultInjection = [], workload: Workload = .leases,
        leaseFaults: LeaseFaults = []
    ) {
        self.workload = workload
        self.leaseFaults = leaseFaults
        self.seed = seed
        self.replicas = replicas
        self.faultMillis = faultMillis
        self.livenessMillis = livenessMillis
        self.clients = clients
        self.trace = trace
        self.faults = faults
    }
}

/// The fault and timing parameters of one run, all drawn from the seed.
public struct Knobs: Sendable, CustomStringConvertible {
    public var replicas: Int
    public var tickMicros: UInt64
    public var electionTicks: Int
    public var heartbeatTicks: Int
    public var minDelayMicros: UInt64
    public var maxDelayMicros: UInt64
    public var dropRate: Double
    public var duplicateRate: Double
    /// Clock rates differ from 1 by at most this much.
    public var drift: Double
    public var maxFsyncMicros: UInt64
    public var nemesisMinMillis: UInt64
    public var nemesisMaxMillis: UInt64
    public var snapshotEvery: Int
    public var keepAfterSnapshot: Int
    public var maxInflight: Int
    public var maxMessageBytes: Int
    public var preVote: Bool
    public var checkQuorum: Bool
    /// The chance that a replica crashes inside the fsync window of a write (losing what
    /// was not synced), each time it starts one during the faults.
    public var fsyncCrashRate: Double
    /// Replicas write through the real `DurableLog` (on a file system that tears unsynced
    /// writes on a crash) rather than the in-memory storage.
    public var durableDisk: Bool
    /// The TTL mail nodes ask for, in seconds.
    public var leaseTTL: UInt32
    /// How long and how many idempotency keys the registry remembers: often small enough
    /// that keys leave the window while mail nodes still retry them.
    public var idempotencyWindow: IdempotencyWindow
    /// The run may play the Figure 8 schedule once (see `Simulation.Figure8`).
    public var figure8: Bool
    /// The nemesis also changes the membership: adds learners (from spare replicas with empty
    /// disks), promotes them, removes voters and learners, the leader included.
    public var membershipChanges: Bool
    /// The run plays the schedule of Ongaro's single-server membership bug once (see
    /// `Simulation.Ongaro`); its leaders then promote learners only when told.
    public var ongaro: Bool
    /// Half the renewals go without an idempotency key (the cluster version moves to the
    /// newest, so they carry their replica's session stamp): a re-send must still apply once.
    public var keylessRenewals: Bool
    /// Replica slots beyond the first `replicas`, for membership changes to add.
    public var spareReplicas: Int { membershipChanges ? 3 : 0 }

    init(seed: UInt64, replicas: Int?) {
        var g = DeterministicGenerator(seed: seed ^ 0x6b6e_6f62_7321)
        func pick<T>(_ xs: [T]) -> T { xs[Int(g.next() % UInt64(xs.count))] }
        self.replicas = replicas ?? pick([1, 3, 3, 3, 3, 5, 5, 5])
        tickMicros = 10_000
        electionTicks = pick([10, 10, 15])
        heartbeatTicks = pick([1, 2, 3])
        minDelayMicros = pick([100, 500, 1000])
        maxDelayMicros = minDelayMicros + pick([1000, 5000, 20_000, 40_000])
        dropRate = pick([0, 0.01, 0.05, 0.1])
        duplicateRate = pick([0, 0.01, 0.05])
        // Every clock within `drift` of true time, so two rates differ by up to 2 x drift:
        // up to 0.98 %, just under the lease margin (1 %). Holders must still stop first.
        drift = pick([0, 0.001, 0.004, 0.0049])
        maxFsyncMicros = pick([100, 2000, 8000])
        nemesisMinMillis = pick([50, 150, 300])
        nemesisMaxMillis = nemesisMinMillis + pick([200, 600])
        snapshotEvery = pick([10, 50, 200])
        keepAfterSnapshot = pick([0, 2, 20])
        maxInflight = pick([1, 4, 64])
        maxMessageBytes = pick([64, 1024, 1 << 20])
        preVote = pick([true, true, true, false])
        checkQuorum = pick([true, true, true, false])
        fsyncCrashRate = pick([0, 0.01, 0.04])
        durableDisk = pick([false, true])
        leaseTTL = pick([1, 1, 2])
        // Drawn last, so the knobs above keep their values for a seed.
        idempotencyWindow = IdempotencyWindow(seconds: pick([600, 600, 1, 2]), maxKeys: pick([100_000, 100_000, 3, 16]))
        figure8 = pick([false, true])
        membershipChanges = self.replicas >= 3 && pick([false, true])
        ongaro = membershipChanges && !figure8 && pick([false, true])
        keylessRenewals = pick([false, false, true])
    }

    public var description: String {
        "replicas=\(replicas) election=\(electionTicks) heartbeat=\(heartbeatTicks) "
            + "delay=\(minDelayMicros)-\(maxDelayMicros)us drop=\(dropRate) dup=\(duplicateRate) "
            + "drift=\(drift) fsync<=\(maxFsyncMicros)us nemesis=\(nemesisMinMillis)-\(nemesisMaxMillis)ms "
            + "snapshot-every=\(snapshotEvery) keep=\(keepAfterSnapshot) inflight=\(maxInflight) "
            + "msg-bytes=\(maxMessageBytes) prevote=\(preVote) checkquorum=\(checkQuorum) fsync-crash=\(fsyncCrashRate) disk=\(durableDisk ? "wal" : "memory") ttl=\(leaseTTL)s "
            + "keys=\(idempotencyWindow.seconds)s/\(idempotencyWindow.maxKeys) figure8=\(figure8) membership=\(membershipChanges) ongaro=\(ongaro) keyless=\(keylessRenewals)"
    }
}

/// What a run found.
public struct SimulationResult: Sendable {
    public var seed: UInt64
    public var knobs: Knobs
    public var violations: [Violation]
    public var events: Int
    public var virtualMillis: UInt64
    public var acknowledgedWrites: Int
    public var failedWrites: Int
    public var indeterminateOperations: Int
    public var reads: Int
    public var elections: Int
    public var crashes: Int
    public var snapshotsInstalled: Int
    /// Client keys that applied again after they left the idempotency window (allowed).
    public var keysReapplied: Int = 0
    public var trace: [String]

    public var ok: Bool { violations.isEmpty }

    public var summary: String {
        "seed \(seed): \(ok ? "ok" : "FAILED") events=\(events) time=\(virtualMillis)ms "
            + "acked=\(acknowledgedWrites) failed=\(failedWrites) unknown=\(indeterminateOperations) "
            + "reads=\(reads) leaders=\(elections) crashes=\(crashes) snapshots-installed=\(snapshotsInstalled)"
            + (keysReapplied > 0 ? " keys-reapplied=\(keysReapplied)" : "")
    }
}

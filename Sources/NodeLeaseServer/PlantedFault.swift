import Foundation
import LeaseRegistry
import Raft
import ReplicaCore

/// Bugs planted in the real server on purpose, so the Jepsen suite can show that it catches
/// each (like etcd's gofail failpoints). They exist only in a fault build
/// (`swift build -Xswiftc -DNODELEASE_FAULTS`); `NODELEASE_FAULT=NAME` turns one on. A normal
/// build refuses to start when any `NODELEASE_FAULT*` variable is set, so a planted bug can
/// never run by accident in production.
///
/// The fault build has two more test-only facilities, also from the environment:
/// `NODELEASE_FAULT_LAZY_DISK=1` keeps every write since the last fsync in memory (so a
/// SIGKILL loses exactly what a power cut would), and `NODELEASE_FAULT_CLOCK_FILE=PATH` makes
/// the replica's monotonic clock run at the rate written in that file (re-read every 200 ms;
/// a rate change never makes the clock jump); with the lazy disk, `NODELEASE_FAULT_DISK_FILE=PATH`
/// makes fsyncs slow or fail while that file says so.
public enum PlantedFault: String, CaseIterable, Sendable {
    case skipReadBarrier = "skip-read-barrier"
    case readBeforeCatchUp = "read-before-catch-up"
    case voteBeforePersist = "vote-before-persist"
    case noFsync = "no-fsync"
    case noExpiryMargin = "no-expiry-margin"
    case expireIgnoresRenewal = "expire-ignores-renewal"
    case noFailoverReset = "no-failover-reset"
    case noDeduplication = "no-dedup"
    case reacquireNewLease = "reacquire-new-lease"
    case retireAtOnce = "retire-at-once"
    case earlyClusterVersion = "early-cluster-version"

    /// What the bug does, one line.
    public var summary: String {
        switch self {
        case .skipReadBarrier: "linearizable reads are served from local state, without a read index confirmed by a quorum"
        case .readBeforeCatchUp: "a (re)started replica serves follower reads before it has caught up with a confirmed read index"
        case .voteBeforePersist: "votes are sent before they are durable"
        case .noFsync: "the log is never fsynced (acknowledged writes live in the page cache only)"
        case .noExpiryMargin: "the leader expires a lease exactly TTL after its last renewal, without the clock-rate margin"
        case .expireIgnoresRenewal: "an expiry applies even when the lease was renewed after the expiry was decided"
        case .noFailoverReset: "a new leader does not restart every lease's countdown (it expires them at once)"
        case .noDeduplication: "entries apply as if they carried no idempotency key, so re-sent writes apply twice"
        case .reacquireNewLease: "the same holder acquiring its live lease again gets a new lease, not the same one"
        case .retireAtOnce: "stale nodes are retired (made inactive, their IDs free) at once instead of after the retention"
        case .earlyClusterVersion: "the leader raises the cluster version to what it supports itself, without waiting for every member to support it"
        }
    }

    /// Whether this build can plant faults.
    public static var available: Bool {
        #if NODELEASE_FAULTS
            true
        #else
            false
        #endif
    }
}

/// The fault build's switches, read from the environment at start.
public struct FaultOptions: Sendable, Equatable {
    public var planted: PlantedFault?
    public var lazyDisk = false
    public var clockRateFile: String?
    /// With the lazy disk: a file whose content makes fsyncs slow (`slow MILLIS`) or fail (`fail`).
    public var diskControlFile: String?

    public init() {}

    public var isEmpty: Bool { planted == nil && !lazyDisk && clockRateFile == nil && diskControlFile == nil }

    /// The variables this reads.
    public static let variables = ["NODELEASE_FAULT", "NODELEASE_FAULT_LAZY_DISK", "NODELEASE_FAULT_CLOCK_FILE", "NODELEASE_FAULT_DISK_FILE"]

    /// Reads `NODELEASE_FAULT*`. In a normal build any such variable set is an error (the
    /// replica must not start); an unknown fault or variable name is an error in the fault build.
    public static func fromEnvironment(_ env: [String: String] = ProcessInfo.processInfo.environment) throws(ConfigError) -> FaultOptions {
        var o = FaultOptions()
        let set = env.keys.filter { $0.hasPrefix("NODELEASE_FAULT") && !(env[$0] ?? "").isEmpty }.sorted()
        guard !set.isEmpty else { return o }
        guard PlantedFault.available else {
            throw ConfigError(
                set[0],
                "is set, but this is a normal build without planted faults; refusing to start (planted faults exist only in a test build: "
                    + "swift build -Xswiftc -DNODELEASE_FAULTS)")
        }
        if let unknown = set.first(where: { !variables.contains($0) }) {
            throw ConfigError(unknown, "is not a variable of the fault build (known: \(variables.joined(separator: ", ")))")
        }
        if let name = env["NODELEASE_FAULT"], !name.isEmpty {
            guard let f = PlantedFault(rawValue: name) else {
                throw ConfigError(
                    "NODELEASE_FAULT", "unknown fault \"\(name)\"; known: \(PlantedFault.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            o.planted = f
        }
        o.lazyDisk = env["NODELEASE_FAULT_LAZY_DISK"] == "1"
        if let f = env["NODELEASE_FAULT_CLOCK_FILE"], !f.isEmpty { o.clockRateFile = f }
        if let f = env["NODELEASE_FAULT_DISK_FILE"], !f.isEmpty { o.diskControlFile = f }
        return o
    }
}

#if NODELEASE_FAULTS
    extension FaultOptions {
        /// Applies the planted fault to the replica's configuration.
        func apply(to server: inout ServerConfig) {
            switch planted {
            case .noFsync: server.fsync = false
            case .retireAtOnce: server.retentionSeconds = 0
            default: break
            }
        }

        func apply(to raft: inout RaftConfig) {
            if planted == .voteBeforePersist { raft.faults.insert(.sendVoteBeforePersist) }
        }

        func apply(to core: inout ReplicaCore.Config) {
            switch planted {
            case .skipReadBarrier: core.breakReadBarrier = true
            case .readBeforeCatchUp: core.breakCatchUp = true
            case .noExpiryMargin: core.expiry.clockRateMargin = 0
            case .expireIgnoresRenewal: core.registryFaults.insert(.expireIgnoresRenewal)
            case .noFailoverReset: core.breakFailoverReset = true
            case .noDeduplication: core.breakExactlyOnce = true
            case .reacquireNewLease: core.registryFaults.insert(.reacquireGrantsNewLease)
            case .retireAtOnce: core.expiry.retentionSeconds = 0
            case .earlyClusterVersion: core.breakClusterVersionGate = true
            case .voteBeforePersist, .noFsync, nil: break
            }
        }
    }
#endif

#if NODELEASE_FAULTS
    /// A monotonic clock whose rate comes from a file (the fault build's clock nemesis): the
    /// rate applies from the instant it is read, so changing it bends the clock, never jumps it.
    final class FaultClock: @unchecked Sendable {
        private let path: String
        private let lock = NSLock()
        private var rate = 1.0
        private var rawBase: UInt64 = 0
        private var base: UInt64 = 0
        private var lastRead: UInt64 = 0

        init(path: String) { self.path = path }

        func now(raw: UInt64) -> UInt64 {
            lock.lock()
            defer { lock.unlock() }
            if raw >= lastRead + 200_000_000 {
                lastRead = raw
                let text = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
                if let r = text.flatMap(Double.init), r > 0.5, r < 2, r != rate {
                    base = scaled(raw)
                    rawBase = raw
                    rate = r
                }
            }
            return scaled(raw)
        }

        private func scaled(_ raw: UInt64) -> UInt64 {
            base + UInt64(Double(raw - rawBase) * rate)
        }
    }
#endif

/// The bugs the fault build of the server can plant (`NODELEASE_FAULT=NAME`, see the server's
/// `PlantedFault`), with the faults that expose each and the checkers meant to catch it. The
/// Jepsen suite's `--planted NAME` runs against the fault build and passes only if the history
/// is invalid by one of those checkers.
public struct PlantedBug: Sendable, Hashable {
    public var name: String
    /// The nemesis a run for this bug uses unless told otherwise.
    public var nemesis: String
    /// Checkers whose anomalies count as catching it.
    public var checkers: [String]

    public static let all: [PlantedBug] = [
        PlantedBug(name: "skip-read-barrier", nemesis: "partition,pause", checkers: ["read-after-write", "linearizability", "indexed-reads"]),
        PlantedBug(name: "read-before-catch-up", nemesis: "kill,power", checkers: ["read-index", "indexed-reads"]),
        PlantedBug(name: "vote-before-persist", nemesis: "election-crash", checkers: ["election", "same-index-reads", "linearizability", "final-state"]),
        PlantedBug(name: "no-fsync", nemesis: "power", checkers: ["linearizability", "final-state", "read-index", "election", "same-index-reads"]),
        PlantedBug(name: "no-expiry-margin", nemesis: "drift", checkers: ["linearizability", "lease-safety"]),
        PlantedBug(name: "expire-ignores-renewal", nemesis: "slow-disk", checkers: ["linearizability", "lease-safety"]),
        PlantedBug(name: "no-failover-reset", nemesis: "kill", checkers: ["linearizability", "lease-safety"]),
        PlantedBug(name: "no-dedup", nemesis: "kill,partition", checkers: ["idempotency", "linearizability", "lease-safety", "indexed-reads"]),
        PlantedBug(name: "reacquire-new-lease", nemesis: "none", checkers: ["linearizability"]),
        PlantedBug(name: "retire-at-once", nemesis: "none", checkers: ["linearizability"]),
        PlantedBug(name: "early-cluster-version", nemesis: "upgrade", checkers: ["cluster-version"]),
    ]

    public static func named(_ name: String) -> PlantedBug? { all.first { $0.name == name } }
}

import Raft

/// The cluster version: which commands and formats the replicas may use. It is agreed through
/// the log (`setClusterVersion`, proposed by the leader once every member reports that it
/// supports the new one), so a replica of a newer build never proposes, or sends in a
/// snapshot, something an older member cannot apply. It only goes up.
///
/// - 1: the first release's commands (kinds 1 to 8) and registry snapshots (versions 2 to 4).
/// - 2: `setClusterVersion` (kind 9) and registry snapshot version 5, which records the
///   cluster version (a registry at cluster version 1 is still written as version 4).
/// - 3: a write without an idempotency key carries its replica's session stamp instead of a
///   key the replica chose (entry format version 3, `SessionStamp`), and registry snapshot
///   version 6, which records the sessions.
public enum ClusterVersion {
    /// The newest cluster version this build supports.
    public static let newest: UInt32 = 3

    /// The version the leader should move the cluster to: the lowest any member supports, when
    /// every member has reported and that is above `current`; nil otherwise (a member that has
    /// not reported, a down one or one of a build that predates the report, holds it). Learners
    /// count too: they apply the same log.
    public static func target(current: UInt32, members: [ReplicaID], supported: [ReplicaID: UInt32]) -> UInt32? {
        guard !members.isEmpty else { return nil }
        var lowest = UInt32.max
        for m in members {
            guard let v = supported[m] else { return nil }
            lowest = min(lowest, v)
        }
        return lowest > current ? lowest : nil
    }

    /// The command kinds a build supporting up to `supported` knows.
    public static func commandKinds(_ supported: UInt32) -> ClosedRange<UInt8> { supported >= 2 ? 1...9 : 1...8 }

    /// The registry snapshot versions a build supporting up to `supported` reads.
    public static func snapshotVersions(_ supported: UInt32) -> ClosedRange<UInt8> { supported >= 3 ? 2...6 : supported >= 2 ? 2...5 : 2...4 }
}

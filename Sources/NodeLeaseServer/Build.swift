import LeaseRegistry

/// This build, as `nodelease --version` and `GET /v1/status` name it.
public enum NodeLeaseBuild {
    /// 0.1: the builds before backups and the cluster version (which support cluster version
    /// 1 only and do not report it); 0.2: backups, versioned formats and cluster version 2;
    /// 0.3: replica sessions for writes without a key (cluster version 3).
    public static let version = "0.3.0"
    public static let newestClusterVersion = ClusterVersion.newest
}

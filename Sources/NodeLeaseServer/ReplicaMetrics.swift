import Metrics
import NIOConcurrencyHelpers
import Prometheus
import Raft

/// One replica's metrics: swift-metrics instruments backed by a Prometheus registry of its
/// own (so several replicas can live in one process, as in `nodelease dev` and the tests).
final class ReplicaMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    let factory: PrometheusMetricsFactory

    let term: Metrics.Gauge
    let commitIndex: Metrics.Gauge
    let appliedIndex: Metrics.Gauge
    let proposals: Metrics.Counter
    let fsync: Metrics.Timer
    let roles: [(String, Metrics.Gauge)]
    let nodes: [(String, Metrics.Gauge)]
    let watches: Metrics.Gauge
    let registryIndex: Metrics.Gauge
    /// Renders of the whole registry made off the event loop (each shared by the reads it covers).
    let registryRenders: Metrics.Counter
    let rendersWaiting: Metrics.Gauge
    let renderTime: Metrics.Timer

    init() {
        var f = PrometheusMetricsFactory(registry: registry)
        f.defaultDurationHistogramBuckets = [
            .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2),
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5),
        ]
        factory = f
        term = Metrics.Gauge(label: "nodelease_raft_term", factory: f)
        commitIndex = Metrics.Gauge(label: "nodelease_raft_commit_index", factory: f)
        appliedIndex = Metrics.Gauge(label: "nodelease_raft_applied_index", factory: f)
        proposals = Metrics.Counter(label: "nodelease_raft_proposals_total", factory: f)
        fsync = Metrics.Timer(label: "nodelease_wal_fsync_seconds", factory: f)
        roles = ["leader", "follower", "candidate"].map { ($0, Metrics.Gauge(label: "nodelease_raft_role", dimensions: [("role", $0)], factory: f)) }
        nodes = ["active", "stale", "inactive"].map { ($0, Metrics.Gauge(label: "nodelease_nodes", dimensions: [("status", $0)], factory: f)) }
        watches = Metrics.Gauge(label: "nodelease_registry_watches", factory: f)
        registryIndex = Metrics.Gauge(label: "nodelease_registry_index", factory: f)
        registryRenders = Metrics.Counter(label: "nodelease_registry_renders_total", factory: f)
        rendersWaiting = Metrics.Gauge(label: "nodelease_registry_reads_waiting_for_render", factory: f)
        renderTime = Metrics.Timer(label: "nodelease_registry_render_seconds", factory: f)
    }

    /// One timer per endpoint and status, made on first use (not on every request).
    private let requestTimers = NIOLockedValueBox<[String: Metrics.Timer]>([:])

    /// Records one HTTP request.
    func request(endpoint: String, status: Int, duration: Duration) {
        let key = "\(endpoint) \(status)"
        let timer = requestTimers.withLockedValue { timers in
            if let t = timers[key] { return t }
            let t = Metrics.Timer(
                label: "nodelease_http_request_duration_seconds", dimensions: [("endpoint", endpoint), ("status", String(status))],
                factory: factory)
            timers[key] = t
            return t
        }
        timer.recordNanoseconds(duration.nanoseconds)
    }

    /// Brings the gauges up to date and renders everything in the Prometheus text format.
    func render(_ s: ReplicaStatus) -> [UInt8] {
        term.record(Int64(s.term.rawValue))
        commitIndex.record(Int64(s.commitIndex.rawValue))
        appliedIndex.record(Int64(s.appliedIndex.rawValue))
        let role = s.role == .leader ? "leader" : s.role == .follower ? "follower" : "candidate"
        for (name, g) in roles { g.record(name == role ? 1 : 0) }
        let counts = [("active", s.counts.active), ("stale", s.counts.stale), ("inactive", s.counts.inactive)]
        for ((_, g), (_, n)) in zip(nodes, counts) { g.record(n) }
        watches.record(s.watches)
        rendersWaiting.record(s.rendersWaiting)
        registryIndex.record(Int64(s.registryIndex))
        for p in s.peers {
            Metrics.Gauge(label: "nodelease_peer_reachable", dimensions: [("peer", p.id.description)], factory: factory).record(p.reachable ? 1 : 0)
        }
        return registry.emitToBuffer()
    }
}

extension Duration {
    var nanoseconds: Int64 {
        components.seconds * 1_000_000_000 + components.attoseconds / 1_000_000_000
    }
}

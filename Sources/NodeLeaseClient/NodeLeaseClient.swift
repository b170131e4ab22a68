import Foundation
import NIOConcurrencyHelpers

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// The client API of shared/API.md, for nodes and tools.
///
/// It knows a list of replica endpoints, learns which replica leads from the
/// `X-NodeLease-Leader` and `X-NodeLease-Replica` headers, sends writes there, and fails over to
/// the next endpoint on a connection error or a `503`. Every call has a deadline, and is
/// retried with jittered backoff within it. Every write carries an `Idempotency-Key` that is
/// new for the call and the same for each of its retries, so a write whose answer was lost is
/// applied once however often it is sent (shared/API.md, "Exactly once"); a repeat is answered
/// with the first outcome.
public final class NodeLeaseClient: Sendable {
    public let endpoints: [URL]
    /// How long one call may take, retries included.
    public let timeout: Duration
    private let session: URLSession
    private struct State {
        var replicaEndpoint: [UInt64: Int] = [:]
        var leader: UInt64?
        var next = 0
    }
    private let state = NIOLockedValueBox(State())

    /// - Parameter endpoints: base URLs such as `http://127.0.0.1:7401`.
    public init(endpoints: [URL], timeout: Duration = .seconds(10)) {
        precondition(!endpoints.isEmpty, "NodeLeaseClient needs at least one endpoint")
        self.endpoints = endpoints
        self.timeout = timeout
        let config = URLSessionConfiguration.ephemeral
        config.timeoutIntervalForRequest = 6
        config.httpMaximumConnectionsPerHost = 4
        self.session = URLSession(configuration: config)
    }

    /// Endpoints from a comma-separated list (`NODELEASE_ENDPOINTS`), `host:port` or URLs.
    public static func parseEndpoints(_ text: String) throws -> [URL] {
        let items = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !items.isEmpty else { throw NodeLeaseError.invalidRequest("no endpoints given") }
        return try items.map { item in
            let s = item.contains("://") ? item : "http://" + item
            guard let url = URL(string: s), url.host != nil else { throw NodeLeaseError.invalidRequest("bad endpoint \(item)") }
            return url
        }
    }

    /// A client for `NODELEASE_ENDPOINTS`, or the local 3-replica cluster when it is unset.
    public static func fromEnvironment(timeout: Duration = .seconds(10)) throws -> NodeLeaseClient {
        let text = ProcessInfo.processInfo.environment["NODELEASE_ENDPOINTS"] ?? "127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403"
        return NodeLeaseClient(endpoints: try parseEndpoints(text), timeout: timeout)
    }

    // MARK: Calls

    /// Acquires (or, for the same holder, renews) the lease of `hostname`.
    public func acquire(hostname: String, holder: String, ttlSeconds: Int? = nil, timeout: Duration? = nil) async throws(NodeLeaseError) -> Lease {
        var body: [String: Any] = ["hostname": hostname, "holder": holder]
        if let ttlSeconds { body["ttlSeconds"] = ttlSeconds }
        return try await call("POST", "/v1/leases", body: body, timeout: timeout)
    }

    /// Renews a lease. `timeout` overrides the client's (a keeper passes the time left on
    /// its lease).
    public func renew(leaseId: String, timeout: Duration? = nil) async throws(NodeLeaseError) -> Lease {
        try await call("POST", "/v1/leases/\(leaseId)/renew", body: nil, timeout: timeout)
    }

    /// Releases a lease; the node becomes inactive.
    public func release(leaseId: String, timeout: Duration? = nil) async throws(NodeLeaseError) -> ClusterNode {
        try await call("DELETE", "/v1/leases/\(leaseId)", body: nil, timeout: timeout)
    }

    /// Forgets a stale or inactive node; its ID and hostname become free.
    public func forget(nodeId: UInt32) async throws(NodeLeaseError) -> ClusterNode {
        try await call("DELETE", "/v1/cluster/nodes/\(nodeId)", body: nil)
    }

    public func nodes(status: String? = nil, linearizable: Bool = false) async throws(NodeLeaseError) -> [ClusterNode] {
        var q: [String] = []
        if let status { q.append("status=\(status)") }
        if linearizable { q.append("consistency=linearizable") }
        return try await call("GET", "/v1/cluster/nodes" + (q.isEmpty ? "" : "?" + q.joined(separator: "&")), body: nil)
    }

    public func node(_ id: UInt32, linearizable: Bool = false) async throws(NodeLeaseError) -> ClusterNode {
        try await call("GET", "/v1/cluster/nodes/\(id)" + (linearizable ? "?consistency=linearizable" : ""), body: nil)
    }

    /// Every endpoint's status, in endpoint order; unreachable ones as errors.
    public func statusOfAll() async -> [(endpoint: URL, status: Result<ReplicaStatusView, NodeLeaseError>)] {
        var out: [(URL, Result<ReplicaStatusView, NodeLeaseError>)] = []
        for (i, url) in endpoints.enumerated() {
            do {
                let (status, data, _) = try await send(i, "GET", "/v1/status", body: nil, key: nil, timeout: 2)
                guard status == 200, let s = try? JSONDecoder().decode(ReplicaStatusView.self, from: data) else {
                    out.append((url, .failure(.unexpected(status: status, body: String(decoding: data, as: UTF8.self)))))
                    continue
                }
                state.withLockedValue { $0.replicaEndpoint[s.replicaId] = i }
                out.append((url, .success(s)))
            } catch {
                out.append((url, .failure(.transport("\(error.localizedDescription)"))))
            }
        }
        return out
    }

    // MARK: Transport

    private func call<T: Decodable>(_ method: String, _ path: String, body: [String: Any]?, timeout: Duration? = nil) async throws(NodeLeaseError) -> T {
        // One key for the logical request, the same on every retry; its retries end well inside
        // the servers' idempotency window (10 minutes), or a late one could apply again.
        let key = method == "GET" ? nil : UUID().uuidString
        let deadline = ContinuousClock.now + min(timeout ?? self.timeout, key == nil ? .seconds(3600) : Self.maxWriteCall)
        var attempt = 0
        while true {
            let i = pickEndpoint(attempt: attempt)
            attempt += 1
            var lastError: NodeLeaseError
            do {
                let remaining = deadline - ContinuousClock.now
                let seconds = max(0.05, Double(remaining.components.seconds) + Double(remaining.components.attoseconds) / 1e18)
                let (status, data, _) = try await send(i, method, path, body: body, key: key, timeout: seconds)
                if status == 200 {
                    do { return try JSONDecoder().decode(T.self, from: data) } catch {
                        throw NodeLeaseError.unexpected(status: status, body: String(decoding: data, as: UTF8.self))
                    }
                }
                let e = Self.error(status: status, data: data)
                guard e == .noLeader else { throw e }
                lastError = e
            } catch let e as NodeLeaseError {
                throw e
            } catch {
                lastError = .transport("\(endpoints[i]): \(error.localizedDescription)")
                state.withLockedValue { s in
                    if let l = s.leader, s.replicaEndpoint[l] == i { s.leader = nil }
                }
            }
            // Another endpoint after a jittered, capped backoff, while the deadline allows.
            let cap = min(1000, 50 << min(attempt, 5))
            let backoff = Duration.milliseconds(cap / 2 + Int.random(in: 0...(cap / 2)))
            guard ContinuousClock.now + backoff < deadline else { throw lastError }
            try? await Task.sleep(for: backoff)
        }
    }

    /// The longest a write is retried under one idempotency key.
    public static let maxWriteCall: Duration = .seconds(60)

    private func pickEndpoint(attempt: Int) -> Int {
        state.withLockedValue { s in
            if attempt == 0, let l = s.leader, let i = s.replicaEndpoint[l] { return i }
            s.next = (s.next + 1) % endpoints.count
            return s.next
        }
    }

    private func send(_ i: Int, _ method: String, _ path: String, body: [String: Any]?, key: String?, timeout: Double) async throws -> (Int, Data, HTTPURLResponse) {
        var request = URLRequest(url: endpoints[i].appendingPathComponent(String(path.prefix { $0 != "?" })))
        if let q = path.firstIndex(of: "?"), var c = URLComponents(url: request.url!, resolvingAgainstBaseURL: false) {
            c.percentEncodedQuery = String(path[path.index(after: q)...])
            request.url = c.url
        }
        request.httpMethod = method
        request.timeoutInterval = timeout
        if let key { request.setValue(key, forHTTPHeaderField: "Idempotency-Key") }
        if let body {
            request.httpBody = try JSONSerialization.data(withJSONObject: body)
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        }
        let (data, response) = try await session.data(for: request)
        guard let http = response as? HTTPURLResponse else { throw NodeLeaseError.transport("not an HTTP answer") }
        if let replica = http.value(forHTTPHeaderField: "X-NodeLease-Replica").flatMap(UInt64.init) {
            let leader = http.value(forHTTPHeaderField: "X-NodeLease-Leader").flatMap(UInt64.init)
            state.withLockedValue {
                $0.replicaEndpoint[replica] = i
                $0.leader = leader
            }
        }
        return (http.statusCode, data, http)
    }

    static func error(status: Int, data: Data) -> NodeLeaseError {
        let json = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:]
        let message = json["message"] as? String ?? String(decoding: data, as: UTF8.self)
        switch json["error"] as? String {
        case "hostname_in_use":
            return .hostnameInUse(
                nodeId: UInt32(json["nodeId"] as? Int ?? 0), holder: json["holder"] as? String ?? "?",
                expiresInSeconds: UInt64(json["expiresInSeconds"] as? Int ?? 0))
        case "lease_not_found": return .leaseNotFound
        case "node_not_found": return .nodeNotFound
        case "node_active": return .nodeActive
        case "node_ids_exhausted": return .nodeIDsExhausted
        case "no_leader": return .noLeader
        case "invalid_request", "request_too_large": return .invalidRequest(message)
        case "idempotency_key_mismatch": return .idempotencyKeyMismatch
        default: return .unexpected(status: status, body: message)
        }
    }
}

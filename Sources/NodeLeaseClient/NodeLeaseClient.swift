import AsyncHTTPClient
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOSSL

/// The client API of shared/API.md, for nodes and tools.
///
/// It knows a list of replica endpoints, learns which replica leads from the
/// `X-NodeLease-Leader` and `X-NodeLease-Replica` headers, sends writes there, and fails over to
/// the next endpoint on a connection error or a `503`. Every call has a deadline, and is
/// retried with jittered backoff within it. Every write carries an `Idempotency-Key` that is
/// new for the call and the same for each of its retries, so a write whose answer was lost is
/// applied once however often it is sent (shared/API.md, "Exactly once"); a repeat is answered
/// with the first outcome.
///
/// It follows the cluster's membership: the endpoint list becomes the replicas' client
/// addresses whenever it learns the replica configuration (`GET /v1/cluster/replicas`), by
/// `replicas()`, a membership change, or the refresh that a call makes when the list is 30 s
/// old or when no endpoint could be connected to (see `exchange`). With a `node` token, which
/// may not read the replica list, it keeps the endpoints it was given: give it every replica.
public final class NodeLeaseClient: Sendable {
    /// The endpoints in use: those given to `init` until the replica configuration is learned,
    /// then the replicas' client addresses, voters first.
    public var endpoints: [URL] { state.withLockedValue { $0.endpoints } }
    /// How long one call may take, retries included.
    public let timeout: Duration
    /// The endpoints given to `init`; also asked for the replica list when none of the list in
    /// use can be connected to.
    private let configured: [URL]
    private let http: HTTPClient
    private struct State {
        /// Never empty.
        var endpoints: [URL]
        /// Where each replica answers (from the `X-NodeLease-Replica` header or the replica list).
        var replicaEndpoint: [UInt64: URL] = [:]
        var leader: UInt64?
        /// Index of the endpoint last picked in turn (always taken modulo the list's length).
        var next = 0
        /// When the replica list was last fetched or asked for (at first, when the client was made).
        var lastRefresh: ContinuousClock.Instant
        /// Whether a call is fetching the replica list now (one at a time).
        var refreshing = false
        /// The token may not read the replica list (a `node` token): the list stays as given.
        var mayNotRefresh = false
    }
    private let state: NIOLockedValueBox<State>

    /// How often a call refreshes the endpoint list from the replica configuration.
    public let refreshInterval: Duration
    private let token: String?
    private let tlsProblem: String?

    /// - Parameter endpoints: base URLs such as `http://127.0.0.1:7401`.
    /// - Parameter refreshInterval: how often the endpoint list is fetched again from
    ///   `/v1/cluster/replicas` (30 s).
    /// - Parameter token: sent as `Authorization: Bearer TOKEN` when the cluster has
    ///   authentication on (shared/API.md); never logged.
    /// - Parameter tls: for `https://` endpoints (see `TLS`).
    public init(
        endpoints: [URL], timeout: Duration = .seconds(10), refreshInterval: Duration = .seconds(30), token: String? = nil, tls: TLS? = nil
    ) {
        self.refreshInterval = refreshInterval
        self.token = token.flatMap { $0.isEmpty ? nil : $0 }
        precondition(!endpoints.isEmpty, "NodeLeaseClient needs at least one endpoint")
        self.configured = endpoints
        self.state = NIOLockedValueBox(State(endpoints: endpoints, lastRefresh: ContinuousClock.now))
        self.timeout = timeout
        // A TLS file that cannot be read fails every call with the reason (the initializer
        // does not throw, as before TLS).
        var tlsConfiguration: TLSConfiguration?
        do {
            tlsConfiguration = try tls?.configuration()
            tlsProblem = nil
        } catch {
            tlsProblem = "TLS files \(tls.map { "\($0)" } ?? ""): \(error)"
        }
        var configuration = HTTPClient.Configuration(
            tlsConfiguration: tlsConfiguration,
            timeout: .init(connect: .seconds(2)),
            // Shorter than the replicas' 10 s: a replica never closes a pooled connection just
            // as a request goes out on it.
            connectionPool: .init(idleTimeout: .seconds(5)))
        configuration.httpVersion = .http1Only
        // A replica that refuses connections is down: fail over to the next one at once
        // instead of redialing it until the call's deadline (AsyncHTTPClient's default).
        configuration.connectionPool.retryConnectionEstablishment = false
        self.http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    deinit {
        http.shutdown { _ in }
    }

    /// TLS to the replicas' client port: the CA that issued their certificates (the system's
    /// roots when nil) and, for replicas that require one, this client's certificate and key
    /// (PEM files). Replica certificates are checked against the endpoint's host name.
    public struct TLS: Sendable, Equatable {
        public var caFile: String?
        public var certificateFile: String?
        public var keyFile: String?
        public init(caFile: String?, certificateFile: String? = nil, keyFile: String? = nil) {
            self.caFile = caFile
            self.certificateFile = certificateFile
            self.keyFile = keyFile
        }

        /// The TLS configuration, with the certificate and key read from their files.
        public func configuration() throws -> TLSConfiguration {
            var c = TLSConfiguration.makeClientConfiguration()
            if let caFile { c.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile)) }
            switch (certificateFile, keyFile) {
            case (let certificateFile?, let keyFile?):
                c.certificateChain = try NIOSSLCertificate.fromPEMFile(certificateFile).map { .certificate($0) }
                c.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem))
            case (nil, nil): break
            default: throw NodeLeaseError.invalidRequest("a client certificate needs both its certificate and its key file")
            }
            c.minimumTLSVersion = .tlsv12
            return c
        }

        /// `NODELEASE_CA_FILE`, `NODELEASE_CERT_FILE` and `NODELEASE_KEY_FILE`; nil if none is set.
        public static func fromEnvironment(_ env: [String: String] = ProcessInfo.processInfo.environment) -> TLS? {
            let ca = env["NODELEASE_CA_FILE"].flatMap { $0.isEmpty ? nil : $0 }
            let cert = env["NODELEASE_CERT_FILE"].flatMap { $0.isEmpty ? nil : $0 }
            let key = env["NODELEASE_KEY_FILE"].flatMap { $0.isEmpty ? nil : $0 }
            if ca == nil && cert == nil && key == nil { return nil }
            return TLS(caFile: ca, certificateFile: cert, keyFile: key)
        }
    }

    /// Endpoints from a comma-separated list (`NODELEASE_ENDPOINTS`), `host:port` (with
    /// `defaultScheme`) or URLs.
    public static func parseEndpoints(_ text: String, defaultScheme: String = "http") throws -> [URL] {
        let items = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !items.isEmpty else { throw NodeLeaseError.invalidRequest("no endpoints given") }
        return try items.map { item in
            let s = item.contains("://") ? item : defaultScheme + "://" + item
            guard let url = URL(string: s), url.host != nil else { throw NodeLeaseError.invalidRequest("bad endpoint \(item)") }
            return url
        }
    }

    /// A client for `NODELEASE_ENDPOINTS`, or the local 3-replica cluster when it is unset,
    /// with the token of `NODELEASE_TOKEN` if set.
    public static func fromEnvironment(timeout: Duration = .seconds(10)) throws -> NodeLeaseClient {
        let env = ProcessInfo.processInfo.environment
        let text = env["NODELEASE_ENDPOINTS"] ?? "127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403"
        let tls = TLS.fromEnvironment(env)
        return NodeLeaseClient(
            endpoints: try parseEndpoints(text, defaultScheme: tls == nil ? "http" : "https"), timeout: timeout, token: env["NODELEASE_TOKEN"],
            tls: tls)
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

    /// A backup of the registry (`GET /v1/snapshot`, admin role), streamed into `sink` as it
    /// arrives: the leader first, then the other endpoints, while replicas answer 503 or
    /// cannot be reached, within `timeout` (the whole transfer included). Returns the committed
    /// index it reflects and the endpoint that sent it.
    public func backup(into sink: any DownloadSink, timeout: Duration? = nil) async throws(NodeLeaseError) -> (index: UInt64, replica: URL) {
        if let tlsProblem { throw NodeLeaseError.invalidRequest(tlsProblem) }
        let deadline = ContinuousClock.now + (timeout ?? self.timeout)
        var attempt = 0
        var lastError = NodeLeaseError.noLeader
        while true {
            let url = pickEndpoint(attempt: attempt)
            attempt += 1
            do {
                var base = url.absoluteString
                while base.hasSuffix("/") { base.removeLast() }
                var request = HTTPClientRequest(url: base + "/v1/snapshot")
                request.method = .GET
                if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
                let answer = try await http.download(request, deadline: deadline, into: sink, maxErrorBody: 1 << 20)
                if let error = answer.errorBody {
                    let e = Self.error(status: Int(answer.status.code), data: Data(error.readableBytesView))
                    guard e == .noLeader else { throw e }
                    lastError = e
                } else {
                    guard let index = answer.headers.first(name: "X-NodeLease-Snapshot-Index").flatMap(UInt64.init) else {
                        throw NodeLeaseError.unexpected(status: 200, body: "no X-NodeLease-Snapshot-Index header")
                    }
                    return (index, url)
                }
            } catch let e as NodeLeaseError {
                throw e
            } catch is HTTPDeadlineExceeded {
                throw NodeLeaseError.transport("\(url): the backup did not arrive within the timeout")
            } catch {
                lastError = .transport("\(url): \(error)")
            }
            let backoff = Duration.milliseconds(min(1000, 50 << min(attempt, 5)))
            guard ContinuousClock.now + backoff < deadline, !Task.isCancelled else { throw lastError }
            try? await Task.sleep(for: backoff)
        }
    }

    /// One replica's status (the leader's when it is known, else any that answers).
    public func status() async throws(NodeLeaseError) -> ReplicaStatusView {
        try await call("GET", "/v1/status", body: nil)
    }

    /// Every endpoint's status, in endpoint order; unreachable ones as errors.
    public func statusOfAll() async -> [(endpoint: URL, status: Result<ReplicaStatusView, NodeLeaseError>)] {
        if let tlsProblem { return endpoints.map { ($0, .failure(.invalidRequest(tlsProblem))) } }
        var out: [(URL, Result<ReplicaStatusView, NodeLeaseError>)] = []
        for url in endpoints {
            do {
                let (status, data) = try await send(url, "GET", "/v1/status", body: nil, key: nil, timeout: 2)
                guard status == 200, let s = try? JSONDecoder().decode(ReplicaStatusView.self, from: data) else {
                    out.append((url, .failure(.unexpected(status: status, body: String(decoding: data, as: UTF8.self)))))
                    continue
                }
                state.withLockedValue { $0.replicaEndpoint[s.replicaId] = url }
                out.append((url, .success(s)))
            } catch {
                out.append((url, .failure(.transport("\(error)"))))
            }
        }
        return out
    }

    // MARK: Watching the registry

    /// The registry at one registry index (shared/API.md, "Watching the registry").
    public struct RegistrySnapshot: Sendable, Hashable {
        /// Every node (or those of the watch's status), by node ID.
        public var nodes: [ClusterNode]
        /// The index of the last change of any node's ID, hostname or status.
        public var registryIndex: UInt64
        /// The replica that answered.
        public var replica: UInt64?
        /// The index went back (another replica behind, or a restored cluster): this is the
        /// registry afresh, not a change from the one before.
        public var reset: Bool
    }

    /// The registry, then the registry again after every change of a node's ID, hostname or
    /// status (never for a renewal alone), as long as the loop runs: long polls of `wait`
    /// each, sent where the client's calls go (the leader once known, the next replica of the
    /// endpoint list after a failure or a `503`, the list refreshed from the replica
    /// configuration as for every call). A snapshot whose index goes backwards, or that the
    /// replica marks as a reset, is the registry afresh (`reset`). Transport errors and `503`
    /// are retried with a jittered backoff of up to 5 s; an error no retry can help
    /// (`unauthenticated`, `forbidden`, `invalidRequest`) ends the sequence with it.
    /// `wait` is at most 5 minutes (longer is taken as 5); `linearizable` reads each snapshot
    /// through the leader's quorum.
    public func watchNodes(status: String? = nil, linearizable: Bool = false, wait: Duration = .seconds(60)) -> RegistryWatch {
        RegistryWatch(client: self, status: status, linearizable: linearizable, wait: min(wait, .seconds(300)))
    }

    /// `watchNodes()`' sequence.
    public struct RegistryWatch: AsyncSequence, Sendable {
        public typealias Element = RegistrySnapshot
        let client: NodeLeaseClient
        let status: String?
        let linearizable: Bool
        let wait: Duration

        public func makeAsyncIterator() -> Iterator { Iterator(watch: self) }

        /// What a poll's answer gives, after the snapshot of index `last` (nil: none yet): the
        /// snapshot to hand on (nil: the wait passed with no change) and the index to wait on
        /// next. An index that went back, or a reset, is the registry afresh.
        static func step(last: UInt64?, answer s: RegistrySnapshot) -> (RegistrySnapshot?, UInt64) {
            guard let last else { return (s, s.registryIndex) }
            if s.reset || s.registryIndex < last {
                var fresh = s
                fresh.reset = true
                return (fresh, s.registryIndex)
            }
            return (s.registryIndex > last ? s : nil, Swift.max(last, s.registryIndex))
        }

        public struct Iterator: AsyncIteratorProtocol {
            let watch: RegistryWatch
            /// The index of the last snapshot given (nil: none yet).
            var index: UInt64?
            var failures = 0

            public mutating func next() async throws -> RegistrySnapshot? {
                while !Task.isCancelled {
                    let waitIndex = index
                    do {
                        let s = try await watch.client.poll(
                            status: watch.status, linearizable: watch.linearizable, waitIndex: waitIndex, wait: watch.wait, attempt: failures)
                        failures = 0
                        let (given, next) = RegistryWatch.step(last: waitIndex, answer: s)
                        index = next
                        if let given { return given }
                        // The wait passed with no change: ask again.
                    } catch let e {
                        switch e {
                        case .unauthenticated, .forbidden, .invalidRequest: throw e
                        default: break
                        }
                        failures += 1
                        let cap = Swift.min(5000, 100 << Swift.min(failures, 6))
                        try? await Task.sleep(for: .milliseconds(cap / 2 + Int.random(in: 0...(cap / 2))))
                    }
                }
                return nil
            }
        }
    }

    /// One long poll (or, without `waitIndex`, one read) of the registry, sent once: the
    /// sequence retries, with a whole wait each time (a retry inside one call would have only
    /// what is left of the call's deadline, and time out on a healthy replica).
    /// `attempt`: how many polls failed in a row; after a failure the next goes to the next
    /// endpoint in turn, not again to the leader (whose watch places may be full).
    func poll(status: String?, linearizable: Bool, waitIndex: UInt64?, wait: Duration, attempt: Int = 0) async throws(NodeLeaseError) -> RegistrySnapshot {
        var q: [String] = []
        if let status { q.append("status=\(status)") }
        if linearizable { q.append("consistency=linearizable") }
        var timeout = self.timeout
        if let waitIndex {
            let ms = max(0, wait.components.seconds * 1000 + wait.components.attoseconds / 1_000_000_000_000_000)
            q.append("waitIndex=\(waitIndex)")
            q.append("wait=\(ms)ms")
            // The wait, its jitter (a sixteenth) and the client's own timeout for the rest.
            timeout = .milliseconds(ms + ms / 16) + self.timeout
        }
        let path = "/v1/cluster/nodes" + (q.isEmpty ? "" : "?" + q.joined(separator: "&"))
        let answer = try await exchange("GET", path, body: nil, timeout: timeout, refresh: true, once: true, firstAttempt: attempt) { data, headers in
            RegistrySnapshot(
                nodes: try JSONDecoder().decode([ClusterNode].self, from: data),
                registryIndex: headers.first(name: "X-NodeLease-Registry-Index").flatMap(UInt64.init) ?? 0,
                replica: headers.first(name: "X-NodeLease-Replica").flatMap(UInt64.init),
                reset: headers.first(name: "X-NodeLease-Index-Reset") == "true")
        }
        return answer.value
    }

    // MARK: Replicas (membership)

    /// The replica configuration (`GET /v1/cluster/replicas`); its client addresses become this
    /// client's endpoints.
    public func replicas() async throws(NodeLeaseError) -> ReplicaConfiguration {
        try await configurationCall("GET", "/v1/cluster/replicas", body: nil)
    }

    /// Adds replica `id` as a learner; it is started with an empty data directory and joins.
    /// With `expectedConfigIndex`, the change is refused (`staleConfig`) unless the configuration
    /// is still that one. Answers the configuration once the change has committed.
    public func addReplica(id: UInt64, peerAddress: String, clientAddress: String, expectedConfigIndex: UInt64?) async throws(NodeLeaseError)
        -> ReplicaConfiguration
    {
        var body: [String: Any] = ["replicaId": id, "peerAddress": peerAddress, "clientAddress": clientAddress]
        if let expectedConfigIndex { body["expectedConfigIndex"] = expectedConfigIndex }
        return try await configurationCall("POST", "/v1/cluster/replicas", body: body)
    }

    /// Makes a caught-up learner a voter (`learnerLagging` while it is not caught up).
    public func promoteReplica(id: UInt64, expectedConfigIndex: UInt64?) async throws(NodeLeaseError) -> ReplicaConfiguration {
        var body: [String: Any] = [:]
        if let expectedConfigIndex { body["expectedConfigIndex"] = expectedConfigIndex }
        return try await configurationCall("POST", "/v1/cluster/replicas/\(id)/promote", body: body)
    }

    /// Removes a voter or learner. `force` allows a change that leaves fewer reachable voters
    /// than the quorum (`wouldLoseQuorum` otherwise), for replacing a dead replica.
    public func removeReplica(id: UInt64, expectedConfigIndex: UInt64?, force: Bool) async throws(NodeLeaseError) -> ReplicaConfiguration {
        var q: [String] = []
        if let expectedConfigIndex { q.append("expectedConfigIndex=\(expectedConfigIndex)") }
        if force { q.append("force=true") }
        return try await configurationCall("DELETE", "/v1/cluster/replicas/\(id)" + (q.isEmpty ? "" : "?" + q.joined(separator: "&")), body: nil)
    }

    /// A call answered by the configuration, which then becomes the endpoint list.
    private func configurationCall(_ method: String, _ path: String, body: [String: Any]?) async throws(NodeLeaseError) -> ReplicaConfiguration {
        let answer: (value: ReplicaConfiguration, endpoint: URL) = try await exchange(method, path, body: body, timeout: nil, refresh: false)
        adopt(answer.value, answeredBy: answer.endpoint)
        return answer.value
    }

    /// Makes `config`'s replicas the endpoint list, voters first, then learners, each by id:
    /// `scheme://clientAddress` with the scheme of `source` (the endpoint that answered), whose
    /// host also stands in for a wildcard host (`0.0.0.0`, `::`). An empty list changes nothing.
    private func adopt(_ config: ReplicaConfiguration, answeredBy source: URL) {
        let ordered = config.replicas.sorted { a, b in
            let (aVotes, bVotes) = (a.role == "voter", b.role == "voter")
            return aVotes != bVotes ? aVotes : a.replicaId < b.replicaId
        }
        var urls: [URL] = []
        var byReplica: [UInt64: URL] = [:]
        for r in ordered {
            guard let url = Self.endpoint(clientAddress: r.clientAddress, like: source) else { continue }
            byReplica[r.replicaId] = url
            if !urls.contains(url) { urls.append(url) }
        }
        guard !urls.isEmpty else { return }
        state.withLockedValue { s in
            if s.endpoints != urls {
                s.endpoints = urls
                s.next = 0
            }
            s.replicaEndpoint = byReplica
            if let l = s.leader, byReplica[l] == nil { s.leader = nil }
            s.lastRefresh = ContinuousClock.now
        }
    }

    /// `scheme://HOST:PORT` for a replica's `clientAddress` (`HOST:PORT`, `[V6]:PORT` or
    /// `V6:PORT`), with `source`'s scheme, and `source`'s host for a wildcard host; nil if malformed.
    static func endpoint(clientAddress: String, like source: URL) -> URL? {
        func bare(_ host: String) -> String { host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host }
        let text = clientAddress.trimmingCharacters(in: .whitespaces)
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else { return nil }
        var host = bare(String(text[..<colon]))
        if ["", "0.0.0.0", "::", "::0", "0:0:0:0:0:0:0:0"].contains(host) {
            guard let h = source.host else { return nil }
            host = bare(h)
        }
        if host.contains(":") { host = "[\(host)]" }
        return URL(string: "\(source.scheme ?? "http")://\(host):\(port)")
    }

    // MARK: Transport

    private func call<T: Decodable>(_ method: String, _ path: String, body: [String: Any]?, timeout: Duration? = nil) async throws(NodeLeaseError) -> T {
        let answer: (value: T, endpoint: URL) = try await exchange(method, path, body: body, timeout: timeout, refresh: true)
        return answer.value
    }

    /// Sends a request until an endpoint answers it or the deadline passes, and says which
    /// endpoint answered.
    ///
    /// With `refresh`, it keeps the endpoint list current, within the call's deadline: before
    /// sending, when the list was last fetched 30 s ago or more (`refreshInterval`), and once
    /// when every endpoint of the list has failed with a transport error during this call, it
    /// fetches the replica configuration from the first endpoint that answers (see
    /// `refreshEndpoints`). A failed fetch leaves the list as it was. Only one call fetches at a
    /// time; the others go on with the list they have.
    private func exchange<T: Decodable>(_ method: String, _ path: String, body: [String: Any]?, timeout: Duration?, refresh: Bool)
        async throws(NodeLeaseError) -> (value: T, endpoint: URL)
    {
        try await exchange(method, path, body: body, timeout: timeout, refresh: refresh, once: false) { data, _ in try JSONDecoder().decode(T.self, from: data) }
    }

    /// `exchange` with the answer's body and headers decoded by `decode`.
    /// `once`: one attempt, no retry (the caller retries).
    private func exchange<T>(
        _ method: String, _ path: String, body: [String: Any]?, timeout: Duration?, refresh: Bool, once: Bool, firstAttempt: Int = 0,
        decode: (Data, HTTPHeaders) throws -> T
    ) async throws(NodeLeaseError) -> (value: T, endpoint: URL) {
        if let tlsProblem { throw NodeLeaseError.invalidRequest(tlsProblem) }
        // One key for the logical request, the same on every retry; its retries end well inside
        // the servers' idempotency window (10 minutes), or a late one could apply again.
        let key = method == "GET" ? nil : UUID().uuidString
        let deadline = ContinuousClock.now + min(timeout ?? self.timeout, key == nil ? .seconds(3600) : Self.maxWriteCall)
        if refresh, claimRefresh(periodic: true) { await refreshEndpoints(deadline: deadline, afterFailures: false) }
        var unreachable: Set<URL> = []
        var refreshedAfterFailures = !refresh
        var attempt = firstAttempt
        while true {
            let url = pickEndpoint(attempt: attempt)
            attempt += 1
            var lastError: NodeLeaseError
            do {
                let seconds = max(0.05, Self.seconds(deadline - ContinuousClock.now))
                let (status, data, headers) = try await sendReturningHeaders(url, method, path, body: body, key: key, timeout: seconds)
                if status == 200 {
                    do { return (try decode(data, headers), url) } catch {
                        throw NodeLeaseError.unexpected(status: status, body: String(decoding: data, as: UTF8.self))
                    }
                }
                let e = Self.error(status: status, data: data)
                guard e == .noLeader else { throw e }
                lastError = e
            } catch let e as NodeLeaseError {
                throw e
            } catch {
                lastError = .transport("\(url): \(error)")
                state.withLockedValue { s in
                    if let l = s.leader, s.replicaEndpoint[l] == url { s.leader = nil }
                }
                unreachable.insert(url)
                // None of the list can be connected to: it may be out of date.
                if !refreshedAfterFailures, endpoints.allSatisfy({ unreachable.contains($0) }) {
                    refreshedAfterFailures = true
                    if claimRefresh(periodic: false) { await refreshEndpoints(deadline: deadline, afterFailures: true) }
                }
            }
            if once { throw lastError }
            // Another endpoint after a jittered, capped backoff, while the deadline allows.
            let cap = min(1000, 50 << min(attempt, 5))
            let backoff = Duration.milliseconds(cap / 2 + Int.random(in: 0...(cap / 2)))
            guard ContinuousClock.now + backoff < deadline, !Task.isCancelled else { throw lastError }
            try? await Task.sleep(for: backoff)
        }
    }

    /// The longest a write is retried under one idempotency key.
    public static let maxWriteCall: Duration = .seconds(60)

    /// Whether this call should fetch the replica list now: no other call is fetching it, and,
    /// for the periodic refresh, the last fetch is `refreshInterval` old. Marks it as fetching.
    private func claimRefresh(periodic: Bool) -> Bool {
        state.withLockedValue { s in
            let now = ContinuousClock.now
            guard !s.refreshing, !s.mayNotRefresh, !periodic || now - s.lastRefresh >= refreshInterval else { return false }
            s.refreshing = true
            s.lastRefresh = now
            return true
        }
    }

    /// Fetches the replica configuration and adopts it (`adopt`), asking one endpoint after
    /// another (the leader's first, then the list, then the endpoints given to `init`; after
    /// failures, those given to `init` first) until one answers, for at most half the time left
    /// before `deadline`, so the call keeps time for itself. Ends the claim of `claimRefresh`.
    private func refreshEndpoints(deadline: ContinuousClock.Instant, afterFailures: Bool) async {
        defer { state.withLockedValue { $0.refreshing = false } }
        let start = ContinuousClock.now
        let end = start + (deadline - start) / 2
        let (list, leader) = state.withLockedValue { s in (s.endpoints, s.leader.flatMap { s.replicaEndpoint[$0] }) }
        var candidates = list + configured
        if afterFailures {
            candidates = configured + list
        } else if let leader {
            candidates.insert(leader, at: 0)
        }
        var sources: [URL] = []
        for url in candidates where !sources.contains(url) { sources.append(url) }
        for url in sources {
            let left = Self.seconds(end - ContinuousClock.now)
            guard left >= 0.05 else { return }
            guard let (status, data) = try? await send(url, "GET", "/v1/cluster/replicas", body: nil, key: nil, timeout: min(2, left)) else { continue }
            if status == 403 {
                // A node token may not read it (shared/API.md): keep the endpoints given.
                state.withLockedValue { $0.mayNotRefresh = true }
                return
            }
            guard status == 200, let config = try? JSONDecoder().decode(ReplicaConfiguration.self, from: data) else { continue }
            adopt(config, answeredBy: url)
            return
        }
    }

    private static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }

    private func pickEndpoint(attempt: Int) -> URL {
        state.withLockedValue { s in
            if attempt == 0, let l = s.leader, let url = s.replicaEndpoint[l] { return url }
            s.next = (s.next + 1) % s.endpoints.count
            return s.endpoints[s.next]
        }
    }

    /// One HTTP exchange with its own deadline (AsyncHTTPClient keeps it, and cancels the
    /// request when the calling task is cancelled).
    private func send(_ url: URL, _ method: String, _ path: String, body: [String: Any]?, key: String?, timeout: Double) async throws -> (Int, Data) {
        let (status, data, _) = try await sendReturningHeaders(url, method, path, body: body, key: key, timeout: timeout)
        return (status, data)
    }

    private func sendReturningHeaders(_ url: URL, _ method: String, _ path: String, body: [String: Any]?, key: String?, timeout: Double) async throws
        -> (Int, Data, HTTPHeaders)
    {
        var base = url.absoluteString
        while base.hasSuffix("/") { base.removeLast() }
        var request = HTTPClientRequest(url: base + path)
        request.method = HTTPMethod(rawValue: method)
        if let key { request.headers.add(name: "Idempotency-Key", value: key) }
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let body {
            request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: body)))
            request.headers.add(name: "Content-Type", value: "application/json")
        }
        let response = try await http.exchange(request, deadline: .now + .milliseconds(Int64(timeout * 1000)), maxBody: Self.maxAnswer)
        let buffer = response.body
        if let replica = response.headers.first(name: "X-NodeLease-Replica").flatMap(UInt64.init) {
            let leader = response.headers.first(name: "X-NodeLease-Leader").flatMap(UInt64.init)
            state.withLockedValue {
                $0.replicaEndpoint[replica] = url
                $0.leader = leader
            }
        }
        return (Int(response.status.code), Data(buffer.readableBytesView), response.headers)
    }

    /// The largest answer read (a registry of 2^16 nodes is well under it).
    static let maxAnswer = 64 << 20

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
        case "config_change_in_progress": return .configChangeInProgress
        case "stale_config": return .staleConfig
        case "replica_exists": return .replicaExists
        case "not_found" where message.hasPrefix("replica "): return .replicaNotFound
        case "learner_lagging": return .learnerLagging(message)
        case "would_lose_quorum": return .wouldLoseQuorum(message)
        case "invalid_request", "request_too_large": return .invalidRequest(message)
        case "unauthenticated": return .unauthenticated(message)
        case "forbidden": return .forbidden(message)
        case "idempotency_key_mismatch": return .idempotencyKeyMismatch
        default: return .unexpected(status: status, body: message)
        }
    }
}

import AsyncHTTPClient
import Foundation
import HTTPTypes
import Logging
import Hummingbird
import LeaseRegistry
import Mustache
import NIOCore
import Raft
import RaftStorage

/// The client API of shared/API.md. Routing is a plain switch over the path: every known path
/// answers 405 to other methods, everything else 404, and every error is the API's JSON.
struct HTTPAPI: Sendable {
    let driver: RaftDriver
    let config: ServerConfig
    let metrics: ReplicaMetrics
    /// The token file's tokens; nil: authentication is off (shared/API.md).
    var auth: Authenticator? = nil
    /// The web console's templates (`ConsoleAssets`).
    var consoleTemplates: MustacheLibrary? = nil
    /// The other replicas' status as the console last fetched it.
    let peerStatusCache = PeerStatusCache()
    /// Passes membership changes on to the leader.
    let passOnClient: HTTPClient
    /// Requests in progress, capped at `config.maxConcurrentRequests`.
    let gate = BoundedCounter()
    var logger = Logger(label: "nodelease")
    static let maxBody = 64 * 1024
    static let indexHeader = HTTPField.Name("X-NodeLease-Index")!
    static let replicaHeader = HTTPField.Name("X-NodeLease-Replica")!
    static let leaderHeader = HTTPField.Name("X-NodeLease-Leader")!
    static let idempotencyKeyHeader = HTTPField.Name("Idempotency-Key")!
    static let replayedHeader = HTTPField.Name("Idempotent-Replayed")!
    static let registryIndexHeader = HTTPField.Name("X-NodeLease-Registry-Index")!
    static let indexResetHeader = HTTPField.Name("X-NodeLease-Index-Reset")!
    static let snapshotIndexHeader = HTTPField.Name("X-NodeLease-Snapshot-Index")!

    /// What a request's handling may need of its connection: when it closes (a long poll
    /// then gives up its place), and a way to leave the request gate while it only waits.
    struct Exchange: Sendable {
        var connection: (any Channel)?
        var parked: @Sendable () -> Void
    }

    func respond(to request: Request, connection: (any Channel)? = nil) async -> Response {
        let start = ContinuousClock.now
        let parts = request.uri.path.split(separator: "/", omittingEmptySubsequences: true)
        // The route, once: for the role check, the open health paths and the metrics label.
        let template = Self.template(parts)
        let response: Response
        let health = template == "/healthz" || template == "/readyz"
        // The console authenticates its own way (a sign-in form and a session cookie, or the header).
        let isConsole = parts.first == "ui" || template == "/favicon.ico"
        let slot = GateSlot(gate)
        if !health && !slot.enter(limit: config.maxConcurrentRequests) {
            // The contract's 503 code, so clients retry elsewhere as for any unavailable replica.
            var r = error(.serviceUnavailable, "no_leader", "this replica is at its limit of \(config.maxConcurrentRequests) requests in progress; retry, or ask another replica")
            r.headers[.retryAfter] = "1"
            response = r
        } else {
            // A long poll leaves the gate while it waits (it holds a place among `maxWatches`
            // instead), so a thousand watchers do not starve the writes.
            defer { slot.leave() }
            let exchange = Exchange(connection: connection, parked: { slot.leave() })
            if isConsole {
                response = await console(request, parts, connection: connection, parked: exchange.parked)
            } else {
                switch authenticate(request, open: health, template: template) {
                case .success(let access): response = await route(request, parts, template, access, exchange)
                case .failure(let refusal): response = refusal.response
                }
            }
        }
        metrics.request(
            endpoint: "\(request.method.rawValue) \(template ?? "other")", status: response.status.code, duration: ContinuousClock.now - start)
        return response
    }

    /// The methods each route takes (any other is 405).
    static let methods: [String: Set<HTTPRequest.Method>] = [
        "/healthz": [.get, .head], "/readyz": [.get, .head], "/metrics": [.get], "/v1/status": [.get], "/v1/leases": [.post],
        "/v1/leases/{leaseId}": [.delete], "/v1/leases/{leaseId}/renew": [.post], "/v1/cluster/nodes": [.get],
        "/v1/cluster/nodes/{nodeId}": [.get, .delete], "/v1/cluster/replicas": [.get, .post], "/v1/cluster/replicas/{id}": [.delete],
        "/v1/cluster/replicas/{id}/promote": [.post], "/v1/snapshot": [.get],
    ]

    /// The route of a path, or nil for an unknown path (also the metrics label: never the raw
    /// path, whose ids would explode the labels).
    static func template(_ parts: [Substring]) -> String? {
        let template: String
        switch parts.count {
        case 1 where ["healthz", "readyz", "metrics", "favicon.ico", "ui"].contains(parts[0]): template = "/" + parts[0]
        case 2 where parts[0] == "ui" && ["live", "login", "logout", "console.js", "console.css"].contains(parts[1]): template = "/ui/" + parts[1]
        case 4 where parts[0] == "ui" && parts[1] == "nodes" && parts[3] == "forget": template = "/ui/nodes/{nodeId}/forget"
        case 2 where parts[0] == "v1" && (parts[1] == "status" || parts[1] == "leases" || parts[1] == "snapshot"): template = "/v1/" + parts[1]
        case 3 where parts[0] == "v1" && parts[1] == "leases": template = "/v1/leases/{leaseId}"
        case 4 where parts[0] == "v1" && parts[1] == "leases" && parts[3] == "renew": template = "/v1/leases/{leaseId}/renew"
        case 3 where parts[0] == "v1" && parts[1] == "cluster" && parts[2] == "nodes": template = "/v1/cluster/nodes"
        case 3 where parts[0] == "v1" && parts[1] == "cluster" && parts[2] == "replicas": template = "/v1/cluster/replicas"
        case 4 where parts[0] == "v1" && parts[1] == "cluster" && parts[2] == "replicas": template = "/v1/cluster/replicas/{id}"
        case 5 where parts[0] == "v1" && parts[1] == "cluster" && parts[2] == "replicas" && parts[4] == "promote":
            template = "/v1/cluster/replicas/{id}/promote"
        case 4 where parts[0] == "v1" && parts[1] == "cluster" && parts[2] == "nodes": template = "/v1/cluster/nodes/{nodeId}"
        default: return nil
        }
        return template
    }

    // MARK: Authentication

    /// Who is asking, as far as this request may go.
    struct Access: Sendable {
        /// The token's entry; nil when authentication is off.
        var entry: TokenEntry?
        /// GETs: every role but `node`.
        var mayRead: Bool { entry.map { $0.role != .node } ?? true }
        var isAdmin: Bool { entry.map { $0.role == .admin } ?? true }
        /// Acquire, renew, release: `node` and `admin`.
        var mayWriteLeases: Bool { entry.map { $0.role != .reader } ?? true }
        func mayLease(_ hostname: String) -> Bool { entry?.mayLease(hostname) ?? true }
        /// The 409 names the holder in full only with authentication off or for an admin.
        var seesHolders: Bool { isAdmin }
    }

    /// `/healthz` and `/readyz` are open; with a token file, everything else needs a token
    /// from it. The token is hashed and compared in constant time, and is never logged.
    private func authenticate(_ request: Request, open: Bool, template: String?) -> Result<Access, ErrorResponse> {
        guard let auth, !open else { return .success(Access(entry: nil)) }
        let values = request.headers[values: .authorization]
        // Another replica's console asking for this one's status, with the replicas' token.
        if template == "/v1/status", request.method == .get, values.count == 1, auth.isReplicaStatusToken(authorization: values[0]) {
            return .success(Access(entry: TokenEntry(digest: [], role: .reader, name: "replica")))
        }
        guard values.count == 1, let entry = auth.authenticate(authorization: values[0]) else {
            var r = error(
                .unauthorized, "unauthenticated",
                values.isEmpty ? "this replica needs a token: Authorization: Bearer TOKEN" : "the token is not valid here (unknown, revoked or malformed)")
            r.headers[.wwwAuthenticate] = "Bearer"
            return .failure(ErrorResponse(r))
        }
        return .success(Access(entry: entry))
    }

    func forbidden(_ access: Access, _ what: String) -> Response {
        let role = access.entry?.role.rawValue ?? "?"
        return error(.forbidden, "forbidden", "a \(role) token may not \(what)")
    }

    /// For a `node` token: whether lease `id` is of a hostname the token may lease. A lease this
    /// replica knows has the hostname it was granted with, for good. One it does not know yet
    /// (it lags) is looked up again after a read barrier. One that is not current, with an
    /// id no later than the applied index, can no longer be renewed or released: the write
    /// goes on, to be answered 404, or replayed if its key already applied (a retried release
    /// must get its first answer). An id beyond the applied index after the barrier is no
    /// lease yet: answered 404 here, so a write can never reach a lease granted after it was
    /// authorised.
    private func authorizeLease(_ id: UInt64, _ access: Access) async -> Response? {
        guard let entry = access.entry, entry.role == .node else { return nil }
        var found = await driver.leaseHostname(id)
        if found.hostname == nil && id > found.applied {
            do { _ = try await driver.linearizableBarrier() } catch { return await noLeader() }
            found = await driver.leaseHostname(id)
        }
        if let hostname = found.hostname {
            // The hostname is not named: a node token may not learn which leases are whose.
            return entry.mayLease(hostname) ? nil : forbidden(access, "renew or release this lease (its hostname is outside the token's patterns)")
        }
        return id > found.applied ? error(.notFound, LeaseError.leaseNotFound) : nil
    }

    private func route(_ request: Request, _ parts: [Substring], _ template: String?, _ access: Access, _ exchange: Exchange) async -> Response {
        let method = request.method
        // The role's reach, by route, once the path and method are known to exist (an unknown
        // path is 404 and a wrong method 405 for every role); a node token's hostnames are
        // checked once known.
        if let template, Self.methods[template]?.contains(method) == true {
            switch template {
            case "/healthz", "/readyz": break
            case "/v1/leases", "/v1/leases/{leaseId}", "/v1/leases/{leaseId}/renew":
                if !access.mayWriteLeases { return forbidden(access, "acquire, renew or release leases") }
            case "/v1/snapshot":
                // A backup holds every holder and idempotency outcome: an operator's thing.
                if !access.isAdmin { return forbidden(access, "take a backup of the registry") }
            default:
                if method == .get || method == .head {
                    if !access.mayRead { return forbidden(access, "read the registry, status or metrics") }
                } else if !access.isAdmin {
                    return forbidden(access, "forget nodes or change the replicas")
                }
            }
        }
        switch parts.count {
        case 1 where parts[0] == "healthz":
            guard method == .get || method == .head else { return methodNotAllowed() }
            return json(.ok, Array(#"{"status":"ok"}"#.utf8))
        case 1 where parts[0] == "readyz":
            guard method == .get || method == .head else { return methodNotAllowed() }
            return await driver.isReady
                ? json(.ok, Array(#"{"status":"ready"}"#.utf8))
                : error(.serviceUnavailable, "not_ready", "this replica knows no leader or has not applied its commit index yet")
        case 1 where parts[0] == "metrics":
            guard method == .get else { return methodNotAllowed() }
            return await renderMetrics()
        case 2 where parts[0] == "v1" && parts[1] == "status":
            guard method == .get else { return methodNotAllowed() }
            return await status()
        case 2 where parts[0] == "v1" && parts[1] == "snapshot":
            guard method == .get else { return methodNotAllowed() }
            return await backup()
        case 2 where parts[0] == "v1" && parts[1] == "leases":
            guard method == .post else { return methodNotAllowed() }
            return await acquire(request, access)
        case 3 where parts[0] == "v1" && parts[1] == "leases":
            guard method == .delete else { return methodNotAllowed() }
            guard let id = UInt64(parts[2]) else { return error(.notFound, LeaseError.leaseNotFound) }
            if let refused = await authorizeLease(id, access) { return refused }
            return await write(.release(leaseID: id), request, access)
        case 4 where parts[0] == "v1" && parts[1] == "leases" && parts[3] == "renew":
            guard method == .post else { return methodNotAllowed() }
            var request = request
            guard let body = try? await readBody(&request) else { return tooLarge() }
            if !body.isEmpty {
                switch parseObject(body) {
                case .failure(let r): return r.response
                case .success(let fields):
                    if let f = fields.first { return error(.badRequest, "invalid_request", "unknown field \"\(f.0)\"") }
                }
            }
            guard let id = UInt64(parts[2]) else { return error(.notFound, LeaseError.leaseNotFound) }
            if let refused = await authorizeLease(id, access) { return refused }
            return await write(.renew(leaseID: id), request, access)
        case 3 where parts[0] == "v1" && parts[1] == "cluster" && parts[2] == "nodes":
            guard method == .get else { return methodNotAllowed() }
            return await listNodes(request, exchange)
        case 4 where parts[0] == "v1" && parts[1] == "cluster" && parts[2] == "nodes":
            guard method == .get || method == .delete else { return methodNotAllowed() }
            guard let raw = UInt32(parts[3]) else { return error(.notFound, LeaseError.nodeNotFound) }
            if method == .delete { return await write(.forget(nodeID: NodeID(raw)), request, access) }
            return await oneNode(NodeID(raw), request, exchange)
        case 3 where parts[0] == "v1" && parts[1] == "cluster" && parts[2] == "replicas":
            switch method {
            case .get: return await listReplicas()
            case .post: return await addReplica(request)
            default: return methodNotAllowed()
            }
        case 4 where parts[0] == "v1" && parts[1] == "cluster" && parts[2] == "replicas":
            guard method == .delete else { return methodNotAllowed() }
            guard let id = UInt64(parts[3]), id > 0 else { return replicaNotFound(parts[3]) }
            return await removeReplica(ReplicaID(id), request)
        case 5 where parts[0] == "v1" && parts[1] == "cluster" && parts[2] == "replicas" && parts[4] == "promote":
            guard method == .post else { return methodNotAllowed() }
            guard let id = UInt64(parts[3]), id > 0 else { return replicaNotFound(parts[3]) }
            return await promoteReplica(ReplicaID(id), request)
        default:
            return error(.notFound, "not_found", "no such endpoint: \(request.method) \(request.uri.path)")
        }
    }

    // MARK: Writes

    private func acquire(_ request: Request, _ access: Access) async -> Response {
        let fields: [(String, JSONValue)]
        switch await readObject(request) {
        case .failure(let r): return r.response
        case .success(let f): fields = f.fields
        }
        var hostname: String?
        var holder: String?
        var ttl = Int64(config.defaultTTL)
        for (key, value) in fields {
            switch (key, value) {
            case ("hostname", .string(let s)): hostname = s
            case ("holder", .string(let s)): holder = s
            case ("ttlSeconds", .number(let text, let isInteger)) where isInteger:
                guard let v = Int64(text) else { return invalid("ttlSeconds", "is out of range") }
                ttl = v
            case ("hostname", _), ("holder", _):
                return invalid(key, "must be a string, not \(value.typeName)")
            case ("ttlSeconds", _):
                return invalid(key, "must be an integer number of seconds, not \(value.typeName)")
            default:
                return error(.badRequest, "invalid_request", "unknown field \"\(key)\"")
            }
        }
        guard let hostname else { return invalid("hostname", "is required") }
        guard let holder else { return invalid("holder", "is required") }
        let command: LeaseCommand
        let normalised: String
        do throws(LeaseError) {
            normalised = try Validation.hostname(hostname)
            command = .acquire(
                hostname: normalised, holder: try Validation.holder(holder),
                ttlSeconds: try Validation.ttl(ttl, range: config.ttlRange), idRange: config.nodeIDRange)
        } catch {
            return self.error(.badRequest, error)
        }
        if !access.mayLease(normalised) { return forbidden(access, "lease \(normalised) (outside its hostname patterns)") }
        return await write(command, request, access)
    }

    /// Proposes a client's write with its `Idempotency-Key` (if it sent one) and answers with
    /// the outcome: the first one, marked `Idempotent-Replayed`, when the key applied before.
    private func write(_ command: LeaseCommand, _ request: Request, _ access: Access) async -> Response {
        var key: IdempotencyKey?
        let keys = request.headers[values: Self.idempotencyKeyHeader]
        if keys.count > 1 {
            return self.error(.badRequest, .invalid(field: "Idempotency-Key", message: "must be given once"))
        }
        if let raw = keys.first {
            do throws(LeaseError) { key = try IdempotencyKey.client(raw) } catch { return self.error(.badRequest, error) }
        }
        do {
            let written = try await driver.submit(command, key: key)
            // A replay of a lease that is gone (its hostname unknown when authorised) is
            // answered only if the token may see that hostname.
            if case .success(let answer) = written.result {
                let hostname: String? =
                    switch answer {
                    case .lease(let l): l.hostname
                    case .node(let n): n.hostname
                    default: nil
                    }
                if let hostname, !access.mayLease(hostname) {
                    return forbidden(access, "renew or release this lease (its hostname is outside the token's patterns)")
                }
            }
            var r = reply(written.result, access)
            setReadHeaders(&r, written.index, written.leader)
            if written.replayed { r.headers[Self.replayedHeader] = "true" }
            return r
        } catch {
            return await noLeader()
        }
    }

    private func reply(_ result: Result<LeaseReply, LeaseError>, _ access: Access) -> Response {
        switch result {
        case .success(.lease(let l)): return json(.ok, leaseJSON(l))
        case .success(.node(let n)): return json(.ok, Self.nodeJSON(n))
        case .success(.replica), .success(.idempotency), .success(.clusterVersion): return error(.internalServerError, "internal", "unexpected reply")
        case .failure(let e):
            let status: HTTPResponse.Status =
                switch e {
                case .hostnameInUse, .nodeIDsExhausted, .nodeActive: .conflict
                case .leaseNotFound, .nodeNotFound: .notFound
                case .invalid: .badRequest
                case .idempotencyKeyMismatch: .unprocessableContent
                }
            if !access.seesHolders, case .hostnameInUse(let id, let holder, let s) = e {
                return error(status, .hostnameInUse(nodeID: id, holder: auth?.holderDigest(holder) ?? "", expiresInSeconds: s))
            }
            return error(status, e)
        }
    }

    // MARK: Reads

    private enum Consistency { case local, linearizable }

    private struct ReadQuery {
        var consistency = Consistency.local
        var status: NodeStatus?
        var watch: WatchQuery?
    }

    private func readQuery(_ request: Request) -> Result<ReadQuery, ErrorResponse> {
        var q = ReadQuery()
        var wait: UInt64?
        for (k, v) in request.uri.queryParameters {
            switch k {
            case "consistency":
                switch v {
                case "linearizable": q.consistency = .linearizable
                case "serializable", "local": q.consistency = .local
                default: return .failure(ErrorResponse(invalid("consistency", "unknown value \"\(v)\" (linearizable or serializable)")))
                }
            case "status":
                guard let s = NodeStatus(name: String(v)) else {
                    return .failure(ErrorResponse(invalid("status", "unknown value \"\(v)\" (active, stale or inactive)")))
                }
                q.status = s
            case "waitIndex":
                guard let n = UInt64(v) else { return .failure(ErrorResponse(invalid("waitIndex", "must be a registry index (a whole number), not \"\(v)\""))) }
                q.watch = WatchQuery(waitIndex: n, waitNanos: WatchQuery.defaultWait)
            case "wait":
                guard let n = GoDuration.nanoseconds(v[...]) else {
                    return .failure(ErrorResponse(invalid("wait", "\"\(v)\" is not a duration (such as 1500ms, 30s or 5m)")))
                }
                guard n >= 0 else { return .failure(ErrorResponse(invalid("wait", "must not be negative"))) }
                guard UInt64(n) <= WatchQuery.maxWait else { return .failure(ErrorResponse(invalid("wait", "is at most 5m"))) }
                wait = UInt64(n)
            default:
                return .failure(ErrorResponse(error(.badRequest, "invalid_request", "unknown query parameter \"\(k)\"")))
            }
        }
        if let wait { q.watch?.waitNanos = wait }
        return .success(q)
    }

    /// Reads the registry as `query` asks, after its long poll if it has one: nil and the
    /// response to give instead when there is nothing to read (no leader, not caught up).
    private func read(
        _ query: ReadQuery, _ exchange: Exchange, _ body: @escaping @Sendable (LeaseRegistry) -> [NodeRecord]
    ) async -> Result<(nodes: [NodeRecord], index: LogIndex, leader: ReplicaID?, registryIndex: UInt64, reset: Bool), ErrorResponse> {
        let reset: Bool
        switch await awaitRead(query, exchange) {
        case .failure(let e): return .failure(e)
        case .success(let r): reset = r
        }
        guard let r = await driver.read(confirmed: query.consistency == .linearizable, body) else { return .failure(ErrorResponse(await notCaughtUp())) }
        return .success((r.nodes, r.index, r.leader, r.registryIndex, reset))
    }

    /// What comes before a registry read: the long poll's wait, then the read index for a
    /// linearizable one. Success: whether the poll's index was reset.
    private func awaitRead(_ query: ReadQuery, _ exchange: Exchange) async -> Result<Bool, ErrorResponse> {
        var reset = false
        if let watch = query.watch {
            var random = SystemRandomNumberGenerator()
            switch await driver.watch(after: watch.waitIndex, waitNanos: watch.jittered(using: &random), connection: exchange.connection, parked: exchange.parked) {
            case .changed, .timedOut: break
            case .reset: reset = true
            case .noLeader:
                return .failure(ErrorResponse(await unavailable("this replica has known no leader for longer than the election timeout; ask another replica")))
            case .full:
                return .failure(ErrorResponse(await unavailable("this replica is at its limit of \(config.maxWatches) waiting watches; retry, or ask another replica")))
            case .stopping:
                return .failure(ErrorResponse(await unavailable("this replica is shutting down; ask another replica")))
            }
        }
        if query.consistency == .linearizable {
            do { _ = try await driver.linearizableBarrier() } catch { return .failure(ErrorResponse(await noLeader())) }
        }
        return .success(reset)
    }

    private func listNodes(_ request: Request, _ exchange: Exchange) async -> Response {
        switch readQuery(request) {
        case .failure(let e): return e.response
        case .success(let query):
            let reset: Bool
            switch await awaitRead(query, exchange) {
            case .failure(let e): return e.response
            case .success(let r): reset = r
            }
            switch await driver.renderNodes(status: query.status, confirmed: query.consistency == .linearizable) {
            case .rendered(let body, let index, let leader, let registryIndex):
                var res = json(.ok, body)
                setReadHeaders(&res, index, leader)
                setRegistryHeaders(&res, registryIndex, reset: reset)
                return res
            case .notCaughtUp: return await notCaughtUp()
            case .stopping: return await unavailable("this replica is shutting down; ask another replica")
            }
        }
    }

    private func oneNode(_ id: NodeID, _ request: Request, _ exchange: Exchange) async -> Response {
        switch readQuery(request) {
        case .failure(let e): return e.response
        case .success(let query):
            switch await read(query, exchange, { $0.node(id).map { [$0] } ?? [] }) {
            case .failure(let e): return e.response
            case .success(let r):
                var res: Response
                if let n = r.nodes.first {
                    res = readResponse(Self.nodeJSON(n), r.index, r.leader)
                } else {
                    res = error(.notFound, LeaseError.nodeNotFound)
                    setReadHeaders(&res, r.index, r.leader)
                }
                setRegistryHeaders(&res, r.registryIndex, reset: r.reset)
                return res
            }
        }
    }

    private func setRegistryHeaders(_ r: inout Response, _ registryIndex: UInt64, reset: Bool) {
        r.headers[Self.registryIndexHeader] = String(registryIndex)
        if reset { r.headers[Self.indexResetHeader] = "true" }
    }

    private func status() async -> Response {
        let s = await driver.status()
        var o = JSONObject()
        o.field("replicaId", s.replicaID.rawValue)
        o.field("clusterId", config.clusterID)
        o.field("role", s.role == .leader ? "leader" : s.role == .follower ? "follower" : "candidate")
        o.field("term", s.term.rawValue)
        if let l = s.leader { o.field("leaderId", l.rawValue) } else { o.null("leaderId") }
        o.field("commitIndex", s.commitIndex.rawValue)
        o.field("appliedIndex", s.appliedIndex.rawValue)
        o.field("registryIndex", s.registryIndex)
        o.field("version", NodeLeaseBuild.version)
        o.field("clusterVersion", UInt64(s.clusterVersion))
        o.field("supportedClusterVersion", UInt64(s.supportedClusterVersion))
        let peers = s.peers.map { p -> [UInt8] in
            var po = JSONObject()
            po.field("replicaId", p.id.rawValue)
            po.field("address", p.address)
            po.field("role", p.role.description)
            po.field("reachable", p.reachable)
            if let m = p.match { po.field("matchIndex", m.rawValue) }
            return po.json
        }
        o.raw("peers", jsonArray(peers))
        return await json(.ok, o.json, headers: true)
    }

    /// `GET /v1/snapshot`: a backup (RaftStorage's `Backup` format) of the registry at a
    /// committed index, after a linearizable barrier; `X-NodeLease-Snapshot-Index` names the index.
    private func backup() async -> Response {
        let state: (registry: LeaseRegistry, index: LogIndex, term: Term, membership: Membership)
        do { state = try await driver.backup() } catch DriverError.stopping {
            return await unavailable("this replica is shutting down; ask another replica")
        } catch {
            return await noLeader()
        }
        // Encoded here, off the driver: a large registry takes tens of milliseconds.
        let data = state.registry.snapshot()
        guard data.count < Int(UInt32.max) - 4096 else {
            return error(.internalServerError, "internal", "the registry's snapshot (\(data.count) bytes) is beyond what a backup file holds (4 GiB)")
        }
        let backup = Backup(
            clusterID: config.clusterID, index: state.index, term: state.term,
            takenAtMillis: UInt64(max(0, Date().timeIntervalSince1970 * 1000)), takenBy: config.replicaID,
            membership: state.membership, data: data)
        // Streamed in pieces of 1 MiB from the one copy of the registry's encoding.
        let header = backup.header()
        var tail = ByteWriter()
        tail.u32(backup.checksum(header: header))
        let trailer = tail.bytes
        let body = ResponseBody(contentLength: header.count + data.count + trailer.count) { writer in
            try await writer.write(ByteBuffer(bytes: header))
            var offset = 0
            while offset < data.count {
                let end = min(data.count, offset + (1 << 20))
                try await writer.write(ByteBuffer(bytes: data[offset..<end]))
                offset = end
            }
            try await writer.write(ByteBuffer(bytes: trailer))
            try await writer.finish(nil)
        }
        var headers = HTTPFields()
        headers[.contentType] = "application/octet-stream"
        headers[.contentDisposition] = "attachment; filename=\"nodelease-\(config.clusterID.filter { $0.isLetter || $0.isNumber || $0 == "-" })-\(state.index.rawValue).backup\""
        headers[Self.snapshotIndexHeader] = String(state.index.rawValue)
        var r = Response(status: .ok, headers: headers, body: body)
        setReadHeaders(&r, state.index, await driver.headerState.leader)
        return r
    }

    private func renderMetrics() async -> Response {
        let s = await driver.status()
        var headers = HTTPFields()
        headers[.contentType] = "text/plain; version=0.0.4"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: metrics.render(s))))
    }

    // MARK: Encoding

    func leaseJSON(_ l: Lease) -> [UInt8] {
        var o = JSONObject()
        o.field("leaseId", String(l.leaseID))
        o.field("nodeId", UInt64(l.nodeID.rawValue))
        o.field("hostname", l.hostname)
        o.field("holder", l.holder)
        o.field("fencingToken", l.fencingToken)
        o.field("ttlSeconds", UInt64(l.ttlSeconds))
        o.field("acquiredAt", rfc3339(l.acquiredAt))
        o.field("lastRenewal", rfc3339(l.lastRenewal))
        o.field("leaseTransitions", l.transitions)
        return o.json
    }

    /// A ClusterNode: `{"nodeId":1,"hostname":"…","lastRenewal":"…","status":"active"}`.
    static func nodeJSON(_ n: NodeRecord) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(128)
        appendNodeJSON(n, to: &bytes)
        return bytes
    }

    /// `nodeJSON(n)`'s bytes, appended: written field by field with the keys as constants, so
    /// a render of the whole registry allocates nothing a node.
    static func appendNodeJSON(_ n: NodeRecord, to bytes: inout [UInt8]) {
        bytes.append(contentsOf: #"{"nodeId":"#.utf8)
        bytes.append(contentsOf: String(n.nodeID.rawValue).utf8)
        bytes.append(contentsOf: #","hostname":"#.utf8)
        JSONObject.appendString(n.hostname, to: &bytes)
        bytes.append(contentsOf: #","lastRenewal":""#.utf8)
        appendRFC3339(n.lastRenewal, to: &bytes)
        bytes.append(contentsOf: #"","status":""#.utf8)
        bytes.append(contentsOf: n.status.description.utf8)
        bytes.append(contentsOf: #""}"#.utf8)
    }

    /// The registry's nodes (of `status`, if given) as a JSON array, in registry order,
    /// written into one buffer (about 110 bytes a node).
    static func nodesJSON(_ registry: LeaseRegistry, status: NodeStatus?) -> ByteBuffer {
        var out = ByteBuffer()
        out.reserveCapacity(2 + registry.count(of: status) * 128)
        out.writeInteger(UInt8(ascii: "["))
        var node: [UInt8] = []
        node.reserveCapacity(256)
        var first = true
        for id in registry.order {
            guard let r = registry.node(id), status == nil || r.status == status else { continue }
            node.removeAll(keepingCapacity: true)
            if !first { node.append(UInt8(ascii: ",")) }
            first = false
            appendNodeJSON(r, to: &node)
            out.writeBytes(node)
        }
        out.writeInteger(UInt8(ascii: "]"))
        return out
    }

    func json(_ status: HTTPResponse.Status, _ body: [UInt8]) -> Response {
        json(status, ByteBuffer(bytes: body))
    }

    func json(_ status: HTTPResponse.Status, _ body: ByteBuffer) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: body))
    }

    func json(_ status: HTTPResponse.Status, _ body: [UInt8], headers: Bool) async -> Response {
        var r = json(status, body)
        if headers { await addReadHeaders(&r) }
        return r
    }

    func addReadHeaders(_ r: inout Response) async {
        let s = await driver.headerState
        setReadHeaders(&r, s.index, s.leader)
    }

    private func setReadHeaders(_ r: inout Response, _ index: LogIndex, _ leader: ReplicaID?) {
        r.headers[Self.indexHeader] = String(index.rawValue)
        r.headers[Self.replicaHeader] = String(config.replicaID.rawValue)
        r.headers[Self.leaderHeader] = leader.map { String($0.rawValue) } ?? ""
    }

    private func readResponse(_ body: [UInt8], _ index: LogIndex, _ leader: ReplicaID?) -> Response {
        var r = json(.ok, body)
        setReadHeaders(&r, index, leader)
        return r
    }

    /// A replica that has not caught up since it started does not serve local reads.
    private func notCaughtUp() async -> Response {
        await unavailable("this replica has not caught up with a leader since it started; retry, or ask another replica")
    }

    // MARK: Errors

    struct ErrorResponse: Error {
        var response: Response
        init(_ r: Response) { response = r }
    }

    func error(_ status: HTTPResponse.Status, _ code: String, _ message: String) -> Response {
        var o = JSONObject()
        o.field("error", code)
        o.field("message", message)
        return json(status, o.json)
    }

    func error(_ status: HTTPResponse.Status, _ e: LeaseError) -> Response {
        var o = JSONObject()
        o.field("error", e.code)
        o.field("message", e.message)
        if case .hostnameInUse(let id, let holder, let s) = e {
            o.field("nodeId", UInt64(id.rawValue))
            o.field("holder", holder)
            o.field("expiresInSeconds", s)
        }
        if case .invalid(let field, _) = e { o.field("field", field) }
        return json(status, o.json)
    }

    func invalid(_ field: String, _ problem: String) -> Response {
        error(.badRequest, .invalid(field: field, message: problem))
    }

    func methodNotAllowed() -> Response {
        error(.methodNotAllowed, "method_not_allowed", "this path does not take that method")
    }

    func tooLarge() -> Response {
        error(.contentTooLarge, "request_too_large", "the request body is over 64 KiB")
    }

    func noLeader() async -> Response {
        await unavailable("no leader with a quorum could be reached within the request timeout; retry")
    }

    /// 503 `no_leader` (the contract's code for "ask another replica") with `Retry-After` and
    /// the read headers, saying why.
    func unavailable(_ message: String) async -> Response {
        var r = error(.serviceUnavailable, "no_leader", message)
        r.headers[.retryAfter] = "1"
        await addReadHeaders(&r)
        return r
    }

    func readBody(_ request: inout Request) async throws -> [UInt8] {
        if let length = request.headers.value(.contentLength).flatMap({ Int($0) }), length > Self.maxBody {
            throw ErrorResponse(tooLarge())
        }
        let buffer = try await request.collectBody(upTo: Self.maxBody)
        return Array(buffer.readableBytesView)
    }

    /// The request's body as a JSON object's fields (and its bytes), or the error to answer.
    func readObject(_ request: Request) async -> Result<(fields: [(String, JSONValue)], body: [UInt8]), ErrorResponse> {
        var request = request
        guard let body = try? await readBody(&request) else { return .failure(ErrorResponse(tooLarge())) }
        return parseObject(body).map { ($0, body) }
    }

    func parseObject(_ body: [UInt8]) -> Result<[(String, JSONValue)], ErrorResponse> {
        guard !body.isEmpty else { return .failure(ErrorResponse(error(.badRequest, "invalid_request", "the request body must be a JSON object"))) }
        do {
            guard case .object(let fields) = try JSONParser.parse(body) else {
                return .failure(ErrorResponse(error(.badRequest, "invalid_request", "the request body must be a JSON object")))
            }
            return .success(fields)
        } catch {
            return .failure(ErrorResponse(self.error(.badRequest, "invalid_request", "malformed JSON: \(error.message)")))
        }
    }
}

import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import LeaseRegistry
import Mustache
import NIOConcurrencyHelpers
import NIOCore
import Raft
import ReplicaCore

/// The web console (`/ui`): the registry and the replicas as an operator sees them, rendered
/// here (mustache escapes every value), live through the registry's long poll, and usable
/// with scripts off. With a token file, the page needs a `reader` token (given once on a
/// sign-in form and kept in a cookie for `/ui` only) and forgetting a node an `admin` one,
/// as a POST after a confirmation page, from this origin, with a token derived from the
/// session's.
extension HTTPAPI {
    static let consoleCookie = "nodelease_console"
    /// This origin only: no inline script or style, no frames, forms posting here only.
    static let consolePolicy =
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    /// Rows rendered at most (a registry can hold 2^32 nodes; the filters narrow it).
    static let consoleRowLimit = 1000
    /// A follower this far behind the leader's commit index is shown as lagging.
    static let consoleLagEntries: UInt64 = 100

    func console(_ request: Request, _ parts: [Substring], connection: (any Channel)?, parked: @escaping @Sendable () -> Void) async -> Response {
        let method = request.method
        switch parts.count {
        case 1 where parts[0] == "favicon.ico":
            guard method == .get || method == .head else { return methodNotAllowed() }
            return asset(ConsoleAssets.favicon, "image/svg+xml")
        case 2 where parts[1] == "console.css":
            guard method == .get || method == .head else { return methodNotAllowed() }
            return asset(ConsoleAssets.css, "text/css; charset=utf-8")
        case 2 where parts[1] == "console.js":
            guard method == .get || method == .head else { return methodNotAllowed() }
            return asset(ConsoleAssets.js, "text/javascript; charset=utf-8")
        case 2 where parts[1] == "login":
            guard method == .post else { return methodNotAllowed() }
            return await signIn(request)
        case 2 where parts[1] == "logout":
            guard method == .post else { return methodNotAllowed() }
            if let refused = crossOrigin(request) { return refused }
            var r = redirect("/ui")
            r.headers[.setCookie] = cookie(value: "", maxAge: 0)
            return r
        default: break
        }
        let session: ConsoleSession
        switch consoleSession(request) {
        case .none:
            if parts.count == 2 && parts[1] == "live" {
                // The page's script: a 401 it reloads on, not a sign-in page to swap in.
                var r = error(.unauthorized, "unauthenticated", "sign in again")
                r.headers[.wwwAuthenticate] = "Bearer"
                return r
            }
            return page("login", loginContext(problem: nil), status: .unauthorized, challenge: true)
        case .some(let s): session = s
        }
        guard session.access.mayRead else {
            return page("message", messageContext(session, "Not allowed", "A node token may not read the registry; sign in with a reader or admin token.", problem: true), status: .forbidden)
        }
        switch parts.count {
        case 1:
            guard method == .get || method == .head else { return methodNotAllowed() }
            return await consolePage(request, session)
        case 2 where parts[1] == "live":
            guard method == .get else { return methodNotAllowed() }
            return await liveFragment(request, session, connection: connection, parked: parked)
        case 4 where parts[1] == "nodes" && parts[3] == "forget":
            guard let raw = UInt32(parts[2]) else { return error(.notFound, LeaseError.nodeNotFound) }
            guard session.access.isAdmin else {
                return page("message", messageContext(session, "Not allowed", "Forgetting a node needs an admin token.", problem: true), status: .forbidden)
            }
            switch method {
            case .get: return await confirmForget(NodeID(raw), session)
            case .post: return await forget(NodeID(raw), request, session)
            default: return methodNotAllowed()
            }
        default:
            return error(.notFound, "not_found", "no such endpoint: \(request.method) \(request.uri.path)")
        }
    }

    // MARK: Sessions

    struct ConsoleSession {
        var access: Access
        /// What a form must carry back: derived from the session, so another site cannot know it.
        var csrf = "open"
    }

    /// How long a console session lasts.
    static let consoleSessionSeconds: UInt64 = Authenticator.maxSessionSeconds

    /// Who the browser is: its `Authorization` header or the console's session cookie; nil
    /// when authentication is on and neither is valid.
    private func consoleSession(_ request: Request) -> ConsoleSession? {
        guard let auth else { return ConsoleSession(access: Access(entry: nil)) }
        if let header = request.headers[.authorization] {
            guard let entry = auth.authenticate(authorization: header) else { return nil }
            return ConsoleSession(access: Access(entry: entry), csrf: "csrf-" + auth.holderDigest("console\u{0}" + header))
        }
        let now = UInt64(Date().timeIntervalSince1970)
        guard let cookie = Self.cookieValue(request, Self.consoleCookie), !cookie.isEmpty, cookie.utf8.count <= 512,
            let entry = auth.entry(session: cookie, now: now)
        else { return nil }
        return ConsoleSession(access: Access(entry: entry), csrf: "csrf-" + auth.holderDigest("console\u{0}" + cookie))
    }

    static func cookieValue(_ request: Request, _ name: String) -> String? {
        for header in request.headers[values: .cookie] {
            for pair in header.split(separator: ";") {
                let kv = pair.split(separator: "=", maxSplits: 1)
                if kv.count == 2, kv[0].trimmingCharacters(in: .whitespaces) == name { return kv[1].trimmingCharacters(in: .whitespaces) }
            }
        }
        return nil
    }

    private func cookie(value: String, maxAge: Int) -> String {
        "\(Self.consoleCookie)=\(value); Path=/ui; Max-Age=\(maxAge); HttpOnly; SameSite=Strict" + (config.clientTLS == nil ? "" : "; Secure")
    }

    /// A POST from another site: refused. Browsers name the page's origin on every POST; a
    /// request with no `Origin` (curl) is not a browser acting for someone else.
    private func crossOrigin(_ request: Request) -> Response? {
        let scheme = config.clientTLS == nil ? "http" : "https"
        let site = request.headers[HTTPField.Name("Sec-Fetch-Site")!]
        let origin = request.headers[HTTPField.Name("Origin")!]
        let expected = request.head.authority.map { "\(scheme)://\($0)" }
        if let site, site != "same-origin" && site != "none" { return forbiddenPage("This form was sent from another site (\(site)).") }
        if let origin, origin != expected { return forbiddenPage("This form was sent from another origin (\(origin)).") }
        return nil
    }

    private func forbiddenPage(_ text: String) -> Response {
        page("message", ["title": "NodeLease", "clusterId": config.clusterID, "replicaId": config.replicaID.rawValue, "heading": "Refused", "text": text, "problem": true], status: .forbidden)
    }

    private func signIn(_ request: Request) async -> Response {
        if let refused = crossOrigin(request) { return refused }
        var request = request
        guard let body = try? await readBody(&request), body.count <= 4096 else { return tooLarge() }
        guard let auth else { return redirect("/ui") }
        let token = Self.formFields(body)["token"] ?? ""
        guard !token.isEmpty, token.utf8.count <= 512, let entry = auth.authenticate(authorization: "Bearer " + token) else {
            return page("login", loginContext(problem: "That token is not valid here."), status: .unauthorized, challenge: true)
        }
        guard entry.role != .node else {
            return page("login", loginContext(problem: "A node token may not read the registry: use a reader or admin token."), status: .forbidden)
        }
        let expires = UInt64(Date().timeIntervalSince1970) + Self.consoleSessionSeconds
        guard let session = auth.session(for: token, expires: expires) else {
            return page("login", loginContext(problem: "That token is not valid here."), status: .unauthorized, challenge: true)
        }
        var r = redirect("/ui")
        r.headers[.setCookie] = cookie(value: session, maxAge: Int(Self.consoleSessionSeconds))
        return r
    }

    /// `application/x-www-form-urlencoded` fields (the first of each name).
    static func formFields(_ body: [UInt8]) -> [String: String] {
        var out: [String: String] = [:]
        for pair in String(decoding: body, as: UTF8.self).split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            let name = Self.formDecode(kv[0])
            if out[name] == nil { out[name] = kv.count == 2 ? Self.formDecode(kv[1]) : "" }
        }
        return out
    }

    private static func formDecode(_ s: Substring) -> String {
        let plus = s.replacingOccurrences(of: "+", with: " ")
        return plus.removingPercentEncoding ?? plus
    }

    // MARK: Pages

    private func consolePage(_ request: Request, _ session: ConsoleSession) async -> Response {
        let filter: NodeStatus?
        switch consoleFilter(request) {
        case .failure(let r): return r.response
        case .success(let f): filter = f
        }
        var context = await liveContext(session, filter: filter, watchEnd: nil)
        context.merge(base(session)) { a, _ in a }
        context["title"] = "NodeLease · \(config.clusterID) · replica \(config.replicaID)"
        if let forgot = request.uri.queryParameters["forgot"].flatMap({ UInt32($0) }) { context["notice"] = "Node \(forgot) was forgotten." }
        context["filterQuery"] = filter.map { "?status=\($0.description)" } ?? ""
        return page("page", context)
    }

    private func consoleFilter(_ request: Request) -> Result<NodeStatus?, ErrorResponse> {
        guard let raw = request.uri.queryParameters["status"], !raw.isEmpty else { return .success(nil) }
        guard let s = NodeStatus(name: String(raw)) else { return .failure(ErrorResponse(invalid("status", "unknown value \"\(raw)\" (active, stale or inactive)"))) }
        return .success(s)
    }

    /// The live part alone, after a long poll of the registry (`waitIndex`, `wait`), for the
    /// page's script. With no leader for too long, the part says so (rather than a 503).
    private func liveFragment(_ request: Request, _ session: ConsoleSession, connection: (any Channel)?, parked: @escaping @Sendable () -> Void) async -> Response {
        let filter: NodeStatus?
        switch consoleFilter(request) {
        case .failure(let r): return r.response
        case .success(let f): filter = f
        }
        var end: RaftDriver.WatchEnd?
        if let raw = request.uri.queryParameters["waitIndex"] {
            guard let after = UInt64(raw) else { return invalid("waitIndex", "must be a registry index (a whole number)") }
            var wait: UInt64 = 2_000_000_000
            if let w = request.uri.queryParameters["wait"] {
                guard let n = GoDuration.nanoseconds(w[...]), n >= 0, UInt64(n) <= WatchQuery.maxWait else { return invalid("wait", "must be a duration of at most 5m") }
                wait = UInt64(n)
            }
            var random = SystemRandomNumberGenerator()
            end = await driver.watch(after: after, waitNanos: WatchQuery(waitIndex: after, waitNanos: wait).jittered(using: &random), connection: connection, parked: parked)
            switch end {
            case .full?, .stopping?:
                var r = error(.serviceUnavailable, "no_leader", "this replica is stopping or at its limit of waiting watches")
                r.headers[.retryAfter] = "1"
                return r
            case .noLeader?:
                // Answered at once, so the wait here: the page shows the banner and asks again
                // in its own time, not in a tight loop.
                parked()
                try? await Task.sleep(for: .nanoseconds(Int64(min(wait, 5_000_000_000))))
            default: break
            }
        }
        let context = await liveContext(session, filter: filter, watchEnd: end)
        var r = page("live", context)
        r.headers[Self.registryIndexHeader] = String(context["registryIndex"] as? UInt64 ?? 0)
        return r
    }

    private func base(_ session: ConsoleSession) -> [String: Any] {
        var c: [String: Any] = ["clusterId": config.clusterID, "replicaId": config.replicaID.rawValue]
        if let entry = session.access.entry { c["user"] = ["name": entry.name.isEmpty ? "signed in" : entry.name, "role": entry.role.rawValue] }
        return c
    }

    private func loginContext(problem: String?) -> [String: Any] {
        var c: [String: Any] = ["title": "NodeLease · sign in", "clusterId": config.clusterID, "replicaId": config.replicaID.rawValue]
        if let problem { c["problem"] = problem }
        return c
    }

    private func messageContext(_ session: ConsoleSession, _ heading: String, _ text: String, problem: Bool) -> [String: Any] {
        var c = base(session)
        c["title"] = "NodeLease · \(heading)"
        c["heading"] = heading
        c["text"] = text
        if problem { c["problem"] = true }
        return c
    }

    /// Everything the live part shows: this replica's registry and view, and every replica's
    /// own status (asked over HTTP, briefly).
    private func liveContext(_ session: ConsoleSession, filter: NodeStatus?, watchEnd: RaftDriver.WatchEnd?) async -> [String: Any] {
        let view = await driver.registryView(status: filter, limit: Self.consoleRowLimit, range: config.nodeIDRange)
        let status = await driver.status()
        let membership = await driver.membership
        let others = await peerStatuses(membership)
        let wallNow = UInt64(Date().timeIntervalSince1970)
        var c: [String: Any] = [:]
        c["registryIndex"] = view.registryIndex
        c["appliedIndex"] = view.appliedIndex
        c["asOf"] = rfc3339(wallNow)
        c["active"] = view.counts.active
        c["stale"] = view.counts.stale
        c["inactive"] = view.counts.inactive
        let rangeSize = UInt64(config.nodeIDRange.upperBound) - UInt64(config.nodeIDRange.lowerBound) + 1
        let left = rangeSize - min(rangeSize, UInt64(view.occupiedInRange))
        c["idsLeft"] = left
        c["rangeSize"] = rangeSize
        c["range"] = "\(config.nodeIDRange.lowerBound)–\(config.nodeIDRange.upperBound)"
        // Warn with a tenth of the range left (at least 10 IDs' notice).
        if left <= max(10, rangeSize / 10) {
            c["idsLow"] = true
            c["idsWarning"] =
                left == 0
                ? "No node ID is free: a new hostname gets 409 node_ids_exhausted until a node is forgotten or released."
                : "Only \(left) node IDs of \(rangeSize) are left: new hostnames will get 409 node_ids_exhausted once they run out (released nodes' IDs are reused)."
        }
        if let filter { c["filter"] = filter.description }
        let total = view.counts.active + view.counts.stale + view.counts.inactive
        var filters: [[String: Any]] = [["label": "all", "query": "", "count": total, "selected": filter == nil]]
        for (s, n) in [(NodeStatus.active, view.counts.active), (.stale, view.counts.stale), (.inactive, view.counts.inactive)] {
            filters.append(["label": s.description, "query": "?status=\(s.description)", "count": n, "selected": filter == s])
        }
        c["filters"] = filters
        c["nodes"] = view.nodes.map { n -> [String: Any] in
            [
                "nodeId": n.nodeID.rawValue, "hostname": n.hostname, "lastRenewal": rfc3339(n.lastRenewal),
                "age": Self.age(wallNow > n.lastRenewal ? wallNow - n.lastRenewal : 0), "status": n.status.description,
                "holder": session.access.seesHolders ? n.holder : auth?.holderDigest(n.holder) ?? "", "transitions": n.transitions,
                "fencingToken": n.leaseID, "forgettable": session.access.isAdmin && n.status != .active,
            ]
        }
        if view.matching > view.nodes.count {
            c["truncated"] = true
            c["shown"] = view.nodes.count
            c["total"] = view.matching
        }
        // Replicas: each one's own status where it answered; this one's from here.
        let leaderCommit = status.leader.flatMap { l in l == config.replicaID ? status.commitIndex.rawValue : others[l]?.commit }
        var rows: [[String: Any]] = []
        for m in membership.members {
            let isSelf = m.id == config.replicaID
            var row: [String: Any] = [
                "replicaId": m.id.rawValue, "address": m.clientAddress.isEmpty ? "—" : m.clientAddress, "membership": m.role.description,
                "isSelf": isSelf, "isLeader": status.leader == m.id,
            ]
            let seen: PeerStatus? =
                isSelf
                ? PeerStatus(role: Self.roleName(status.role), term: status.term.rawValue, leader: status.leader?.rawValue, commit: status.commitIndex.rawValue, applied: status.appliedIndex.rawValue)
                : others[m.id]
            if let seen {
                row["role"] = seen.role
                row["term"] = seen.term
                row["leader"] = seen.leader.map { String($0) } ?? "none"
                row["commit"] = seen.commit
                row["applied"] = seen.applied
                row["behind"] = leaderCommit.map { $0 > seen.applied ? String($0 - seen.applied) : "0" } ?? "?"
                row["reachable"] = true
            } else {
                for k in ["role", "term", "leader", "commit", "applied", "behind"] { row[k] = "—" }
                row["role"] = m.clientAddress.isEmpty ? "client address not known yet" : "unreachable"
                row["reachable"] = false
            }
            rows.append(row)
        }
        c["replicas"] = rows
        // The banner: no leader, or this replica behind.
        if status.leader == nil || watchEnd == .noLeader {
            c["banner"] = "This replica knows no leader: the registry shown may be out of date, and writes through it fail until a majority of replicas is reachable again."
        } else if !view.caughtUp {
            c["banner"] = "This replica has not caught up with the leader since it started: the registry shown may be out of date."
        } else if let leaderCommit, leaderCommit > status.appliedIndex.rawValue + Self.consoleLagEntries {
            c["banner"] = "This replica is \(leaderCommit - status.appliedIndex.rawValue) log entries behind the leader: the registry shown is not current."
        }
        return c
    }

    struct PeerStatus: Sendable {
        var role: String
        var term: UInt64
        var leader: UInt64?
        var commit: UInt64
        var applied: UInt64
        /// The newest cluster version the replica supports and the one it has applied; a
        /// replica whose status does not say (the first release) is at 1 for both.
        var supportedClusterVersion: UInt32 = 1
        var clusterVersion: UInt32 = 1
    }

    /// What each other member of `m` reports of the cluster version, for those that answered.
    func peerVersions(_ m: Membership) async -> [ReplicaID: PeerVersion] {
        (await peerStatuses(m)).mapValues { PeerVersion(supported: $0.supportedClusterVersion, applied: $0.clusterVersion) }
    }

    static func roleName(_ r: Role) -> String { r == .leader ? "leader" : r == .follower ? "follower" : "candidate" }

    /// Every other member's `/v1/status`, asked at once with a one-second deadline each, and
    /// kept for a second (every open console asks every two seconds); those that did not
    /// answer are missing. With authentication on, it presents the replicas' own status token
    /// (derived from the token file), never a user's.
    private func peerStatuses(_ m: Membership) async -> [ReplicaID: PeerStatus] {
        if let cached = peerStatusCache.fresh(membership: m) { return cached }
        let fetched = await fetchPeerStatuses(m)
        peerStatusCache.store(fetched, membership: m)
        return fetched
    }

    private func fetchPeerStatuses(_ m: Membership) async -> [ReplicaID: PeerStatus] {
        let token = auth?.replicaStatusToken
        let scheme = config.clientTLS == nil ? "http" : "https"
        let targets: [(ReplicaID, String)] = m.members.compactMap { member in
            guard member.id != config.replicaID, let address = Self.reachableAddress(member) else { return nil }
            return (member.id, address)
        }
        return await withTaskGroup(of: (ReplicaID, PeerStatus?).self) { group in
            for (id, address) in targets {
                group.addTask { [passOnClient] in
                    var request = HTTPClientRequest(url: "\(scheme)://\(address)/v1/status")
                    if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
                    guard let answer = try? await passOnClient.exchange(request, deadline: .now + .seconds(1), maxBody: 64 << 10), answer.status == .ok,
                        let json = try? JSONSerialization.jsonObject(with: Data(answer.body.readableBytesView)) as? [String: Any]
                    else { return (id, nil) }
                    func number(_ k: String) -> UInt64? { (json[k] as? NSNumber)?.uint64Value }
                    // Whatever answers at a member's address must be that member.
                    guard number("replicaId") == id.rawValue else { return (id, nil) }
                    return (
                        id,
                        PeerStatus(
                            role: json["role"] as? String ?? "?", term: number("term") ?? 0, leader: number("leaderId"),
                            commit: number("commitIndex") ?? 0, applied: number("appliedIndex") ?? 0,
                            supportedClusterVersion: UInt32(clamping: number("supportedClusterVersion") ?? 1),
                            clusterVersion: UInt32(clamping: number("clusterVersion") ?? 1))
                    )
                }
            }
            var out: [ReplicaID: PeerStatus] = [:]
            for await (id, s) in group { if let s { out[id] = s } }
            return out
        }
    }

    /// A member's client address with a wildcard host replaced by its peer address's host.
    static func reachableAddress(_ m: Member) -> String? {
        guard let colon = m.clientAddress.lastIndex(of: ":") else { return nil }
        let host = String(m.clientAddress[..<colon])
        let port = m.clientAddress[m.clientAddress.index(after: colon)...]
        guard ["", "0.0.0.0", "::", "[::]"].contains(host) else { return m.clientAddress }
        guard let pc = m.peerAddress.lastIndex(of: ":") else { return nil }
        return "\(m.peerAddress[..<pc]):\(port)"
    }

    static func age(_ seconds: UInt64) -> String {
        switch seconds {
        case ..<60: return "\(seconds)s"
        case ..<3600: return "\(seconds / 60)m \(seconds % 60)s"
        case ..<86_400: return "\(seconds / 3600)h \(seconds % 3600 / 60)m"
        default: return "\(seconds / 86_400)d \(seconds % 86_400 / 3600)h"
        }
    }

    // MARK: Forget

    private func confirmForget(_ id: NodeID, _ session: ConsoleSession) async -> Response {
        guard let r = await driver.read(confirmed: false, { $0.node(id).map { [$0] } ?? [] }), let n = r.nodes.first else {
            return page("message", messageContext(session, "No node \(id)", "There is no node \(id) in the registry.", problem: true), status: .notFound)
        }
        var c = base(session)
        c["title"] = "NodeLease · forget node \(id)"
        c["nodeId"] = n.nodeID.rawValue
        c["hostname"] = n.hostname
        c["status"] = n.status.description
        c["csrf"] = session.csrf
        return page("forget", c)
    }

    private func forget(_ id: NodeID, _ request: Request, _ session: ConsoleSession) async -> Response {
        if let refused = crossOrigin(request) { return refused }
        var request = request
        guard let body = try? await readBody(&request), body.count <= 4096 else { return tooLarge() }
        guard Self.formFields(body)["csrf"] == session.csrf else {
            return page("message", messageContext(session, "Refused", "The form is out of date or came from elsewhere; open the node's Forget page again.", problem: true), status: .forbidden)
        }
        do {
            let written = try await driver.submit(.forget(nodeID: id))
            switch written.result {
            case .success: return redirect("/ui?forgot=\(id.rawValue)")
            case .failure(.nodeActive):
                return page("message", messageContext(session, "Node \(id) is active", "An active node cannot be forgotten: it holds a live lease. Release it, or wait until it is stale.", problem: true), status: .conflict)
            case .failure(.nodeNotFound):
                return page("message", messageContext(session, "No node \(id)", "There is no node \(id) in the registry (already forgotten?).", problem: true), status: .notFound)
            case .failure(let e):
                return page("message", messageContext(session, "Not forgotten", "\(e)", problem: true), status: .badRequest)
            }
        } catch {
            return page("message", messageContext(session, "No leader", "No leader with a quorum could be reached within the request timeout; nothing was changed. Try again.", problem: true), status: .serviceUnavailable)
        }
    }

    // MARK: Responses

    func page(_ template: String, _ context: [String: Any], status: HTTPResponse.Status = .ok, challenge: Bool = false) -> Response {
        let html = consoleTemplates?.render(context, withTemplate: template) ?? "console templates missing"
        var headers = HTTPFields()
        headers[.contentType] = "text/html; charset=utf-8"
        Self.consoleHeaders(&headers)
        headers[.cacheControl] = "no-store"
        if challenge { headers[.wwwAuthenticate] = "Bearer" }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: html)))
    }

    private func asset(_ text: String, _ type: String) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = type
        Self.consoleHeaders(&headers)
        headers[.cacheControl] = "max-age=300"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    private func redirect(_ location: String) -> Response {
        var headers = HTTPFields()
        Self.consoleHeaders(&headers)
        headers[.location] = location
        headers[.cacheControl] = "no-store"
        return Response(status: .seeOther, headers: headers)
    }

    static func consoleHeaders(_ h: inout HTTPFields) {
        h[.contentSecurityPolicy] = consolePolicy
        h[HTTPField.Name("X-Content-Type-Options")!] = "nosniff"
        h[HTTPField.Name("X-Frame-Options")!] = "DENY"
        h[HTTPField.Name("Referrer-Policy")!] = "no-referrer"
    }
}

/// The console's last fetch of the other replicas' status, reused for a second.
final class PeerStatusCache: Sendable {
    private struct Entry {
        var at: ContinuousClock.Instant
        var membership: Membership
        var statuses: [ReplicaID: HTTPAPI.PeerStatus]
    }
    private let entry = NIOLockedValueBox<Entry?>(nil)

    func fresh(membership: Membership) -> [ReplicaID: HTTPAPI.PeerStatus]? {
        entry.withLockedValue { e in
            guard let e, e.membership == membership, ContinuousClock.now - e.at < .seconds(1) else { return nil }
            return e.statuses
        }
    }

    func store(_ statuses: [ReplicaID: HTTPAPI.PeerStatus], membership: Membership) {
        entry.withLockedValue { $0 = Entry(at: .now, membership: membership, statuses: statuses) }
    }
}

import AsyncHTTPClient
import Foundation
import Logging
import NodeLeaseClient
import HTTPTypes
import Hummingbird
import LeaseRegistry
import NIOCore
import NIOHTTP1
import Raft
import ReplicaCore


/// `/v1/cluster/replicas` (shared/API.md "Replicas (membership)"). Reads answer from this
/// replica's configuration. Changes are made by the leader: a follower passes the request on
/// to the leader's client address, and a leader asked to remove itself first hands leadership
/// over, then passes the request to its successor (two hops at most; a request passed on
/// twice that lands on a replica that does not lead gets 503 `no_leader`).
extension HTTPAPI {
    /// How many replicas passed the request on already.
    static let forwardedHeader = HTTPField.Name("X-NodeLease-Forwarded")!

    func listReplicas() async -> Response {
        let m = await driver.membership
        return await json(.ok, configurationJSON(m), headers: true)
    }

    func addReplica(_ request: Request) async -> Response {
        if let bad = noQuery(request) { return bad }
        let fields: [(String, JSONValue)]
        let body: [UInt8]
        switch await readObject(request) {
        case .failure(let r): return r.response
        case .success(let read): (fields, body) = read
        }
        var id: UInt64?
        var peer: String?
        var client: String?
        var expected: UInt64?
        for (key, value) in fields {
            switch (key, value) {
            case ("replicaId", .number(let text, true)):
                guard let v = UInt64(text), v > 0 else { return invalid("replicaId", "must be a positive integer") }
                id = v
            case ("expectedConfigIndex", .number(let text, true)):
                guard let v = UInt64(text) else { return invalid("expectedConfigIndex", "must be a non-negative integer") }
                expected = v
            case ("peerAddress", .string(let s)): peer = s
            case ("clientAddress", .string(let s)): client = s
            case ("replicaId", _), ("expectedConfigIndex", _):
                return invalid(key, "must be an integer, not \(value.typeName)")
            case ("peerAddress", _), ("clientAddress", _):
                return invalid(key, "must be a string HOST:PORT, not \(value.typeName)")
            default:
                return error(.badRequest, "invalid_request", "unknown field \"\(key)\"")
            }
        }
        guard let id else { return invalid("replicaId", "is required") }
        guard let peer else { return invalid("peerAddress", "is required") }
        guard let client else { return invalid("clientAddress", "is required") }
        guard let peerAddress = Self.address(peer) else { return badAddress("peerAddress", peer) }
        guard let clientAddress = Self.address(client) else { return badAddress("clientAddress", client) }
        let member = Member(id: ReplicaID(id), role: .learner, peerAddress: peerAddress, clientAddress: clientAddress)
        return await change(.addLearner(member), expected: expected.map { LogIndex($0) }, force: false, request, body: body)
    }

    func promoteReplica(_ id: ReplicaID, _ request: Request) async -> Response {
        if let bad = noQuery(request) { return bad }
        var request = request
        guard let body = try? await readBody(&request) else { return tooLarge() }
        var expected: UInt64?
        if !body.isEmpty {
            switch parseObject(body) {
            case .failure(let r): return r.response
            case .success(let fields):
                for (key, value) in fields {
                    guard key == "expectedConfigIndex" else { return error(.badRequest, "invalid_request", "unknown field \"\(key)\"") }
                    guard case .number(let text, true) = value, let v = UInt64(text) else {
                        return invalid(key, "must be a non-negative integer")
                    }
                    expected = v
                }
            }
        }
        return await change(.promote(id), expected: expected.map { LogIndex($0) }, force: false, request, body: body)
    }

    func removeReplica(_ id: ReplicaID, _ request: Request) async -> Response {
        var expected: UInt64?
        var force = false
        for (k, v) in request.uri.queryParameters {
            switch k {
            case "expectedConfigIndex":
                guard let n = UInt64(v) else { return invalid("expectedConfigIndex", "must be a non-negative integer") }
                expected = n
            case "force":
                guard v == "true" || v == "false" else { return invalid("force", "must be true or false") }
                force = v == "true"
            default:
                return error(.badRequest, "invalid_request", "unknown query parameter \"\(k)\"")
            }
        }
        return await change(.remove(id), expected: expected.map { LogIndex($0) }, force: force, request, body: [])
    }

    /// These requests take their parameters in the body: any query parameter is a mistake
    /// (`force`, for instance, belongs to a removal).
    private func noQuery(_ request: Request) -> Response? {
        guard let (k, _) = request.uri.queryParameters.first else { return nil }
        return error(.badRequest, "invalid_request", "unknown query parameter \"\(k)\" (this request takes a JSON body)")
    }

    func replicaNotFound(_ id: Substring) -> Response {
        error(.notFound, "not_found", "replica \(id) is not a member")
    }

    /// Makes the change here as leader, or passes it to the leader.
    private func change(_ c: ConfChange, expected: LogIndex?, force: Bool, _ request: Request, body: [UInt8]) async -> Response {
        if request.headers[values: Self.idempotencyKeyHeader].count > 1 {
            return error(.badRequest, "invalid_request", "Idempotency-Key must be given once")
        }
        var key = ""
        if let raw = request.headers[Self.idempotencyKeyHeader] {
            do throws(LeaseError) { key = try IdempotencyKey.client(raw).value } catch { return self.error(.badRequest, error) }
        }
        let outcome: Result<ConfChangeDone, ConfChangeFailure>
        do {
            outcome = try await driver.changeMembership(c, expectedConfigIndex: expected, force: force, key: key)
        } catch {
            return await noLeader()
        }
        switch outcome {
        case .success(let done):
            var r = await json(.ok, configurationJSON(done.membership), headers: true)
            if done.replayed { r.headers[Self.replayedHeader] = "true" }
            return r
        case .failure(.keyReused):
            return error(.unprocessableContent, "idempotency_key_mismatch", "this Idempotency-Key was used for another membership change")
        case .failure(.refused(let e)):
            return refusal(e)
        case .failure(.lost):
            return await noLeader()
        case .failure(.notLeader(let leader)):
            // At most two hops: a follower to the leader, and a leader that handed over (to
            // remove itself) to its successor.
            let hops = max(0, request.headers[Self.forwardedHeader].flatMap { Int($0) } ?? 0)
            guard let leader, leader != config.replicaID, hops < 2 else { return await noLeader() }
            let address = await driver.membership.member(leader)?.clientAddress ?? ""
            guard !address.isEmpty else {
                var r = error(
                    .serviceUnavailable, "no_leader",
                    "the leader is replica \(leader), whose client address this replica does not know yet; send the request there")
                await addReadHeaders(&r)
                return r
            }
            return await passOn(request, body: body, to: address, hops: hops + 1)
        }
    }

    private func refusal(_ e: ConfChangeError) -> Response {
        switch e {
        case .inProgress(let why): return error(.conflict, "config_change_in_progress", why)
        // The request path waits these out; never answered, but mapped like the wait it is.
        case .votersNotHeardYet: return error(.conflict, "config_change_in_progress", e.description + "; retry in a moment")
        case .stale: return error(.conflict, "stale_config", e.description)
        case .replicaExists: return error(.conflict, "replica_exists", e.description)
        case .notFound(let id): return replicaNotFound(Substring(id.description))
        case .learnerLagging, .learnerHeld: return error(.conflict, "learner_lagging", e.description)
        case .wouldLoseQuorum: return error(.conflict, "would_lose_quorum", e.description + " (force=true overrides, to replace a dead replica)")
        case .invalid(let why): return error(.badRequest, "invalid_request", why)
        }
    }

    /// Sends the request to the leader's client port (HTTPS when this replica serves HTTPS)
    /// and returns its answer, or 503.
    private func passOn(_ request: Request, body: [UInt8], to address: String, hops: Int) async -> Response {
        let scheme = config.clientTLS == nil ? "http" : "https"
        var out = HTTPClientRequest(url: "\(scheme)://\(address)\(request.uri.path)" + (request.uri.query.map { "?\($0)" } ?? ""))
        out.method = HTTPMethod(rawValue: request.method.rawValue)
        out.headers.add(name: Self.forwardedHeader.rawName, value: String(hops))
        if let key = request.headers[Self.idempotencyKeyHeader] { out.headers.add(name: "Idempotency-Key", value: key) }
        // The leader checks the token again (every replica has the token file).
        if let token = request.headers[.authorization] { out.headers.add(name: "Authorization", value: token) }
        if !body.isEmpty {
            out.body = .bytes(ByteBuffer(bytes: body))
            out.headers.add(name: "Content-Type", value: "application/json")
        }
        do {
            let answer = try await passOnClient.exchange(out, deadline: .now + .milliseconds(Int64(config.requestTimeoutMillis)), maxBody: 1 << 20)
            var headers = HTTPFields()
            headers[.contentType] = "application/json"
            for name in [Self.indexHeader, Self.replicaHeader, Self.leaderHeader, Self.replayedHeader, .retryAfter, .wwwAuthenticate] {
                if let v = answer.headers.first(name: name.rawName) { headers[name] = v }
            }
            return Response(status: HTTPResponse.Status(code: Int(answer.status.code)), headers: headers, body: .init(byteBuffer: answer.body))
        } catch let failure {
            // Most often TLS: the leader's certificate does not name its client address, is
            // not from --peer-ca, or (with --client-ca) this replica's is not from that CA.
            logger.error("could not pass a membership change on to the leader at \(address): \(failure)")
            var r = error(
                .serviceUnavailable, "no_leader", "the leader at \(address) could not be reached to pass the change on (\(failure)); retry, or send it there")
            r.headers[.retryAfter] = "1"
            await addReadHeaders(&r)
            return r
        }
    }

    func configurationJSON(_ m: Membership) -> [UInt8] {
        var o = JSONObject()
        o.field("configIndex", m.index.rawValue)
        let replicas = m.members.map { member -> [UInt8] in
            var r = JSONObject()
            r.field("replicaId", member.id.rawValue)
            r.field("peerAddress", member.peerAddress.isEmpty ? config.peers[member.id]?.description ?? "" : member.peerAddress)
            r.field("clientAddress", member.clientAddress)
            r.field("role", member.role.description)
            return r.json
        }
        o.raw("replicas", jsonArray(replicas))
        return o.json
    }

    /// `HOST:PORT` (at most 255 characters, port 1 to 65535), normalised; nil if it is not one.
    static func address(_ text: String) -> String? {
        guard text.utf8.count <= 255, let a = try? ServerConfig.parseAddress(text, flag: ""), a.port > 0 else { return nil }
        return a.description
    }

    private func badAddress(_ field: String, _ text: String) -> Response {
        invalid(field, "must be HOST:PORT with a port from 1 to 65535, at most 255 characters, not \"\(text.prefix(64))\"")
    }
}

import AsyncHTTPClient
import Foundation
import Logging
import NIOHTTP1
import NIOSSL
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NodeLeaseServer
import Raft
import RaftTransport
import ServiceLifecycle
import TestSupport
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

struct HTTPResult {
    var status: Int
    var body: String
    var headers: [String: String]
    var json: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any] ?? [:] }
    var array: [[String: Any]] { (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [[String: Any]] ?? [] }
}

/// A cluster of real replicas in this process, on loopback TCP, each with its own data
/// directory and HTTP port.
final class LocalCluster: @unchecked Sendable {
    let size: Int
    let base: String
    var configs: [ReplicaID: ServerConfig] = [:]
    var replicas: [ReplicaID: NodeLeaseReplica] = [:]
    var tasks: [ReplicaID: Task<Void, any Error>] = [:]
    /// Each replica runs in a service group of its own, as `nodelease serve` runs it.
    var groups: [ReplicaID: ServiceGroup] = [:]
    /// Sent with every request the cluster's own helpers make (a token, with authentication on).
    var headers: [String: String] = [:]
    /// When set, every replica logs everything here (trace level) instead of warnings to stderr.
    var capture: CapturedLog?
    /// When set, the replicas serve HTTPS and the helpers talk it with this TLS configuration.
    var tls: TLSConfiguration? {
        didSet {
            try? https?.syncShutdown()
            https = tls.map { tls in
                HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls, timeout: .init(connect: .seconds(2))))
            }
        }
    }
    private var https: HTTPClient?

    init(size: Int = 3, configure: (inout ServerConfig) -> Void = { _ in }) throws {
        self.size = size
        base = FileManager.default.temporaryDirectory.appendingPathComponent("nodelease-it-\(UUID().uuidString)").path
        var peers: [ReplicaID: PeerAddress] = [:]
        for i in 1...size { peers[ReplicaID(UInt64(i))] = PeerAddress(host: "127.0.0.1", port: try freePort()) }
        for i in 1...size {
            let id = ReplicaID(UInt64(i))
            var c = ServerConfig(
                replicaID: id, peers: peers, clientListen: PeerAddress(host: "127.0.0.1", port: try freePort()),
                dataDir: "\(base)/replica-\(i)")
            c.tickMillis = 50
            c.electionTicks = 10
            c.requestTimeoutMillis = 2000
            c.ttlRange = 1...3600
            configure(&c)
            configs[id] = c
        }
    }

    func start(_ id: ReplicaID) async throws {
        var logger = Logger(label: "it")
        logger.logLevel = .warning
        if let capture { logger = capture.logger }
        let r = try NodeLeaseReplica(config: configs[id]!, logger: logger, onFatal: { Issue.record("replica \(id) failed: \($0)") })
        replicas[id] = r
        let group = ServiceGroup(configuration: .init(services: [.init(service: r)], logger: logger))
        groups[id] = group
        tasks[id] = Task { try await group.run() }
        #expect(await eventually(10) { (try? await self.get(id, "/healthz"))?.status == 200 })
    }

    func startAll() async throws {
        for i in 1...size { try await start(ReplicaID(UInt64(i))) }
        #expect(await eventually(10) { await self.leader() != nil }, "no leader elected")
    }

    /// Stops a replica as SIGTERM does: the HTTP server finishes the requests in progress.
    func stopGracefully(_ id: ReplicaID) async {
        guard replicas.removeValue(forKey: id) != nil else { return }
        await groups.removeValue(forKey: id)?.triggerGracefulShutdown()
        _ = try? await tasks.removeValue(forKey: id)?.value
    }

    func stop(_ id: ReplicaID) async {
        guard let r = replicas.removeValue(forKey: id) else { return }
        groups[id] = nil
        tasks.removeValue(forKey: id)?.cancel()
        await r.stop()
        try? await Task.sleep(for: .milliseconds(100))
    }

    func stopAll() async {
        for id in replicas.keys.sorted() { await stop(id) }
    }

    deinit {
        try? https?.syncShutdown()
        try? FileManager.default.removeItem(atPath: base)
    }

    /// The replica every live replica agrees leads.
    func leader() async -> ReplicaID? {
        var seen: Set<UInt64> = []
        for id in replicas.keys {
            guard let s = try? await get(id, "/v1/status"), let l = s.json["leaderId"] as? Int else { return nil }
            seen.insert(UInt64(l))
        }
        return seen.count == 1 ? ReplicaID(seen.first!) : nil
    }

    func url(_ id: ReplicaID, _ path: String) -> URL {
        let a = configs[id]!.clientListen
        return URL(string: "\(tls == nil ? "http" : "https")://\(a.host):\(a.port)\(path)")!
    }

    func request(_ id: ReplicaID, _ method: String, _ path: String, body: String? = nil, headers: [String: String] = [:]) async throws -> HTTPResult {
        if let https {
            var r = HTTPClientRequest(url: url(id, path).absoluteString)
            r.method = HTTPMethod(rawValue: method)
            for (k, v) in self.headers.merging(headers, uniquingKeysWith: { $1 }) where !v.isEmpty { r.headers.add(name: k, value: v) }
            if let body {
                r.body = .bytes(ByteBuffer(string: body))
                r.headers.add(name: "Content-Type", value: "application/json")
            }
            let answer = try await https.execute(r, timeout: .seconds(10))
            let data = try await answer.body.collect(upTo: 16 << 20)
            var headers: [String: String] = [:]
            for h in answer.headers { headers[h.name.lowercased()] = h.value }
            return HTTPResult(status: Int(answer.status.code), body: String(buffer: data), headers: headers)
        }
        var r = URLRequest(url: url(id, path))
        r.httpMethod = method
        r.timeoutInterval = 10
        for (k, v) in self.headers.merging(headers, uniquingKeysWith: { $1 }) where !v.isEmpty { r.setValue(v, forHTTPHeaderField: k) }
        if let body {
            r.httpBody = Data(body.utf8)
            r.setValue("application/json", forHTTPHeaderField: "Content-Type")
        }
        let (data, response) = try await URLSession.shared.data(for: r)
        let http = response as! HTTPURLResponse
        var headers: [String: String] = [:]
        for (k, v) in http.allHeaderFields { headers[String(describing: k).lowercased()] = String(describing: v) }
        return HTTPResult(status: http.statusCode, body: String(decoding: data, as: UTF8.self), headers: headers)
    }

    func get(_ id: ReplicaID, _ path: String) async throws -> HTTPResult { try await request(id, "GET", path) }
    func post(_ id: ReplicaID, _ path: String, _ body: String) async throws -> HTTPResult { try await request(id, "POST", path, body: body) }
}

func eventually(_ seconds: Double, _ condition: () async -> Bool) async -> Bool {
    let end = Date().addingTimeInterval(seconds)
    while Date() < end {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return await condition()
}

@Suite(.serialized)
struct ClusterTests {
    @Test func leaseLifecycleThroughAnyReplica() async throws {
        let c = try LocalCluster()
        try await c.startAll()
        let leader = await c.leader()!
        let follower = ReplicaID(leader.rawValue % 3 + 1)

        // A write sent to a follower succeeds.
        let acquired = try await c.post(follower, "/v1/leases", #"{"hostname":"MX1.example.org","holder":"h-1","ttlSeconds":30}"#)
        #expect(acquired.status == 200, "\(acquired.body)")
        let lease = acquired.json
        #expect(lease["nodeId"] as? Int == 1 && lease["hostname"] as? String == "mx1.example.org")
        let leaseID = try #require(lease["leaseId"] as? String)
        #expect(lease["fencingToken"] as? Int == Int(leaseID))
        #expect(acquired.body.hasPrefix(#"{"leaseId":""#))
        // A write answers with the index of the entry that applied it: the grant's own entry.
        let grantIndex = Int(acquired.headers["x-nodelease-index"] ?? "")
        #expect(grantIndex == Int(leaseID))

        // The same holder again: the same lease. Another holder: hostname_in_use.
        let again = try await c.post(leader, "/v1/leases", #"{"hostname":"mx1.example.org","holder":"h-1"}"#)
        #expect(again.json["leaseId"] as? String == leaseID)
        let conflict = try await c.post(follower, "/v1/leases", #"{"hostname":"mx1.example.org","holder":"h-2"}"#)
        #expect(conflict.status == 409 && conflict.json["error"] as? String == "hostname_in_use")
        #expect(conflict.json["holder"] as? String == "h-1" && conflict.json["nodeId"] as? Int == 1)
        #expect((conflict.json["expiresInSeconds"] as? Int ?? -1) > 0)

        // A linearizable read on the other follower reflects the write; headers are there.
        let other = ReplicaID(follower.rawValue % 3 + 1) == leader ? ReplicaID((follower.rawValue + 1) % 3 + 1) : ReplicaID(follower.rawValue % 3 + 1)
        let read = try await c.get(other, "/v1/cluster/nodes?consistency=linearizable")
        #expect(read.status == 200 && read.array.count == 1)
        #expect(read.body.hasPrefix(#"[{"nodeId":1,"hostname":"mx1.example.org","lastRenewal":""#))
        #expect(read.headers["x-nodelease-replica"] == String(other.rawValue))
        #expect(read.headers["x-nodelease-leader"] == String(leader.rawValue))
        #expect(Int(read.headers["x-nodelease-index"] ?? "") ?? 0 >= Int(leaseID)!)

        // Renew, release (then 404), and the node is inactive everywhere.
        let renewed = try await c.post(other, "/v1/leases/\(leaseID)/renew", "")
        #expect(renewed.status == 200 && renewed.json["leaseId"] as? String == leaseID)
        let released = try await c.request(follower, "DELETE", "/v1/leases/\(leaseID)")
        #expect(released.status == 200 && released.json["status"] as? String == "inactive")
        // Each later write answers at a later entry, wherever it was sent.
        let renewIndex = Int(renewed.headers["x-nodelease-index"] ?? "") ?? 0
        let releaseIndex = Int(released.headers["x-nodelease-index"] ?? "") ?? 0
        #expect(renewIndex > grantIndex ?? Int.max && releaseIndex > renewIndex)
        let twice = try await c.request(follower, "DELETE", "/v1/leases/\(leaseID)")
        #expect(twice.status == 404 && twice.json["error"] as? String == "lease_not_found")
        let renewGone = try await c.post(leader, "/v1/leases/\(leaseID)/renew", "{}")
        #expect(renewGone.status == 404)
        let one = try await c.get(other, "/v1/cluster/nodes/1?consistency=linearizable")
        #expect(one.json["status"] as? String == "inactive")

        // Forget: the ID and hostname are free again.
        let forgot = try await c.request(leader, "DELETE", "/v1/cluster/nodes/1")
        #expect(forgot.status == 200)
        #expect(try await c.get(leader, "/v1/cluster/nodes/1").status == 404)
        await c.stopAll()
    }

    @Test func theConfigurationOnDiskWinsOverPeersAfterTheFirstStart() async throws {
        let c = try LocalCluster(size: 1)
        try await c.startAll()
        await c.stopAll()
        var config = c.configs[1]!
        config.peers[2] = PeerAddress(host: "127.0.0.1", port: try freePort())
        config.peers[3] = PeerAddress(host: "127.0.0.1", port: try freePort())
        // --peers now names three replicas, but the data directory's configuration has one:
        // it wins (membership changes go through the log), so the replica still leads alone.
        let replica = try NodeLeaseReplica(config: config, logger: Logger(label: "it"))
        #expect(await replica.membership.voters == [1])
        await replica.stop()
        // The same membership as before still starts.
        try await c.start(1)
        await c.stopAll()
    }

    @Test func malformedRequestsGetTheDocumentedErrors() async throws {
        let c = try LocalCluster(size: 1)
        try await c.startAll()
        let r: ReplicaID = 1
        let cases: [(String, String, String?, Int, String)] = [
            ("POST", "/v1/leases", "{bad json", 400, "invalid_request"),
            ("POST", "/v1/leases", "[1,2]", 400, "invalid_request"),
            ("POST", "/v1/leases", #"{"hostname":"a","holder":"b","ttl":5}"#, 400, "invalid_request"),
            ("POST", "/v1/leases", #"{"hostname":"a","holder":"b","ttlSeconds":"5"}"#, 400, "invalid_request"),
            ("POST", "/v1/leases", #"{"hostname":"a","holder":"b","ttlSeconds":5.5}"#, 400, "invalid_request"),
            ("POST", "/v1/leases", #"{"hostname":"a b","holder":"b"}"#, 400, "invalid_request"),
            ("POST", "/v1/leases", #"{"holder":"b"}"#, 400, "invalid_request"),
            ("POST", "/v1/leases", #"{"hostname":"a","holder":"b","ttlSeconds":999999}"#, 400, "invalid_request"),
            ("POST", "/v1/leases", #"{"hostname":"a","hostname":"b","holder":"b"}"#, 400, "invalid_request"),
            ("PUT", "/v1/leases", nil, 405, "method_not_allowed"),
            ("GET", "/v1/leases/1/renew", nil, 405, "method_not_allowed"),
            ("GET", "/v1/nothing/here", nil, 404, "not_found"),
            ("GET", "/%00%ff/../..", nil, 404, "not_found"),
            ("POST", "/v1/leases/not-a-number/renew", "", 404, "lease_not_found"),
            ("POST", "/v1/leases/12/renew", #"{"x":1}"#, 400, "invalid_request"),
            ("GET", "/v1/cluster/nodes/999", nil, 404, "node_not_found"),
            ("GET", "/v1/cluster/nodes?status=sleepy", nil, 400, "invalid_request"),
            ("GET", "/v1/cluster/nodes?consistency=eventual", nil, 400, "invalid_request"),
            ("POST", "/v1/leases", String(repeating: "x", count: 70_000), 413, "request_too_large"),
        ]
        for (method, path, body, status, code) in cases {
            let res = try await c.request(r, method, path, body: body)
            #expect(res.status == status, "\(method) \(path): \(res.status) \(res.body)")
            #expect(res.json["error"] as? String == code, "\(method) \(path): \(res.body)")
            #expect(!(res.json["message"] as? String ?? "").isEmpty)
        }
        // Still healthy and writable.
        #expect(try await c.get(r, "/healthz").status == 200)
        #expect(try await c.post(r, "/v1/leases", #"{"hostname":"ok","holder":"h"}"#).status == 200)
        // Prometheus text with the Raft, WAL, HTTP and registry metrics.
        let m = try await c.get(r, "/metrics")
        #expect(m.status == 200)
        for needle in [
            "nodelease_raft_term 1", "nodelease_raft_role{role=\"leader\"} 1", "nodelease_wal_fsync_seconds_bucket",
            "nodelease_http_request_duration_seconds_count{endpoint=\"POST /v1/leases\",status=\"200\"}",
            "status=\"400\"", "nodelease_nodes{status=\"active\"} 1", "nodelease_raft_proposals_total",
        ] {
            #expect(m.body.contains(needle), "metrics lack \(needle)")
        }
        await c.stopAll()
    }

    @Test func aLeaseThatIsNotRenewedTurnsStaleEverywhere() async throws {
        let c = try LocalCluster()
        try await c.startAll()
        let leader = await c.leader()!
        let a = try await c.post(leader, "/v1/leases", #"{"hostname":"mx2","holder":"h","ttlSeconds":2}"#)
        #expect(a.status == 200)
        let started = Date()
        #expect(await eventually(6) {
            for id in c.replicas.keys {
                guard let r = try? await c.get(id, "/v1/cluster/nodes/1"), r.json["status"] as? String == "stale" else { return false }
            }
            return true
        })
        let took = Date().timeIntervalSince(started)
        #expect(took >= 1.9 && took <= 3.5, "stale after \(took) s for a 2 s TTL")
        // The hostname gets its ID back on the next acquire.
        let back = try await c.post(leader, "/v1/leases", #"{"hostname":"mx2","holder":"h2"}"#)
        #expect(back.json["nodeId"] as? Int == 1 && back.json["leaseTransitions"] as? Int == 1)
        await c.stopAll()
    }

    @Test func losingTheLeaderElectsAnotherAndKeepsLeases() async throws {
        let c = try LocalCluster()
        try await c.startAll()
        let leader = await c.leader()!
        let a = try await c.post(leader, "/v1/leases", #"{"hostname":"mx3","holder":"h","ttlSeconds":10}"#)
        #expect(a.status == 200)
        await c.stop(leader)
        let survivor = c.replicas.keys.sorted()[0]
        // A new leader within three election timeouts (0.5 s each), plus slack for the test.
        #expect(await eventually(3) {
            let now = await c.leader()
            return now != nil && now != leader
        })
        let node = try await c.get(survivor, "/v1/cluster/nodes/1?consistency=linearizable")
        #expect(node.json["status"] as? String == "active")
        #expect(try await c.post(survivor, "/v1/leases/\(a.json["leaseId"] as! String)/renew", "").status == 200)
        // With only one of three left, writes answer 503 no_leader within the request timeout.
        await c.stop(c.replicas.keys.sorted()[1])
        let t = Date()
        let w = try await c.post(survivor, "/v1/leases", #"{"hostname":"mx4","holder":"h"}"#)
        #expect(w.status == 503 && w.json["error"] as? String == "no_leader")
        #expect(w.headers["retry-after"] != nil)
        #expect(Date().timeIntervalSince(t) < 4)
        await c.stopAll()
    }

    @Test func aRestartedClusterKeepsItsRegistry() async throws {
        let c = try LocalCluster()
        try await c.startAll()
        let leader = await c.leader()!
        for i in 1...5 {
            #expect(try await c.post(leader, "/v1/leases", #"{"hostname":"h\#(i)","holder":"x","ttlSeconds":60}"#).status == 200)
        }
        await c.stopAll()
        try await c.startAll()
        let any = c.replicas.keys.sorted()[0]
        let nodes = try await c.get(any, "/v1/cluster/nodes?consistency=linearizable")
        #expect(nodes.array.count == 5)
        #expect(nodes.array.allSatisfy { $0["status"] as? String == "active" })
        await c.stopAll()
    }
}

@Suite(.serialized)
struct RecoveryTests {
    @Test func aReplicaBehindTheCompactedLogCatchesUpBySnapshot() async throws {
        let c = try LocalCluster { config in
            config.snapshotEvery = 20
            config.snapshotEntriesPerNode = 0
            config.keepAfterSnapshot = 5
        }
        try await c.startAll()
        let leader = await c.leader()!
        let lagging = ReplicaID(leader.rawValue % 3 + 1)
        await c.stop(lagging)
        let writer = c.replicas.keys.sorted()[0]
        for i in 1...60 {
            let r = try await c.post(writer, "/v1/leases", #"{"hostname":"snap\#(i)","holder":"x","ttlSeconds":120}"#)
            #expect(r.status == 200, "\(r.body)")
        }
        try await c.start(lagging)
        #expect(await eventually(15) {
            guard let r = try? await c.get(lagging, "/v1/cluster/nodes") else { return false }
            return r.array.count == 60
        })
        let local = try await c.get(lagging, "/v1/cluster/nodes")
        let reference = try await c.get(writer, "/v1/cluster/nodes?consistency=linearizable")
        #expect(local.body == reference.body)
        await c.stopAll()
    }

    @Test func fiveReplicasStayWritableWithTwoDown() async throws {
        let c = try LocalCluster(size: 5)
        try await c.startAll()
        let leader = await c.leader()!
        let others = c.replicas.keys.sorted().filter { $0 != leader }
        await c.stop(leader)
        await c.stop(others[0])
        let alive = others[1]
        #expect(await eventually(5) { (try? await c.post(alive, "/v1/leases", #"{"hostname":"five","holder":"x"}"#))?.status == 200 })
        await c.stopAll()
    }
}

@Suite(.serialized)
struct WipedDirectoryTests {
    @Test func aReplicaWhoseDataDirectoryWasEmptiedIsRefused() async throws {
        let c = try LocalCluster()
        try await c.startAll()
        let leader = await c.leader()!
        let victim = c.configs.keys.sorted().first { $0 != leader }!
        #expect(try await c.post(leader, "/v1/leases", #"{"hostname":"before","holder":"x"}"#).status == 200)
        // Give the leader a few ticks to record every replica's data directory in the log.
        try await Task.sleep(for: .seconds(1))
        await c.stop(victim)
        try FileManager.default.removeItem(atPath: c.configs[victim]!.dataDir)
        try await c.start(victim)
        // Every peer refuses the emptied replica, so it can neither vote nor acknowledge.
        try await Task.sleep(for: .seconds(2))
        let s = try await c.get(victim, "/v1/status")
        let peers = s.json["peers"] as? [[String: Any]] ?? []
        #expect(peers.count == 2 && peers.allSatisfy { $0["reachable"] as? Bool == false }, "\(s.body)")
        // A replica that keeps its directory is still welcome after a restart.
        let other = c.configs.keys.sorted().first { $0 != leader && $0 != victim }!
        await c.stop(other)
        try await c.start(other)
        #expect(await eventually(5) {
            let peers = (try? await c.get(other, "/v1/status"))?.json["peers"] as? [[String: Any]] ?? []
            return peers.contains { $0["replicaId"] as? Int == Int(leader.rawValue) && $0["reachable"] as? Bool == true }
        })
        // The rest of the cluster keeps working.
        #expect(try await c.post(leader, "/v1/leases", #"{"hostname":"after","holder":"x"}"#).status == 200)
        await c.stopAll()
    }
}

import ChildProcess
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NodeLeaseClient
import NodeLeaseServer
import NIOSSL
import TestSupport
import Raft
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

@Suite struct TokenTests {
    @Test func sha256MatchesTheStandardsVectorsAndSha256sum() throws {
        #expect(SHA256.hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(
            SHA256.hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")
                == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        #expect(
            SHA256.hexString(SHA256.hash([UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)))
                == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
        // Every length around the padding's block boundaries, against coreutils.
        for length in [1, 55, 56, 57, 63, 64, 65, 119, 120, 128] {
            let text = String((0..<length).map { Character(UnicodeScalar(UInt8(33 + ($0 * 7) % 90))) })
            #expect(SHA256.hex(text) == (try sha256sum(text)), "length \(length)")
        }
    }

    private func sha256sum(_ text: String) throws -> String {
        String(try ChildProcess.output("/usr/bin/sha256sum", [], input: text).prefix(64))
    }

    @Test func hostnamePatternsMatchOneLabelOrTheExactName() throws {
        let wild = try HostnamePattern("*.example.org")
        #expect(wild.matches("mx1.example.org"))
        #expect(!wild.matches("a.b.example.org"))
        #expect(!wild.matches("example.org"))
        #expect(!wild.matches("mx1.example.org.evil.net"))
        #expect(!wild.matches("mx1evilexample.org"))
        let exact = try HostnamePattern("MX1.example.org")
        #expect(exact.matches("mx1.example.org"))
        #expect(!exact.matches("mx2.example.org"))
        for bad in ["*", "*.", "a.*.org", "mx 1.org", "", "*.*.org"] {
            #expect(throws: ConfigError.self, "\(bad)") { try HostnamePattern(bad) }
        }
    }

    @Test func theTokenFileIsParsedStrictlyAndNamesTheBadLine() throws {
        let a = SHA256.hex("admin-token")
        let n = SHA256.hex("node-token")
        let file = try TokenFile.parse(
            """
            # ops
            sha256:\(a) role=admin name=ops

            sha256:\(n) role=node hostnames=*.example.org,mx1.example.net name=fleet
            """)
        #expect(file.entries.count == 2)
        #expect(file.authenticate("admin-token")?.role == .admin)
        #expect(file.authenticate("node-token")?.name == "fleet")
        #expect(file.authenticate("node-token")?.mayLease("mx1.example.net") == true)
        #expect(file.authenticate("node-token")?.mayLease("mx1.example.com") == false)
        #expect(file.authenticate("Admin-token") == nil)
        #expect(file.authenticate("") == nil)
        let bad: [(String, String)] = [
            ("sha256:\(n) role=node", "hostnames"),
            ("sha256:\(n) role=reader hostnames=*.example.org", "only node tokens"),
            ("sha256:\(n) role=root", "unknown role"),
            ("sha256:abc role=admin", "64 hex"),
            ("\(n) role=admin", "sha256:"),
            ("sha256:\(n) role=admin colour=blue", "unknown key"),
            ("sha256:\(n)", "role= is required"),
        ]
        for (line, why) in bad {
            do {
                _ = try TokenFile.parse("# first\n" + line)
                Issue.record("accepted: \(line)")
            } catch {
                #expect(error.problem.hasPrefix("line 2: "), "\(error)")
                #expect(error.problem.contains(why), "\(error)")
            }
        }
        // `token create`'s line reads back as the same entry.
        let entry = try #require(file.authenticate("node-token"))
        #expect(try TokenFile.parse(entry.line).entries == [entry])
    }

    @Test func newTokensAreLongRandomAndDistinct() {
        let tokens = (0..<100).map { _ in TokenFile.newToken() }
        #expect(Set(tokens).count == 100)
        #expect(tokens.allSatisfy { $0.hasPrefix("nlt_") && $0.count == 4 + 43 })
    }

    @Test func theHolderDigestTellsHoldersApartWithoutNamingThem() throws {
        // RFC 4231, test case 2.
        #expect(
            SHA256.hexString(SHA256.hmac(key: Array("Jefe".utf8), message: Array("what do ya want for nothing?".utf8)))
                == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        let file = try TokenFile.parse("sha256:\(SHA256.hex("t")) role=admin\n")
        let auth = Authenticator(tokens: file)
        let a = auth.holderDigest("3b2f0c1e-mx1")
        #expect(a == Authenticator(tokens: file).holderDigest("3b2f0c1e-mx1"), "the same on every replica with the same file")
        #expect(a != auth.holderDigest("3b2f0c1e-mx2"))
        #expect(!a.contains("mx1"))
        #expect(a.hasPrefix("hmac:") && a.count == 5 + 16)
        // Keyed by the token file, not by anything a client can read.
        let other = Authenticator(tokens: try TokenFile.parse("sha256:\(SHA256.hex("u")) role=admin\n"))
        #expect(other.holderDigest("3b2f0c1e-mx1") != a)
    }
}

/// Authentication and roles through a real 3-replica cluster (shared/API.md).
@Suite(.serialized) struct AuthenticationTests {
    static let admin = "nlt_admin-secret-0123456789"
    static let reader = "nlt_reader-secret-0123456789"
    static let node = "nlt_node-secret-0123456789"
    static let otherNode = "nlt_other-node-secret-0123456789"

    static func tokenFile(includeReader: Bool = true) -> String {
        var lines = [
            "sha256:\(SHA256.hex(admin)) role=admin name=ops",
            "sha256:\(SHA256.hex(node)) role=node hostnames=*.example.org name=fleet",
            "sha256:\(SHA256.hex(otherNode)) role=node hostnames=*.example.net name=other",
        ]
        if includeReader { lines.append("sha256:\(SHA256.hex(reader)) role=reader name=grafana") }
        return lines.joined(separator: "\n") + "\n"
    }

    private func bearer(_ token: String) -> [String: String] { ["Authorization": "Bearer \(token)"] }

    @Test func everyRoleGetsExactlyWhatTheContractGivesIt() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("nodelease-tokens-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/tokens"
        try Self.tokenFile().write(toFile: path, atomically: true, encoding: .utf8)
        let c = try LocalCluster { $0.tokenFile = path }
        let capture = CapturedLog()
        c.capture = capture
        c.headers = bearer(Self.admin)
        try await c.startAll()
        let leader = try #require(await c.leader())
        let follower = ReplicaID(leader.rawValue % 3 + 1)

        // Open: health. Everything else: 401 without a valid token, with the challenge.
        #expect(try await c.request(follower, "GET", "/healthz", headers: ["Authorization": ""]).status == 200)
        #expect(try await c.request(follower, "GET", "/readyz", headers: ["Authorization": ""]).status == 200)
        for (method, path) in [("GET", "/v1/cluster/nodes"), ("GET", "/metrics"), ("POST", "/v1/leases"), ("GET", "/nowhere")] {
            let r = try await c.request(follower, method, path, body: method == "POST" ? "{}" : nil, headers: ["Authorization": ""])
            #expect(r.status == 401, "\(method) \(path)")
            #expect(r.json["error"] as? String == "unauthenticated")
            #expect(r.headers["www-authenticate"] == "Bearer")
        }
        for header in ["Bearer nlt_wrong", "Basic \(Self.admin)", "Bearer", "Bearer \(Self.admin)x"] {
            #expect(try await c.request(follower, "GET", "/v1/status", headers: ["Authorization": header]).status == 401, "\(header)")
        }

        // reader: every GET, no write.
        for path in ["/v1/cluster/nodes", "/v1/status", "/metrics", "/v1/cluster/replicas"] {
            #expect(try await c.request(follower, "GET", path, headers: bearer(Self.reader)).status == 200, "\(path)")
        }
        let readerAcquire = try await c.request(
            follower, "POST", "/v1/leases", body: #"{"hostname":"mx1.example.org","holder":"h1"}"#, headers: bearer(Self.reader))
        #expect(readerAcquire.status == 403)
        #expect(readerAcquire.json["error"] as? String == "forbidden")

        // node: leases of its hostnames only, through a follower too; no reads.
        let acquired = try await c.request(
            follower, "POST", "/v1/leases", body: #"{"hostname":"MX1.example.org","holder":"holder-mx1-secret"}"#, headers: bearer(Self.node))
        #expect(acquired.status == 200, "\(acquired.body)")
        let leaseId = try #require(acquired.json["leaseId"] as? String)
        let outside = try await c.request(
            follower, "POST", "/v1/leases", body: #"{"hostname":"mx1.example.net","holder":"h"}"#, headers: bearer(Self.node))
        #expect(outside.status == 403)
        #expect(try await c.request(follower, "GET", "/v1/cluster/nodes", headers: bearer(Self.node)).status == 403)
        #expect(try await c.request(follower, "POST", "/v1/leases/\(leaseId)/renew", headers: bearer(Self.node)).status == 200)
        // Another node token may not touch that lease, nor forget nodes or change replicas.
        #expect(try await c.request(follower, "POST", "/v1/leases/\(leaseId)/renew", headers: bearer(Self.otherNode)).status == 403)
        #expect(try await c.request(leader, "DELETE", "/v1/leases/\(leaseId)", headers: bearer(Self.otherNode)).status == 403)
        #expect(try await c.request(follower, "DELETE", "/v1/cluster/nodes/1", headers: bearer(Self.node)).status == 403)
        #expect(try await c.request(follower, "DELETE", "/v1/cluster/replicas/3", headers: bearer(Self.reader)).status == 403)
        // A backup holds every holder and remembered outcome: admin only (issue 19).
        #expect(try await c.request(follower, "GET", "/v1/snapshot", headers: bearer(Self.reader)).status == 403)
        #expect(try await c.request(follower, "GET", "/v1/snapshot", headers: bearer(Self.node)).status == 403)
        #expect(try await c.request(follower, "GET", "/v1/snapshot", headers: ["Authorization": ""]).status == 401)
        let backup = try await c.request(follower, "GET", "/v1/snapshot", headers: bearer(Self.admin))
        #expect(backup.status == 200)
        #expect(backup.headers["content-type"] == "application/octet-stream")
        #expect(backup.headers["x-nodelease-snapshot-index"].flatMap(UInt64.init) != nil)
        #expect(try await c.request(follower, "POST", "/v1/snapshot", headers: bearer(Self.admin)).status == 405)
        // Unknown paths and wrong methods are 404 and 405 for every role, as without tokens.
        #expect(try await c.request(follower, "GET", "/v1/nowhere", headers: bearer(Self.node)).status == 404)
        #expect(try await c.request(follower, "PUT", "/v1/cluster/nodes", headers: bearer(Self.reader)).status == 405)
        // A lease id not granted yet is no lease, whatever comes later.
        #expect(try await c.request(follower, "POST", "/v1/leases/999999/renew", headers: bearer(Self.node)).status == 404)

        // The 409 names the holder to an admin only; a node token sees a digest.
        let taken = try await c.request(
            follower, "POST", "/v1/leases", body: #"{"hostname":"mx1.example.org","holder":"intruder"}"#, headers: bearer(Self.node))
        #expect(taken.status == 409)
        let digest = try #require(taken.json["holder"] as? String)
        #expect(digest == c.replicas[follower]?.authenticator?.holderDigest("holder-mx1-secret"))
        #expect(!digest.contains("holder-mx1"))
        let takenByAdmin = try await c.request(
            follower, "POST", "/v1/leases", body: #"{"hostname":"mx1.example.org","holder":"intruder"}"#, headers: bearer(Self.admin))
        #expect(takenByAdmin.json["holder"] as? String == "holder-mx1-secret")

        // A membership change through a follower is passed to the leader with the token, and
        // checked there: a stale expectedConfigIndex is the leader's answer, not a 401.
        #expect(
            await eventually(10) {
                let replicas = (try? await c.get(follower, "/v1/cluster/replicas"))?.json["replicas"] as? [[String: Any]] ?? []
                return replicas.count == 3 && replicas.allSatisfy { ($0["clientAddress"] as? String ?? "") != "" }
            })
        let stale = try await c.request(follower, "DELETE", "/v1/cluster/replicas/\(follower)?expectedConfigIndex=1", headers: bearer(Self.admin))
        #expect(stale.status == 409, "\(stale.body)")
        #expect(stale.json["error"] as? String == "stale_config")

        // The node token releases its own lease, and a retry of that release (same key) is
        // answered with the first outcome though the lease is gone.
        let release = try await c.request(
            follower, "DELETE", "/v1/leases/\(leaseId)", headers: bearer(Self.node).merging(["Idempotency-Key": "rel-1"]) { $1 })
        #expect(release.status == 200)
        let again = try await c.request(
            follower, "DELETE", "/v1/leases/\(leaseId)", headers: bearer(Self.node).merging(["Idempotency-Key": "rel-1"]) { $1 })
        #expect(again.status == 200)
        #expect(again.headers["idempotent-replayed"] == "true")
        // Another node token replaying that key (the lease is gone, so its hostname is not
        // known beforehand) does not get the first answer: it names a hostname outside its patterns.
        let stolen = try await c.request(
            follower, "DELETE", "/v1/leases/\(leaseId)", headers: bearer(Self.otherNode).merging(["Idempotency-Key": "rel-1"]) { $1 })
        #expect(stolen.status == 403, "\(stolen.body)")
        #expect(!stolen.body.contains("mx1"))

        // SIGHUP's reload: a revoked token stops working; an invalid file changes nothing.
        try Self.tokenFile(includeReader: false).write(toFile: path, atomically: true, encoding: .utf8)
        for r in c.replicas.values { r.reloadTokens() }
        #expect(try await c.request(follower, "GET", "/v1/status", headers: bearer(Self.reader)).status == 401)
        try "sha256:nothex role=admin\n".write(toFile: path, atomically: true, encoding: .utf8)
        for r in c.replicas.values { r.reloadTokens() }
        #expect(try await c.request(follower, "GET", "/v1/status", headers: bearer(Self.admin)).status == 200)
        #expect(capture.all.contains { $0.contains("kept the tokens in use") })

        await c.stopAll()
        // Everything the replicas logged, at trace level, names no token.
        let log = capture.all
        #expect(log.count > 50)
        for token in [Self.admin, Self.reader, Self.node, Self.otherNode] {
            #expect(!log.contains { $0.contains(token) }, "a log line contains a token")
        }
    }
}

/// Collects what a raw connection receives.
final class ResponseCounter: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    private let received = NIOLockedValueBox("")
    var text: String { received.withLockedValue { $0 } }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let s = String(buffer: unwrapInboundIn(data))
        received.withLockedValue { $0 += s }
    }
}

/// Limits against slow or greedy clients on the client port.
@Suite(.serialized) struct ClientLimitTests {
    @Test func aClientTricklingItsHeaderIsCutOff() async throws {
        let c = try LocalCluster(size: 1) { $0.httpHeadTimeoutMillis = 600 }
        try await c.startAll()
        let port = c.configs[1]!.clientListen.port
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: port).get()
        let start = ContinuousClock.now
        var sent = 0
        for byte in Array("GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".utf8) {
            guard channel.isActive else { break }
            try? await channel.writeAndFlush(ByteBuffer(bytes: [byte])).get()
            sent += 1
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(!channel.isActive, "still connected after \(sent) bytes")
        #expect(ContinuousClock.now - start < .seconds(3))
        // The same after a first exchange on the connection, and after one the server answered
        // before the request's body came in (a 404 for a body of 1 byte, sent after it).
        for first in ["GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n", "POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n"] {
            let reader = ResponseCounter()
            let again = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(reader) } }
                .connect(host: "127.0.0.1", port: port).get()
            try await again.writeAndFlush(ByteBuffer(string: first)).get()
            #expect(await eventually(3) { reader.text.contains("HTTP/1.1 ") }, "no answer to \(first)")
            if first.hasPrefix("POST") { try await again.writeAndFlush(ByteBuffer(string: "x")).get() }
            let since = ContinuousClock.now
            for byte in Array("GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".utf8) {
                guard again.isActive else { break }
                try? await again.writeAndFlush(ByteBuffer(bytes: [byte])).get()
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(!again.isActive, "still connected after \(first)")
            #expect(ContinuousClock.now - since < .seconds(3))
        }
        // Everyone else is served as usual.
        #expect(try await c.get(1, "/v1/status").status == 200)
        await c.stopAll()
    }

    /// A request pipelined behind one with `Connection: close` is never answered (the server
    /// half-closes and reads no more): the connection still has a deadline, and is closed.
    @Test func aRequestPipelinedBehindAClosingOneDoesNotHoldTheConnection() async throws {
        let c = try LocalCluster(size: 1) {
            $0.httpHeadTimeoutMillis = 800
            $0.requestTimeoutMillis = 200
            $0.httpResponseGraceMillis = 300
        }
        try await c.startAll()
        let port = c.configs[1]!.clientListen.port
        let reader = ResponseCounter()
        // The client keeps its side open when the server half-closes (as an attacker would).
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(reader) } }
            .connect(host: "127.0.0.1", port: port).get()
        try await channel.writeAndFlush(
            ByteBuffer(string: "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        ).get()
        #expect(await eventually(3) { reader.text.contains("HTTP/1.1 200") })
        // The server half-closed after the first answer; once its deadline closes the socket
        // for good, bytes sent to it are refused (a reset), which closes this side too.
        try await Task.sleep(for: .milliseconds(1500))
        for _ in 0..<5 where channel.isActive {
            try? await channel.writeAndFlush(ByteBuffer(string: "x")).get()
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(await eventually(2) { !channel.isActive }, "the connection stayed open with a request nobody answers")
        await c.stopAll()
    }

    @Test func aFloodOfIdleConnectionsIsCappedAndCleared() async throws {
        let c = try LocalCluster(size: 1) {
            $0.maxClientConnections = 5
            $0.httpHeadTimeoutMillis = 800
        }
        try await c.startAll()
        let port = c.configs[1]!.clientListen.port
        var flood: [any Channel] = []
        for _ in 0..<12 {
            flood.append(try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: port).get())
        }
        // Beyond the cap, closed at once; the rest at the head deadline.
        #expect(await eventually(0.5) { flood.filter(\.isActive).count <= 5 })
        #expect(await eventually(3) { flood.allSatisfy { !$0.isActive } })
        #expect(try await c.get(1, "/v1/status").status == 200)
        await c.stopAll()
    }

    @Test func aBodyOfManyFieldsIsReadWholeAndItsDuplicateFound() async throws {
        let c = try LocalCluster(size: 1)
        try await c.startAll()
        // About 60 KiB of distinct fields, then the first one again.
        let fields = (0..<5000).map { "\"f\($0)\":1" }.joined(separator: ",")
        let body = "{\(fields),\"f0\":2}"
        #expect(body.utf8.count < 64 * 1024)
        let r = try await c.post(1, "/v1/leases", body)
        #expect(r.status == 400)
        #expect((r.json["message"] as? String)?.contains("field \"f0\" appears twice") == true, "\(r.body)")
        await c.stopAll()
    }

    @Test func requestsBeyondTheCapAreAnswered503AtOnce() async throws {
        let c = try LocalCluster(size: 3) { $0.maxConcurrentRequests = 1 }
        try await c.startAll()
        let leader = try #require(await c.leader())
        let follower = ReplicaID(leader.rawValue % 3 + 1)
        // Without a quorum, a write waits for its request timeout (2 s): the one slot is taken.
        for id in c.replicas.keys where id != follower { await c.stop(id) }
        let slow = Task { try await c.post(follower, "/v1/leases", #"{"hostname":"mx1.example.org","holder":"h"}"#) }
        try await Task.sleep(for: .milliseconds(300))
        let refused = try await c.get(follower, "/v1/cluster/nodes")
        #expect(refused.status == 503)
        #expect((refused.json["message"] as? String)?.contains("limit of 1 requests") == true)
        #expect(try await c.get(follower, "/healthz").status == 200)
        #expect(try await slow.value.status == 503)
        // The slot is free again.
        #expect(try await c.get(follower, "/v1/cluster/nodes").status == 200)
        await c.stopAll()
    }
}

/// A cluster with mutual TLS between its replicas and HTTPS for clients.
@Suite(.serialized) struct ClusterTLSTests {
    @Test func aClusterFormsOverTLSAndTheLibraryTalksHTTPS() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        var issueError: (any Error)?
        let c = try LocalCluster { config in
            let id = config.replicaID.rawValue
            do {
                let peer = try pki.issue("peer-\(id)", uris: ["nodelease://nodelease/replica/\(id)"])
                let client = try pki.issue("https-\(id)", dns: ["localhost"], ips: ["127.0.0.1"])
                config.peerTLS = TLSFiles(certificate: peer.certificate, key: peer.key, ca: pki.caCertificate)
                config.clientTLS = TLSFiles(certificate: client.certificate, key: client.key, ca: nil)
            } catch {
                issueError = error
            }
        }
        if let issueError { throw issueError }
        var trust = TLSConfiguration.makeClientConfiguration()
        trust.trustRoots = .file(pki.caCertificate)
        c.tls = trust
        try await c.startAll()
        #expect(try await c.get(1, "/v1/status").status == 200)

        let endpoints = (1...3).map { c.url(ReplicaID(UInt64($0)), "") }
        #expect(endpoints.allSatisfy { $0.scheme == "https" })
        let client = NodeLeaseClient(endpoints: endpoints, timeout: .seconds(5), tls: .init(caFile: pki.caCertificate))
        let lease = try await client.acquire(hostname: "mx1.example.org", holder: "h1")
        #expect(try await client.renew(leaseId: lease.leaseId).leaseId == lease.leaseId)
        #expect(try await client.nodes().map(\.hostname) == ["mx1.example.org"])
        let config = try await client.replicas()
        #expect(config.replicas.count == 3)
        // A membership change through a follower is passed to the leader over HTTPS: a stale
        // expectedConfigIndex is the leader's answer (a failed pass-on would be 503).
        let leader = try #require(await c.leader())
        let follower = ReplicaID(leader.rawValue % 3 + 1)
        #expect(
            await eventually(10) {
                let replicas = (try? await c.get(follower, "/v1/cluster/replicas"))?.json["replicas"] as? [[String: Any]] ?? []
                return replicas.count == 3 && replicas.allSatisfy { ($0["clientAddress"] as? String ?? "") != "" }
            })
        let stale = try await c.request(follower, "DELETE", "/v1/cluster/replicas/\(follower)?expectedConfigIndex=1")
        #expect(stale.status == 409, "\(stale.body)")
        #expect(stale.json["error"] as? String == "stale_config")

        // Without the CA, the replicas' certificates are not trusted; plain HTTP gets nowhere.
        let untrusting = NodeLeaseClient(endpoints: endpoints, timeout: .seconds(1))
        await #expect(throws: NodeLeaseError.self) { try await untrusting.nodes() }
        let plain = NodeLeaseClient(endpoints: endpoints.map { URL(string: $0.absoluteString.replacingOccurrences(of: "https:", with: "http:"))! }, timeout: .seconds(1))
        await #expect(throws: NodeLeaseError.self) { try await plain.nodes() }
        await c.stopAll()
    }

    @Test func clientCertificatesCanBeRequired() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let server = try pki.issue("https-1", dns: ["localhost"], ips: ["127.0.0.1"])
        let node = try pki.issue("node-mx1", dns: ["mx1.example.org"])
        let c = try LocalCluster(size: 1) { $0.clientTLS = TLSFiles(certificate: server.certificate, key: server.key, ca: pki.caCertificate) }
        var helper = TLSConfiguration.makeClientConfiguration()
        helper.trustRoots = .file(pki.caCertificate)
        helper.certificateChain = try NIOSSLCertificate.fromPEMFile(node.certificate).map { .certificate($0) }
        helper.privateKey = .privateKey(try NIOSSLPrivateKey(file: node.key, format: .pem))
        c.tls = helper
        try await c.startAll()
        let endpoints = [c.url(1, "")]
        let withCertificate = NodeLeaseClient(
            endpoints: endpoints, timeout: .seconds(5), tls: .init(caFile: pki.caCertificate, certificateFile: node.certificate, keyFile: node.key))
        #expect(try await withCertificate.acquire(hostname: "mx1.example.org", holder: "h").nodeId == 1)
        let without = NodeLeaseClient(endpoints: endpoints, timeout: .seconds(1), tls: .init(caFile: pki.caCertificate))
        await #expect(throws: NodeLeaseError.self) { try await without.nodes() }
        await c.stopAll()
    }
}

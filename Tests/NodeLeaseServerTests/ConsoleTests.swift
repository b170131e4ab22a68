import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
@testable import NodeLeaseServer
import Raft
import Testing

/// The web console (`/ui`) through a real cluster: what the page shows, in what order, escaped,
/// under what policy, and who may see it and forget nodes. The real-browser checks are in
/// Tests/Browser (scripts/browser-test).
@Suite(.serialized) struct ConsoleTests {
    struct Answer {
        var status: Int
        var headers: HTTPHeaders
        var body: String
        func header(_ name: String) -> String? { headers.first(name: name) }
    }

    /// No redirects followed, no cookies kept: each request is exactly what the test sends.
    static let http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(redirectConfiguration: .disallow))

    func send(_ c: LocalCluster, _ id: ReplicaID, _ method: HTTPMethod, _ path: String, form: String? = nil, headers: [String: String] = [:]) async throws -> Answer {
        var r = HTTPClientRequest(url: c.url(id, path).absoluteString)
        r.method = method
        for (k, v) in headers { r.headers.add(name: k, value: v) }
        if let form {
            r.body = .bytes(ByteBuffer(string: form))
            r.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
        }
        let answer = try await Self.http.execute(r, timeout: .seconds(10))
        let body = try await answer.body.collect(upTo: 8 << 20)
        return Answer(status: Int(answer.status.code), headers: answer.headers, body: String(buffer: body))
    }

    /// The node ids of the page's rows, in order.
    func rows(_ html: String) -> [Int] {
        html.components(separatedBy: "<tr class=\"node\" data-node-id=\"").dropFirst().compactMap { Int($0.prefix { $0.isNumber }) }
    }

    @Test func thePageShowsTheRegistryInOrderEscapedUnderAStrictPolicy() async throws {
        let c = try LocalCluster()
        try await c.startAll()
        let leader = try #require(await c.leader())
        let follower = ReplicaID(leader.rawValue % 3 + 1)
        let holders = ["<img src=x onerror=alert(1)>", "a\"b'c&d</td><script>x</script>", "plain-holder"]
        var leases: [String] = []
        for (i, holder) in holders.enumerated() {
            let body = try JSONSerialization.data(withJSONObject: ["hostname": "mx\(i + 1).example.org", "holder": holder])
            let r = try await c.post(leader, "/v1/leases", String(decoding: body, as: UTF8.self))
            #expect(r.status == 200)
            leases.append(r.json["leaseId"] as! String)
        }
        #expect(try await c.request(leader, "DELETE", "/v1/leases/\(leases[1])").status == 200)
        // Every replica has applied it before the follower's page is read.
        _ = try await c.get(follower, "/v1/cluster/nodes?consistency=linearizable")

        let page = try await send(c, follower, .GET, "/ui")
        #expect(page.status == 200)
        #expect(page.header("Content-Type") == "text/html; charset=utf-8")
        let policy = try #require(page.header("Content-Security-Policy"))
        #expect(policy.contains("default-src 'none'") && policy.contains("script-src 'self'") && !policy.contains("unsafe"))
        #expect(page.header("X-Frame-Options") == "DENY" && page.header("X-Content-Type-Options") == "nosniff")
        #expect(rows(page.body) == [1, 2, 3])
        // Holders are text: every character that means something in HTML is escaped.
        #expect(!page.body.contains("<img") && !page.body.contains("<script>x"))
        #expect(page.body.contains("&lt;img src=x onerror=alert(1)&gt;"))
        #expect(page.body.contains("a&quot;b&#39;c&amp;d&lt;/td&gt;&lt;script&gt;x&lt;/script&gt;"))
        #expect(page.body.contains(#"<span class="badge status-inactive">inactive</span>"#))
        #expect(page.body.components(separatedBy: #"<span class="badge leader">"#).count == 2, "one leader badge")
        let leaderRow = page.body.components(separatedBy: "data-replica-id=\"\(leader.rawValue)\"").dropFirst().first?.components(separatedBy: "</tr>").first ?? ""
        #expect(leaderRow.contains(#"<span class="badge leader">leader</span>"#), "the badge is in the leader's row")
        // Two held; the released node's ID may go to a new hostname.
        #expect(page.body.contains("IDs left <b>509</b> of 511"))
        // Without authentication every node but an active one may be forgotten from here.
        #expect(page.body.contains("/ui/nodes/2/forget") && !page.body.contains("/ui/nodes/1/forget"))

        let inactive = try await send(c, follower, .GET, "/ui?status=inactive")
        #expect(rows(inactive.body) == [2])
        #expect(try await send(c, follower, .GET, "/ui?status=gone").status == 400)
        #expect(try await send(c, follower, .GET, "/ui/nowhere").status == 404)
        #expect(try await send(c, follower, .POST, "/ui").status == 405)

        // The script, style and icon come from the replica itself.
        let js = try await send(c, follower, .GET, "/ui/console.js")
        #expect(js.status == 200 && js.header("Content-Type") == "text/javascript; charset=utf-8" && js.body.contains("/ui/live?"))
        #expect(try await send(c, follower, .GET, "/ui/console.css").header("Content-Type") == "text/css; charset=utf-8")
        #expect(try await send(c, follower, .GET, "/favicon.ico").status == 200)

        // The live part alone, after its long poll, with the index to wait on next.
        let index = try #require(page.body.components(separatedBy: "data-registry-index=\"").dropFirst().first.flatMap { UInt64($0.prefix { $0.isNumber }) })
        let start = ContinuousClock.now
        let live = try await send(c, follower, .GET, "/ui/live?waitIndex=\(index)&wait=500ms")
        #expect(ContinuousClock.now - start >= .milliseconds(500))
        #expect(live.status == 200 && live.header("X-NodeLease-Registry-Index") == String(index))
        #expect(!live.body.contains("<html") && rows(live.body) == [1, 2, 3])
        #expect(!live.body.contains("id=\"banner\""))

        // Alone, the follower says it knows no leader, and shows the others unreachable.
        for id in c.replicas.keys where id != follower { await c.stop(id) }
        #expect(await eventually(5) { (try? await send(c, follower, .GET, "/ui/live"))?.body.contains("This replica knows no leader") == true })
        let alone = try await send(c, follower, .GET, "/ui")
        #expect(alone.status == 200 && rows(alone.body) == [1, 2, 3])
        #expect(alone.body.components(separatedBy: #"<span class="badge bad">no</span>"#).count == 3 && !alone.body.contains(#"class="badge leader""#))
        await c.stopAll()
    }

    @Test func theConsoleNeedsAReaderAndForgettingAnAdminAfterAConfirmation() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("nodelease-console-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try AuthenticationTests.tokenFile().write(toFile: dir + "/tokens", atomically: true, encoding: .utf8)
        let c = try LocalCluster { $0.tokenFile = dir + "/tokens" }
        c.headers = ["Authorization": "Bearer \(AuthenticationTests.admin)"]
        try await c.startAll()
        let leader = try #require(await c.leader())
        let follower = ReplicaID(leader.rawValue % 3 + 1)
        let a = try await c.post(leader, "/v1/leases", #"{"hostname":"mx1.example.org","holder":"holder-one"}"#)
        let b = try await c.post(leader, "/v1/leases", #"{"hostname":"mx2.example.org","holder":"holder-two"}"#)
        #expect(try await c.request(leader, "DELETE", "/v1/leases/\(b.json["leaseId"] as! String)").status == 200)
        _ = try await c.get(follower, "/v1/cluster/nodes?consistency=linearizable")
        _ = a

        // No token: the sign-in form, as a 401 with the challenge.
        let anonymous = try await send(c, follower, .GET, "/ui")
        #expect(anonymous.status == 401 && anonymous.header("WWW-Authenticate") == "Bearer")
        #expect(anonymous.body.contains("<form method=\"post\" action=\"/ui/login\">") && rows(anonymous.body).isEmpty)
        #expect(try await send(c, follower, .GET, "/ui/live").status == 401)
        // A wrong token, and a node token, do not get in.
        #expect(try await send(c, follower, .POST, "/ui/login", form: "token=nope").status == 401)
        #expect(try await send(c, follower, .POST, "/ui/login", form: "token=\(AuthenticationTests.node)").status == 403)
        #expect(try await send(c, follower, .POST, "/ui/login", form: "token=\(AuthenticationTests.reader)", headers: ["Origin": "http://evil.example"]).status == 403)

        // A reader signs in: a session cookie for /ui only, which is not the token.
        func signIn(_ token: String) async throws -> [String: String] {
            let r = try await send(c, follower, .POST, "/ui/login", form: "token=\(token)")
            #expect(r.status == 303 && r.header("Location") == "/ui")
            let setCookie = try #require(r.header("Set-Cookie"))
            for attribute in ["Path=/ui", "HttpOnly", "SameSite=Strict", "Max-Age=43200"] { #expect(setCookie.contains(attribute)) }
            let value = String(setCookie.split(separator: ";")[0].dropFirst("nodelease_console=".count))
            #expect(value.hasPrefix("v1.") && !value.contains(token))
            return ["Cookie": "nodelease_console=\(value)"]
        }
        let readerCookie = try await signIn(AuthenticationTests.reader)
        let readerPage = try await send(c, follower, .GET, "/ui", headers: readerCookie)
        #expect(readerPage.status == 200 && rows(readerPage.body) == [1, 2])
        // A reader sees holders as digests, and no way to forget.
        #expect(!readerPage.body.contains("holder-one") && readerPage.body.contains("hmac:"))
        #expect(!readerPage.body.contains("/forget"))
        #expect(try await send(c, follower, .GET, "/ui/nodes/2/forget", headers: readerCookie).status == 403)
        // The cookie is the console's only: the API wants the header.
        #expect(try await c.request(follower, "GET", "/v1/cluster/nodes", headers: ["Authorization": "", "Cookie": readerCookie["Cookie"]!]).status == 401)
        // A session altered, or the raw token as a cookie, does not get in; the live part says 401.
        var forged = readerCookie["Cookie"]!
        forged = String(forged.dropLast()) + (forged.last == "0" ? "1" : "0")
        #expect(try await send(c, follower, .GET, "/ui", headers: ["Cookie": forged]).status == 401)
        #expect(try await send(c, follower, .GET, "/ui", headers: ["Cookie": "nodelease_console=\(AuthenticationTests.reader)"]).status == 401)
        let expired = try await send(c, follower, .GET, "/ui/live", headers: ["Cookie": forged])
        #expect(expired.status == 401 && expired.header("Content-Type") == "application/json")
        // The console's page shows the other replicas (asked with the replicas' own token, once
        // each has recorded its client address in the log).
        #expect(await eventually(5) {
            let body = (try? await send(c, follower, .GET, "/ui", headers: readerCookie))?.body ?? ""
            return body.components(separatedBy: #"<span class="badge ok">yes</span>"#).count == 4
        }, "every replica answered the status request")

        // An admin forgets the inactive node: a confirmation page, then a POST from this
        // origin that carries the page's token.
        let adminCookie = try await signIn(AuthenticationTests.admin)
        let adminPage = try await send(c, follower, .GET, "/ui", headers: adminCookie)
        #expect(adminPage.body.contains("holder-one") && adminPage.body.contains("/ui/nodes/2/forget") && !adminPage.body.contains("/ui/nodes/1/forget"))
        let confirm = try await send(c, follower, .GET, "/ui/nodes/2/forget", headers: adminCookie)
        #expect(confirm.status == 200 && confirm.body.contains("Forget node 2?"))
        let csrf = try #require(confirm.body.components(separatedBy: "name=\"csrf\" value=\"").dropFirst().first.map { String($0.prefix { $0 != "\"" }) })
        #expect(csrf.hasPrefix("csrf-hmac:"))
        let origin = "http://127.0.0.1:\(c.configs[follower]!.clientListen.port)"
        #expect(try await send(c, follower, .POST, "/ui/nodes/2/forget", form: "csrf=wrong", headers: adminCookie.merging(["Origin": origin]) { $1 }).status == 403)
        #expect(try await send(c, follower, .POST, "/ui/nodes/2/forget", form: "csrf=\(csrf)", headers: adminCookie.merging(["Origin": "http://evil.example"]) { $1 }).status == 403)
        #expect(try await send(c, follower, .POST, "/ui/nodes/2/forget", form: "csrf=\(csrf)", headers: adminCookie.merging(["Sec-Fetch-Site": "cross-site"]) { $1 }).status == 403)
        #expect(try await c.get(follower, "/v1/cluster/nodes/2").status == 200, "nothing forgotten by a refused form")
        let forgot = try await send(c, follower, .POST, "/ui/nodes/2/forget", form: "csrf=\(csrf)", headers: adminCookie.merging(["Origin": origin]) { $1 })
        #expect(forgot.status == 303 && forgot.header("Location") == "/ui?forgot=2")
        #expect(try await c.get(follower, "/v1/cluster/nodes/2?consistency=linearizable").status == 404)
        #expect(try await send(c, follower, .GET, "/ui?forgot=2", headers: adminCookie).body.contains("Node 2 was forgotten."))
        // An active node is refused.
        let active = try await send(c, follower, .POST, "/ui/nodes/1/forget", form: "csrf=\(csrf)", headers: adminCookie.merging(["Origin": origin]) { $1 })
        #expect(active.status == 409)
        // Signing out clears the cookie.
        let out = try await send(c, follower, .POST, "/ui/logout", headers: adminCookie)
        #expect(out.status == 303 && out.header("Set-Cookie")?.contains("Max-Age=0") == true)
        await c.stopAll()
    }
}

@testable import NodeLeaseServer
import Testing

struct WatchQueryTests {
    @Test(arguments: [
        ("0", 0), ("1500ms", 1_500_000_000), ("30s", 30_000_000_000), ("5m", 300_000_000_000), ("1m30s", 90_000_000_000),
        ("1.5s", 1_500_000_000), (".5s", 500_000_000), ("1h", 3_600_000_000_000), ("10us", 10_000), ("10\u{B5}s", 10_000),
        ("7ns", 7), ("-1s", -1_000_000_000), ("+2s", 2_000_000_000), ("1s500ms", 1_500_000_000),
    ] as [(String, Int64)])
    func goDurationsParse(text: String, nanos: Int64) {
        #expect(GoDuration.nanoseconds(text[...]) == nanos)
    }

    @Test(arguments: ["", "s", "10", "1x", "1.s.s", "abc", "1 s", "-", "99999999999h", "1e3s", "00"])
    func notDurations(text: String) {
        #expect(GoDuration.nanoseconds(text[...]) == nil, "\(text)")
    }

    @Test func theReplicasStatusTokenAndConsoleSessions() throws {
        let a = Authenticator(tokens: try TokenFile.parse("sha256:\(SHA256.hex("tok"))  role=reader\n"))
        #expect(a.isReplicaStatusToken(authorization: "Bearer \(a.replicaStatusToken)"))
        #expect(!a.isReplicaStatusToken(authorization: "Bearer tok"))
        let s = try #require(a.session(for: "tok", expires: 100))
        #expect(a.entry(session: s, now: 99)?.role == .reader)
        // Another replica (another secret) does not take it; nor does any session that claims
        // to last longer than the longest a session is given.
        let b = Authenticator(tokens: try TokenFile.parse("sha256:\(SHA256.hex("tok"))  role=reader\n"))
        #expect(b.entry(session: s, now: 99) == nil)
        #expect(b.replicaStatusToken == a.replicaStatusToken, "replicas with the same tokens agree")
        let long = try #require(a.session(for: "tok", expires: 99 + Authenticator.maxSessionSeconds + 1))
        #expect(a.entry(session: long, now: 99) == nil)
        #expect(a.entry(session: s, now: 100) == nil, "expired")
        #expect(a.entry(session: s.replacingOccurrences(of: "v1.100.", with: "v1.999."), now: 99) == nil, "extended")
        #expect(a.session(for: "other", expires: 100) == nil)
    }

    @Test func theConnectionDeadlineSeesALongPollsWait() {
        #expect(WatchQuery.responseAllowance(path: "/v1/cluster/nodes") == nil)
        #expect(WatchQuery.responseAllowance(path: "/v1/cluster/nodes?status=active") == nil)
        #expect(WatchQuery.responseAllowance(path: "/v1/cluster/nodes?waitIndex=4") == 60_000_000_000 + 60_000_000_000 / 16)
        #expect(WatchQuery.responseAllowance(path: "/v1/cluster/nodes?wait=16s&waitIndex=4") == 17_000_000_000)
        #expect(WatchQuery.responseAllowance(path: "/v1/cluster/nodes?waitIndex=4&wait=%31%36s") == 17_000_000_000)
        // Only the paths that wait get longer: any other request asking for it does not.
        #expect(WatchQuery.responseAllowance(path: "/healthz?waitIndex=1&wait=5m") == nil)
        #expect(WatchQuery.responseAllowance(path: "/v1/status?waitIndex=1") == nil)
        #expect(WatchQuery.responseAllowance(path: "/v1/cluster/nodes/7?waitIndex=1&wait=1s") == 1_000_000_000 + 1_000_000_000 / 16)
        #expect(WatchQuery.responseAllowance(path: "/ui/live?w%61itIndex=1&wait=2s") == 2_000_000_000 + 2_000_000_000 / 16)
        // A wait the API refuses counts as the longest allowed.
        #expect(WatchQuery.responseAllowance(path: "/v1/cluster/nodes?waitIndex=4&wait=9h") == 300_000_000_000 + 300_000_000_000 / 16)
    }
}

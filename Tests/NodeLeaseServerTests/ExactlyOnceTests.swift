import Foundation
import NodeLeaseClient
import Raft
import TestSupport
import Testing

/// shared/API.md, "Exactly once", against real replicas: retries through any replica, with the
/// `Idempotency-Key` header, apply once and answer with the first outcome. Part of
/// `ClusterTests`, so these clusters start one at a time with the others (on a 2-core machine
/// clusters side by side slow each other's timers).
extension ClusterTests {
    @Test func retriesWithTheSameKeyGetTheFirstOutcomeThroughAnyReplica() async throws {
        let c = try LocalCluster()
        try await c.startAll()
        let leader = try #require(await c.leader())
        let f1 = ReplicaID(leader.rawValue % 3 + 1)
        let f2 = ReplicaID(f1.rawValue % 3 + 1)
        let body = #"{"hostname":"mx1.example.org","holder":"h-1","ttlSeconds":30}"#

        let acquired = try await c.request(f1, "POST", "/v1/leases", body: body, headers: ["Idempotency-Key": "acq-1"])
        #expect(acquired.status == 200)
        #expect(acquired.headers["idempotent-replayed"] == nil)
        let leaseID = try #require(acquired.json["leaseId"] as? String)

        // Release, then the acquire's retry arrives through another replica: the first outcome,
        // and the node stays released (no lease nobody holds).
        let released = try await c.request(f2, "DELETE", "/v1/leases/\(leaseID)", headers: ["Idempotency-Key": "rel-1"])
        #expect(released.status == 200 && released.json["status"] as? String == "inactive")
        let retried = try await c.request(leader, "POST", "/v1/leases", body: body, headers: ["Idempotency-Key": "acq-1"])
        #expect(retried.status == 200)
        #expect(retried.headers["idempotent-replayed"] == "true")
        #expect(retried.body == acquired.body)
        #expect(retried.headers["x-nodelease-index"] == acquired.headers["x-nodelease-index"])
        let node = try await c.get(f1, "/v1/cluster/nodes/1?consistency=linearizable")
        #expect(node.json["status"] as? String == "inactive")

        // A retried DELETE: 200 again with the same body, not 404.
        let releasedAgain = try await c.request(f1, "DELETE", "/v1/leases/\(leaseID)", headers: ["Idempotency-Key": "rel-1"])
        #expect(releasedAgain.status == 200)
        #expect(releasedAgain.body == released.body)
        #expect(releasedAgain.headers["idempotent-replayed"] == "true")
        // Without the key (a new request), the second release is 404 as before.
        #expect(try await c.request(f1, "DELETE", "/v1/leases/\(leaseID)").status == 404)

        // A 409 is remembered too: its retry after the holder let go is still a 409.
        let a = try await c.post(leader, "/v1/leases", #"{"hostname":"mx2.example.org","holder":"a"}"#)
        let aLease = try #require(a.json["leaseId"] as? String)
        let bBody = #"{"hostname":"mx2.example.org","holder":"b"}"#
        let refused = try await c.request(f1, "POST", "/v1/leases", body: bBody, headers: ["Idempotency-Key": "b-1"])
        #expect(refused.status == 409)
        #expect(try await c.request(leader, "DELETE", "/v1/leases/\(aLease)").status == 200)
        let refusedAgain = try await c.request(f2, "POST", "/v1/leases", body: bBody, headers: ["Idempotency-Key": "b-1"])
        #expect(refusedAgain.status == 409 && refusedAgain.headers["idempotent-replayed"] == "true")
        #expect(refusedAgain.json["error"] as? String == "hostname_in_use")

        // The same key for another request: 422, and nothing happens.
        let mismatch = try await c.request(f2, "POST", "/v1/leases", body: #"{"hostname":"mx3.example.org","holder":"c"}"#, headers: ["Idempotency-Key": "b-1"])
        #expect(mismatch.status == 422 && mismatch.json["error"] as? String == "idempotency_key_mismatch")
        #expect(try await c.get(leader, "/v1/cluster/nodes?consistency=linearizable").array.count == 2)

        // Malformed keys: 400 that names the header.
        for bad in [String(repeating: "k", count: 65), "caf\u{e9}"] {
            let r = try await c.request(f1, "POST", "/v1/leases/\(leaseID)/renew", headers: ["Idempotency-Key": bad])
            #expect(r.status == 400 && r.json["error"] as? String == "invalid_request" && r.body.contains("Idempotency-Key"))
        }
        await c.stopAll()
    }

    @Test func theClientLibraryRetriesAReleaseWithItsFirstOutcome() async throws {
        let c = try LocalCluster()
        try await c.startAll()
        // The first endpoint refuses connections: the client fails over, with one key throughout.
        let dead = URL(string: "http://127.0.0.1:\(try freePort())")!
        let client = NodeLeaseClient(endpoints: [dead] + (1...3).map { c.url(ReplicaID(UInt64($0)), "") }, timeout: .seconds(10))
        let lease = try await client.acquire(hostname: "mx1.example.org", holder: "h", ttlSeconds: 30)
        let node = try await client.release(leaseId: lease.leaseId)
        #expect(node.status == "inactive")
        await c.stopAll()
    }

    @Test func aRestartedFollowerNeverServesAnOlderRegistryThanBefore() async throws {
        let c = try LocalCluster()
        try await c.startAll()
        let leader = try #require(await c.leader())
        let follower = ReplicaID(leader.rawValue % 3 + 1)
        _ = try await c.post(leader, "/v1/leases", #"{"hostname":"before.example.org","holder":"a"}"#)
        await c.stop(follower)
        // Writes the follower misses while it is down.
        var last = 0
        for i in 0..<20 {
            let r = try await c.post(leader, "/v1/leases", #"{"hostname":"h\#(i).example.org","holder":"a"}"#)
            #expect(r.status == 200)
            last = Int(r.headers["x-nodelease-index"] ?? "") ?? 0
        }
        try await c.start(follower)
        // From its first answer on, a local read reflects at least every write acknowledged
        // before it restarted (it first catches up to a leader-confirmed read index).
        var served = 0
        let end = Date().addingTimeInterval(5)
        while Date() < end && served < 20 {
            let r = try await c.get(follower, "/v1/cluster/nodes")
            guard r.status == 200 else { continue }
            served += 1
            #expect(Int(r.headers["x-nodelease-index"] ?? "") ?? 0 >= last)
            #expect(r.array.count == 21)
        }
        #expect(served == 20)
        await c.stopAll()
    }
}

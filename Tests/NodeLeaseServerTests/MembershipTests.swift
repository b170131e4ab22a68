import Foundation
import Logging
import NIOConcurrencyHelpers
import NodeLeaseClient
import NodeLeaseServer
import Raft
import RaftTransport
import TestSupport
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

extension LocalCluster {
    /// Adds replica `id` through `via` (a follower, so the request is passed to the leader),
    /// starts it with an empty data directory, and waits until the leader promoted it.
    func addReplica(_ id: ReplicaID, via: ReplicaID) async throws {
        var c = configs[via]!
        var peers: [ReplicaID: PeerAddress] = [:]
        for (k, v) in configs { peers[k] = v.peerListen }
        let peer = PeerAddress(host: "127.0.0.1", port: try freePort())
        peers[id] = peer
        c.replicaID = id
        c.peers = peers
        c.peerListen = peer
        c.clientListen = PeerAddress(host: "127.0.0.1", port: try freePort())
        c.dataDir = "\(base)/replica-\(id)"
        c.join = true
        configs[id] = c
        let body = #"{"replicaId":\#(id),"peerAddress":"\#(peer)","clientAddress":"\#(c.clientListen)"}"#
        let added = try await post(via, "/v1/cluster/replicas", body)
        #expect(added.status == 200, "\(added.body)")
        try await start(id)
        let voter = await eventually(20) {
            let r = try? await self.get(via, "/v1/cluster/replicas")
            let list = r?.json["replicas"] as? [[String: Any]] ?? []
            return list.contains { $0["replicaId"] as? Int == Int(id.rawValue) && $0["role"] as? String == "voter" }
        }
        #expect(voter, "replica \(id) was not promoted")
    }

    func replicaIDs(_ via: ReplicaID) async throws -> [Int: String] {
        let r = try await get(via, "/v1/cluster/replicas")
        var out: [Int: String] = [:]
        for m in r.json["replicas"] as? [[String: Any]] ?? [] { out[m["replicaId"] as! Int] = m["role"] as? String }
        return out
    }
}

/// Mail nodes that acquire once and renew every 150 ms with a 3 s TTL, through a client
/// configured with the first three replicas only; any renew that finds its lease gone is a
/// lost lease.
final class SteadyLoad: Sendable {
    let lost = NIOLockedValueBox<[String]>([])
    let renewals = NIOLockedValueBox(0)
    /// The longest time any holder went from sending a renewal that succeeded to the success
    /// of the next (the holder's own rule counts from the send instant).
    let longestGap = NIOLockedValueBox(Duration.zero)
    let stopFlag = NIOLockedValueBox(false)

    func run(client: NodeLeaseClient, hosts: [String]) async {
        await withTaskGroup(of: Void.self) { group in
            for host in hosts {
                group.addTask {
                    var lease: Lease?
                    var lastSent = ContinuousClock.now
                    while !self.stopFlag.withLockedValue({ $0 }) {
                        do throws(NodeLeaseError) {
                            let sent = ContinuousClock.now
                            if let l = lease {
                                lease = try await client.renew(leaseId: l.leaseId, timeout: .milliseconds(1500))
                                self.renewals.withLockedValue { $0 += 1 }
                                let gap = ContinuousClock.now - lastSent
                                self.longestGap.withLockedValue { $0 = max($0, gap) }
                                lastSent = sent
                            } else {
                                lease = try await client.acquire(hostname: host, holder: "holder-\(host)", ttlSeconds: 3)
                                lastSent = sent
                            }
                        } catch {
                            // No leader for a moment (an election after a change) is retried; a
                            // lease that is gone is a lost lease.
                            if error == .leaseNotFound {
                                self.lost.withLockedValue { $0.append(host) }
                                lease = nil
                            }
                        }
                        try? await Task.sleep(for: .milliseconds(150))
                    }
                }
            }
        }
    }
}

@Suite(.serialized)
struct MembershipTests {
    @Test("grow 3 to 5, replace a dead replica, remove the leader: under steady renewals no lease is lost")
    func growReplaceRemoveUnderLoad() async throws {
        let c = try LocalCluster()
        try await c.startAll()
        let endpoints = (1...3).map { c.url(ReplicaID(UInt64($0)), "") }
        let client = NodeLeaseClient(endpoints: endpoints, timeout: .seconds(5))
        let load = SteadyLoad()
        let hosts = (1...4).map { "mx\($0).example.org" }
        let loadTask = Task { await load.run(client: client, hosts: hosts) }
        try await Task.sleep(for: .milliseconds(500))

        // Grow 3 to 5, each change sent to a follower.
        var leader = try #require(await c.leader())
        let follower = ReplicaID(leader.rawValue % 3 + 1)
        try await c.addReplica(4, via: follower)
        try await c.addReplica(5, via: follower)
        #expect(try await c.replicaIDs(follower) == [1: "voter", 2: "voter", 3: "voter", 4: "voter", 5: "voter"])

        // Replica 2's disk dies: it is removed, and a new replica 6 takes its place.
        await c.stop(2)
        c.configs[2] = nil
        #expect(await eventually(10) { await c.leader() != nil })
        let removed = try await c.request(4, "DELETE", "/v1/cluster/replicas/2")
        #expect(removed.status == 200, "\(removed.body)")
        let reused = try await c.post(4, "/v1/cluster/replicas", #"{"replicaId":2,"peerAddress":"127.0.0.1:1","clientAddress":"127.0.0.1:2"}"#)
        #expect(reused.status == 409 && reused.json["error"] as? String == "replica_exists", "\(reused.body)")
        try await c.addReplica(6, via: 4)

        // The leader is removed: it hands leadership over first, then the change is made.
        leader = try #require(await c.leader())
        let other = try #require([1, 3, 4, 5, 6].map { ReplicaID(UInt64($0)) }.first { $0 != leader })
        // Reachability is the leader's view of the moment: a replica just promoted, on a
        // loaded machine, may not count yet, and the change is refused as an operator would
        // see it; they try again.
        var gone = try await c.request(other, "DELETE", "/v1/cluster/replicas/\(leader)")
        for _ in 0..<20 where gone.status == 409 && gone.json["error"] as? String == "would_lose_quorum" {
            try await Task.sleep(for: .milliseconds(250))
            gone = try await c.request(other, "DELETE", "/v1/cluster/replicas/\(leader)")
        }
        #expect(gone.status == 200, "\(gone.body)")
        #expect(try await c.replicaIDs(other)[Int(leader.rawValue)] == nil)
        await c.stop(leader)
        c.configs[leader] = nil
        #expect(await eventually(10) { await c.leader() != nil })

        // Renewals went on, and no renewal waited longer than the TTL.
        try await Task.sleep(for: .seconds(1))
        let before = load.renewals.withLockedValue { $0 }
        try await Task.sleep(for: .seconds(1))
        #expect(load.renewals.withLockedValue { $0 } > before, "renewals stopped")
        load.stopFlag.withLockedValue { $0 = true }
        await loadTask.value
        #expect(load.lost.withLockedValue { $0 } == [], "leases lost during membership changes")
        let gap = load.longestGap.withLockedValue { $0 }
        #expect(gap < .seconds(3), "a holder went \(gap) from a renewal's send to the next success (TTL 3 s)")
        let nodes = try await client.nodes(linearizable: true)
        #expect(nodes.map(\.hostname).sorted() == hosts && nodes.allSatisfy { $0.status == "active" }, "\(nodes)")
        await c.stopAll()
    }

    @Test("the API's refusals: stale index, lagging learner, one change at a time, unknown replica, bad input")
    func refusals() async throws {
        let c = try LocalCluster()
        try await c.startAll()
        let leader = try #require(await c.leader())
        let list = try await c.get(leader, "/v1/cluster/replicas")
        let index = try #require(list.json["configIndex"] as? Int)
        let stale = try await c.post(
            leader, "/v1/cluster/replicas", #"{"replicaId":7,"peerAddress":"127.0.0.1:1","clientAddress":"127.0.0.1:2","expectedConfigIndex":\#(index + 100)}"#)
        #expect(stale.status == 409 && stale.json["error"] as? String == "stale_config", "\(stale.body)")
        // A learner that is never started cannot be promoted.
        let addBody = #"{"replicaId":7,"peerAddress":"127.0.0.1:1","clientAddress":"127.0.0.1:2"}"#
        let learner = try await c.request(leader, "POST", "/v1/cluster/replicas", body: addBody, headers: ["Idempotency-Key": "add-7"])
        #expect(learner.status == 200, "\(learner.body)")
        let lagging = try await c.post(leader, "/v1/cluster/replicas/7/promote", "{}")
        #expect(lagging.status == 409 && lagging.json["error"] as? String == "learner_lagging", "\(lagging.body)")
        // The same request again (its answer was lost, say) under its key: 200, the change made
        // once. The same add without the key is a used id.
        let again = try await c.request(leader, "POST", "/v1/cluster/replicas", body: addBody, headers: ["Idempotency-Key": "add-7"])
        #expect(again.status == 200 && again.headers["idempotent-replayed"] == "true", "\(again.body)")
        let otherChange = try await c.request(
            leader, "POST", "/v1/cluster/replicas", body: #"{"replicaId":8,"peerAddress":"127.0.0.1:1","clientAddress":"127.0.0.1:2"}"#,
            headers: ["Idempotency-Key": "add-7"])
        #expect(otherChange.status == 422 && otherChange.json["error"] as? String == "idempotency_key_mismatch", "\(otherChange.body)")
        let unkeyed = try await c.post(leader, "/v1/cluster/replicas", addBody)
        #expect(unkeyed.status == 409 && unkeyed.json["error"] as? String == "replica_exists", "\(unkeyed.body)")
        let forceOnAdd = try await c.post(leader, "/v1/cluster/replicas?force=true", addBody)
        #expect(forceOnAdd.status == 400, "\(forceOnAdd.body)")
        let unknown = try await c.request(leader, "DELETE", "/v1/cluster/replicas/42")
        #expect(unknown.status == 404 && unknown.json["error"] as? String == "not_found", "\(unknown.body)")
        let badField = try await c.post(leader, "/v1/cluster/replicas", #"{"replicaId":8,"peerAddress":"127.0.0.1:1","clientAddress":"127.0.0.1:2","role":"voter"}"#)
        #expect(badField.status == 400 && badField.body.contains("role"), "\(badField.body)")
        let badQuery = try await c.request(leader, "DELETE", "/v1/cluster/replicas/7?force=maybe")
        #expect(badQuery.status == 400, "\(badQuery.body)")
        let wrongMethod = try await c.request(leader, "PUT", "/v1/cluster/replicas")
        #expect(wrongMethod.status == 405)
        let learnerGone = try await c.request(leader, "DELETE", "/v1/cluster/replicas/7")
        #expect(learnerGone.status == 200, "\(learnerGone.body)")

        // A voter goes down: removing a live one would leave one reachable voter of two.
        let down = try #require([1, 2, 3].map { ReplicaID(UInt64($0)) }.first { $0 != leader })
        let live = try #require([1, 2, 3].map { ReplicaID(UInt64($0)) }.first { $0 != leader && $0 != down })
        await c.stop(down)
        try await Task.sleep(for: .seconds(1))  // an election timeout (0.5 s) and more without an answer
        let lose = try await c.request(leader, "DELETE", "/v1/cluster/replicas/\(live)")
        #expect(lose.status == 409 && lose.json["error"] as? String == "would_lose_quorum", "\(lose.body)")
        // Removing the dead one is what to do (forced or not).
        let replaced = try await c.request(leader, "DELETE", "/v1/cluster/replicas/\(down)")
        #expect(replaced.status == 200, "\(replaced.body)")
        await c.stopAll()
    }
}

@Suite(.serialized)
struct ClientFollowsMembershipTests {
    /// A client configured with one replica learns the others from /v1/cluster/replicas, so it
    /// keeps working when that replica is removed and gone.
    @Test("a client configured with one replica learns the others by its periodic refresh and keeps working once that one is removed")
    func aClientOfARemovedReplicaFollowsTheConfiguration() async throws {
        let c = try LocalCluster()
        try await c.startAll()
        let leader = try #require(await c.leader())
        let only = try #require([1, 2, 3].map { ReplicaID(UInt64($0)) }.first { $0 != leader })
        let client = NodeLeaseClient(endpoints: [c.url(only, "")], timeout: .seconds(5), refreshInterval: .milliseconds(300))
        try await c.addReplica(4, via: leader)
        try await Task.sleep(for: .milliseconds(400))
        _ = try await client.nodes()  // the periodic refresh runs before this call
        #expect(client.endpoints.count == 4, "\(client.endpoints)")
        let gone = try await c.request(leader, "DELETE", "/v1/cluster/replicas/\(only)")
        #expect(gone.status == 200, "\(gone.body)")
        await c.stop(only)
        let lease = try await client.acquire(hostname: "mx9.example.org", holder: "h9", ttlSeconds: 30)
        #expect(lease.nodeId == 1)
        await c.stopAll()
    }
}

@Suite struct ClientTimeoutTests {
    /// Foundation on Linux arms a request's timer with whole seconds: a renew with 0.6 s left
    /// (a holder near the end of a short lease) used to time out at once.
    @Test("a call with less than a second left still goes out and is answered")
    func subSecondTimeout() async throws {
        let c = try LocalCluster()
        try await c.startAll()
        let client = NodeLeaseClient(endpoints: (1...3).map { c.url(ReplicaID(UInt64($0)), "") }, timeout: .seconds(5))
        let l = try await client.acquire(hostname: "mx1.example.org", holder: "h", ttlSeconds: 2)
        for _ in 0..<5 {
            let renewed = try await client.renew(leaseId: l.leaseId, timeout: .milliseconds(600))
            #expect(renewed.leaseId == l.leaseId)
        }
        await c.stopAll()
    }
}

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

/// Mail nodes that acquire once and renew every 150 ms with a 2 s TTL, through a client
/// configured with the first three replicas only; any renew that finds its lease gone is a
/// lost lease.
final class SteadyLoad: Sendable {
    let lost = NIOLockedValueBox<[String]>([])
    let renewals = NIOLockedValueBox(0)
    let stopFlag = NIOLockedValueBox(false)

    func run(client: NodeLeaseClient, hosts: [String]) async {
        await withTaskGroup(of: Void.self) { group in
            for host in hosts {
                group.addTask {
                    var lease: Lease?
                    while !self.stopFlag.withLockedValue({ $0 }) {
                        do throws(NodeLeaseError) {
                            if let l = lease {
                                lease = try await client.renew(leaseId: l.leaseId, timeout: .milliseconds(1500))
                                self.renewals.withLockedValue { $0 += 1 }
                            } else {
                                lease = try await client.acquire(hostname: host, holder: "holder-\(host)", ttlSeconds: 2)
                            }
                        } catch {
                            // No leader for a moment (an election after a change) is retried; a
                            // lease that is gone is a lost lease.
                            if ProcessInfo.processInfo.environment["DEBUG_LOAD"] != nil { print("load \(host): \(error)") }
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
        let gone = try await c.request(other, "DELETE", "/v1/cluster/replicas/\(leader)")
        #expect(gone.status == 200, "\(gone.body)")
        #expect(try await c.replicaIDs(other)[Int(leader.rawValue)] == nil)
        await c.stop(leader)
        c.configs[leader] = nil
        let newLeader = await eventually(10) { await c.leader() != nil }
        #expect(newLeader)
        #expect(await c.leader() != leader)

        // Renewals went on; the client follows the configuration's client addresses.
        try await Task.sleep(for: .seconds(1))
        let before = load.renewals.withLockedValue { $0 }
        try await Task.sleep(for: .seconds(1))
        #expect(load.renewals.withLockedValue { $0 } > before, "renewals stopped")
        load.stopFlag.withLockedValue { $0 = true }
        await loadTask.value
        #expect(load.lost.withLockedValue { $0 } == [], "leases lost during membership changes")
        let config = try await client.replicas()
        #expect(Set(config.replicas.map(\.replicaId)) == Set([1, 3, 4, 5, 6].filter { $0 != leader.rawValue }))
        #expect(Set(client.endpoints.map(\.absoluteString)) == Set(config.replicas.map { "http://\($0.clientAddress)" }))
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
        let learner = try await c.post(leader, "/v1/cluster/replicas", #"{"replicaId":7,"peerAddress":"127.0.0.1:1","clientAddress":"127.0.0.1:2"}"#)
        #expect(learner.status == 200, "\(learner.body)")
        let lagging = try await c.post(leader, "/v1/cluster/replicas/7/promote", "{}")
        #expect(lagging.status == 409 && lagging.json["error"] as? String == "learner_lagging", "\(lagging.body)")
        // The same add again is already made: 200 without a new entry.
        let again = try await c.post(leader, "/v1/cluster/replicas", #"{"replicaId":7,"peerAddress":"127.0.0.1:1","clientAddress":"127.0.0.1:2"}"#)
        let listed = again.json["replicas"] as? [[String: Any]] ?? []
        #expect(again.status == 200, "\(again.body)")
        #expect(listed.contains { $0["replicaId"] as? Int == 7 && $0["role"] as? String == "learner" && $0["peerAddress"] as? String == "127.0.0.1:1" })
        let otherAddress = try await c.post(leader, "/v1/cluster/replicas", #"{"replicaId":7,"peerAddress":"127.0.0.1:3","clientAddress":"127.0.0.1:2"}"#)
        #expect(otherAddress.status == 409 && otherAddress.json["error"] as? String == "replica_exists", "\(otherAddress.body)")
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

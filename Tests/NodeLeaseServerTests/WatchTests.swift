import Foundation
import NIOCore
import NIOPosix
import NodeLeaseServer
@testable import NodeLeaseClient
@testable import nodelease
import Raft
import TestSupport
import Testing

/// Long polls of the registry (shared/API.md, "Watching the registry") on a real cluster.
@Suite(.serialized) struct WatchTests {
    static let acquireBody = #"{"hostname":"mx1.example.org","holder":"h-1","ttlSeconds":60}"#

    private func registryIndex(_ r: HTTPResult) -> UInt64? { r.headers["x-nodelease-registry-index"].flatMap(UInt64.init) }

    /// A cluster with one node, its lease id, a follower and the registry index after the acquire.
    private func started(_ configure: @escaping (inout ServerConfig) -> Void = { _ in }) async throws
        -> (c: LocalCluster, leader: ReplicaID, follower: ReplicaID, leaseID: String, index: UInt64)
    {
        let c = try LocalCluster(configure: configure)
        try await c.startAll()
        let leader = try #require(await c.leader())
        let follower = ReplicaID(leader.rawValue % 3 + 1)
        let acquired = try await c.post(leader, "/v1/leases", Self.acquireBody)
        #expect(acquired.status == 200)
        let leaseID = try #require(acquired.json["leaseId"] as? String)
        let read = try await c.get(follower, "/v1/cluster/nodes?consistency=linearizable")
        let index = try #require(registryIndex(read), "no X-NodeLease-Registry-Index on \(read.headers)")
        #expect(index == UInt64(acquired.headers["x-nodelease-index"] ?? ""), "the acquire is the last change")
        return (c, leader, follower, leaseID, index)
    }

    @Test func aPollBlocksForItsWaitAndReturnsTheSameIndexAndARenewDoesNotWakeIt() async throws {
        let (c, leader, follower, leaseID, index) = try await started()
        // Renewals go on meanwhile; none moves the registry index.
        let renewing = Task {
            for _ in 0..<8 {
                _ = try? await c.post(leader, "/v1/leases/\(leaseID)/renew", "")
                try? await Task.sleep(for: .milliseconds(150))
            }
        }
        let start = ContinuousClock.now
        let r = try await c.get(follower, "/v1/cluster/nodes?waitIndex=\(index)&wait=1500ms")
        let took = ContinuousClock.now - start
        await renewing.value
        #expect(r.status == 200)
        #expect(registryIndex(r) == index)
        #expect(UInt64(r.headers["x-nodelease-index"] ?? "") ?? 0 > index, "the renewals applied, the registry index stayed")
        // The wait, its jitter (a sixteenth) and a tick.
        #expect(took >= .milliseconds(1500) && took < .milliseconds(3000), "took \(took)")
        #expect(r.array.count == 1 && r.headers["x-nodelease-index-reset"] == nil)
        await c.stopAll()
    }

    @Test func anAcquireOnAnotherReplicaWakesAPollWithinASecond() async throws {
        let (c, leader, follower, _, index) = try await started()
        let other = ReplicaID(6 - leader.rawValue - follower.rawValue)
        // Node 2 does not exist yet: its poll starts from a 404.
        for path in ["/v1/cluster/nodes/2", "/v1/cluster/nodes"] {
            let before = try await c.get(follower, path)
            let waitIndex = registryIndex(before)!
            let poll = Task { () -> (HTTPResult, ContinuousClock.Instant) in
                let r = try await c.get(follower, "\(path)?waitIndex=\(waitIndex)&wait=30s")
                return (r, ContinuousClock.now)
            }
            #expect(await eventually(5) { await self.watches(c, follower) == 1 }, "the poll is waiting")
            let n = path.hasSuffix("2") ? 2 : 3
            let sent = ContinuousClock.now
            let acquired = try await c.post(other, "/v1/leases", #"{"hostname":"mx\#(n).example.org","holder":"h-\#(n)"}"#)
            #expect(acquired.status == 200)
            let (r, answered) = try await poll.value
            #expect(answered - sent < .seconds(1), "woken \(answered - sent) after the acquire was sent")
            #expect(r.status == 200)
            #expect(registryIndex(r)! > index && registryIndex(r) == UInt64(acquired.headers["x-nodelease-index"] ?? ""))
            #expect(r.body.contains("mx\(n).example.org"))
        }
        await c.stopAll()
    }

    @Test func anIndexBeyondTheCommittedOneResetsAtOnceAndBadParametersAre400() async throws {
        let (c, leader, follower, _, index) = try await started()
        for id in [leader, follower] {
            let start = ContinuousClock.now
            let r = try await c.get(id, "/v1/cluster/nodes?waitIndex=\(index + 1_000_000)&wait=30s")
            #expect(ContinuousClock.now - start < .seconds(1))
            #expect(r.status == 200 && r.headers["x-nodelease-index-reset"] == "true" && registryIndex(r) == index, "replica \(id): \(r.status) \(r.headers) \(r.body)")
        }
        // An index below the current one answers at once, without a reset.
        let now = try await c.get(follower, "/v1/cluster/nodes?waitIndex=0")
        #expect(now.status == 200 && registryIndex(now) == index && now.headers["x-nodelease-index-reset"] == nil)
        for bad in ["waitIndex=x", "waitIndex=-1", "waitIndex=1&wait=-1s", "waitIndex=1&wait=6m", "waitIndex=1&wait=30", "waitIndex=1&wait=soon"] {
            let r = try await c.get(follower, "/v1/cluster/nodes?\(bad)")
            #expect(r.status == 400 && r.json["error"] as? String == "invalid_request", "\(bad): \(r.status) \(r.body)")
        }
        // `consistency=linearizable` combines with a wait.
        let lin = try await c.get(follower, "/v1/cluster/nodes?waitIndex=\(index - 1)&consistency=linearizable")
        #expect(lin.status == 200 && registryIndex(lin) == index)
        await c.stopAll()
    }

    @Test func aFollowerThatLostItsLeaderEndsItsWaitsWith503() async throws {
        let (c, leader, follower, _, index) = try await started()
        let poll = Task { try await c.get(follower, "/v1/cluster/nodes?waitIndex=\(index)&wait=60s") }
        #expect(await eventually(5) { await self.watches(c, follower) == 1 }, "the poll is waiting")
        let start = ContinuousClock.now
        for id in c.replicas.keys where id != follower { await c.stop(id) }
        _ = leader
        let r = try await poll.value
        // Losing the leader takes an election timeout (500 ms), then 500 ms more without one.
        #expect(r.status == 503 && r.json["error"] as? String == "no_leader", "\(r.status) \(r.body)")
        #expect(ContinuousClock.now - start < .seconds(4))
        // New polls too, at once.
        let again = try await c.get(follower, "/v1/cluster/nodes?waitIndex=\(index)&wait=60s")
        #expect(again.status == 503)
        await c.stopAll()
    }

    @Test func aLeaderKilledMidWaitStillDeliversTheNextChange() async throws {
        let (c, leader, follower, _, index) = try await started()
        // A client's loop: ask again after a 503, as the library does.
        let poll = Task { () -> HTTPResult? in
            for _ in 0..<50 {
                let r = try await c.get(follower, "/v1/cluster/nodes?waitIndex=\(index)&wait=30s")
                if r.status == 200 { return r }
                try await Task.sleep(for: .milliseconds(200))
            }
            return nil
        }
        #expect(await eventually(5) { await self.watches(c, follower) == 1 }, "the poll is waiting")
        await c.stop(leader)
        #expect(await eventually(10) { await c.leader() != nil })
        let newLeader = try #require(await c.leader())
        let acquired = try await c.post(newLeader, "/v1/leases", #"{"hostname":"mx9.example.org","holder":"h-9"}"#)
        #expect(acquired.status == 200)
        let r = try #require(try await poll.value)
        #expect(r.body.contains("mx9.example.org") && registryIndex(r)! > index)
        await c.stopAll()
    }

    @Test func thePollOutlivesTheConnectionsResponseDeadline() async throws {
        // Without a long poll, a connection with a response pending lives 2 x 500 ms + 300 ms.
        let (c, _, follower, _, index) = try await started {
            $0.requestTimeoutMillis = 500
            $0.httpResponseGraceMillis = 300
        }
        let start = ContinuousClock.now
        let r = try await c.get(follower, "/v1/cluster/nodes?waitIndex=\(index)&wait=2s")
        #expect(r.status == 200 && registryIndex(r) == index)
        #expect(ContinuousClock.now - start >= .seconds(2))
        await c.stopAll()
    }

    /// Opens `n` raw connections that each send a long poll and do not read yet.
    private func rawPolls(_ n: Int, port: Int, path: String) async throws -> [(channel: any Channel, reader: ResponseCounter)] {
        var out: [(any Channel, ResponseCounter)] = []
        for _ in 0..<n {
            let reader = ResponseCounter()
            let ch = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelInitializer { ch in ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(reader) } }
                .connect(host: "127.0.0.1", port: port).get()
            try await ch.writeAndFlush(ByteBuffer(string: "GET \(path) HTTP/1.1\r\nHost: x\r\n\r\n")).get()
            out.append((ch, reader))
        }
        return out
    }

    private func watches(_ c: LocalCluster, _ id: ReplicaID) async -> Int? {
        guard let m = try? await c.get(id, "/metrics") else { return nil }
        for line in m.body.split(separator: "\n") where line.hasPrefix("nodelease_registry_watches ") {
            return Int(Double(line.split(separator: " ")[1]) ?? -1)
        }
        return nil
    }

    private static func residentBytes() -> Int {
        guard let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let pages = statm.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    @Test func aThousandWaitersStayWithinAMeasuredBoundAndOneChangeWakesThemAll() async throws {
        let (c, leader, follower, _, index) = try await started {
            // Waiting polls do not hold these places.
            $0.maxConcurrentRequests = 64
            $0.maxWatches = 1000
        }
        let port = c.configs[follower]!.clientListen.port
        // Warm up the paths the measurement goes through.
        for ch in try await rawPolls(20, port: port, path: "/v1/cluster/nodes?waitIndex=0") {
            #expect(await eventually(3) { ch.reader.text.contains("HTTP/1.1 200") })
            try await ch.channel.close()
        }
        let before = Self.residentBytes()
        let polls = try await rawPolls(1000, port: port, path: "/v1/cluster/nodes?waitIndex=\(index)&wait=60s")
        #expect(await eventually(10) { await self.watches(c, follower) == 1000 })
        let perWaiter = (Self.residentBytes() - before) / 1000
        // Both ends of each connection are in this process: the server's channel, request task
        // and waiter, and the client's channel.
        print("registry watch: \(perWaiter) bytes of resident memory per waiting long poll (both ends of the connection)")
        #expect(perWaiter < 64 * 1024, "\(perWaiter) bytes per waiter")
        // One more is refused at once, and writes still go through while they wait.
        let refused = try await c.get(follower, "/v1/cluster/nodes?waitIndex=\(index)&wait=60s")
        #expect(refused.status == 503 && (refused.json["message"] as? String)?.contains("limit of 1000 waiting watches") == true)
        let acquired = try await c.post(follower, "/v1/leases", #"{"hostname":"mx2.example.org","holder":"h-2"}"#)
        #expect(acquired.status == 200)
        #expect(await eventually(5) { polls.allSatisfy { $0.reader.text.contains("HTTP/1.1 200") } }, "not every waiter was woken")
        #expect(polls.allSatisfy { $0.reader.text.contains("mx2.example.org") })
        #expect(await watches(c, follower) == 0)
        for p in polls { try? await p.channel.close() }
        _ = leader
        await c.stopAll()
    }

    /// With every whole-registry read rendered off the event loop (a registry of any size, as
    /// a large one is), the watchers one change wakes share renders, and each still gets the
    /// change; a client's read after its own write on the same replica sees that write.
    @Test func watchersWokenTogetherShareRendersAndEachSeesTheChange() async throws {
        let (c, _, follower, _, index) = try await started { $0.inlineRenderNodes = 0 }
        let port = c.configs[follower]!.clientListen.port
        let before = try await renders(c, follower)
        let polls = try await rawPolls(200, port: port, path: "/v1/cluster/nodes?waitIndex=\(index)&wait=60s")
        #expect(await eventually(10) { await self.watches(c, follower) == 200 })
        let acquired = try await c.post(follower, "/v1/leases", #"{"hostname":"mx2.example.org","holder":"h-2"}"#)
        #expect(acquired.status == 200)
        let written = try #require(UInt64(acquired.headers["x-nodelease-index"] ?? ""))
        #expect(await eventually(5) { polls.allSatisfy { $0.reader.text.contains("mx2.example.org") } }, "not every waiter got the change")
        for p in polls {
            let served = p.reader.text.split(separator: "\r\n").first { $0.lowercased().hasPrefix("x-nodelease-index:") }
            #expect(served.flatMap { UInt64($0.split(separator: " ").last ?? "") }.map { $0 >= written } == true)
        }
        let made = try await renders(c, follower) - before
        print("registry renders: \(made) for 200 woken watchers")
        #expect(made >= 1 && made < 200, "\(made) renders for 200 reads")
        for p in polls { try? await p.channel.close() }
        // Read-your-writes through one replica, with renders off the loop and other readers
        // keeping one in flight: a read after a write never gets an older render.
        // Stopped by a flag, not by cancelling them: cancelling a request in flight through
        // URLSession can deadlock FoundationNetworking (seen: the whole test process hung).
        let stop = StopFlag()
        let readers = Task {
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<8 {
                    group.addTask { while !stop.isSet { _ = try? await c.get(follower, "/v1/cluster/nodes") } }
                }
            }
        }
        // On the way out, thrown or not: the readers stop and the cluster with them.
        func end() async {
            stop.set()
            await readers.value
            await c.stopAll()
        }
        do {
            for k in 3...12 {
                let w = try await c.post(follower, "/v1/leases", #"{"hostname":"mx\#(k).example.org","holder":"h-\#(k)"}"#)
                let r = try await c.get(follower, "/v1/cluster/nodes")
                #expect(r.status == 200 && r.array.count == k)
                #expect(r.array.contains { $0["hostname"] as? String == "mx\(k).example.org" })
                #expect((UInt64(r.headers["x-nodelease-index"] ?? "") ?? 0) >= (UInt64(w.headers["x-nodelease-index"] ?? "") ?? .max))
            }
        } catch {
            await end()
            throw error
        }
        await end()
    }

    /// A read that arrives after a write on the same replica, while a render from before the
    /// write is in flight, waits for the next render: it sees the write.
    @Test func aReadAfterAWriteDoesNotJoinAnOlderRender() async throws {
        let gate = RenderGate()
        let (c, _, follower, _, _) = try await started {
            $0.inlineRenderNodes = 0
            $0.beforeRender = { gate.pass() }
        }
        gate.close()
        // A failure below must not leave the render thread held.
        defer { gate.open() }
        let early = Task { try await c.get(follower, "/v1/cluster/nodes") }
        #expect(await eventually(5) { gate.waiting == 1 }, "the first render never started")
        let w = try await c.post(follower, "/v1/leases", #"{"hostname":"mx2.example.org","holder":"h-2"}"#)
        #expect(w.status == 200)
        let written = try #require(UInt64(w.headers["x-nodelease-index"] ?? ""))
        let late = Task { try await c.get(follower, "/v1/cluster/nodes") }
        // Both reads wait on the replica: the early one in its render, the late one queued
        // behind it (or, wrongly, joined to it).
        #expect(await eventually(5) { await self.gauge(c, follower, "nodelease_registry_reads_waiting_for_render") == 2 })
        gate.open()
        let (a, b) = (try await early.value, try await late.value)
        #expect(a.status == 200 && a.array.count == 1, "the early read is answered from the render it started")
        #expect(b.status == 200 && b.array.count == 2, "the late read got \(b.array.count) nodes")
        #expect((UInt64(b.headers["x-nodelease-index"] ?? "") ?? 0) >= written)
        await c.stopAll()
    }

    final class StopFlag: @unchecked Sendable {
        private let lock = NSLock()
        private var value = false
        var isSet: Bool { lock.withLock { value } }
        func set() { lock.withLock { value = true } }
    }

    /// Holds the renders off the event loop while closed.
    final class RenderGate: @unchecked Sendable {
        private let lock = NSCondition()
        private var closed = false
        private var held = 0
        var waiting: Int { lock.lock(); defer { lock.unlock() }; return held }
        func close() { lock.lock(); closed = true; lock.unlock() }
        func open() { lock.lock(); closed = false; lock.broadcast(); lock.unlock() }
        /// On the render thread: waits while closed (10 s at most, so a failing test ends).
        func pass() {
            lock.lock()
            held += 1
            let limit = Date().addingTimeInterval(10)
            while closed && lock.wait(until: limit) {}
            held -= 1
            lock.unlock()
        }
    }

    private func renders(_ c: LocalCluster, _ id: ReplicaID) async throws -> Int {
        try #require(await gauge(c, id, "nodelease_registry_renders_total"))
    }

    /// A metric without labels, as `/metrics` gives it (a gauge as a decimal); nil if absent.
    private func gauge(_ c: LocalCluster, _ id: ReplicaID, _ name: String) async -> Int? {
        guard let m = try? await c.get(id, "/metrics") else { return nil }
        let line = m.body.split(separator: "\n").first { $0.hasPrefix(name + " ") }
        return line.flatMap { Double($0.split(separator: " ")[1]) }.map { Int($0) }
    }

    @Test func aClientThatGoesAwayGivesItsPlaceBack() async throws {
        let (c, _, follower, _, index) = try await started { $0.maxWatches = 10 }
        let port = c.configs[follower]!.clientListen.port
        let polls = try await rawPolls(10, port: port, path: "/v1/cluster/nodes?waitIndex=\(index)&wait=5m")
        #expect(await eventually(5) { await self.watches(c, follower) == 10 })
        #expect(try await c.get(follower, "/v1/cluster/nodes?waitIndex=\(index)&wait=1s").status == 503, "full")
        for p in polls { try await p.channel.close() }
        // Within a tick or so, not after the 5 minutes.
        #expect(await eventually(3) { await self.watches(c, follower) == 0 })
        #expect(try await c.get(follower, "/v1/cluster/nodes?waitIndex=\(index)&wait=100ms").status == 200)
        await c.stopAll()
    }

    @Test func stoppingAReplicaReleasesItsWaitersAtOnce() async throws {
        let (c, _, follower, _, index) = try await started()
        let port = c.configs[follower]!.clientListen.port
        let polls = try await rawPolls(20, port: port, path: "/v1/cluster/nodes?waitIndex=\(index)&wait=60s")
        #expect(await eventually(5) { await self.watches(c, follower) == 20 })
        let start = ContinuousClock.now
        await c.stopGracefully(follower)
        // Each is answered 503 at once, not at the end of its wait (the HTTP server waits for
        // requests in progress before it stops).
        #expect(polls.allSatisfy { $0.reader.text.contains("HTTP/1.1 503") && $0.reader.text.contains("shutting down") })
        #expect(ContinuousClock.now - start < .seconds(5), "stopping took \(ContinuousClock.now - start)")
        for p in polls { try? await p.channel.close() }
        await c.stopAll()
    }
}

/// Collects a watch's snapshots as they come.
actor SnapshotLog {
    var snapshots: [NodeLeaseClient.RegistrySnapshot] = []
    func add(_ s: NodeLeaseClient.RegistrySnapshot) { snapshots.append(s) }
    var count: Int { snapshots.count }
    var last: NodeLeaseClient.RegistrySnapshot? { snapshots.last }
}

/// `watchNodes()` and `nodelease nodes --watch`.
@Suite(.serialized) struct LibraryWatchTests {
    @Test func aWatchFollowsChangesNotRenewalsAndRidesOutALeaderFailover() async throws {
        let c = try LocalCluster()
        try await c.startAll()
        let client = c.client()
        let lease = try await client.acquire(hostname: "mx1.example.org", holder: "h-1", ttlSeconds: 60)
        let log = SnapshotLog()
        let watching = Task {
            for try await s in client.watchNodes(wait: .seconds(2)) { await log.add(s) }
        }
        #expect(await eventually(5) { await log.count == 1 })
        #expect(await log.last?.nodes.map(\.hostname) == ["mx1.example.org"])
        // Renewals, through a wait that passes: nothing new.
        for _ in 0..<5 {
            _ = try await client.renew(leaseId: lease.leaseId)
            try await Task.sleep(for: .milliseconds(500))
        }
        #expect(await log.count == 1)
        _ = try await client.acquire(hostname: "mx2.example.org", holder: "h-2")
        #expect(await eventually(2) { await log.count == 2 })
        #expect(await log.last?.nodes.map(\.hostname) == ["mx1.example.org", "mx2.example.org"])
        // The leader goes; the next change still arrives.
        let leader = try #require(await c.leader())
        await c.stop(leader)
        _ = try await client.release(leaseId: lease.leaseId)
        #expect(await eventually(10) { await log.count == 3 })
        let last = await log.last
        #expect(last?.nodes.first?.status == "inactive" && last?.reset == false)
        watching.cancel()
        await c.stopAll()
    }

    @Test func anIndexThatGoesBackIsTheRegistryAfresh() {
        typealias Snap = NodeLeaseClient.RegistrySnapshot
        let a = Snap(nodes: [], registryIndex: 10, replica: 1, reset: false)
        #expect(NodeLeaseClient.RegistryWatch.step(last: nil, answer: a) == (a, 10))
        // The wait passed: nothing to give, the same index again.
        #expect(NodeLeaseClient.RegistryWatch.step(last: 10, answer: a) == (nil, 10))
        let b = Snap(nodes: [], registryIndex: 12, replica: 1, reset: false)
        #expect(NodeLeaseClient.RegistryWatch.step(last: 10, answer: b) == (b, 12))
        // Backwards, or marked by the replica: the registry afresh, from its index.
        var back = Snap(nodes: [], registryIndex: 4, replica: 2, reset: false)
        var fresh = back
        fresh.reset = true
        #expect(NodeLeaseClient.RegistryWatch.step(last: 10, answer: back) == (fresh, 4))
        back.registryIndex = 30
        back.reset = true
        #expect(NodeLeaseClient.RegistryWatch.step(last: 10, answer: back) == (back, 30))
    }

    @Test func changesAreNamedForPeople() {
        func n(_ id: UInt32, _ host: String, _ status: String) -> ClusterNode {
            ClusterNode(nodeId: id, hostname: host, lastRenewal: "2026-01-01T00:00:00Z", status: status)
        }
        let before = [n(1, "mx1", "active"), n(2, "mx2", "active"), n(3, "mx3", "stale"), n(4, "mx4", "inactive"), n(5, "mx5", "stale")]
        var renewed = before
        renewed[0].lastRenewal = "2026-01-01T00:00:10Z"
        #expect(Render.changes(from: before, to: renewed).isEmpty)
        let after = [n(1, "mx1", "stale"), n(2, "mx2", "inactive"), n(3, "mx3", "inactive"), n(4, "mx9", "active"), n(6, "mx6", "active")]
        #expect(Render.changes(from: before, to: after) == [
            "node 1 (mx1) became stale (its lease expired)",
            "node 2 (mx2) became inactive (released)",
            "node 3 (mx3) became inactive (stale beyond the retention)",
            "node 4 went from mx4 to mx9, active",
            "node 6 (mx6) appeared, active",
            "node 5 (mx5) was forgotten",
        ])
        #expect(Render.changes(from: [n(1, "mx1", "stale")], to: [n(1, "mx1", "active")]) == ["node 1 (mx1) is active again"])
    }
}

import ChildProcess
import Foundation
import NodeLeaseClient
import Raft
import Testing

@testable import nodelease

extension LocalCluster {
    func endpoints(_ ids: [ReplicaID]? = nil) -> [URL] {
        (ids ?? configs.keys.sorted()).map { id in
            let a = configs[id]!.clientListen
            return URL(string: "http://\(a.host):\(a.port)")!
        }
    }

    func client(_ ids: [ReplicaID]? = nil, timeout: Duration = .seconds(5)) -> NodeLeaseClient {
        NodeLeaseClient(endpoints: endpoints(ids), timeout: timeout)
    }
}

/// Collects a keeper's events with the instant each arrived.
actor EventLog {
    var events: [(ContinuousClock.Instant, LeaseKeeper.Event)] = []
    func add(_ e: LeaseKeeper.Event) { events.append((.now, e)) }
    func count(_ match: (LeaseKeeper.Event) -> Bool) -> Int { events.filter { match($0.1) }.count }
    func first(_ match: (LeaseKeeper.Event) -> Bool) -> ContinuousClock.Instant? { events.first { match($0.1) }?.0 }
}

func watch(_ keeper: LeaseKeeper) -> EventLog {
    let log = EventLog()
    Task {
        for await e in keeper.events { await log.add(e) }
    }
    return log
}

func isAcquired(_ e: LeaseKeeper.Event) -> Bool { if case .acquired = e { true } else { false } }
func isLost(_ e: LeaseKeeper.Event) -> Bool { if case .lost = e { true } else { false } }
func isWaiting(_ e: LeaseKeeper.Event) -> Bool { if case .waiting = e { true } else { false } }

@Suite(.serialized)
struct ClientTests {
    @Test func everyCallAndError() async throws {
        let c = try LocalCluster()
        try await c.startAll()
        let client = c.client()
        let l = try await client.acquire(hostname: "mx1.example.org", holder: "a", ttlSeconds: 30)
        #expect(l.nodeId == 1 && l.hostname == "mx1.example.org" && l.fencingToken == UInt64(l.leaseId))
        do {
            _ = try await client.acquire(hostname: "mx1.example.org", holder: "b", ttlSeconds: 30)
            Issue.record("another holder acquired a live lease")
        } catch .hostnameInUse(let node, let holder, let seconds) {
            // Whole wall-clock seconds: the second may tick between the two requests.
            #expect(node == 1 && holder == "a" && (29...30).contains(seconds))
        } catch {
            Issue.record("unexpected \(error)")
        }
        #expect(try await client.renew(leaseId: l.leaseId).leaseId == l.leaseId)
        #expect(try await client.nodes(linearizable: true).map(\.hostname) == ["mx1.example.org"])
        #expect(try await client.node(1).status == "active")
        await #expect(throws: NodeLeaseError.nodeActive) { _ = try await client.forget(nodeId: 1) }
        #expect(try await client.release(leaseId: l.leaseId).status == "inactive")
        await #expect(throws: NodeLeaseError.leaseNotFound) { _ = try await client.renew(leaseId: l.leaseId) }
        #expect(try await client.forget(nodeId: 1).hostname == "mx1.example.org")
        await #expect(throws: NodeLeaseError.nodeNotFound) { _ = try await client.node(1) }
        await #expect(throws: NodeLeaseError.self) { _ = try await client.acquire(hostname: "bad host", holder: "a") }
        let status = await client.statusOfAll()
        #expect(status.count == 3 && status.allSatisfy { (try? $0.status.get()) != nil })
        await c.stopAll()
    }

    @Test func theHostnameComesFromStalwartHostnameFirst() {
        #expect(NodeIdentity.hostname(environment: ["STALWART_HOSTNAME": "MX7.Example.ORG"]) == "mx7.example.org")
        #expect(NodeIdentity.hostname(environment: ["STALWART_HOSTNAME": ""]) == ProcessInfo.processInfo.hostName.lowercased())
        #expect(NodeIdentity.hostname(environment: ["STALWART_HOSTNAME": "10.0.0.7"]) == "10.0.0.7")
    }

    @Test func theHolderIsStablePerInstallation() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("holder-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = try NodeIdentity.holder(machineIDPath: "/nonexistent", stateDirectory: dir)
        #expect(try NodeIdentity.holder(machineIDPath: "/nonexistent", stateDirectory: dir) == a)
        let midFile = dir + "/machine-id"
        try "0123456789abcdef0123456789abcdef\n".write(toFile: midFile, atomically: true, encoding: .utf8)
        let m = try NodeIdentity.holder(machineIDPath: midFile)
        #expect(m.hasPrefix("mid-") && !m.contains("0123456789abcdef"))
        #expect(try NodeIdentity.holder(machineIDPath: midFile) == m)
    }

    @Test func aKeeperRidesOutALeaderFailover() async throws {
        let c = try LocalCluster()
        try await c.startAll()
        let keeper = LeaseKeeper(client: c.client(timeout: .seconds(3)), hostname: "mx2", holder: "k", ttlSeconds: 3)
        let log = watch(keeper)
        await keeper.start()
        #expect(await eventually(5) { await log.count(isAcquired) == 1 })
        await c.stop(await c.leader()!)
        try await Task.sleep(for: .seconds(5))
        #expect(await log.count(isLost) == 0, "a failover must not cost the lease")
        #expect(await keeper.currentLease != nil)
        await keeper.stop()
        await c.stopAll()
    }

    @Test func aKeeperCutOffReportsLostBeforeTheLeaderExpiresTheLease() async throws {
        let c = try LocalCluster()
        try await c.startAll()
        let leader = await c.leader()!
        let lonely = c.configs.keys.sorted().first { $0 != leader }!
        // The keeper only knows one follower; stopping that follower cuts it off.
        let keeper = LeaseKeeper(client: c.client([lonely], timeout: .seconds(2)), hostname: "mx3", holder: "k", ttlSeconds: 2)
        let log = watch(keeper)
        await keeper.start()
        #expect(await eventually(5) { await log.count(isAcquired) == 1 })
        await c.stop(lonely)
        var staleAt: ContinuousClock.Instant?
        #expect(await eventually(8) {
            if let r = try? await c.get(leader, "/v1/cluster/nodes/1"), r.json["status"] as? String == "stale" {
                staleAt = .now
                return true
            }
            return false
        })
        let lostAt = try #require(await log.first(isLost))
        #expect(lostAt < staleAt!, "the holder must stop before the lease expires")
        await keeper.stop()
        await c.stopAll()
    }

    @Test func twoInstallationsWithOneHostnameTakeTurns() async throws {
        let c = try LocalCluster()
        try await c.startAll()
        let first = LeaseKeeper(client: c.client(), hostname: "shared", holder: "one", ttlSeconds: 5)
        let second = LeaseKeeper(client: c.client(), hostname: "shared", holder: "two", ttlSeconds: 5)
        let log1 = watch(first)
        let log2 = watch(second)
        await first.start()
        #expect(await eventually(5) { await log1.count(isAcquired) == 1 })
        await second.start()
        #expect(await eventually(5) { await log2.count(isWaiting) >= 1 })
        #expect(await second.currentLease == nil)
        await first.stop()  // releases
        #expect(await eventually(8) { await log2.count(isAcquired) == 1 })
        #expect(await second.currentLease?.nodeId == 1)
        await second.stop()
        await c.stopAll()
    }

    @Test func theSameInstallationRestartingReclaimsAtOnce() async throws {
        let c = try LocalCluster()
        try await c.startAll()
        let client = c.client()
        let before = try await client.acquire(hostname: "mx4", holder: "same", ttlSeconds: 30)
        // The process restarts (no release) and asks again with its stable holder id.
        let keeper = LeaseKeeper(client: client, hostname: "mx4", holder: "same", ttlSeconds: 30)
        let log = watch(keeper)
        await keeper.start()
        #expect(await eventually(3) { await log.count(isAcquired) == 1 })
        #expect(await keeper.currentLease?.leaseId == before.leaseId)
        await keeper.stop()
        await c.stopAll()
    }

    @Test func holdStopsItsCommandWhenTheLeaseIsLostAndReleasesWhenItExits() async throws {
        let c = try LocalCluster(size: 1)
        try await c.startAll()
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("nodelease")
        let endpoints = c.endpoints().map(\.absoluteString).joined(separator: ",")
        let pidFile = c.base + "/child.pid"
        /// `nodelease hold` for hostname "held" (holder "h") with `flags`, running `sh -c script`.
        func hold(_ flags: [String], _ script: String) throws -> ChildProcess {
            try ChildProcess(binary.path, ["hold", "--endpoints", endpoints, "--hostname", "held", "--holder", "h"] + flags + ["--", "sh", "-c", script])
        }

        // 1. The command exits: hold releases the lease and exits with its status. The command
        // has none of hold's descriptors (its connections, its event loops' epoll and eventfd).
        let quick = try hold(["--ttl", "5"], "test -n \"$NODELEASE_NODE_ID\" && ! for f in /proc/$$/fd/*; do [ \"${f##*/}\" -gt 2 ] && readlink \"$f\"; done | grep -q -e socket: -e anon_inode: && exit 7")
        #expect(await quick.waitForExit(within: .seconds(10)) == .exited(7))
        #expect(try await c.get(1, "/v1/cluster/nodes/1").json["status"] as? String == "inactive")

        // 2. A signal to hold goes to the command; its exit ends hold with its status, and the
        // lease is released.
        let signalled = try hold(["--ttl", "5"], "trap 'exit 9' TERM; echo $$ > \(pidFile); while :; do sleep 0.05; done")
        let first = try await childPID(pidFile)
        signalled.signal(SIGTERM)
        #expect(await signalled.waitForExit(within: .seconds(5)) == .exited(9))
        #expect(await eventually(2) { processGone(first) })
        #expect(try await c.get(1, "/v1/cluster/nodes/1").json["status"] as? String == "inactive")

        // 3. hold is killed with SIGKILL: the command dies with it.
        try? FileManager.default.removeItem(atPath: pidFile)
        let killed = try hold(["--ttl", "5"], "echo $$ > \(pidFile); exec sleep 60")
        let orphan = try await childPID(pidFile)
        killed.signal(SIGKILL)
        #expect(await killed.waitForExit(within: .seconds(5)) == .signalled(SIGKILL))
        #expect(await eventually(2) { processGone(orphan) }, "the command outlived hold")

        // 4. The lease is lost (the cluster goes away) and the command ignores SIGTERM: it is
        // killed before the holder-side deadline, which is at most a TTL after the cluster
        // stopped answering (the last renewal was sent before that), and hold exits 75.
        try? FileManager.default.removeItem(atPath: pidFile)
        let long = try hold(["--ttl", "3", "--grace", "1"], "trap '' TERM; echo $$ > \(pidFile); while :; do sleep 0.05; done")
        let stubborn = try await childPID(pidFile)
        await c.stopAll()
        let stopped = ContinuousClock.now
        var goneAt: ContinuousClock.Instant?
        while goneAt == nil && ContinuousClock.now < stopped + .seconds(8) {
            if processGone(stubborn) { goneAt = ContinuousClock.now } else { try await Task.sleep(for: .milliseconds(10)) }
        }
        let gone = try #require(goneAt, "the command was never stopped")
        #expect(gone < stopped + .seconds(3), "the command outlived the holder-side deadline: \(gone - stopped) after the cluster stopped")
        #expect(await long.waitForExit(within: .seconds(5)) == .exited(75))

        // A grace longer than a third of the TTL is refused: it could not end before the deadline.
        let tooLong = try ChildProcess(binary.path, ["hold", "--endpoints", endpoints, "--ttl", "3", "--grace", "2", "--", "true"], stderr: .discard)
        #expect(await tooLong.waitForExit(within: .seconds(10)) == .exited(64))
    }

    @Test func tablesAndJSONForPeople() {
        let nodes = [
            ClusterNode(nodeId: 1, hostname: "mx1.example.org", lastRenewal: "2026-01-01T00:00:00Z", status: "active"),
            ClusterNode(nodeId: 12, hostname: "a", lastRenewal: "2026-01-01T00:00:00Z", status: "stale"),
        ]
        let now = ISO8601DateFormatter().date(from: "2026-01-01T00:00:30Z")!
        #expect(Render.nodesTable(nodes, now: now) == """
            NODE ID  HOSTNAME         LAST RENEWAL          AGE  STATUS
            1        mx1.example.org  2026-01-01T00:00:00Z  30s  active
            12       a                2026-01-01T00:00:00Z  30s  stale
            """)
        #expect(Render.json(nodes[0]) == #"{"nodeId":1,"hostname":"mx1.example.org","lastRenewal":"2026-01-01T00:00:00Z","status":"active"}"#)
    }
}

/// The pid a held command wrote to `file`.
func childPID(_ file: String) async throws -> Int32 {
    #expect(await eventually(5) { FileManager.default.fileExists(atPath: file) && ((try? String(contentsOfFile: file, encoding: .utf8)) ?? "").hasSuffix("\n") })
    return try #require(Int32((try String(contentsOfFile: file, encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines)))
}

/// True once `pid` has exited (a zombie nobody reaped counts as gone).
func processGone(_ pid: Int32) -> Bool {
    guard kill(pid, 0) == 0 else { return true }
    let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
    guard let close = stat.lastIndex(of: ")") else { return true }
    return stat[stat.index(close, offsetBy: 2)...].hasPrefix("Z")
}

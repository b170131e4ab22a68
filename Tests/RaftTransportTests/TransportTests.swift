import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Raft
import RaftTransport
import TestSupport
import Testing

final class Inbox: Sendable {
    let box = NIOLockedValueBox<[Message]>([])
    func add(_ m: Message) { box.withLockedValue { $0.append(m) } }
    var messages: [Message] { box.withLockedValue { $0 } }
}

/// Polls `condition` until it holds or `seconds` pass.
func eventually(_ seconds: Double = 10, _ condition: () -> Bool) async -> Bool {
    let end = Date().addingTimeInterval(seconds)
    while Date() < end {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return condition()
}

struct TransportTests {
    let group = MultiThreadedEventLoopGroup.singleton

    func make(_ id: ReplicaID, cluster: String = "c1", ports: [ReplicaID: Int], log: CapturedLog, inbox: Inbox) -> RaftTransport {
        var peers: [ReplicaID: PeerAddress] = [:]
        for (p, port) in ports where p != id { peers[p] = PeerAddress(host: "127.0.0.1", port: port) }
        let config = TransportConfig(
            clusterID: cluster, replicaID: id, listen: PeerAddress(host: "127.0.0.1", port: ports[id]!), peers: peers)
        return RaftTransport(config: config, group: group, logger: log.logger, onMessage: { inbox.add($0) })
    }

    @Test func twoReplicasExchangeMessagesAndReconnect() async throws {
        let ports: [ReplicaID: Int] = [1: try freePort(), 2: try freePort()]
        let log = CapturedLog()
        let inbox1 = Inbox()
        let inbox2 = Inbox()
        let a = make(1, ports: ports, log: log, inbox: inbox1)
        let b = make(2, ports: ports, log: log, inbox: inbox2)
        try await a.start()
        try await b.start()
        #expect(await eventually { a.isConnected(2) && b.isConnected(1) })
        let m = Message(kind: .append, from: 1, to: 2, term: 3, entries: [Entry(term: 3, index: 1, data: [42])])
        a.send([m, m])
        #expect(await eventually { inbox2.messages.count == 2 })
        #expect(inbox2.messages.first == m)
        b.send([Message(kind: .appendResponse, from: 2, to: 1, term: 3, index: 1)])
        #expect(await eventually { inbox1.messages.count == 1 })

        // B goes away: A's sends are dropped (never block), then A redials when B is back.
        await b.shutdown()
        #expect(await eventually { !a.isConnected(2) })
        a.send([m])
        #expect(a.droppedMessages >= 1)
        let inbox2b = Inbox()
        let b2 = make(2, ports: ports, log: log, inbox: inbox2b)
        try await b2.start()
        #expect(await eventually { a.isConnected(2) })
        a.send([m])
        #expect(await eventually { inbox2b.messages.count == 1 })
        #expect(log.all.contains { $0.contains("connected to peer 2") })
        #expect(log.all.contains { $0.contains("lost the connection to peer 2") })
        await a.shutdown()
        await b2.shutdown()
    }

    /// A replica whose log is behind may not know the current leader as a member: it must
    /// still take the leader's connection and answer it (a joiner that installed an older
    /// configuration from a snapshot hung on this in a Jepsen run). A removed replica is
    /// refused for good.
    @Test func aReplicaNotYetKnownIsAnsweredAndARemovedOneIsRefused() async throws {
        let ports: [ReplicaID: Int] = [1: try freePort(), 2: try freePort(), 3: try freePort()]
        let log = CapturedLog()
        let inbox1 = Inbox()
        let inbox2 = Inbox()
        // Replica 1 knows only replica 3 (an old configuration); replica 2 knows both.
        let a = make(1, ports: [1: ports[1]!, 3: ports[3]!], log: log, inbox: inbox1)
        let b = make(2, ports: ports, log: log, inbox: inbox2)
        try await a.start()
        try await b.start()
        #expect(await eventually { b.isConnected(1) })
        b.send([Message(kind: .append, from: 2, to: 1, term: 2)])
        #expect(await eventually { inbox1.messages.count == 1 })
        // 1 links back to the address 2 announced, so its answer gets through.
        #expect(await eventually { a.isConnected(2) })
        a.send([Message(kind: .appendResponse, from: 1, to: 2, term: 2)])
        #expect(await eventually { inbox2.messages.count == 1 })
        // Replica 2 is removed in 1's configuration: its link and connection close, and it is
        // refused from then on.
        a.setMembers([3: PeerAddress(host: "127.0.0.1", port: ports[3]!)], removed: [2])
        #expect(await eventually { !a.isConnected(2) && !b.isConnected(1) })
        #expect(await eventually { log.all.contains { $0.contains("replica 2 was removed") } })
        b.send([Message(kind: .append, from: 2, to: 1, term: 2)])
        try await Task.sleep(for: .milliseconds(200))
        #expect(inbox1.messages.count == 1)
        await a.shutdown()
        await b.shutdown()
    }

    @Test func aReplicaOfAnotherClusterIsRefused() async throws {
        let ports: [ReplicaID: Int] = [1: try freePort(), 2: try freePort()]
        let log = CapturedLog()
        let inbox = Inbox()
        let a = make(1, cluster: "mail-eu", ports: ports, log: log, inbox: Inbox())
        let b = make(2, cluster: "mail-us", ports: ports, log: log, inbox: inbox)
        try await a.start()
        try await b.start()
        #expect(await eventually { log.all.contains { $0.contains("refused") && $0.contains("cluster") } })
        #expect(!a.isConnected(2) && !b.isConnected(1))
        a.send([Message(kind: .heartbeat, from: 1, to: 2, term: 1)])
        try await Task.sleep(for: .milliseconds(100))
        #expect(inbox.messages.isEmpty)
        await a.shutdown()
        await b.shutdown()
    }

    @Test func aWrongReplicaIDIsRefused() async throws {
        // Replica 1 believes replica 3 listens where replica 2 does.
        let p1 = try freePort()
        let p2 = try freePort()
        let log = CapturedLog()
        let a = RaftTransport(
            config: TransportConfig(
                clusterID: "c", replicaID: 1, listen: PeerAddress(host: "127.0.0.1", port: p1),
                peers: [3: PeerAddress(host: "127.0.0.1", port: p2)]),
            group: group, logger: log.logger, onMessage: { _ in })
        let b = make(2, cluster: "c", ports: [1: p1, 2: p2], log: log, inbox: Inbox())
        try await a.start()
        try await b.start()
        #expect(await eventually { log.all.contains { $0.contains("not replica 3") } })
        #expect(!a.isConnected(3))
        await a.shutdown()
        await b.shutdown()
    }
}

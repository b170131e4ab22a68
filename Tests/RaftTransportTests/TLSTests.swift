import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import Raft
import RaftTransport
import TestSupport
import Testing

/// Mutual TLS between replicas, with certificates made at test time.
@Suite(.serialized) struct TLSTests {
    let group = MultiThreadedEventLoopGroup.singleton

    func make(
        _ id: ReplicaID, ports: [ReplicaID: Int], tls: PeerTLS?, log: CapturedLog, inbox: Inbox,
        configure: (inout TransportConfig) -> Void = { _ in }
    ) -> RaftTransport {
        var peers: [ReplicaID: PeerAddress] = [:]
        for (p, port) in ports where p != id { peers[p] = PeerAddress(host: "127.0.0.1", port: port) }
        var config = TransportConfig(clusterID: "c", replicaID: id, listen: PeerAddress(host: "127.0.0.1", port: ports[id]!), peers: peers)
        config.tls = tls
        configure(&config)
        return RaftTransport(config: config, group: group, logger: log.logger, onMessage: { inbox.add($0) })
    }

    func tls(_ pki: TestPKI, _ file: String, uris: [String], days: Int = 2, ca: TestPKI? = nil) throws -> PeerTLS {
        let (cert, key) = try pki.issue(file, uris: uris, days: days)
        return try PeerTLS(certificateFile: cert, keyFile: key, caFile: (ca ?? pki).caCertificate)
    }

    @Test func replicasWithTheClustersCertificatesTalk() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let ports: [ReplicaID: Int] = [1: try freePort(), 2: try freePort()]
        let log = CapturedLog()
        let inbox2 = Inbox()
        let a = make(1, ports: ports, tls: try tls(pki, "r1", uris: ["nodelease://c/replica/1"]), log: log, inbox: Inbox())
        let b = make(2, ports: ports, tls: try tls(pki, "r2", uris: ["nodelease://c/replica/2"]), log: log, inbox: inbox2)
        try await a.start()
        try await b.start()
        #expect(await eventually { a.isConnected(2) && b.isConnected(1) })
        let m = Message(kind: .append, from: 1, to: 2, term: 3, entries: [Entry(term: 3, index: 1, data: Array(repeating: 7, count: 100_000))])
        a.send([m])
        #expect(await eventually { inbox2.messages.count == 1 })
        #expect(inbox2.messages.first == m)
        await a.shutdown()
        await b.shutdown()
    }

    /// Replica 2 is real; the stranger dials it as "replica 1" with each bad credential in
    /// turn, and must be refused with a log line that says why.
    @Test func strangersAreRefusedWithTheReason() async throws {
        let pki = try TestPKI()
        let other = try TestPKI(name: "other", directory: pki.directory)
        defer { pki.remove() }
        let ports: [ReplicaID: Int] = [1: try freePort(), 2: try freePort()]
        let realLog = CapturedLog()
        let inbox2 = Inbox()
        // Replica 2 knows no peers: it never dials, so every line in its log is its acceptor's.
        let b = make(2, ports: [2: ports[2]!], tls: try tls(pki, "r2", uris: ["nodelease://c/replica/2"]), log: realLog, inbox: inbox2) {
            $0.strangerLogInterval = .zero
        }
        try await b.start()
        let verifyFailed = "did not verify against the cluster's CA"
        // What replica 2 logs, and what the stranger logs (when it learns more).
        let cases: [(String, PeerTLS?, String, String?)] = [
            ("another CA", try tls(other, "x1", uris: ["nodelease://c/replica/1"], ca: pki), verifyFailed, "not issued by the cluster's CA"),
            ("expired", try tls(pki, "old1", uris: ["nodelease://c/replica/1"], days: -1), verifyFailed, "certificate has expired"),
            ("names replica 3", try tls(pki, "r3", uris: ["nodelease://c/replica/3"]), "names nodelease://c/replica/3, not nodelease://c/replica/1", nil),
            ("another cluster", try tls(pki, "d1", uris: ["nodelease://d/replica/1"]), "not nodelease://c/replica/1", nil),
            ("no certificate", nil, "does not speak TLS", nil),
        ]
        for (what, credential, reason, strangerReason) in cases {
            let before = realLog.all.count
            let strangerLog = CapturedLog()
            let stranger: RaftTransport
            if let credential {
                stranger = make(1, ports: ports, tls: credential, log: strangerLog, inbox: Inbox())
            } else {
                // Plain TCP to the TLS port: the handshake fails cleanly.
                stranger = make(1, ports: ports, tls: nil, log: strangerLog, inbox: Inbox())
            }
            try await stranger.start()
            let refused = await eventually(5) { realLog.all.dropFirst(before).contains { $0.contains(reason) } }
            #expect(refused, "\(what): \(realLog.all.dropFirst(before))")
            if let strangerReason {
                #expect(await eventually(5) { strangerLog.all.contains { $0.contains(strangerReason) } }, "\(what): \(strangerLog.all)")
            }
            #expect(!stranger.isConnected(2), "\(what)")
            stranger.send([Message(kind: .append, from: 1, to: 2, term: 99)])
            await stranger.shutdown()
        }
        // Raw TLS connections that send a hello and then a message at once, without waiting
        // for the answer: neither message may be delivered. One presents no certificate, one a
        // certificate of the CA that names another replica.
        let wrong = try pki.issue("raw3", uris: ["nodelease://c/replica/3"])
        for (what, certificate, reason) in [
            ("no certificate", nil, "no certificate was presented"), ("names replica 3", wrong, "names nodelease://c/replica/3"),
        ] as [(String, (certificate: String, key: String)?, String)] {
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(pki.caCertificate))
            configuration.certificateVerification = .noHostnameVerification
            if let certificate {
                configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificate.certificate).map { .certificate($0) }
                configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: certificate.key, format: .pem))
            }
            let context = try NIOSSLContext(configuration: configuration)
            let before = realLog.all.count
            let bare = try await ClientBootstrap(group: group)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: context, serverHostname: nil))
                    }
                }
                .connect(host: "127.0.0.1", port: ports[2]!).get()
            let hello = Frame.hello(clusterID: "c", from: 1, to: 2, incarnation: 1, dataDirectoryID: 1, clientAddress: "", peerAddress: "127.0.0.1:1")
            let message = Frame.message(Message(kind: .append, from: 1, to: 2, term: 99))
            bare.writeAndFlush(ByteBuffer(bytes: hello.encoded() + message.encoded()), promise: nil)
            #expect(await eventually(5) { realLog.all.dropFirst(before).contains { $0.contains(reason) } }, "\(what): \(realLog.all.dropFirst(before))")
            #expect(await eventually(5) { !bare.isActive }, "\(what)")
        }
        try await Task.sleep(for: .milliseconds(100))
        #expect(inbox2.messages.isEmpty, "a refused stranger's message got through")
        await b.shutdown()
    }

    /// The dialer checks the identity too: a server whose certificate names another replica
    /// is not the peer it meant to reach.
    @Test func theDialerChecksWhoAnswered() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let ports: [ReplicaID: Int] = [1: try freePort(), 2: try freePort()]
        let log = CapturedLog()
        let a = make(1, ports: ports, tls: try tls(pki, "r1", uris: ["nodelease://c/replica/1"]), log: log, inbox: Inbox())
        // Listens where 1 expects replica 2, with replica 2's id but replica 3's certificate;
        // it knows no peers (it never dials) and admits 1, whose certificate is fine.
        let otherLog = CapturedLog()
        let b = make(2, ports: [2: ports[2]!], tls: try tls(pki, "r3", uris: ["nodelease://c/replica/3"]), log: otherLog, inbox: Inbox())
        try await a.start()
        try await b.start()
        #expect(
            await eventually(5) {
                log.all.contains { $0.contains("this replica refused it: its certificate names nodelease://c/replica/3, not nodelease://c/replica/2") }
            }, "\(log.all)")
        try await Task.sleep(for: .milliseconds(300))
        #expect(!a.isConnected(2))
        await a.shutdown()
        await b.shutdown()
    }

    /// Before the handshake a peer port takes only small frames, and only for a while; and
    /// it keeps serving its peers while strangers hold many connections open.
    @Test func thePeerPortResistsStrangers() async throws {
        let ports: [ReplicaID: Int] = [1: try freePort(), 2: try freePort()]
        let log = CapturedLog()
        let inbox2 = Inbox()
        let b = make(2, ports: ports, tls: nil, log: log, inbox: inbox2) {
            $0.handshakeTimeout = .milliseconds(500)
            $0.strangerLogInterval = .zero
        }
        try await b.start()
        // A frame header announcing 200 MiB, before any hello: refused on its length alone.
        let big = try await RawConnection.open(port: ports[2]!, group: group)
        try await big.write([0x00, 0x00, 0x80, 0x0c])
        #expect(await eventually(5) { log.all.contains { $0.contains("frame of 209715200 bytes is over the limit") } })
        #expect(await eventually(5) { !big.channel.isActive })
        // Connections that never say hello are closed at the deadline.
        let idle = try await RawConnection.open(port: ports[2]!, group: group)
        #expect(await eventually(5) { !idle.channel.isActive })
        #expect(log.all.contains { $0.contains("no handshake within") })
        await b.shutdown()
    }

    /// Strangers holding connections open in their handshake, from many addresses, fill the
    /// caps; a real peer (from its known host) still gets in while they hold them.
    @Test func aFloodOfStrangersLeavesRoomForThePeers() async throws {
        let ports: [ReplicaID: Int] = [1: try freePort(), 2: try freePort()]
        let log = CapturedLog()
        let inbox2 = Inbox()
        let b = make(2, ports: ports, tls: nil, log: log, inbox: inbox2) {
            $0.handshakeTimeout = .seconds(4)
            $0.maxPendingConnections = 8
            $0.maxPendingPerSource = 4
            $0.strangerLogInterval = .zero
        }
        try await b.start()
        var flood: [RawConnection] = []
        for source in 2...5 {
            for _ in 0..<6 { flood.append(try await RawConnection.open(port: ports[2]!, group: group, from: "127.0.0.\(source)")) }
        }
        #expect(await eventually(2) { log.all.contains { $0.contains("connections from 127.0.0.") && $0.contains("in their handshake already") } })
        #expect(await eventually(2) { log.all.contains { $0.contains("8 connections are in their handshake already") } })
        let started = ContinuousClock.now
        let a = make(1, ports: ports, tls: nil, log: CapturedLog(), inbox: Inbox())
        try await a.start()
        #expect(await eventually(2) { a.isConnected(2) })
        #expect(ContinuousClock.now - started < .seconds(3), "the peer got in only once the strangers timed out")
        #expect(flood.filter { $0.channel.isActive }.count == 8, "the strangers' admitted connections are still held")
        a.send([Message(kind: .heartbeat, from: 1, to: 2, term: 1)])
        #expect(await eventually(5) { inbox2.messages.count == 1 })
        for c in flood { try? await c.channel.close() }
        await a.shutdown()
        await b.shutdown()
    }
}

/// A bare TCP connection for writing raw bytes at a port.
struct RawConnection {
    let channel: any Channel

    static func open(port: Int, group: any EventLoopGroup, from source: String = "127.0.0.1") async throws -> RawConnection {
        let channel = try await ClientBootstrap(group: group).bind(to: try SocketAddress(ipAddress: source, port: 0))
            .connect(host: "127.0.0.1", port: port).get()
        return RawConnection(channel: channel)
    }

    func write(_ bytes: [UInt8]) async throws {
        try await channel.writeAndFlush(ByteBuffer(bytes: bytes)).get()
    }
}

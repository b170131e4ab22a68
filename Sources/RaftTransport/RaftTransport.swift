import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Raft

/// Where a peer listens.
public struct PeerAddress: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }
    public var description: String { "\(host):\(port)" }
}

public struct TransportConfig: Sendable {
    public var clusterID: String
    public var replicaID: ReplicaID
    public var listen: PeerAddress
    /// Every other voter and its peer address.
    public var peers: [ReplicaID: PeerAddress]
    /// The id of this replica's data directory, sent in the hello.
    public var dataDirectoryID: UInt64 = 0
    /// Where this replica serves clients, sent in the hello.
    public var clientAddress = ""
    /// Where other replicas reach this one, sent in the hello (empty: `listen`, which may be a
    /// wildcard address).
    public var advertisedAddress = ""
    /// Bytes queued on one connection before further messages are dropped (Raft resends).
    public var maxQueuedBytes: Int
    public var connectTimeout: TimeAmount
    /// How long sent data may stay unacknowledged before the connection is given up
    /// (TCP_USER_TIMEOUT).
    public var unackedTimeout: TimeAmount = .seconds(2)
    public var minBackoff: TimeAmount
    public var maxBackoff: TimeAmount
    /// Mutual TLS with the cluster's CA; nil: plain TCP (loopback and trusted networks only).
    public var tls: PeerTLS?
    /// How long an accepted connection may take to complete its TLS handshake and hello.
    public var handshakeTimeout: TimeAmount = .seconds(5)
    /// Connections not admitted yet (handshake and hello under way), from any source: beyond
    /// this, new ones are closed at once, except from the hosts of known peers.
    public var maxPendingConnections = 64
    /// ... and from one source address, known peer or not.
    public var maxPendingPerSource = 8
    /// Log lines about strangers (caps, slow handshakes, failed TLS) of one kind are written
    /// at most this often.
    public var strangerLogInterval: TimeAmount = .seconds(10)

    public init(
        clusterID: String, replicaID: ReplicaID, listen: PeerAddress, peers: [ReplicaID: PeerAddress],
        maxQueuedBytes: Int = 8 << 20, connectTimeout: TimeAmount = .seconds(2), minBackoff: TimeAmount = .milliseconds(50),
        maxBackoff: TimeAmount = .seconds(2)
    ) {
        self.clusterID = clusterID
        self.replicaID = replicaID
        self.listen = listen
        self.peers = peers
        self.maxQueuedBytes = maxQueuedBytes
        self.connectTimeout = connectTimeout
        self.minBackoff = minBackoff
        self.maxBackoff = maxBackoff
    }
}

/// TCP between replicas. Each replica dials every peer once and sends its messages for that
/// peer over that connection; it receives over the connections peers dialed to it. A
/// handshake checks the cluster id and replica ids, so a replica of another cluster (or a
/// misconfigured id) is refused with a clear log line on both sides. Lost connections are
/// redialed with capped exponential backoff; TCP keepalive finds peers that vanished. Sending never blocks: a message for a peer that is
/// unreachable, or whose connection has `maxQueuedBytes` waiting, is dropped (Raft resends).
public final class RaftTransport: Sendable {
    public let config: TransportConfig
    let group: any EventLoopGroup
    let logger: Logger
    /// New for every process start, so two processes claiming one replica id are told apart.
    let incarnation: UInt64
    let onMessage: @Sendable (Message) -> Void
    let onPeerChange: @Sendable (ReplicaID, Bool) -> Void
    let onForward: @Sendable (ReplicaID, [UInt8]) -> Void
    let onPeerUnreachable: @Sendable (ReplicaID) -> Void
    /// The outbound link to every member, replaced when the configuration changes, and to
    /// every replica that dialed us and is not known to be removed (a replica whose log is
    /// behind may not know the current leader as a member yet, and must still answer it).
    let links = NIOLockedValueBox<[ReplicaID: PeerLink]>([:])
    /// Replicas removed from the cluster: refused for good.
    let removed = NIOLockedValueBox<Set<ReplicaID>>([])
    let started = NIOLockedValueBox(false)
    /// `shutdown` has begun: no connection is admitted any more.
    let stopping = NIOLockedValueBox(false)
    let inbound = NIOLockedValueBox<[ReplicaID: (incarnation: UInt64, channel: any Channel, directory: UInt64, client: String)]>([:])
    /// Extra admission check (the server refuses replicas whose data directory was replaced).
    let checkPeer = NIOLockedValueBox<(@Sendable (ReplicaID, UInt64) -> String?)?>(nil)
    let server = NIOLockedValueBox<(any Channel)?>(nil)
    let dropped = ManagedAtomicCounter()
    /// Accepted connections not admitted yet, in all and by source address.
    let pending = NIOLockedValueBox<(total: Int, bySource: [String: Int])>((0, [:]))
    /// When each kind of log line about strangers was last written (at most one per 10 s).
    let lastLogged = NIOLockedValueBox<[String: NIODeadline]>([:])

    /// Logs a line about strangers (over the caps, slow handshakes, failed TLS) at most every
    /// `strangerLogInterval` per kind, so a flood of them does not flood the log too.
    func warnThrottled(_ kind: String, level: Logger.Level = .warning, _ message: @autoclosure () -> String) {
        let now = NIODeadline.now()
        let due = lastLogged.withLockedValue { last -> Bool in
            if let t = last[kind], now - t < config.strangerLogInterval { return false }
            last[kind] = now
            return true
        }
        if due { logger.log(level: level, "\(message())") }
    }

    /// Takes a pending slot for a connection from `source`, or says why not.
    func admitPending(from source: String) -> String? {
        let known = links.withLockedValue { links in links.values.contains { $0.address.host == source } }
        return pending.withLockedValue { p in
            if p.bySource[source, default: 0] >= config.maxPendingPerSource {
                return "\(config.maxPendingPerSource) connections from \(source) are in their handshake already"
            }
            if !known && p.total >= config.maxPendingConnections {
                return "\(config.maxPendingConnections) connections are in their handshake already"
            }
            p.total += 1
            p.bySource[source, default: 0] += 1
            return nil
        }
    }

    func releasePending(from source: String) {
        pending.withLockedValue { p in
            p.total -= 1
            p.bySource[source, default: 1] -= 1
            if p.bySource[source] == 0 { p.bySource[source] = nil }
        }
    }

    /// - Parameters:
    ///   - onMessage: called on an event loop for every message received.
    ///   - onPeerChange: called when the outbound connection to a peer comes up or goes down.
    ///   - onForward: called with commands a peer forwards to this replica (as leader).
    ///   - onPeerUnreachable: called when a dial to a peer fails (refused, or timed out).
    public init(
        config: TransportConfig, group: any EventLoopGroup, logger: Logger,
        onMessage: @escaping @Sendable (Message) -> Void, onPeerChange: @escaping @Sendable (ReplicaID, Bool) -> Void = { _, _ in },
        onForward: @escaping @Sendable (ReplicaID, [UInt8]) -> Void = { _, _ in },
        onPeerUnreachable: @escaping @Sendable (ReplicaID) -> Void = { _ in }
    ) {
        self.onForward = onForward
        self.onPeerUnreachable = onPeerUnreachable
        self.config = config
        self.group = group
        var logger = logger
        logger[metadataKey: "replica"] = "\(config.replicaID)"
        self.logger = logger
        self.incarnation = UInt64.random(in: 1...UInt64.max)
        self.onMessage = onMessage
        self.onPeerChange = onPeerChange
        var links: [ReplicaID: PeerLink] = [:]
        for (id, address) in config.peers where id != config.replicaID {
            links[id] = PeerLink(peer: id, address: address)
        }
        for link in links.values { link.transport = self }
        self.links.withLockedValue { $0 = links }
    }

    /// The configuration changed: links to new members are dialed, links to removed replicas
    /// are closed (and their connections to us too: they are refused from now on), and a
    /// member whose address changed is redialed there. Links to replicas that are neither
    /// (learned from their hello) stay.
    public func setMembers(_ peers: [ReplicaID: PeerAddress], removed gone: [ReplicaID] = []) {
        let isStarted = started.withLockedValue { $0 }
        // The configuration's removed ids (it may be an uncommitted one rolled back later: then
        // the next call gives the set back).
        let goneSet = Set(gone)
        removed.withLockedValue { $0 = goneSet }
        var stopped: [PeerLink] = []
        var added: [PeerLink] = []
        links.withLockedValue { links in
            for (id, link) in links where goneSet.contains(id) || (peers[id] != nil && peers[id] != link.address) {
                stopped.append(link)
                links[id] = nil
            }
            for (id, address) in peers.sorted(by: { $0.key < $1.key }) where id != config.replicaID && links[id] == nil {
                let link = PeerLink(peer: id, address: address)
                link.transport = self
                links[id] = link
                added.append(link)
            }
        }
        for link in stopped {
            link.stop()
            logger.info("peer \(link.peer) at \(link.address) was removed or moved; link closed")
        }
        let closing = inbound.withLockedValue { conns -> [any Channel] in
            var out: [any Channel] = []
            for (id, c) in conns where goneSet.contains(id) {
                out.append(c.channel)
                conns[id] = nil
            }
            return out
        }
        for c in closing { c.close(promise: nil) }
        if isStarted { for link in added { link.dial() } }
    }

    /// A replica we have no link to dialed us: link back to the peer address it announced.
    func learnPeer(_ id: ReplicaID, address text: String) -> Bool {
        let colon = text.lastIndex(of: ":")
        guard let colon, let port = Int(text[text.index(after: colon)...]), port > 0, port <= 65535, colon > text.startIndex
        else { return false }
        let address = PeerAddress(host: String(text[..<colon]), port: port)
        let isStarted = started.withLockedValue { $0 }
        let link = links.withLockedValue { links -> PeerLink? in
            guard links[id] == nil else { return nil }
            let link = PeerLink(peer: id, address: address)
            link.transport = self
            links[id] = link
            return link
        }
        if let link {
            logger.info("replica \(id) at \(address), not a member in this replica's configuration yet, dialed in: linking back")
            if isStarted { link.dial() }
        }
        return true
    }

    /// The client address each connected peer announced.
    public func peerClientAddresses() -> [ReplicaID: String] {
        inbound.withLockedValue { conns in
            var out: [ReplicaID: String] = [:]
            for (k, v) in conns where v.channel.isActive && !v.client.isEmpty { out[k] = v.client }
            return out
        }
    }

    func link(_ peer: ReplicaID) -> PeerLink? { links.withLockedValue { $0[peer] } }

    /// Binds the peer listener and starts dialing every peer.
    public func start() async throws {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.socketOption(.so_keepalive), value: 1)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    let limit = FrameLimit(FrameLimit.handshake)
                    if let tls = config.tls {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls.server))
                    }
                    try channel.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(FrameDecoder(limit: limit)),
                        MessageToByteHandler(FrameEncoder()),
                        AcceptorHandler(transport: self, limit: limit),
                    ])
                }
            }
        let channel = try await bootstrap.bind(host: config.listen.host, port: config.listen.port).get()
        server.withLockedValue { $0 = channel }
        logger.info("listening for peers on \(config.listen)")
        let all = links.withLockedValue { links in links.keys.sorted().map { links[$0]! } }
        started.withLockedValue { $0 = true }
        for link in all { link.dial() }
    }

    /// The port actually bound (useful with port 0 in tests).
    public var boundPort: Int? { server.withLockedValue { $0?.localAddress?.port } }

    /// Sends messages, grouped per peer with one flush each. Never blocks.
    public func send(_ messages: [Message]) {
        var byPeer: [ReplicaID: [Message]] = [:]
        for m in messages { byPeer[m.to, default: []].append(m) }
        for (peer, batch) in byPeer {
            guard let link = link(peer) else { continue }
            if !link.send(batch) { dropped.add(batch.count) }
        }
    }

    /// Passes a command to `peer` (the leader) to propose; false if it could not be sent.
    @discardableResult
    public func forward(_ data: [UInt8], to peer: ReplicaID) -> Bool {
        link(peer)?.sendFrames([.forward(data)]) ?? false
    }

    /// Installs an extra admission check for incoming peers: it returns a reason to refuse.
    public func setPeerCheck(_ check: @escaping @Sendable (ReplicaID, UInt64) -> String?) {
        checkPeer.withLockedValue { $0 = check }
    }

    /// The data directory id each currently connected peer announced.
    public func peerDirectories() -> [ReplicaID: UInt64] {
        inbound.withLockedValue { conns in
            var out: [ReplicaID: UInt64] = [:]
            for (k, v) in conns where v.channel.isActive { out[k] = v.directory }
            return out
        }
    }

    /// Whether the outbound connection to `peer` is up.
    public func isConnected(_ peer: ReplicaID) -> Bool { link(peer)?.isConnected ?? false }

    /// Messages dropped because a peer was unreachable or slow.
    public var droppedMessages: Int { dropped.value }

    /// Closes every connection and the listener; no redialing afterwards.
    public func shutdown() async {
        started.withLockedValue { $0 = false }
        stopping.withLockedValue { $0 = true }
        // The listener first: a peer whose connection closes below redials at once, and
        // must not be accepted again meanwhile (it then stayed connected to a replica that
        // had stopped). A hello admitted from now on is refused (see `admit`).
        if let s = server.withLockedValue({ $0 }) { try? await s.close() }
        for link in links.withLockedValue({ Array($0.values) }) { link.stop() }
        let channels = inbound.withLockedValue { $0.values.map(\.channel) }
        for c in channels { try? await c.close() }
    }

    // MARK: Accepting side

    /// Checks a hello; nil means welcome, otherwise the kind of refusal (a fixed word, for
    /// throttling its log line) and the reason.
    func admit(
        clusterID: String, from: ReplicaID, to: ReplicaID, incarnation: UInt64, directory: UInt64, client: String, peer: String,
        channel: any Channel
    ) -> (kind: String, reason: String)? {
        if clusterID != config.clusterID {
            // A stranger chooses this text: only its start goes into the log.
            return ("cluster", "cluster id \"\(clusterID.prefix(64))\" does not match this replica's cluster \"\(config.clusterID)\"")
        }
        if to != config.replicaID {
            return ("to", "this is replica \(config.replicaID), not replica \(to): check the peer addresses")
        }
        if from == config.replicaID {
            return ("self", "the caller claims this replica's own id \(from): two replicas share one id")
        }
        if config.tls != nil, let why = PeerTLS.mismatch(channel, expected: PeerTLS.identity(cluster: clusterID, replica: from.rawValue)) {
            return ("identity", "it claims to be replica \(from), but \(why)")
        }
        if removed.withLockedValue({ $0.contains(from) }) {
            return ("removed", "replica \(from) was removed from this cluster; its id is never used again")
        }
        if let check = checkPeer.withLockedValue({ $0 }), let reason = check(from, directory) { return ("directory", reason) }
        // Checked last, so only a replica that passed every check is linked back to.
        if link(from) == nil && !learnPeer(from, address: peer) {
            return ("member", "replica \(from) is not a member of this cluster as this replica knows it")
        }
        let refusal: (kind: String, reason: String)? = inbound.withLockedValue { conns in
            if let existing = conns[from], existing.incarnation != incarnation, existing.channel.isActive {
                return ("duplicate", "replica \(from) is already connected from another process (two replicas share id \(from))")
            }
            conns[from] = (incarnation, channel, directory, client)
            return nil
        }
        // Checked after the connection is recorded: `shutdown` sets `stopping` before it
        // reads the connections to close, so one admitted meanwhile is either closed there
        // or refused here.
        if refusal == nil && stopping.withLockedValue({ $0 }) {
            inbound.withLockedValue { conns in
                if conns[from]?.channel === channel { conns[from] = nil }
            }
            return ("stopping", "this replica is shutting down")
        }
        return refusal
    }

    func inboundClosed(_ from: ReplicaID, channel: any Channel) {
        inbound.withLockedValue { conns in
            if let c = conns[from], c.channel === channel { conns[from] = nil }
        }
    }
}

/// A thread-safe counter.
final class ManagedAtomicCounter: Sendable {
    private let box = NIOLockedValueBox(0)
    func add(_ n: Int) { box.withLockedValue { $0 += n } }
    var value: Int { box.withLockedValue { $0 } }
}

/// The outbound connection to one peer, with its reconnect loop.
final class PeerLink: @unchecked Sendable {
    let peer: ReplicaID
    let address: PeerAddress
    /// Set once right after init, before any use.
    weak var transport: RaftTransport?

    struct State {
        var channel: (any Channel)?
        var established = false
        var failures = 0
        var stopped = false
        var lastRefusal: String?
    }
    let state = NIOLockedValueBox(State())

    init(peer: ReplicaID, address: PeerAddress) {
        self.peer = peer
        self.address = address
    }

    var isConnected: Bool { state.withLockedValue { $0.established && $0.channel?.isActive == true } }

    func dial() {
        guard let t = transport, !state.withLockedValue({ $0.stopped }) else { return }
        let hello = Frame.hello(
            clusterID: t.config.clusterID, from: t.config.replicaID, to: peer, incarnation: t.incarnation,
            dataDirectoryID: t.config.dataDirectoryID, clientAddress: t.config.clientAddress,
            peerAddress: t.config.advertisedAddress.isEmpty ? t.config.listen.description : t.config.advertisedAddress)
        let watermark = ChannelOptions.Types.WriteBufferWaterMark(low: t.config.maxQueuedBytes / 2, high: t.config.maxQueuedBytes)
        var bootstrap = ClientBootstrap(group: t.group)
        // On a specific listen address, dial from it too: peers (and firewall rules) then see
        // this replica's address as the source.
        let host = t.config.listen.host
        if host != "0.0.0.0" && host != "::", let local = try? SocketAddress(ipAddress: host, port: 0) {
            bootstrap = bootstrap.bind(to: local)
        }
        bootstrap
            .connectTimeout(t.config.connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.socketOption(.so_keepalive), value: 1)
            // Data unacknowledged this long (the peer is partitioned away) closes the
            // connection, so the redial loop takes over: a fresh connection after a heal is
            // quicker than waiting out TCP's doubling retransmission timer.
            .channelOption(
                ChannelOptions.Types.SocketOption(level: .tcp, name: NIOBSDSocket.Option(rawValue: TCP_USER_TIMEOUT)),
                value: SocketOptionValue(t.config.unackedTimeout.nanoseconds / 1_000_000))
            .channelOption(.writeBufferWaterMark, value: watermark)
            .channelInitializer { [self, tls = t.config.tls] channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls.client, serverHostname: nil))
                    }
                    try channel.pipeline.syncOperations.addHandlers([
                        // A peer only ever answers this way with a welcome or a refusal.
                        ByteToMessageHandler(FrameDecoder(limit: FrameLimit(FrameLimit.handshake))),
                        MessageToByteHandler(FrameEncoder()),
                        DialerHandler(link: self),
                    ])
                }
            }
            .connect(host: address.host, port: address.port)
            .whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    let keep = state.withLockedValue { s -> Bool in
                        guard !s.stopped else { return false }
                        s.channel = channel
                        return true
                    }
                    if keep {
                        channel.writeAndFlush(hello, promise: nil)
                    } else {
                        channel.close(promise: nil)
                    }
                case .failure:
                    transport?.onPeerUnreachable(peer)
                    scheduleRedial()
                }
            }
    }

    func established(_ channel: any Channel) {
        let wasDown = state.withLockedValue { s -> Bool in
            let was = !s.established
            s.established = true
            s.failures = 0
            s.lastRefusal = nil
            return was
        }
        if wasDown, let t = transport {
            t.logger.info("connected to peer \(peer) at \(address)")
            t.onPeerChange(peer, true)
        }
    }

    func refused(_ reason: String) {
        guard let t = transport else { return }
        let repeated = state.withLockedValue { s -> Bool in
            defer { s.lastRefusal = reason }
            return s.lastRefusal == reason
        }
        if !repeated { t.logger.error("peer \(peer) at \(address) refused this replica: \(reason)") }
    }

    func closed(_ channel: any Channel) {
        let wasUp = state.withLockedValue { s -> Bool in
            guard s.channel === channel else { return false }
            let was = s.established
            s.channel = nil
            s.established = false
            return was
        }
        if wasUp, let t = transport {
            t.logger.warning("lost the connection to peer \(peer) at \(address)")
            t.onPeerChange(peer, false)
        }
        scheduleRedial()
    }

    func scheduleRedial() {
        guard let t = transport else { return }
        let delay = state.withLockedValue { s -> TimeAmount? in
            guard !s.stopped else { return nil }
            s.failures += 1
            let exp = min(s.failures, 16)
            let base = min(t.config.maxBackoff.nanoseconds, t.config.minBackoff.nanoseconds << (exp - 1))
            // Jitter in [base/2, base], so peers restarting together do not redial in step.
            return .nanoseconds(base / 2 + Int64.random(in: 0...max(0, base / 2)))
        }
        guard let delay else { return }
        t.group.next().scheduleTask(in: delay) { [self] in dial() }
    }

    /// Queues messages; false if they were dropped.
    func send(_ messages: [Message]) -> Bool { sendFrames(messages.map { .message($0) }) }

    func sendFrames(_ frames: [Frame]) -> Bool {
        guard let channel = state.withLockedValue({ $0.established ? $0.channel : nil }), channel.isWritable else {
            return false
        }
        for f in frames { channel.write(f, promise: nil) }
        channel.flush()
        return true
    }

    func stop() {
        let c = state.withLockedValue { s -> (any Channel)? in
            s.stopped = true
            return s.channel
        }
        c?.close(promise: nil)
    }
}

/// The dialing side of a connection: waits for the welcome, logs a refusal.
final class DialerHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = Frame
    let link: PeerLink

    init(link: PeerLink) { self.link = link }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .welcome:
            if let t = link.transport, t.config.tls != nil,
                let why = PeerTLS.mismatch(context.channel, expected: PeerTLS.identity(cluster: t.config.clusterID, replica: link.peer.rawValue))
            {
                link.refused("this replica refused it: \(why)")
                context.close(promise: nil)
                return
            }
            link.established(context.channel)
        case .refused(let reason):
            link.refused(reason)
            context.close(promise: nil)
        default:
            context.close(promise: nil)  // a peer must not send anything else this way
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        link.closed(context.channel)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is NIOSSLError || error is BoringSSLError {
            link.refused("TLS: \(PeerTLS.explain(error))")
        }
        context.close(promise: nil)
    }
}

/// The accepting side of a connection: checks the hello, then delivers messages.
final class AcceptorHandler: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = Frame
    typealias OutboundIn = Frame
    typealias OutboundOut = Frame
    let transport: RaftTransport
    var peer: ReplicaID?
    let limit: FrameLimit
    /// The source address holding a pending slot, until the hello is admitted or it closes.
    var pendingSource: String?
    var deadline: Scheduled<Void>?

    init(transport: RaftTransport, limit: FrameLimit) {
        self.transport = transport
        self.limit = limit
    }

    /// Caps connections in their handshake (in all, and by source address, with room kept
    /// for the hosts of known peers), and gives each a deadline for its handshake and hello.
    func channelActive(context: ChannelHandlerContext) {
        let address = context.remoteAddress?.ipAddress ?? "unknown"
        // An IPv4 peer seen by a socket listening on IPv6.
        let source = address.hasPrefix("::ffff:") && address.contains(".") ? String(address.dropFirst(7)) : address
        if let refusal = transport.admitPending(from: source) {
            transport.warnThrottled("cap", "refusing peer connections from \(source) and others: \(refusal)")
            context.close(promise: nil)
            return
        }
        pendingSource = source
        let channel = context.channel
        let timeout = transport.config.handshakeTimeout
        let transport = self.transport
        deadline = context.eventLoop.scheduleTask(in: timeout) {
            transport.warnThrottled("slow", "closing a peer connection from \(source): no handshake within \(timeout)")
            channel.close(promise: nil)
        }
        context.fireChannelActive()
    }

    /// A TLS handshake that completed with a certificate of the cluster's CA naming a replica
    /// of this cluster: no longer a stranger, so its slot goes back before its hello (a CA
    /// certificate for anything else, a client's say, keeps it until then).
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? TLSUserEvent, case .handshakeCompleted = e, PeerTLS.namesAReplica(context.channel, cluster: transport.config.clusterID) {
            releasePending()
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func releasePending() {
        if let source = pendingSource {
            pendingSource = nil
            transport.releasePending(from: source)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard let peer else {
            guard case .hello(let cluster, let from, let to, let incarnation, let directory, let client, let peerAddress) = frame else {
                transport.warnThrottled("no hello", "peer connection from \(String(describing: context.remoteAddress)) did not start with a hello; closing")
                context.close(promise: nil)
                return
            }
            if let (kind, reason) = transport.admit(
                clusterID: cluster, from: from, to: to, incarnation: incarnation, directory: directory, client: client,
                peer: peerAddress, channel: context.channel)
            {
                // Once per kind every 10 s: a misconfigured replica redials often, and a
                // stranger could vary the text without end.
                transport.warnThrottled(
                    "hello: \(kind)", level: .error,
                    "refused a peer connection from \(String(describing: context.remoteAddress)) claiming replica \(from): \(reason)")
                let channel = context.channel
                context.writeAndFlush(wrapOutboundOut(.refused(reason: reason))).whenComplete { _ in channel.close(promise: nil) }
                return
            }
            self.peer = from
            deadline?.cancel()
            releasePending()
            limit.bytes = Frame.maxLength
            context.writeAndFlush(wrapOutboundOut(.welcome), promise: nil)
            return
        }
        switch frame {
        case .message(let m) where m.from == peer && m.to == transport.config.replicaID:
            transport.onMessage(m)
        case .forward(let data):
            transport.onForward(peer, data)
        default:
            transport.logger.warning("peer \(peer) sent an unexpected frame; closing the connection")
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let peer { transport.inboundClosed(peer, channel: context.channel) }
        deadline?.cancel()
        releasePending()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let from = String(describing: context.remoteAddress)
        if let e = error as? FrameError {
            if let peer {
                transport.logger.warning("closing a peer connection from \(from) (replica \(peer)): \(e)")
            } else {
                transport.warnThrottled("frame", "closing a peer connection from \(from): \(e)")
            }
        } else if error is NIOSSLError || error is BoringSSLError {
            transport.warnThrottled("tls", "refused a peer connection from \(from): TLS handshake failed: \(PeerTLS.explain(error))")
        }
        context.close(promise: nil)
    }
}

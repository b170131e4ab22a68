import AsyncHTTPClient
import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import Raft
import RaftStorage
import RaftTransport
import ServiceLifecycle

/// One running replica: storage, peer transport, the Raft driver, its timers and the HTTP API.
public final class NodeLeaseReplica: Service, Sendable {
    public let config: ServerConfig
    let driver: RaftDriver
    let transport: RaftTransport
    let logger: Logger
    private let inbox: MessageInbox
    private let app: Application<CallbackResponder<ReplicaRequestContext>>
    private let passOnClient: HTTPClient
    private let api: HTTPAPI
    /// The tokens of `--token-file`; nil when authentication is off.
    public let authenticator: Authenticator?

    /// Opens the data directory (recovering it) and prepares everything; `run()` starts it.
    public init(config: ServerConfig, logger: Logger, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        onFatal: @escaping @Sendable (String) -> Void = { _ in exit(1) }) throws
    {
        try config.validate()
        var config = config
        #if NODELEASE_FAULTS
            config.faults.apply(to: &config)
        #else
            // Planted faults exist only in the fault build.
            if !config.faults.isEmpty {
                throw ConfigError("NODELEASE_FAULT", "planted faults need the fault build (-Xswiftc -DNODELEASE_FAULTS); refusing to start")
            }
        #endif
        // Long polls hold a connection each: at most half the connections may wait, so acquires
        // and renewals always find a place.
        let connectionCap = Self.clientConnectionLimit(config.maxClientConnections, logger: logger)
        if config.maxWatches > connectionCap / 2 {
            logger.warning("at most \(connectionCap / 2) long polls may wait (half the \(connectionCap) client connections), not \(config.maxWatches)")
            config.maxWatches = max(1, connectionCap / 2)
        }
        self.config = config
        var logger = logger
        logger[metadataKey: "replica"] = "\(config.replicaID)"
        // Every line, the transport's and the storage's too, carries the current term and role.
        let raftState = RaftStateBox()
        let previous = logger.handler.metadataProvider
        logger.handler.metadataProvider = .multiplex([previous, raftState.provider].compactMap { $0 })
        self.logger = logger
        if let f = config.faults.planted { logger.critical("PLANTED FAULT \(f.rawValue): \(f.summary); this replica is broken on purpose (test build)") }
        if config.faults.lazyDisk { logger.warning("fault build: unsynced writes are kept in memory (lost on a crash, as in a power cut)") }
        if let f = config.faults.clockRateFile { logger.warning("fault build: the monotonic clock runs at the rate in \(f)") }
        let storageLogger = logger
        var fileSystem: any StorageFileSystem = PosixFileSystem()
        #if NODELEASE_FAULTS
            if config.faults.lazyDisk { fileSystem = LazyFileSystem(control: config.faults.diskControlFile) }
        #endif
        try ClusterIdentity.checkNotRestoring(directory: config.dataDir)
        let storage = try DurableLog(
            directory: config.dataDir, fileSystem: fileSystem, membership: config.membership, options: .init(fsync: config.fsync),
            log: { storageLogger.warning("\($0)") })
        do { try ClusterIdentity.check(directory: config.dataDir, clusterID: config.clusterID) } catch {
            storage.close()
            throw error
        }
        let inbox = MessageInbox()
        self.inbox = inbox
        var peers = config.peers
        peers[config.replicaID] = nil
        let driverBox = DriverBox()
        var transportConfig = TransportConfig(clusterID: config.clusterID, replicaID: config.replicaID, listen: config.peerListen, peers: peers)
        transportConfig.dataDirectoryID = storage.directoryID
        transportConfig.clientAddress = config.advertisedClientAddress
        transportConfig.advertisedAddress = (config.peers[config.replicaID] ?? config.peerListen).description
        // After a partition heals, peers should be talking again well within an election
        // timeout: give up silent connections and redial at that pace.
        let electionMillis = Int64(config.electionTicks * config.tickMillis)
        transportConfig.unackedTimeout = .milliseconds(electionMillis)
        transportConfig.connectTimeout = .milliseconds(max(200, electionMillis / 2))
        if let files = config.peerTLS {
            let tls: PeerTLS
            do {
                tls = try PeerTLS(certificateFile: files.certificate, keyFile: files.key, caFile: files.ca ?? "")
                if let warning = try tls.check(cluster: config.clusterID, replica: config.replicaID.rawValue, now: Int(Date().timeIntervalSince1970)) {
                    logger.warning("\(warning)")
                }
            } catch {
                throw ConfigError("--peer-cert", "\(error)")
            }
            transportConfig.tls = tls
            logger.info("peers: mutual TLS, identity \(PeerTLS.identity(cluster: config.clusterID, replica: config.replicaID.rawValue))")
        } else if !Self.isLoopback(config.peerListen.host) {
            logger.warning(
                "peers on \(config.peerListen) without TLS (--peer-cert): anyone who can reach this address can pose as a replica")
        }
        transportConfig.maxBackoff = .milliseconds(max(100, electionMillis / 2))
        self.transport = RaftTransport(
            config: transportConfig,
            group: group, logger: logger,
            onMessage: { inbox.add($0) },
            onForward: { peer, data in
                guard let d = driverBox.driver else { return }
                Task { await d.forwarded(data, from: peer) }
            },
            onPeerUnreachable: { peer in
                guard let d = driverBox.driver else { return }
                Task { await d.peerUnreachable(peer) }
            })
        let metrics = ReplicaMetrics()
        self.driver = try RaftDriver(
            config: config, storage: storage, transport: transport, logger: logger, metrics: metrics, raftState: raftState,
            onFatal: onFatal)
        driverBox.driver = driver
        let directories = driver.knownDirectories
        transport.setPeerCheck { replica, directory in
            guard let recorded = directories.withLockedValue({ $0[replica.rawValue] }), recorded != directory else { return nil }
            return "replica \(replica) took part with data directory \(String(recorded, radix: 16)) but now has \(String(directory, radix: 16)): "
                + "an emptied or replaced data directory has forgotten its votes and must not rejoin under the same id; "
                + "restore that replica's data directory"
        }
        if let path = config.tokenFile {
            let auth = try Authenticator(path: path)
            authenticator = auth
            logger.info("authentication on: \(auth.count) tokens from \(path)")
        } else {
            authenticator = nil
            if !Self.isLoopback(config.clientListen.host) {
                logger.warning(
                    "clients on \(config.clientListen) without --token-file: anyone who can reach this address can take, release and forget every lease (see the README's security section)")
            }
        }
        let head = TimeAmount.milliseconds(Int64(config.httpHeadTimeoutMillis))
        let body = TimeAmount.milliseconds(Int64(config.httpBodyTimeoutMillis))
        let connections = ConnectionCapHandler.Counter()
        let (connectionLimit, capLogger) = (connectionCap, logger)
        let responseTimeout = TimeAmount.milliseconds(2 * Int64(config.requestTimeoutMillis) + Int64(config.httpResponseGraceMillis))
        // The API is made below, once nothing can throw; connections are accepted only after.
        let fastPathAPI = NIOLockedValueBox<HTTPAPI?>(nil)
        let http1 = HTTPServerBuilder.http1(
            configuration: .init(additionalChannelHandlers: [
                ConnectionCapHandler(counter: connections, limit: connectionLimit, logger: capLogger),
                RequestDeadlineHandler(
                    headTimeout: head, bodyTimeout: body, responseTimeout: responseTimeout),
            ] + (fastPathAPI.withLockedValue { $0 }.map { [LeaseFastPathHandler(api: $0)] } ?? [])))
        let server: HTTPServerBuilder
        var clientChain: [NIOSSLCertificate] = []
        var clientKey: NIOSSLPrivateKey?
        if let files = config.clientTLS {
            do {
                let chain = try NIOSSLCertificate.fromPEMFile(files.certificate)
                let key = try NIOSSLPrivateKey(file: files.key, format: .pem)
                (clientChain, clientKey) = (chain, key)
                var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
                tls.minimumTLSVersion = .tlsv12
                if let ca = files.ca {
                    // Client certificates required, issued by this CA.
                    tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca))
                    tls.certificateVerification = .noHostnameVerification
                }
                server = try .tls(http1, tlsConfiguration: tls)
            } catch {
                throw ConfigError("--client-cert", "\(error)")
            }
            logger.info("clients: HTTPS\(files.ca == nil ? "" : ", client certificates required")")
        } else {
            server = http1
            if !Self.isLoopback(config.clientListen.host) {
                logger.warning(
                    "clients on \(config.clientListen) over plain HTTP (no --client-cert): \(config.tokenFile == nil ? "requests" : "tokens") cross the network in clear")
            }
        }
        // Made last, once nothing can throw (a client must be shut down before it goes).
        // Membership changes a follower passes to the leader: over HTTPS when clients are,
        // checking the leader's certificate against the cluster's CA (--peer-ca; the system's
        // roots without one) and the host of its client address, and, when client
        // certificates are required, presenting this replica's own (which then needs the
        // clientAuth usage).
        var passOn = HTTPClient.Configuration(timeout: .init(connect: .seconds(2)), connectionPool: .init(idleTimeout: .seconds(5)))
        passOn.httpVersion = .http1Only
        passOn.connectionPool.retryConnectionEstablishment = false
        if let files = config.clientTLS, let clientKey {
            var tls = TLSConfiguration.makeClientConfiguration()
            if let ca = config.peerTLS?.ca { tls.trustRoots = .file(ca) }
            if files.ca != nil {
                tls.certificateChain = clientChain.map { .certificate($0) }
                tls.privateKey = .privateKey(clientKey)
            }
            passOn.tlsConfiguration = tls
        }
        self.passOnClient = HTTPClient(eventLoopGroupProvider: .shared(group), configuration: passOn)
        var api = HTTPAPI(driver: driver, config: config, metrics: metrics, passOnClient: passOnClient)
        api.auth = authenticator
        api.consoleTemplates = try ConsoleAssets.library()
        api.logger = logger
        self.api = api
        if config.leaseFastPath { fastPathAPI.withLockedValue { $0 = api } }
        self.app = Application(
            responder: CallbackResponder { [api] request, context in await api.respond(to: request, connection: context.connection) },
            server: server,
            configuration: .init(address: .hostname(config.clientListen.host, port: config.clientListen.port), serverName: nil),
            eventLoopGroupProvider: .shared(group), logger: logger)
    }

    /// Runs until cancelled or shut down gracefully (SIGTERM/SIGINT through a ServiceGroup).
    public func run() async throws {
        do {
            try await serve()
        } catch {
            // Whatever failed (the client port taken, say), nothing of this replica runs on.
            await driver.shutdown()
            inbox.finish()
            await transport.shutdown()
            try? await passOnClient.shutdown()
            throw error
        }
    }

    private func serve() async throws {
        try await transport.start()
        logger.info("replica \(config.replicaID) of cluster \(config.clusterID): clients on \(config.clientListen), peers on \(config.peerListen)")
        let driver = self.driver
        let tick = Duration.milliseconds(config.tickMillis)
        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    while !Task.isCancelled {
                        try await Task.sleep(for: tick)
                        await driver.tick()
                    }
                }
                if let tls = transport.config.tls {
                    // A running replica warns daily once its certificate has a week or less.
                    let (cluster, id, logger) = (config.clusterID, config.replicaID.rawValue, logger)
                    group.addTask {
                        while !Task.isCancelled {
                            try await Task.sleep(for: .seconds(86_400))
                            do {
                                if let warning = try tls.check(cluster: cluster, replica: id, now: Int(Date().timeIntervalSince1970)) {
                                    logger.warning("\(warning)")
                                }
                            } catch {
                                logger.error("\(error): peers will refuse this replica's connections")
                            }
                        }
                    }
                }
                group.addTask { [api] in
                    // The leader asks the other members which cluster versions they support
                    // (their status), until the cluster runs the newest this build supports,
                    // and while there are learners (one that cannot apply the log stays one).
                    while !Task.isCancelled {
                        try await Task.sleep(for: .seconds(2))
                        guard let membership = await driver.membershipIfVersionsWanted() else { continue }
                        await driver.reportPeerVersions(await api.peerVersions(membership))
                    }
                }
                group.addTask { [inbox] in
                    // Everything that arrived since the last round is stepped in one go.
                    for await _ in inbox.wakeups {
                        let batch = inbox.take()
                        if !batch.isEmpty { await driver.receive(batch) }
                    }
                }
                // The HTTP server returns when a graceful shutdown begins (it stops accepting
                // first). The driver then hands leadership over while the timers and the
                // message loop still run (the transfer needs them), and only then do they end.
                var failure: (any Error)?
                do { try await app.run() } catch { failure = error }
                await driver.shutdown()
                group.cancelAll()
                if let failure { throw failure }
            }
            inbox.finish()
            await transport.shutdown()
            try? await passOnClient.shutdown()
        } onGracefulShutdown: {
            // Long polls end now (503, so their clients ask another replica): the HTTP server
            // waits for requests in progress before app.run() returns, and the shutdown above
            // follows it.
            Task { await driver.endWatches() }
        }
    }

    /// The client-connection cap the process's file descriptors allow: the soft limit is
    /// raised to the hard one, and 256 are kept for the log, snapshots and peers, so a flood of
    /// connections meets the cap before the descriptors run out (an open that fails there stops
    /// the replica).
    static func clientConnectionLimit(_ wanted: Int, logger: Logger) -> Int {
        #if os(Linux)
            var limit = rlimit()
            let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
            guard getrlimit(resource, &limit) == 0 else { return wanted }
            if limit.rlim_cur < limit.rlim_max {
                var raised = limit
                raised.rlim_cur = limit.rlim_max
                if setrlimit(resource, &raised) == 0 { limit = raised }
            }
            let available = Int(clamping: limit.rlim_cur) - 256
            if available < wanted {
                let cap = max(16, available)
                logger.warning("at most \(cap) client connections: the file descriptor limit is \(limit.rlim_cur) (raise it to allow \(wanted))")
                return cap
            }
        #endif
        return wanted
    }

    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }

    /// Reads the token file again (SIGHUP); on an error the tokens in use stay, and it is logged.
    public func reloadTokens() {
        guard let auth = authenticator else {
            logger.notice("SIGHUP: no --token-file, nothing to reload")
            return
        }
        switch auth.reload() {
        case .success(let n): logger.notice("SIGHUP: reloaded \(n) tokens from \(auth.path)")
        case .failure(let e): logger.error("SIGHUP: kept the tokens in use; the token file is invalid: \(e)")
        }
    }

    /// This replica's current configuration.
    public var membership: Membership {
        get async { await driver.membership }
    }

    /// Stops this replica (for in-process clusters and tests).
    public func stop() async {
        await driver.shutdown()
        inbox.finish()
        await transport.shutdown()
        try? await passOnClient.shutdown()
    }
}

/// Messages from peers, collected on event-loop threads and handed to the driver in batches.
final class MessageInbox: Sendable {
    private let buffer = NIOLockedValueBox<[Message]>([])
    let wakeups: AsyncStream<Void>
    private let wake: AsyncStream<Void>.Continuation

    init() {
        (wakeups, wake) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    func add(_ m: Message) {
        let first = buffer.withLockedValue { b -> Bool in
            b.append(m)
            return b.count == 1
        }
        if first { wake.yield() }
    }

    func take() -> [Message] { buffer.withLockedValue { b in defer { b = [] }; return b } }

    func finish() { wake.finish() }
}

/// The current term and role, for log lines from any part of the replica.
final class RaftStateBox: Sendable {
    private let state = NIOLockedValueBox<(term: Term, role: Role)>((0, .follower))

    func set(term: Term, role: Role) { state.withLockedValue { $0 = (term, role) } }

    var provider: Logger.MetadataProvider {
        Logger.MetadataProvider { [state] in
            let (term, role) = state.withLockedValue { $0 }
            return ["term": "\(term)", "role": "\(role.rawValue)"]
        }
    }
}

/// Lets the transport's forward callback reach the driver created after it.
final class DriverBox: @unchecked Sendable {
    var driver: RaftDriver?
}

/// Hummingbird's basic context, and the request's connection: a long poll ends when its
/// client goes away (HTTP/1 does not turn that into a cancellation of the request).
struct ReplicaRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let connection: any Channel

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        connection = source.channel
    }
}

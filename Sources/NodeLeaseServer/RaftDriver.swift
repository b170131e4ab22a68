import Foundation
import LeaseRegistry
import NIOCore
import NIOConcurrencyHelpers
import Logging
import Raft
import RaftStorage
import RaftTransport
import ReplicaCore

/// Why a request could not be served.
public enum DriverError: Error, Sendable, Equatable {
    /// No leader could be reached within the request timeout.
    case noLeader
    /// The replica is shutting down.
    case stopping
}

/// A point-in-time view of this replica, for `/v1/status`, `/readyz` and metrics.
public struct ReplicaStatus: Sendable {
    public var replicaID: ReplicaID
    public var role: Role
    public var term: Term
    public var leader: ReplicaID?
    public var commitIndex: LogIndex
    public var appliedIndex: LogIndex
    public var peers: [(id: ReplicaID, reachable: Bool, match: LogIndex?, address: String, role: MemberRole)]
    public var counts: (active: Int, stale: Int, inactive: Int)
    public var fsyncCount: Int
    /// The registry index (shared/API.md, "Watching the registry") and the long polls waiting.
    public var registryIndex: UInt64
    public var watches: Int
    /// Reads of the whole registry waiting for a render off the event loop.
    public var rendersWaiting: Int
    /// The cluster version in force, and the newest this replica supports.
    public var clusterVersion: UInt32
    public var supportedClusterVersion: UInt32
}

/// The shell around `ReplicaCore`, which makes every decision: this actor feeds it ticks,
/// peer messages and client requests with the clocks' readings, and carries out its effects
/// (send, persist with the fsync on a thread of its own, forward, answer waiting requests).
/// It also snapshots the registry and compacts the log. One actor, so the core is only touched
/// serially.
actor RaftDriver {
    private var core: ReplicaCore
    private let storage: DurableLog
    private let transport: RaftTransport
    let config: ServerConfig
    private let logger: Logger
    private let onFatal: @Sendable (String) -> Void
    let metrics: ReplicaMetrics
    private let raftState: RaftStateBox

    typealias WriteResult = ReplicaCore.WriteResult
    private var writeWaiters: [UInt64: CheckedContinuation<WriteResult, any Error>] = [:]
    private var readWaiters: [UInt64: CheckedContinuation<LogIndex, any Error>] = [:]
    private var confWaiters: [UInt64: CheckedContinuation<Result<ConfChangeDone, ConfChangeFailure>, any Error>] = [:]
    /// Long polls of the registry (decisions in `RegistryWatches`; their requests wait here).
    private var watches: RegistryWatches
    private var watchWaiters: [UInt64: CheckedContinuation<WatchEnd, Never>] = [:]
    /// Each waiting poll's connection, checked every tick.
    private var watchConnections: [UInt64: any Channel] = [:]
    private var nextWatchID: UInt64 = 0
    /// The registry index the watches were last told.
    private var watchedRegistryIndex: UInt64 = 0
    /// Reads of the whole registry wait here for a render (decisions in `RegistryRenders`):
    /// one render at a time, on `renderQueue`, shared by every read it covers.
    private var renders = RegistryRenders<NodeStatus?>()
    private var renderWaiters: [UInt64: CheckedContinuation<RenderedNodes, Never>] = [:]
    private var nextRenderID: UInt64 = 0
    private let renderQueue = DispatchQueue(label: "nodelease.render", qos: .userInitiated)
    /// A graceful shutdown has begun: no new long poll waits.
    private var draining = false
    /// The configuration the transport was last given.
    private var transportMembership: Membership?
    private var pumpScheduled = false
    /// The Ready in flight is being persisted (its fsync may be on the syncer's thread).
    private var persisting = false
    private let syncer = WALSyncer()
    /// A snapshot is being written on `snapshotQueue`.
    private var snapshotting = false
    private let snapshotQueue = DispatchQueue(label: "nodelease.snapshot", qos: .utility)
    private let started = ContinuousClock.now
    #if NODELEASE_FAULTS
        /// The fault build's clock nemesis: this replica's monotonic clock at another rate.
        private let faultClock: FaultClock?
    #endif
    private var stopped = false
    /// The shutdown under way or done: a replica may be stopped both by its run ending and by
    /// `stop()`, and each caller returns only once it is complete.
    private var shutdownTask: Task<Void, Never>?
    /// The data directory each replica took part with, as the registry records it; read by the
    /// transport's admission check on event-loop threads.
    nonisolated let knownDirectories = NIOLockedValueBox<[UInt64: UInt64]>([:])

    init(
        config: ServerConfig, storage: DurableLog, transport: RaftTransport, logger: Logger, metrics: ReplicaMetrics,
        raftState: RaftStateBox, onFatal: @escaping @Sendable (String) -> Void
    ) throws {
        self.config = config
        self.raftState = raftState
        self.metrics = metrics
        self.storage = storage
        self.transport = transport
        self.logger = logger
        self.onFatal = onFatal
        let snap = try storage.snapshot()
        let registry: LeaseRegistry
        do {
            registry = snap.isEmpty ? LeaseRegistry() : try LeaseRegistry(snapshot: snap.data, supporting: config.supportedClusterVersion)
        } catch let e as LeaseRegistry.SnapshotError {
            let file = storage.snapshotFile
            var at = file?.dataOffset ?? 0
            if case .unknownVersion = e { at += LeaseRegistry.snapshotVersionOffset }
            throw StorageFailure.corrupt(file: file?.path ?? config.dataDir, offset: UInt64(at), reason: e.description)
        }
        var raftConfig = RaftConfig(
            id: config.replicaID, electionTicks: config.electionTicks, heartbeatTicks: config.heartbeatTicks,
            autoPromote: config.autoPromote)
        #if NODELEASE_FAULTS
            config.faults.apply(to: &raftConfig)
        #endif
        let node = try RaftNode(config: raftConfig, storage: storage, random: SystemRandomNumberGenerator())
        // `--peers` creates a cluster; after that the configuration in the data directory
        // (changed through the log) is the one that counts.
        let onDisk = node.membership
        if !config.join && !onDisk.isEmpty && Set(onDisk.voters) != Set(config.peers.keys) {
            let given = config.peers.keys.sorted().map(\.description).joined(separator: ", ")
            logger.notice(
                "the data directory's configuration (\(onDisk), index \(onDisk.index)) differs from --peers (\(given)): using the data directory's; --peers only creates a new cluster")
        }
        if onDisk.isEmpty {
            logger.notice("no configuration yet: waiting for the leader to add this replica (nodelease member add \(config.replicaID))")
        } else if !onDisk.isMember(config.replicaID) {
            logger.warning("this replica is not a member of the configuration \(onDisk): it was removed, and only waits to be stopped")
        }
        var coreConfig = ReplicaCore.Config(replicaID: config.replicaID)
        coreConfig.requestTimeoutNanos = UInt64(config.requestTimeoutMillis) * 1_000_000
        coreConfig.readResendNanos = UInt64(max(50, 3 * config.tickMillis * config.heartbeatTicks)) * 1_000_000
        coreConfig.writeResendNanos = UInt64(max(500, config.tickMillis * config.electionTicks)) * 1_000_000
        coreConfig.idempotencyWindow = config.idempotencyWindow
        coreConfig.expiry = .init(retentionSeconds: config.retentionSeconds)
        coreConfig.dataDirectoryID = storage.directoryID
        coreConfig.supportedClusterVersion = config.supportedClusterVersion
        #if NODELEASE_FAULTS
            config.faults.apply(to: &coreConfig)
            faultClock = config.faults.clockRateFile.map(FaultClock.init(path:))
        #endif
        coreConfig.requestIDBase = UInt64.random(in: 0...(UInt64.max >> 16)) << 16
        coreConfig.peerAddress = (config.peers[config.replicaID] ?? config.peerListen).description
        coreConfig.clientAddress = config.advertisedClientAddress
        self.core = ReplicaCore(config: coreConfig, node: node, registry: registry)
        self.watches = RegistryWatches(
            limit: config.maxWatches, leaderlessLimitNanos: UInt64(config.tickMillis * config.electionTicks) * 1_000_000)
        self.watchedRegistryIndex = registry.registryIndex
        raftState.set(term: node.term, role: node.role)
        let dirs = registry.replicaDirectories
        knownDirectories.withLockedValue { $0 = dirs }
    }

    // MARK: Time

    /// Monotonic nanoseconds since this process started.
    private var now: UInt64 {
        let d = ContinuousClock.now - started
        let raw = UInt64(d.components.seconds) * 1_000_000_000 + UInt64(d.components.attoseconds / 1_000_000_000)
        #if NODELEASE_FAULTS
            if let faultClock { return faultClock.now(raw: raw) }
        #endif
        return raw
    }

    private var wall: UInt64 { UInt64(Date().timeIntervalSince1970) }

    // MARK: Inputs

    func tick() {
        guard !stopped else { return }
        let leader = core.node.role == .leader
        core.tick(
            now: now, wall: wall, peerDirectories: leader ? transport.peerDirectories() : [:],
            peerClientAddresses: leader ? transport.peerClientAddresses() : [:], peerVersions: leader ? peerVersions : [:])
        carryOut()
        for (id, outcome) in watches.tick(now: now, leaderKnown: core.node.leader != nil) {
            endWatch(id, outcome == .noLeader ? .noLeader : .timedOut)
        }
        // Polls whose client went away give their place back.
        for (id, connection) in watchConnections where !connection.isActive { endWatch(id, .timedOut, remove: true) }
    }

    func receive(_ messages: [Message]) {
        guard !stopped else { return }
        core.step(messages, now: now)
        carryOut()
    }

    /// A dial to `peer` failed. If it is our leader, the core stops waiting out the full
    /// election timeout (a killed leader's port refuses at once).
    func peerUnreachable(_ peer: ReplicaID) {
        guard !stopped, core.node.role == .follower, core.node.leader == peer else { return }
        logger.info("the leader (replica \(peer)) refuses connections: electing a new one soon")
        core.peerUnreachable(peer, now: now)
        carryOut()
    }

    /// A follower passed us a client command.
    func forwarded(_ data: [UInt8], from peer: ReplicaID) {
        guard !stopped else { return }
        core.forwarded(data, now: now, wall: wall)
        carryOut()
    }

    /// Proposes `command` (through the leader, wherever it is) and waits until it applies
    /// here, or the request timeout passes. The result carries the index of the entry that
    /// applied it, so the answer's `X-NodeLease-Index` is the state right after the change.
    /// `key`: the client's idempotency key (without one, the core chooses one).
    func submit(_ command: LeaseCommand, key: IdempotencyKey? = nil) async throws -> WriteResult {
        guard !stopped else { throw DriverError.stopping }
        return try await withCheckedThrowingContinuation { c in
            let id = core.submit(command, key: key, now: now, wall: wall)
            writeWaiters[id] = c
            carryOut()
        }
    }

    /// A read index confirmed by the leader with a quorum; returns once this replica has
    /// applied up to it.
    func linearizableBarrier() async throws -> LogIndex {
        guard !stopped else { throw DriverError.stopping }
        return try await withCheckedThrowingContinuation { c in
            let id = core.read(now: now)
            readWaiters[id] = c
            carryOut()
        }
    }

    /// What a backup holds: the registry, the index and term it reflects and the configuration
    /// there. Taken after a linearizable barrier, so the index is committed and no older than
    /// anything acknowledged before the request; the registry is a copy (a value), encoded by
    /// the caller off the actor.
    func backup() async throws -> (registry: LeaseRegistry, index: LogIndex, term: Term, membership: Membership) {
        _ = try await linearizableBarrier()
        guard !stopped, !core.halted else { throw DriverError.stopping }
        let applied = core.node.appliedIndex
        return (core.registry, applied, try storage.term(applied), core.node.membership(at: applied))
    }

    /// How a long poll of the registry ended (shared/API.md, "Watching the registry").
    enum WatchEnd: Sendable, Equatable {
        /// The registry index is beyond the one waited on.
        case changed
        /// The wait passed with no change.
        case timedOut
        /// The index waited on is beyond what the cluster has committed.
        case reset
        /// No leader known for longer than the election timeout (or none reachable to learn
        /// the cluster's commit index).
        case noLeader
        /// `maxWatches` wait already.
        case full
        case stopping
    }

    /// Waits until the registry index is beyond `after`, or `waitNanos` pass. An `after`
    /// beyond what this replica has committed is checked against the leader's commit index
    /// (a read index), so a lagging follower does not take a client's index for one from
    /// another cluster. `connection`: the request's, whose close ends the wait within a tick
    /// (HTTP/1 does not cancel a request whose client went away). `parked` is called once the
    /// request waits.
    func watch(after: UInt64, waitNanos: UInt64, connection: (any Channel)? = nil, parked: @Sendable () -> Void = {}) async -> WatchEnd {
        guard !stopped, !draining else { return .stopping }
        // As of now, not of the last tick (a leader found since then counts).
        watches.observe(leaderKnown: core.node.leader != nil, now: now)
        if watches.leaderLost(now: now) { return .noLeader }
        if after > core.node.commitIndex.rawValue {
            guard let committed = try? await linearizableBarrier() else { return stopped ? .stopping : .noLeader }
            if after > committed.rawValue { return .reset }
        }
        guard !stopped, !draining else { return .stopping }
        if core.registry.registryIndex > after { return .changed }
        nextWatchID += 1
        let id = nextWatchID
        guard watches.add(.init(id: id, after: after, deadline: now + waitNanos)) else { return .full }
        parked()
        if let connection { watchConnections[id] = connection }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { c in watchWaiters[id] = c }
        } onCancel: {
            Task { await self.endWatch(id, .timedOut, remove: true) }
        }
    }

    /// Long polls waiting now.
    var watchCount: Int { watches.count }

    /// Ends every long poll, and those that come later, with `.stopping` (a graceful
    /// shutdown has begun: the HTTP server waits for requests in progress).
    func endWatches() {
        draining = true
        for id in watches.removeAll() { endWatch(id, .stopping) }
    }

    private func endWatch(_ id: UInt64, _ end: WatchEnd, remove: Bool = false) {
        if remove { watches.remove(id: id) }
        watchConnections[id] = nil
        watchWaiters.removeValue(forKey: id)?.resume(returning: end)
    }

    /// A membership change (see `ReplicaCore.submitConfChange`): the new configuration once
    /// it committed, or why not. Throws `DriverError.noLeader` at the request timeout.
    func changeMembership(_ change: ConfChange, expectedConfigIndex: LogIndex?, force: Bool, key: String) async throws
        -> Result<ConfChangeDone, ConfChangeFailure>
    {
        guard !stopped else { throw DriverError.stopping }
        return try await withCheckedThrowingContinuation { c in
            let id = core.submitConfChange(change, expectedConfigIndex: expectedConfigIndex, force: force, key: key, now: now)
            confWaiters[id] = c
            carryOut()
        }
    }

    /// The cluster versions the other members last reported supporting (leader only).
    private var peerVersions: [ReplicaID: PeerVersion] = [:]

    /// The configuration, when this replica leads and the other members' supported cluster
    /// versions are wanted: the cluster version is below what this replica supports (to raise
    /// it), or learners may have to be held back from voting (ReplicaCore).
    func membershipIfVersionsWanted() -> Membership? {
        let m = core.node.membership
        let version = core.registry.clusterVersion
        guard core.node.role == .leader, version < config.supportedClusterVersion || (version > 1 && !m.learners.isEmpty) else {
            peerVersions = [:]
            return nil
        }
        return m
    }

    func reportPeerVersions(_ versions: [ReplicaID: PeerVersion]) { peerVersions = versions }

    /// This replica's current configuration.
    var membership: Membership { core.node.membership }

    func status() -> ReplicaStatus {
        let s = core.node.status
        var peers: [(ReplicaID, Bool, LogIndex?, String, MemberRole)] = []
        for m in s.membership.members where m.id != config.replicaID {
            let address = m.peerAddress.isEmpty ? config.peers[m.id]?.description ?? "" : m.peerAddress
            peers.append((m.id, transport.isConnected(m.id), s.peers.first { $0.id == m.id }?.match, address, m.role))
        }
        return ReplicaStatus(
            replicaID: config.replicaID, role: s.role, term: s.term, leader: s.leader, commitIndex: s.commitIndex,
            appliedIndex: s.appliedIndex, peers: peers, counts: core.registry.counts(), fsyncCount: storage.syncCount,
            registryIndex: core.registry.registryIndex, watches: watches.count, rendersWaiting: renders.count, clusterVersion: core.registry.clusterVersion,
            supportedClusterVersion: config.supportedClusterVersion)
    }

    /// What the read headers need, cheaply.
    var headerState: (index: LogIndex, leader: ReplicaID?, registryIndex: UInt64) {
        (core.node.appliedIndex, core.node.leader, core.registry.registryIndex)
    }

    var isReady: Bool { core.isReady }

    /// A consistent local read: the nodes and the index they reflect, taken together; nil
    /// before this replica caught up with a leader since it started (its applied state may be
    /// older than what it served before a restart). `confirmed`: a linearizable barrier just
    /// completed, so the state is current anyway.
    func read(confirmed: Bool, _ body: (LeaseRegistry) -> [NodeRecord]) -> (nodes: [NodeRecord], index: LogIndex, leader: ReplicaID?, registryIndex: UInt64)? {
        guard core.mayServeLocalRead(confirmed: confirmed) else { return nil }
        return (body(core.registry), core.node.appliedIndex, core.node.leader, core.registry.registryIndex)
    }

    /// A read of the whole registry, rendered: the JSON array of `GET /v1/cluster/nodes` and
    /// the state it reflects.
    enum RenderedNodes: Sendable {
        case rendered(body: ByteBuffer, index: LogIndex, leader: ReplicaID?, registryIndex: UInt64)
        /// This replica may not serve a local read (as `read`).
        case notCaughtUp
        case stopping
    }

    /// The registry's nodes (of `status`, if given) as `GET /v1/cluster/nodes` answers them, at
    /// this replica's applied index now or later. Up to `config.inlineRenderNodes` of them are
    /// rendered here, at once; more, on `renderQueue` from a copy of the registry, one render at
    /// a time, each answering every read of the same filter that arrived at or before the index
    /// it renders (`RegistryRenders`). So however many watchers one change wakes, the event
    /// loop (Raft's ticks and peers, every client) never renders a large registry, and the
    /// replica renders it about once per change.
    func renderNodes(status: NodeStatus?, confirmed: Bool) async -> RenderedNodes {
        guard !stopped else { return .stopping }
        guard core.mayServeLocalRead(confirmed: confirmed) else { return .notCaughtUp }
        let registry = core.registry
        if registry.count(of: status) <= config.inlineRenderNodes {
            return .rendered(
                body: HTTPAPI.nodesJSON(registry, status: status), index: core.node.appliedIndex, leader: core.node.leader,
                registryIndex: registry.registryIndex)
        }
        nextRenderID += 1
        let id = nextRenderID
        return await withCheckedContinuation { c in
            renderWaiters[id] = c
            if let start = renders.request(id: id, filter: status, applied: core.node.appliedIndex) { startRender(start) }
        }
    }

    /// Renders the registry as it is now (at `render.index`) on `renderQueue`.
    private func startRender(_ render: RegistryRenders<NodeStatus?>.Render) {
        let index = core.node.appliedIndex
        assert(index == render.index, "a render starts at the applied index")
        // The copy lives only while it is rendered (each write meanwhile copies the piece of
        // the registry it changes, as for a snapshot).
        let copy = NIOLockedValueBox<LeaseRegistry?>(core.registry)
        let leader = core.node.leader
        let registryIndex = core.registry.registryIndex
        metrics.registryRenders.increment()
        let (hook, metrics) = (config.beforeRender, metrics)
        renderQueue.async { [self] in
            hook?()
            let t0 = ContinuousClock.now
            let body = copy.withLockedValue { registry in
                defer { registry = nil }
                return HTTPAPI.nodesJSON(registry!, status: render.filter)
            }
            metrics.renderTime.recordNanoseconds((ContinuousClock.now - t0).nanoseconds)
            Task { await self.rendered(.rendered(body: body, index: index, leader: leader, registryIndex: registryIndex)) }
        }
    }

    private func rendered(_ done: RenderedNodes) {
        let (answered, next) = renders.finished(applied: core.node.appliedIndex)
        for id in answered { renderWaiters.removeValue(forKey: id)?.resume(returning: done) }
        if let next { startRender(next) }
    }

    var appliedIndex: LogIndex { core.node.appliedIndex }

    /// What the console shows of the registry: up to `limit` nodes (of `status`, if given) of
    /// the `matching` ones, the counts, and how many IDs of `range` are taken (by active or
    /// stale nodes: an inactive node's ID can go to a new hostname).
    struct RegistryView {
        var nodes: [NodeRecord]
        var matching: Int
        var counts: (active: Int, stale: Int, inactive: Int)
        var occupiedInRange: Int
        var registryIndex: UInt64
        var appliedIndex: UInt64
        var caughtUp: Bool
    }

    func registryView(status: NodeStatus?, limit: Int, range: ClosedRange<UInt32>) -> RegistryView {
        let registry = core.registry
        var nodes: [NodeRecord] = []
        var matching = 0
        var occupied = 0
        for id in registry.order {
            guard let n = registry.node(id) else { continue }
            if n.status != .inactive && range.contains(id.rawValue) { occupied += 1 }
            guard status == nil || n.status == status else { continue }
            matching += 1
            if nodes.count < limit { nodes.append(n) }
        }
        return RegistryView(
            nodes: nodes, matching: matching, counts: registry.counts(), occupiedInRange: occupied, registryIndex: registry.registryIndex,
            appliedIndex: core.node.appliedIndex.rawValue, caughtUp: core.mayServeLocalRead(confirmed: false))
    }

    /// The hostname of lease `id` if it is current here, with the index applied.
    func leaseHostname(_ id: UInt64) -> (hostname: String?, applied: UInt64) {
        (core.registry.lease(id)?.hostname, core.node.appliedIndex.rawValue)
    }

    /// Stops taking work; as leader, hands leadership to the most caught-up peer first.
    func shutdown() async {
        if let running = shutdownTask { return await running.value }
        let task = Task { await self.shutDownOnce() }
        shutdownTask = task
        await task.value
    }

    private func shutDownOnce() async {
        // Long polls end at once (a client asks another replica), not after the handover.
        for id in watches.removeAll() { endWatch(id, .stopping) }
        // The most caught-up peer we are connected to (a transfer to an unreachable one would
        // only delay the shutdown).
        let peers = core.node.status.peers.filter { $0.id != config.replicaID && transport.isConnected($0.id) }
        if core.node.role == .leader, let target = peers.max(by: { $0.match < $1.match })?.id {
            logger.info("shutting down: transferring leadership to replica \(target)")
            try? core.transferLeadership(to: target, now: now)
            carryOut()
            for _ in 0..<20 where core.node.role == .leader {
                try? await Task.sleep(for: .milliseconds(50))
            }
        }
        stopped = true
        for id in watches.removeAll() { endWatch(id, .stopping) }
        for id in renders.removeAll() { renderWaiters.removeValue(forKey: id)?.resume(returning: .stopping) }
        // Let an fsync in flight finish before the files close under it.
        while persisting || snapshotting { try? await Task.sleep(for: .milliseconds(2)) }
        for (_, c) in writeWaiters { c.resume(throwing: DriverError.stopping) }
        for (_, c) in readWaiters { c.resume(throwing: DriverError.stopping) }
        for (_, c) in confWaiters { c.resume(throwing: DriverError.stopping) }
        writeWaiters = [:]
        readWaiters = [:]
        confWaiters = [:]
        storage.close()
    }

    // MARK: Effects

    /// Carries out what the core decided, and schedules a pump when it has work for one.
    private func carryOut() {
        var unsent: [(data: [UInt8], queuedAt: UInt64)] = []
        defer { core.forwardFailed(unsent) }
        for effect in core.takeEffects() {
            switch effect {
            case .send(let messages):
                transport.send(messages)
            case .persist:
                break  // pump() persists the Ready it started
            case .forward(let data, let leader, let queuedAt):
                // After one fails, the rest stay in order for a later flush.
                if !unsent.isEmpty || !transport.forward(data, to: leader) { unsent.append((data, queuedAt)) }
            case .writeDone(let id, let result):
                writeWaiters.removeValue(forKey: id)?.resume(returning: result)
            case .readDone(let id, let index):
                readWaiters.removeValue(forKey: id)?.resume(returning: index)
            case .timedOut(let id):
                if let c = writeWaiters.removeValue(forKey: id) { c.resume(throwing: DriverError.noLeader) }
                if let c = readWaiters.removeValue(forKey: id) { c.resume(throwing: DriverError.noLeader) }
                if let c = confWaiters.removeValue(forKey: id) { c.resume(throwing: DriverError.noLeader) }
            case .confChangeDone(let id, let result):
                if case .success(let done) = result, !done.replayed { logger.notice("membership change done: \(done.membership)") }
                confWaiters.removeValue(forKey: id)?.resume(returning: result)
            case .applied(let e, let applied, _, _):
                if let applied, case .success(.node(let n)) = applied.result, let timed = TimedCommand(decoding: e.data),
                    case .expire = timed.command
                {
                    logger.info("lease \(n.leaseID) of node \(n.nodeID) (\(n.hostname)) expired: node is stale")
                }
                if let applied, case .failure(.invalid(let field, _)) = applied.result, field == "command" {
                    logger.error("the log entry at index \(e.index) does not decode; skipped")
                }
            case .installedSnapshot(let m):
                logger.info("installed a snapshot at index \(m.index) from the leader")
            case .leaderChanged(let leader):
                if let leader { logger.info("leader is replica \(leader)") } else { logger.warning("no leader known") }
            case .roleChanged(let role, let term):
                raftState.set(term: term, role: role)
                storage.setLeader(role == .leader)
                logger.info("now \(role.rawValue) in term \(term)")
            case .proposedExpiry(let n):
                logger.info("proposing \(n) lease expirations and retirements")
            case .fatal(let why, let entry):
                fatal(why + (entry.flatMap { storage.location(of: $0) }.map { " (\($0))" } ?? ""))
            }
        }
        let registryIndex = core.registry.registryIndex
        if registryIndex != watchedRegistryIndex {
            watchedRegistryIndex = registryIndex
            for (id, _) in watches.registryChanged(to: registryIndex) { endWatch(id, .changed) }
        }
        let m = core.node.membership
        if m != transportMembership {
            if let before = transportMembership { logger.notice("configuration \(before) -> \(m) (index \(m.index))") }
            transportMembership = m
            transport.setMembers(Self.peerAddresses(m, fallback: config.peers), removed: m.removed)
        }
        if !pumpScheduled && !persisting && core.needsPump {
            pumpScheduled = true
            // Run after the current input burst, so concurrent requests share one batch.
            Task { await self.pump() }
        }
    }

    /// Carries out Readies until there are none. The WAL's fsync runs on a thread of its own
    /// and the actor keeps taking messages, ticks and proposals meanwhile: the leader's own
    /// disk write overlaps with its followers' (its appends went out before it), their acks are
    /// stepped as they come, and what arrives during one fsync goes into the next Ready.
    private func pump() async {
        pumpScheduled = false
        guard !persisting else { return }
        persisting = true
        defer { persisting = false }
        while !stopped {
            core.pump(now: now, wall: wall)
            guard let rd = core.readyInFlight else {
                carryOut()
                return
            }
            carryOut()
            do {
                if let pending = try storage.write(hardState: rd.hardState, entries: rd.entries, snapshot: rd.snapshot, sync: rd.mustSync) {
                    let t0 = ContinuousClock.now
                    let error = await syncer.sync(pending)
                    if stopped { return }
                    try storage.synced(pending, error: error)
                    metrics.fsync.recordNanoseconds((ContinuousClock.now - t0).nanoseconds)
                }
            } catch {
                fatal("cannot persist the log: \(error)")
                return
            }
            if !rd.entries.isEmpty && core.node.role == .leader { metrics.proposals.increment(by: Int64(rd.entries.count)) }
            core.persisted(now: now)
            carryOut()
            if !rd.committedEntries.isEmpty || rd.snapshot != nil {
                let dirs = core.registry.replicaDirectories
                knownDirectories.withLockedValue { if $0 != dirs { $0 = dirs } }
            }
            maybeSnapshot()
        }
    }

    /// Every `snapshotEvery` applied entries (or twice the registry's size, if more: a
    /// snapshot's cost grows with the registry), snapshots the registry and compacts the log.
    /// The encoding and the file's write and fsync run on a thread of their own, from a copy
    /// of the registry (a value: the copy is cheap until the next change), so a large registry
    /// does not stall the actor; the log is compacted once the file is durable.
    private func maybeSnapshot() {
        guard !snapshotting, !stopped, !core.halted else { return }
        let applied = core.node.appliedIndex
        let every = max(config.snapshotEvery, config.snapshotEntriesPerNode * UInt64(core.registry.count))
        guard let snapIndex = try? storage.snapshotMetadata().index, applied.rawValue >= snapIndex.rawValue + every else { return }
        let writer: SnapshotWriter
        do {
            guard let w = try storage.prepareSnapshot(at: applied, membership: core.node.membership(at: applied)) else { return }
            writer = w
        } catch {
            fatal("cannot prepare a snapshot: \(error)")
            return
        }
        snapshotting = true
        // The copy lives only while it is encoded: while it does, each write here copies the
        // piece of the registry it changes.
        let copy = NIOLockedValueBox<LeaseRegistry?>(core.registry)
        let nodes = core.registry.count
        snapshotQueue.async { [self] in
            let bytes = copy.withLockedValue { registry in
                defer { registry = nil }
                return registry?.snapshot() ?? []
            }
            let result = Result { try writer.write(bytes) }
            Task { await self.snapshotWritten(result, nodes: nodes) }
        }
    }

    private func snapshotWritten(_ result: Result<Snapshot, any Error>, nodes: Int) {
        snapshotting = false
        guard !stopped else { return }
        do {
            let snap = try result.get()
            let t0 = ContinuousClock.now
            try storage.adoptSnapshot(snap)
            let index = snap.metadata.index
            let keep = config.keepAfterSnapshot
            if index.rawValue > keep { try storage.compact(through: index - Int(keep)) }
            let ms = Double((ContinuousClock.now - t0).nanoseconds) / 1e6
            logger.info("snapshot at index \(index) (\(nodes) nodes); log compacted (\(String(format: "%.1f", ms)) ms on the driver)")
        } catch {
            fatal("cannot write a snapshot: \(error)")
        }
    }

    /// Where each member's peer port is: the configuration's address, else the one `--peers`
    /// gave (a replica that joins knows the others only from `--peers` until the log arrives).
    static func peerAddresses(_ m: Membership, fallback: [ReplicaID: PeerAddress]) -> [ReplicaID: PeerAddress] {
        var out: [ReplicaID: PeerAddress] = [:]
        for member in m.members {
            if let a = try? ServerConfig.parseAddress(member.peerAddress, flag: "peer address") {
                out[member.id] = a
            } else if let a = fallback[member.id] {
                out[member.id] = a
            }
        }
        if m.isEmpty { out = fallback }
        return out
    }

    private func fatal(_ why: String) {
        logger.critical("\(why); stopping this replica")
        stopped = true
        for id in watches.removeAll() { endWatch(id, .stopping) }
        onFatal(why)
    }
}

/// Runs WAL fsyncs on a thread of their own, one at a time, off the actor and the event loops.
final class WALSyncer: Sendable {
    private let queue = DispatchQueue(label: "nodelease.wal-sync", qos: .userInitiated)

    /// The fsync's error, if it failed.
    func sync(_ pending: PendingSync) async -> (any Error)? {
        await withCheckedContinuation { c in
            queue.async {
                do {
                    try pending.sync()
                    c.resume(returning: nil)
                } catch {
                    c.resume(returning: error)
                }
            }
        }
    }
}

import Foundation
import LeaseRegistry
import NIOConcurrencyHelpers
import Logging
import Raft
import RaftStorage
import RaftTransport

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
    public var peers: [(id: ReplicaID, reachable: Bool, match: LogIndex?)]
    public var counts: (active: Int, stale: Int, inactive: Int)
    public var fsyncCount: Int
}

/// The shell around the pure parts: it feeds the Raft core its ticks and messages, carries out
/// each `Ready` (send the leader's appends, persist with one fsync, send the rest, apply,
/// advance), applies committed commands to the registry, runs leader-side expiry, and
/// completes waiting client requests. One actor, so the core is only touched serially.
actor RaftDriver {
    private var node: RaftNode
    private let storage: DurableLog
    private(set) var registry: LeaseRegistry
    private var expiry: LeaseExpiry
    private let transport: RaftTransport
    let config: ServerConfig
    private let logger: Logger
    private let onFatal: @Sendable (String) -> Void
    let metrics: ReplicaMetrics
    private let raftState: RaftStateBox
    private var loggedTerm: Term = 0
    private var loggedRole: Role = .follower

    /// A write's result with the index of the entry that applied it and the leader then known.
    struct WriteResult: Sendable {
        var result: Result<LeaseReply, LeaseError>
        var index: LogIndex
        var leader: ReplicaID?
        /// The idempotency key had applied before: this is its first outcome.
        var replayed: Bool = false
    }
    private typealias Reply = WriteResult
    private var waiters: [UInt64: CheckedContinuation<Reply, any Error>] = [:]
    private var readWaiters: [UInt64: CheckedContinuation<LogIndex, any Error>] = [:]
    private var appliedWaiters: [(index: LogIndex, id: UInt64, continuation: CheckedContinuation<Void, any Error>)] = []
    /// Commands waiting to be proposed (as leader) or forwarded (when a leader is known).
    private var outbox: [[UInt8]] = []
    /// When each outbox command was queued: one whose request already timed out is dropped
    /// instead of being proposed late (its client was told 503 and may have moved on).
    private var outboxQueuedAt: [ContinuousClock.Instant] = []
    private var pumpScheduled = false
    /// A Ready is being carried out (its fsync may be in flight on the syncer's thread).
    private var persisting = false
    private let syncer = WALSyncer()
    /// A snapshot is being written on `snapshotQueue`.
    private var snapshotting = false
    private let snapshotQueue = DispatchQueue(label: "nodelease.snapshot", qos: .utility)
    private var wasLeader = false
    private var knownLeader: ReplicaID?
    private var requestCounter: UInt64
    private let started = ContinuousClock.now
    private var stopped = false
    /// The data directory each replica took part with, as the registry records it; read by the
    /// transport's admission check on event-loop threads.
    nonisolated let knownDirectories = NIOLockedValueBox<[UInt64: UInt64]>([:])
    private var registrationAttempts: [UInt64: ContinuousClock.Instant] = [:]
    /// Commands of requests still waiting here, by request id: when the leader changes they
    /// are sent again (the old leader may have died with them, or committed them already).
    /// Each carries an idempotency key (the client's, or one chosen here), so a command that
    /// commits twice applies once: the registry answers the repeat with the first outcome.
    private var pendingCommands: [UInt64: [UInt8]] = [:]
    /// When each waiting read-index request (client reads and the catch-up read) was last
    /// sent: a request lost on the way (no connection to the leader yet, a leader change) is
    /// sent again instead of waiting out its deadline.
    private var readsSentAt: [UInt64: ContinuousClock.Instant] = [:]
    /// After a start, local reads wait until this replica has applied what a leader confirmed
    /// with a quorum (a read index), not merely its own commit index, which can lag after a
    /// restart: the read index asked for, then the index it has to reach.
    private var catchUpRead: UInt64?
    private var catchUpIndex: LogIndex?
    private var idempotencyConfiguredAt: ContinuousClock.Instant?

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
        self.registry = snap.isEmpty ? LeaseRegistry() : try LeaseRegistry(snapshot: snap.data)
        let raftConfig = RaftConfig(
            id: config.replicaID, electionTicks: config.electionTicks, heartbeatTicks: config.heartbeatTicks)
        self.node = try RaftNode(config: raftConfig, storage: storage, random: SystemRandomNumberGenerator())
        self.expiry = LeaseExpiry(config: .init(retentionSeconds: config.retentionSeconds))
        self.requestCounter = UInt64.random(in: 0...(UInt64.max >> 16)) << 16
        raftState.set(term: node.term, role: node.role)
        loggedTerm = node.term
        let dirs = registry.replicaDirectories
        knownDirectories.withLockedValue { $0 = dirs }
    }

    // MARK: Time

    /// Monotonic nanoseconds since this process started.
    private var monotonicNanos: UInt64 {
        let d = ContinuousClock.now - started
        return UInt64(d.components.seconds) * 1_000_000_000 + UInt64(d.components.attoseconds / 1_000_000_000)
    }

    private var wallSeconds: UInt64 { UInt64(Date().timeIntervalSince1970) }

    // MARK: Inputs

    func tick() {
        guard !stopped else { return }
        expireOverdue()
        node.tick()
        if node.role == .leader && expiry.isReady {
            registerReplicas()
            configureIdempotency()
        }
        resendReads()
        if node.role == .leader {
            let due = expiry.due(now: monotonicNanos, wallSeconds: wallSeconds, registry: registry, hasQuorum: node.hasQuorumContact)
            if !due.isEmpty {
                logger.info("proposing \(due.count) lease expirations and retirements")
                enqueue(due.map { $0.encoded() })
            }
        }
        afterInput()
    }

    func receive(_ messages: [Message]) {
        guard !stopped else { return }
        for m in messages { node.step(m) }
        afterInput()
    }

    /// A dial to `peer` failed. If it is our leader, the core stops waiting out the full
    /// election timeout (a killed leader's port refuses at once).
    func peerUnreachable(_ peer: ReplicaID) {
        guard !stopped, node.role == .follower, node.leader == peer else { return }
        logger.info("the leader (replica \(peer)) refuses connections: electing a new one soon")
        node.peerUnreachable(peer)
        afterInput()
    }

    /// A follower passed us a client command: propose it with our own clock's time.
    func forwarded(_ data: [UInt8], from peer: ReplicaID) {
        guard !stopped, node.role == .leader, var timed = TimedCommand(decoding: data) else { return }
        timed.now = wallSeconds
        enqueue([timed.encoded()])
        afterInput()
    }

    /// Proposes `command` (through the leader, wherever it is) and waits until it applies
    /// here, or the request timeout passes. The result carries the index of the entry that
    /// applied it, so the answer's `X-NodeLease-Index` is the state right after the change.
    /// `key`: the client's idempotency key; without one the command gets a key of this
    /// replica's, so its own re-sends apply once too.
    func submit(_ command: LeaseCommand, key: IdempotencyKey? = nil) async throws -> WriteResult {
        guard !stopped else { throw DriverError.stopping }
        requestCounter += 1
        let id = requestCounter
        let key = key ?? IdempotencyKey(origin: .replica, value: "\(config.replicaID)-\(String(id, radix: 16))")
        let data = TimedCommand(command, now: wallSeconds, requestID: id, key: key).encoded()
        pendingCommands[id] = data
        enqueue([data])
        afterInput()
        return try await withCheckedThrowingContinuation { c in
            waiters[id] = c
            scheduleTimeout(id)
        }
    }

    /// A read index confirmed by the leader with a quorum; returns once this replica has
    /// applied up to it.
    func linearizableBarrier() async throws -> LogIndex {
        guard !stopped else { throw DriverError.stopping }
        requestCounter += 1
        let id = requestCounter
        let index: LogIndex = try await withCheckedThrowingContinuation { c in
            readWaiters[id] = c
            scheduleTimeout(id)
            sendRead(id)
            afterInput()
        }
        if node.appliedIndex >= index { return index }
        requestCounter += 1
        let waitID = requestCounter
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            appliedWaiters.append((index, waitID, c))
            scheduleTimeout(waitID)
        }
        return index
    }
    private var pendingReads: [UInt64] = []

    /// Asks the leader (or, as leader, the core) for a read index; without a known leader the
    /// request waits in `pendingReads` until one is known.
    private func sendRead(_ id: UInt64) {
        do {
            try node.readIndex(ReadRequestID(id))
            readsSentAt[id] = ContinuousClock.now
        } catch {
            readsSentAt[id] = nil
            if !pendingReads.contains(id) { pendingReads.append(id) }
        }
    }

    /// Sends again every read-index request unanswered for longer than a few heartbeats (its
    /// message or the answer may be lost: no connection yet, a leader change).
    private func resendReads() {
        guard !readsSentAt.isEmpty else { return }
        let before = ContinuousClock.now - .milliseconds(max(50, 3 * config.tickMillis * config.heartbeatTicks))
        for id in readsSentAt.keys.sorted() where readsSentAt[id]! < before { sendRead(id) }
    }

    /// Before the first local read after a start: asks for a read index, and notes when the
    /// applied state has reached it.
    private func updateCaughtUp() {
        guard !caughtUp else { return }
        if let target = catchUpIndex {
            if node.appliedIndex >= target {
                caughtUp = true
                logger.info("caught up with the leader at index \(target): serving local reads")
            }
            return
        }
        guard catchUpRead == nil, node.leader != nil else { return }
        requestCounter += 1
        catchUpRead = requestCounter
        sendRead(requestCounter)
    }

    func status() -> ReplicaStatus {
        let s = node.status
        var peers: [(ReplicaID, Bool, LogIndex?)] = []
        for id in config.peers.keys.sorted() where id != config.replicaID {
            peers.append((id, transport.isConnected(id), s.peers.first { $0.id == id }?.match))
        }
        return ReplicaStatus(
            replicaID: config.replicaID, role: s.role, term: s.term, leader: s.leader, commitIndex: s.commitIndex,
            appliedIndex: s.appliedIndex, peers: peers, counts: registry.counts(), fsyncCount: storage.syncCount)
    }

    /// What the read headers need, cheaply.
    var headerState: (index: LogIndex, leader: ReplicaID?) { (node.appliedIndex, node.leader) }

    var isReady: Bool { caughtUp && node.leader != nil && node.appliedIndex >= node.commitIndex }

    /// Set once this replica has applied up to a read index a leader confirmed with a quorum
    /// since it started. Before that its applied state may be older than what it served before
    /// a restart, so it does not answer local reads yet.
    private(set) var caughtUp = false

    /// A consistent local read: the nodes and the index they reflect, taken together.
    /// `confirmed`: a linearizable barrier just completed, so the state is current anyway.
    func read(confirmed: Bool, _ body: (LeaseRegistry) -> [NodeRecord]) -> (nodes: [NodeRecord], index: LogIndex, leader: ReplicaID?)? {
        guard caughtUp || confirmed else { return nil }
        return (body(registry), node.appliedIndex, node.leader)
    }

    var appliedIndex: LogIndex { node.appliedIndex }

    /// Stops taking work; as leader, hands leadership to the most caught-up peer first.
    func shutdown() async {
        if node.role == .leader, let target = node.status.peers.filter({ $0.id != config.replicaID }).max(by: { $0.match < $1.match })?.id {
            logger.info("shutting down: transferring leadership to replica \(target)")
            try? node.transferLeadership(to: target)
            afterInput()
            for _ in 0..<20 where node.role == .leader {
                try? await Task.sleep(for: .milliseconds(50))
            }
        }
        stopped = true
        // Let an fsync in flight finish before the files close under it.
        while persisting || snapshotting { try? await Task.sleep(for: .milliseconds(2)) }
        pendingCommands = [:]
        for (_, c) in waiters { c.resume(throwing: DriverError.stopping) }
        for (_, c) in readWaiters { c.resume(throwing: DriverError.stopping) }
        for w in appliedWaiters { w.continuation.resume(throwing: DriverError.stopping) }
        waiters = [:]
        readWaiters = [:]
        appliedWaiters = []
        storage.close()
    }

    // MARK: The Ready loop

    private func afterInput() {
        updateCaughtUp()
        noteRoleChanges()
        // As leader, commands wait for the pump, so that every command that arrived meanwhile
        // goes into one append (one entry batch, one message per follower, one fsync).
        if node.role != .leader { flushOutbox() }
        if !pumpScheduled && !persisting && (node.hasReady || (!outbox.isEmpty && node.role == .leader)) {
            pumpScheduled = true
            // Run after the current input burst, so concurrent requests share one batch.
            Task { await self.pump() }
        }
    }

    private func enqueue(_ commands: [[UInt8]]) {
        outbox.append(contentsOf: commands)
        outboxQueuedAt.append(contentsOf: Array(repeating: ContinuousClock.now, count: commands.count))
    }

    private func flushOutbox() {
        guard !outbox.isEmpty else { return }
        let oldest = ContinuousClock.now - .milliseconds(config.requestTimeoutMillis)
        if let first = outboxQueuedAt.first, first < oldest {
            let keep = outboxQueuedAt.firstIndex { $0 >= oldest } ?? outbox.count
            outbox.removeFirst(keep)
            outboxQueuedAt.removeFirst(keep)
            if outbox.isEmpty { return }
        }
        if node.role == .leader {
            let batch = outbox
            let queued = outboxQueuedAt
            outbox = []
            outboxQueuedAt = []
            do {
                _ = try node.propose(batch: batch)
                metrics.proposals.increment(by: Int64(batch.count))
            } catch {
                outbox = batch  // a leadership transfer is under way: try again on the next tick
                outboxQueuedAt = queued
            }
        } else if let leader = node.leader {
            // What cannot be sent now (the connection to the leader is not up yet) stays, and
            // goes on a later tick or flush, within its request's deadline.
            var sent = 0
            while sent < outbox.count && transport.forward(outbox[sent], to: leader) { sent += 1 }
            outbox.removeFirst(sent)
            outboxQueuedAt.removeFirst(sent)
        }
        // No leader known: keep them until one is (the requests time out meanwhile).
    }

    /// Carries out Readies until there are none. The WAL's fsync runs on a thread of its own
    /// and the actor keeps taking messages, ticks and proposals meanwhile: the leader's own
    /// disk write overlaps with its followers' (its appends went out before it), their acks are
    /// stepped as they come, and what arrives during one fsync goes into the next Ready.
    /// One Ready is in flight at a time; the core allows steps between `ready()` and
    /// `advance()`.
    private func pump() async {
        pumpScheduled = false
        flushOutbox()
        guard !persisting else { return }
        persisting = true
        defer { persisting = false }
        while !stopped && node.hasReady {
            let rd = node.ready()
            transport.send(rd.messagesBeforePersist)
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
            transport.send(rd.messagesAfterPersist)
            if let s = rd.snapshot {
                do {
                    registry = try LeaseRegistry(snapshot: s.data)
                    logger.info("installed a snapshot at index \(s.metadata.index) from the leader")
                } catch {
                    fatal("the leader's snapshot does not decode: \(error)")
                    return
                }
            }
            for e in rd.committedEntries { apply(e) }
            if !rd.committedEntries.isEmpty || rd.snapshot != nil {
                let dirs = registry.replicaDirectories
                knownDirectories.withLockedValue { if $0 != dirs { $0 = dirs } }
            }
            for rs in rd.readStates {
                let id = rs.requestID.rawValue
                readsSentAt[id] = nil
                if id == catchUpRead && catchUpIndex == nil { catchUpIndex = rs.index }
                if let c = readWaiters.removeValue(forKey: id) { c.resume(returning: rs.index) }
            }
            node.advance(rd)
            updateCaughtUp()
            wakeAppliedWaiters()
            maybeSnapshot()
            noteRoleChanges()
            flushOutbox()
        }
    }

    private func apply(_ e: Entry) {
        if node.role == .leader && expiry.isLeader && !expiry.isReady && e.term == node.term {
            // Our own first entry committed: now we know every lease and restart their clocks.
            expiry.leaderReady(now: monotonicNanos, registry: registry)
        }
        guard e.kind == .normal else { return }
        guard let timed = TimedCommand(decoding: e.data) else {
            _ = registry.apply(entry: e.data, index: e.index.rawValue)
            logger.error("the log entry at index \(e.index) does not decode; skipped")
            return
        }
        let applied = registry.apply(timed, index: e.index.rawValue)
        let result = applied.result
        if expiry.isReady, !applied.replayed, case .success(let reply) = result {
            switch reply {
            case .lease(let l): if let r = registry.node(l.nodeID) { expiry.applied(r, now: monotonicNanos) }
            case .node(let n): expiry.applied(registry.node(n.nodeID) ?? n, now: monotonicNanos)
            case .replica, .idempotency: break
            }
        }
        if case .expire = timed.command, case .success(.node(let n)) = result {
            logger.info("lease \(n.leaseID) of node \(n.nodeID) (\(n.hostname)) expired: node is stale")
        }
        if timed.requestID != 0, let c = waiters.removeValue(forKey: timed.requestID) {
            pendingCommands[timed.requestID] = nil
            c.resume(returning: WriteResult(result: result, index: LogIndex(applied.index), leader: node.leader, replayed: applied.replayed))
        }
    }

    /// Writes the configured idempotency window into the log when the registry's differs.
    private func configureIdempotency() {
        let want = config.idempotencyWindow
        guard registry.idempotencyWindow != want else { return }
        let now = ContinuousClock.now
        if let last = idempotencyConfiguredAt, now - last < .seconds(2) { return }
        idempotencyConfiguredAt = now
        logger.info("setting the idempotency window to \(want.seconds) s and \(want.maxKeys) keys")
        enqueue([TimedCommand(.configureIdempotency(windowSeconds: want.seconds, maxKeys: UInt32(want.maxKeys)), now: wallSeconds).encoded()])
    }

    /// Records in the log which data directory each replica takes part with: ourselves, and
    /// every peer that is connected and has acknowledged entries.
    private func registerReplicas() {
        let now = ContinuousClock.now
        var candidates: [(UInt64, UInt64)] = [(config.replicaID.rawValue, storage.directoryID)]
        let dirs = transport.peerDirectories()
        for p in node.status.peers where p.id != config.replicaID && p.match > 0 {
            if let d = dirs[p.id], d != 0 { candidates.append((p.id.rawValue, d)) }
        }
        for (replica, dir) in candidates where registry.replicaDirectories[replica] == nil {
            if let last = registrationAttempts[replica], now - last < .seconds(2) { continue }
            registrationAttempts[replica] = now
            enqueue([TimedCommand(.registerReplica(replica: replica, dataDirectoryID: dir), now: wallSeconds).encoded()])
        }
    }

    private func wakeAppliedWaiters() {
        let applied = node.appliedIndex
        var keep: [(index: LogIndex, id: UInt64, continuation: CheckedContinuation<Void, any Error>)] = []
        for w in appliedWaiters {
            if w.index <= applied { w.continuation.resume() } else { keep.append(w) }
        }
        appliedWaiters = keep
    }

    /// Every `snapshotEvery` applied entries (or twice the registry's size, if more: a
    /// snapshot's cost grows with the registry), snapshots the registry and compacts the log.
    /// The encoding and the file's write and fsync run on a thread of their own, from a copy
    /// of the registry (a value: the copy is cheap until the next change), so a large registry
    /// does not stall the actor; the log is compacted once the file is durable.
    private func maybeSnapshot() {
        guard !snapshotting else { return }
        let applied = node.appliedIndex
        let every = max(config.snapshotEvery, config.snapshotEntriesPerNode * UInt64(registry.count))
        guard let snapIndex = try? storage.snapshot().metadata.index, applied.rawValue >= snapIndex.rawValue + every else { return }
        let writer: SnapshotWriter
        do {
            guard let w = try storage.prepareSnapshot(at: applied) else { return }
            writer = w
        } catch {
            fatal("cannot prepare a snapshot: \(error)")
            return
        }
        snapshotting = true
        let copy = registry
        snapshotQueue.async { [self] in
            let result = Result { try writer.write(copy.snapshot()) }
            Task { await self.snapshotWritten(result, nodes: copy.count) }
        }
    }

    private func snapshotWritten(_ result: Result<Snapshot, any Error>, nodes: Int) {
        snapshotting = false
        guard !stopped else { return }
        do {
            let snap = try result.get()
            try storage.adoptSnapshot(snap)
            let index = snap.metadata.index
            let keep = config.keepAfterSnapshot
            if index.rawValue > keep { try storage.compact(through: index - Int(keep)) }
            logger.info("snapshot at index \(index) (\(nodes) nodes); log compacted")
        } catch {
            fatal("cannot write a snapshot: \(error)")
        }
    }

    private func noteRoleChanges() {
        let isLeader = node.role == .leader
        if isLeader != wasLeader {
            wasLeader = isLeader
            if isLeader {
                expiry.becameLeader()
            } else {
                expiry.lostLeadership()
            }
        }
        if node.role != loggedRole || node.term != loggedTerm {
            loggedRole = node.role
            loggedTerm = node.term
            raftState.set(term: node.term, role: node.role)
            logger.info("now \(node.role.rawValue) in term \(node.term)")
        }
        if node.leader != knownLeader {
            let hadLeader = knownLeader != nil
            knownLeader = node.leader
            if let l = knownLeader {
                logger.info("leader is replica \(l)")
                if hadLeader || !pendingCommands.isEmpty {
                    // Requests sent to the previous leader may be lost with it: send them again
                    // (those still in the outbox go anyway).
                    let queued = Set(outbox)
                    let resend = pendingCommands.keys.sorted().compactMap { pendingCommands[$0] }.filter { !queued.contains($0) }
                    if !resend.isEmpty { enqueue(resend) }
                }
                // Reads that found no leader can go now, and those sent to the old one again.
                let reads = pendingReads + readsSentAt.keys.sorted()
                pendingReads = []
                for id in reads where readWaiters[id] != nil || id == catchUpRead { sendRead(id) }
            } else {
                logger.warning("no leader known")
            }
        }
    }

    /// Every waiting request's deadline, in the order they were made (the timeout is one
    /// constant, so that is also deadline order); `tick` expires the overdue ones. One queue
    /// instead of a timer task per request: no timer, task or extra actor hop per request.
    private var deadlines: [(id: UInt64, at: ContinuousClock.Instant)] = []
    private var deadlinesHead = 0

    private func scheduleTimeout(_ id: UInt64) {
        deadlines.append((id, ContinuousClock.now + .milliseconds(config.requestTimeoutMillis)))
    }

    /// Answers `noLeader` to every request whose deadline has passed (within a tick).
    private func expireOverdue() {
        let now = ContinuousClock.now
        while deadlinesHead < deadlines.count && deadlines[deadlinesHead].at <= now {
            expire(deadlines[deadlinesHead].id)
            deadlinesHead += 1
        }
        if deadlinesHead > 1024 && deadlinesHead * 2 > deadlines.count {
            deadlines.removeFirst(deadlinesHead)
            deadlinesHead = 0
        }
    }

    private func expire(_ id: UInt64) {
        pendingCommands[id] = nil
        if let c = waiters.removeValue(forKey: id) { c.resume(throwing: DriverError.noLeader) }
        if let c = readWaiters.removeValue(forKey: id) { c.resume(throwing: DriverError.noLeader) }
        // Most requests are answered long before their deadline: keep this cheap for them.
        if !appliedWaiters.isEmpty, let k = appliedWaiters.firstIndex(where: { $0.id == id }) {
            appliedWaiters.remove(at: k).continuation.resume(throwing: DriverError.noLeader)
        }
        if !pendingReads.isEmpty { pendingReads.removeAll { $0 == id } }
        readsSentAt[id] = nil
    }

    private func fatal(_ why: String) {
        logger.critical("\(why); stopping this replica")
        stopped = true
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

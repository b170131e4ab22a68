import LeaseRegistry
import Raft

/// What a member reported of the cluster version (its `/v1/status`): the newest it supports
/// and the one its registry has applied (1 for both from a build before the cluster version).
public struct PeerVersion: Sendable, Hashable {
    public var supported: UInt32
    public var applied: UInt32
    public init(supported: UInt32, applied: UInt32) {
        self.supported = supported
        self.applied = applied
    }
}

/// Everything one replica decides, as a pure, deterministic value: the Raft core, the lease
/// registry, the leader's expiry, and the request path between a client's request and its
/// answer (which requests wait for which entry or read index, idempotency keys, what goes to the
/// leader and what is sent again after a leader change, deadlines, the catch-up after a start,
/// replica registration). Time comes in as arguments (`now`: monotonic nanoseconds; `wall`:
/// the replica's wall clock in Unix seconds). Its decisions come out as `Effect`s, which a
/// shell carries out: the server's actor with real disks and sockets, or the simulator.
///
/// The Ready steps are written here once: `pump` takes a Ready, emits the messages that may go
/// before the write and the write itself; the shell persists it (with an fsync when
/// `mustSync`) and calls `persisted`, which sends the rest, installs a snapshot, applies the
/// committed entries, answers read indexes and advances. One Ready is in flight at a time; the
/// core takes messages, ticks and requests meanwhile.
public struct ReplicaCore {
    public struct Config: Sendable {
        public var replicaID: ReplicaID
        /// How long a request may wait for the cluster before it is answered `failed`.
        public var requestTimeoutNanos: UInt64 = 5_000_000_000
        /// A read-index request unanswered for this long is sent again.
        public var readResendNanos: UInt64 = 300_000_000
        /// A follower sends a write unanswered for this long to the leader again (the first
        /// copy may have been lost with a connection; the key makes a repeat harmless).
        public var writeResendNanos: UInt64 = 1_000_000_000
        /// How often the leader may retry a registration or configuration command.
        public var leaderCommandRetryNanos: UInt64 = 2_000_000_000
        public var idempotencyWindow = IdempotencyWindow()
        public var expiry = LeaseExpiry.Config()
        /// This replica's data directory id (recorded in the registry by the leader).
        public var dataDirectoryID: UInt64 = 0
        /// Request ids start above this (the shell picks it at random per process start, so
        /// keys a replica chooses never repeat across restarts).
        public var requestIDBase: UInt64 = 0
        /// Broken on purpose (simulator mutants only): a new leader does not restart every
        /// lease's countdown, as if they had all run out.
        public var breakFailoverReset = false
        /// Broken on purpose (simulator mutants only): entries apply as if they carried no
        /// idempotency key, so a repeated write applies again.
        public var breakExactlyOnce = false
        /// Broken on purpose: a linearizable read is answered from this replica's applied
        /// state at once, without a read index confirmed by a quorum.
        public var breakReadBarrier = false
        /// Broken on purpose: local reads are served before the catch-up read after a start.
        public var breakCatchUp = false
        /// Registry rules broken on purpose (see `RegistryFaults`).
        public var registryFaults: RegistryFaults = []
        /// `.applied` carries the registry right after each entry (observers in the
        /// simulator; a copy per entry, so off in the server).
        public var reportRegistryWithEntries = false
        /// This replica's own addresses, which the leader writes into the configuration when
        /// the configuration lacks them (a cluster created from `--peers` knows no client
        /// addresses). Empty: leave the configuration as it is.
        public var peerAddress = ""
        public var clientAddress = ""

        /// Planted bug (fault build): the leader raises the cluster version to what it supports
        /// itself, without waiting for the members.
        public var breakClusterVersionGate = false
        /// The newest cluster version this replica supports (ClusterVersion.swift): lower
        /// only for a replica that plays an older build in tests of rolling upgrades.
        public var supportedClusterVersion = ClusterVersion.newest

        public init(replicaID: ReplicaID) { self.replicaID = replicaID }
    }

    /// What a write did, with the index of the entry whose outcome it is.
    public struct WriteResult: Sendable, Hashable {
        public var result: Result<LeaseReply, LeaseError>
        public var index: LogIndex
        public var leader: ReplicaID?
        /// The idempotency key had applied before: this is its first outcome.
        public var replayed: Bool
    }

    public enum Effect: Sendable {
        /// Send these messages now.
        case send([Message])
        /// Persist this Ready's hard state, entries and snapshot (syncing when `mustSync`),
        /// then call `persisted`. Its `messagesBeforePersist` went out as `.send` already.
        case persist(Ready)
        /// Pass a client's command to the leader. If it cannot be sent, give it back with
        /// `forwardFailed`.
        case forward([UInt8], to: ReplicaID, queuedAt: UInt64)
        /// A write request's answer.
        case writeDone(UInt64, WriteResult)
        /// A read request may now read the registry: it is applied up to a confirmed read index.
        case readDone(UInt64, LogIndex)
        /// A request's deadline passed: answer 503 `no_leader`.
        case timedOut(UInt64)
        /// An entry was applied (`applied` is nil for configuration entries). `reusedID`: an
        /// acquire gave a new hostname an ID another hostname had. `registry`: the state right
        /// after it, when `reportRegistryWithEntries` is set.
        case applied(Entry, Applied?, reusedID: Bool, registry: LeaseRegistry?)
        /// A snapshot from the leader replaced the registry.
        case installedSnapshot(SnapshotMetadata)
        case leaderChanged(ReplicaID?)
        case roleChanged(Role, Term)
        /// The leader proposes these expiry and retirement commands.
        case proposedExpiry(Int)
        /// A membership change request's answer: the configuration once the change committed
        /// (and applied here), or why not.
        case confChangeDone(UInt64, Result<ConfChangeDone, ConfChangeFailure>)
        /// The state cannot go on (a snapshot from the leader that does not decode, or a log
        /// entry, `entry`, of a format this build does not know).
        case fatal(String, entry: LogIndex? = nil)
    }

    public internal(set) var node: RaftNode
    public private(set) var registry: LeaseRegistry
    /// An entry of a format this build does not know was met: nothing more is applied.
    public private(set) var halted = false
    public private(set) var expiry: LeaseExpiry
    public let config: Config

    /// Writes waiting here, by request id: their entries, sent again when the leader changes
    /// (the old leader may have died with them, or committed them already: each carries an
    /// idempotency key or this replica's session stamp, so a command that commits twice
    /// applies once).
    private var writes: [UInt64: (data: [UInt8], key: IdempotencyKey?, submittedAt: UInt64, lastSent: UInt64)] = [:]
    /// The ids of the session-stamped `writes` in the order they were made, from
    /// `writeOrderHead` on (some may be finished): the oldest unfinished one is the session's
    /// `done`. Writes with a key are not sessions' requests and are not listed.
    private var writeOrder: [UInt64] = []
    private var writeOrderHead = 0
    /// Commands to propose (as leader) or forward, with the instant they were queued: one
    /// whose request timed out is dropped instead of being proposed late.
    private var outbox: [(data: [UInt8], at: UInt64)] = []
    /// Read requests: when the read-index request was last sent (nil: waiting for a leader),
    /// and the index once known.
    private struct Read {
        var sentAt: UInt64?
        var index: LogIndex?
    }
    private var reads: [UInt64: Read] = [:]
    /// Every request's deadline, in the order they were made (one timeout for all: also
    /// deadline order).
    private var deadlines: [(id: UInt64, at: UInt64)] = []
    private var deadlinesHead = 0
    private var nextRequestID: UInt64
    /// The catch-up read: after a start, local reads wait until this replica has applied a
    /// read index a leader confirmed with a quorum (its own commit index can lag).
    private var catchUpRead: UInt64?
    private var catchUpIndex: LogIndex?
    /// Set once the catch-up read is applied; before that, local reads are refused.
    public private(set) var caughtUp = false
    private var wasLeader = false
    /// When this replica last became leader (its monotonic nanoseconds).
    private var leaderSince: UInt64 = 0
    private var knownLeader: ReplicaID?
    private var lastRole: Role
    private var lastTerm: Term
    private var registrationAttempts: [UInt64: UInt64] = [:]
    /// Membership change requests waiting here (see ReplicaCore+Membership.swift).
    var confChanges: [UInt64: PendingConfChange] = [:]
    /// The last address update proposed: when, and the configuration it was made on.
    var addressUpdateAttempt: (at: UInt64, configIndex: LogIndex)?
    private var idempotencyConfiguredAt: UInt64?
    private var clusterVersionProposedAt: UInt64?
    /// The members' reports of the last tick; the latest answer of every learner; when each
    /// learner that has never answered was first seen taking part (answering appends).
    private var latestVersions: [ReplicaID: PeerVersion] = [:]
    private var learnerReports: [ReplicaID: PeerVersion] = [:]
    private var learnerSeenAt: [ReplicaID: UInt64] = [:]
    /// A Ready is being persisted by the shell.
    public private(set) var readyInFlight: Ready?
    var effects: [Effect] = []

    /// - Parameters:
    ///   - registry: the state restored from the latest snapshot (applied up to its index).
    public init(config: Config, node: RaftNode, registry: LeaseRegistry) {
        self.config = config
        self.node = node
        self.registry = registry
        self.registry.faults = config.registryFaults
        self.expiry = LeaseExpiry(config: config.expiry)
        self.nextRequestID = config.requestIDBase
        self.lastRole = node.role
        self.lastTerm = node.term
    }

    /// The effects decided since the last call, in order.
    public mutating func takeEffects() -> [Effect] {
        defer { effects = [] }
        return effects
    }

    /// The shell should call `pump` (soon: a leader waits a moment so that requests arriving
    /// together share one append).
    public var needsPump: Bool { readyInFlight == nil && (node.hasReady || (!outbox.isEmpty && node.role == .leader)) }

    // MARK: Inputs

    /// `peerVersions`: what each other member last reported of the cluster version (the shell
    /// asks them): the newest it supports and the one it has applied. A member missing from it
    /// holds the cluster version where it is.
    public mutating func tick(
        now: UInt64, wall: UInt64, peerDirectories: [ReplicaID: UInt64] = [:], peerClientAddresses: [ReplicaID: String] = [:],
        peerVersions: [ReplicaID: PeerVersion] = [:]
    ) {
        expireOverdue(now: now)
        latestVersions = peerVersions
        // A learner's answer stands until it answers again: one missed question does not
        // release a learner that said it cannot apply the log.
        for (id, v) in peerVersions { learnerReports[id] = v }
        holdOutdatedLearners(now: now)
        node.tick()
        noteRoleChanges(now: now)
        advanceConfChanges(now: now)
        if node.role == .leader && expiry.isReady {
            updateAddresses(now: now, peerClientAddresses: peerClientAddresses)
            registerReplicas(now: now, wall: wall, peerDirectories: peerDirectories)
            configureIdempotency(now: now, wall: wall)
            raiseClusterVersion(now: now, wall: wall)
            let due = expiry.due(now: now, wallSeconds: wall, registry: registry, hasQuorum: node.hasQuorumContact)
            if !due.isEmpty {
                effects.append(.proposedExpiry(due.count))
                enqueue(due.map { d in
                    var stamped = d
                    stamped.leaderNanos = now
                    return stamped.encoded()
                }, now: now)
            }
        }
        resendReads(now: now)
        resendWrites(now: now)
        afterInput(now: now)
    }

    public mutating func step(_ messages: [Message], now: UInt64) {
        for m in messages { node.step(m) }
        afterInput(now: now)
    }

    /// A dial to `peer` failed: if it is our leader, stop waiting out the election timeout.
    public mutating func peerUnreachable(_ peer: ReplicaID, now: UInt64) {
        guard node.role == .follower, node.leader == peer else { return }
        node.peerUnreachable(peer)
        afterInput(now: now)
    }

    /// A follower passed us a client's command: proposed with our own clock's time.
    public mutating func forwarded(_ data: [UInt8], now: UInt64, wall: UInt64) {
        // Only client writes: a deposed leader's own commands (expiry, the cluster version...)
        // were decided on what it knew; this leader decides its own.
        guard node.role == .leader, var timed = TimedCommand(decoding: data), timed.command.isClientWrite else { return }
        timed.now = wall
        timed.leaderNanos = now
        enqueue([timed.encoded()], now: now)
        afterInput(now: now)
    }

    /// Forwards the shell could not send (no connection to the leader yet), in the order they
    /// were emitted: kept, ahead of what came later, and sent on a later flush within their
    /// requests' deadlines.
    public mutating func forwardFailed(_ items: [(data: [UInt8], queuedAt: UInt64)]) {
        guard !items.isEmpty else { return }
        outbox.insert(contentsOf: items.map { ($0.data, $0.queuedAt) }, at: 0)
    }

    /// The most commands waiting to be proposed or forwarded; past it the oldest are dropped
    /// (their requests time out), so a replica cut off from its leader holds bounded memory.
    public static let maxOutbox = 65_536

    /// A client's write: answered by `.writeDone` when its entry applies here, or `.timedOut`.
    /// Without the client's key, the command carries this replica's session stamp (cluster
    /// version 3 on; before, a key of this replica's), so its own re-sends apply once too.
    public mutating func submit(_ command: LeaseCommand, key: IdempotencyKey?, now: UInt64, wall: UInt64) -> UInt64 {
        let id = newRequest(now: now)
        var key = key
        var session: SessionStamp?
        if key == nil {
            if registry.clusterVersion >= 3 {
                let done = oldestUnfinishedSessionWrite() ?? id
                session = SessionStamp(replica: config.replicaID.rawValue, base: config.requestIDBase, done: done)
                writeOrder.append(id)
            } else {
                key = IdempotencyKey.replica(config.replicaID.rawValue, request: id)
            }
        }
        let data = TimedCommand(command, now: wall, requestID: id, key: key, leaderNanos: now, session: session).encoded()
        writes[id] = (data, key, now, now)
        enqueue([data], now: now)
        afterInput(now: now)
        return id
    }

    /// A linearizable read: answered by `.readDone` once this replica has applied up to a read
    /// index the leader confirmed with a quorum after the request arrived, or `.timedOut`.
    public mutating func read(now: UInt64) -> UInt64 {
        let id = newRequest(now: now)
        if config.breakReadBarrier {
            effects.append(.readDone(id, node.appliedIndex))
            return id
        }
        reads[id] = Read()
        sendRead(id, now: now)
        afterInput(now: now)
        return id
    }

    /// Whether a local (serializable) read may be served: not before catching up after a start.
    public func mayServeLocalRead(confirmed: Bool) -> Bool { caughtUp || confirmed || config.breakCatchUp }

    /// Ready for clients: knows a leader, caught up, and applied its commit index.
    public var isReady: Bool { caughtUp && node.leader != nil && node.appliedIndex >= node.commitIndex }

    /// Hands leadership to `target` (see `RaftNode.transferLeadership`).
    public mutating func transferLeadership(to target: ReplicaID, now: UInt64) throws {
        try node.transferLeadership(to: target)
        afterInput(now: now)
    }

    /// Starts a campaign at once (tests and the simulator).
    public mutating func campaign(now: UInt64) {
        node.campaign()
        afterInput(now: now)
    }

    // MARK: The Ready steps

    /// Proposes or forwards what waits, then starts the next Ready if none is in flight.
    public mutating func pump(now: UInt64, wall: UInt64) {
        flushOutbox(now: now, wall: wall)
        guard readyInFlight == nil, node.hasReady else { return }
        let rd = node.ready()
        readyInFlight = rd
        if !rd.messagesBeforePersist.isEmpty { effects.append(.send(rd.messagesBeforePersist)) }
        effects.append(.persist(rd))
    }

    /// The Ready in flight is durable: send what had to wait for it, install its snapshot,
    /// apply its committed entries, answer read indexes, advance.
    public mutating func persisted(now: UInt64) {
        guard let rd = readyInFlight else { return }
        readyInFlight = nil
        do {
            try rd.forEachStepAfterPersist { step in
                switch step {
                case .send(let messages):
                    effects.append(.send(messages))
                case .installSnapshot(let s):
                    // The only step that can fail: nothing after it runs, nor `advance`.
                    registry = try LeaseRegistry(snapshot: s.data, supporting: config.supportedClusterVersion)
                    registry.faults = config.registryFaults
                    effects.append(.installedSnapshot(s.metadata))
                case .apply(let entries):
                    for e in entries { apply(e, now: now) }
                case .readStates(let states):
                    for rs in states {
                        let id = rs.requestID.rawValue
                        if id == catchUpRead && catchUpIndex == nil { catchUpIndex = rs.index }
                        if reads[id] != nil {
                            reads[id]!.index = rs.index
                            reads[id]!.sentAt = nil
                        }
                    }
                }
            }
        } catch {
            effects.append(.fatal("the leader's snapshot does not decode: \(error)"))
            return
        }
        // Stopped at an entry it cannot apply: the entries after it are not applied either, so
        // the applied index must not move past them (nor a snapshot be taken there).
        if halted { return }
        node.advance(rd)
        answerReads()
        afterInput(now: now)
    }

    // MARK: Inside

    /// The id of the oldest session-stamped write still waiting for its entry to apply here
    /// (nil: none). Every one made before it is answered or timed out, and no longer sent.
    private mutating func oldestUnfinishedSessionWrite() -> UInt64? {
        while writeOrderHead < writeOrder.count && writes[writeOrder[writeOrderHead]] == nil { writeOrderHead += 1 }
        if writeOrderHead > 1024 && writeOrderHead * 2 > writeOrder.count {
            writeOrder.removeFirst(writeOrderHead)
            writeOrderHead = 0
        }
        return writeOrderHead < writeOrder.count ? writeOrder[writeOrderHead] : nil
    }

    mutating func newRequest(now: UInt64) -> UInt64 {
        nextRequestID += 1
        deadlines.append((nextRequestID, now + config.requestTimeoutNanos))
        return nextRequestID
    }

    private mutating func enqueue(_ commands: [[UInt8]], now: UInt64) {
        for c in commands { outbox.append((c, now)) }
    }

    mutating func afterInput(now: UInt64) {
        updateCaughtUp(now: now)
        noteRoleChanges(now: now)
        if !confChanges.isEmpty { advanceConfChanges(now: now) }
        // As leader, commands wait for the pump, so that every command that arrived meanwhile
        // goes into one append (one entry batch, one message per follower, one fsync).
        if node.role != .leader { flushOutbox(now: now) }
    }

    private mutating func flushOutbox(now: UInt64, wall: UInt64? = nil) {
        guard !outbox.isEmpty else { return }
        // Re-sends keep their submission time, so the outbox is not in time order: look at all.
        // Past its deadline (the instant `expireOverdue` answers it as timed out) a command is
        // not sent: it has been given up on.
        if now >= config.requestTimeoutNanos {
            let oldest = now - config.requestTimeoutNanos
            outbox.removeAll { $0.at <= oldest }
        }
        if outbox.count > Self.maxOutbox { outbox.removeFirst(outbox.count - Self.maxOutbox) }
        if outbox.isEmpty { return }
        if node.role == .leader {
            // Commands queued before this replica led carry another time (a follower's, or its
            // own from before): stamped anew, so the registry's leader time only counts time
            // this leader led.
            let batch = outbox.map { item -> [UInt8] in
                guard item.at < leaderSince, var timed = TimedCommand(decoding: item.data) else { return item.data }
                timed.leaderNanos = now
                if let wall { timed.now = wall }
                return timed.encoded()
            }
            do {
                _ = try node.propose(batch: batch)
                outbox = []
            } catch {
                // A leadership transfer is under way: try again on the next tick.
            }
        } else if let leader = node.leader {
            for item in outbox { effects.append(.forward(item.data, to: leader, queuedAt: item.at)) }
            outbox = []
        }
        // No leader known: they wait for one (their requests time out meanwhile).
    }

    private mutating func apply(_ e: Entry, now: UInt64) {
        // Nothing after an entry this build cannot apply (the replica is stopping).
        guard !halted else { return }
        if node.role == .leader && expiry.isLeader && !expiry.isReady && e.term == node.term {
            // Our own first entry committed: now we know every lease and restart their clocks.
            let start = config.breakFailoverReset ? (now > 3_600_000_000_000 ? now - 3_600_000_000_000 : 0) : now
            expiry.leaderReady(now: start, registry: registry)
        }
        if !confChanges.isEmpty { confChangeApplied(e) }
        guard e.kind == .normal else {
            effects.append(.applied(e, nil, reusedID: false, registry: observed))
            return
        }
        guard var timed = TimedCommand(decoding: e.data) else {
            if let why = TimedCommand.unknownFormat(e.data, supporting: config.supportedClusterVersion) {
                halted = true
                effects.append(
                    .fatal("log entry \(e.index) (term \(e.term)): \(why); a newer replica proposed it: upgrade this replica", entry: e.index))
                return
            }
            let applied = registry.applied(entry: e.data, index: e.index.rawValue)
            effects.append(.applied(e, applied, reusedID: false, registry: observed))
            return
        }
        if case .setClusterVersion(let v) = timed.command, v > config.supportedClusterVersion {
            // What a build of that older version would meet: a command it does not know.
            let why =
                config.supportedClusterVersion < 2
                ? "registry command kind 9 is unknown to this build (it knows kinds \(ClusterVersion.commandKinds(config.supportedClusterVersion)))"
                : "cluster version \(v) is newer than this build supports (\(config.supportedClusterVersion))"
            halted = true
            effects.append(.fatal("log entry \(e.index) (term \(e.term)): \(why); a newer replica proposed it: upgrade this replica", entry: e.index))
            return
        }
        if let v = e.data.first, v > TimedCommand.readableVersion(config.supportedClusterVersion),
            let why = TimedCommand.unknownFormat(e.data, supporting: config.supportedClusterVersion)
        {
            // A replica that plays an older build meets what that build would not read.
            halted = true
            effects.append(.fatal("log entry \(e.index) (term \(e.term)): \(why); a newer replica proposed it: upgrade this replica", entry: e.index))
            return
        }
        // Only the simulator's observers want `reusedID`: the server skips the lookups.
        var reuses = false
        var countBefore = 0
        if config.reportRegistryWithEntries, case .acquire(let hostname, _, _, _) = timed.command {
            reuses = (try? Validation.hostname(hostname)).map { registry.node(hostname: $0) == nil } ?? false
            countBefore = registry.count
        }
        let (key, session) = (timed.key, timed.session)
        if config.breakExactlyOnce { (timed.key, timed.session) = (nil, nil) }
        let applied = registry.apply(timed, index: e.index.rawValue, term: e.term.rawValue)
        (timed.key, timed.session) = (key, session)
        if expiry.isReady, !applied.replayed, case .success(let reply) = applied.result {
            switch reply {
            case .lease(let l): if let r = registry.node(l.nodeID) { expiry.applied(r, now: now, registry: registry) }
            case .node(let n): expiry.applied(registry.node(n.nodeID) ?? n, now: now, registry: registry)
            case .replica, .idempotency, .clusterVersion: break
            }
        }
        let reusedID: Bool
        if reuses, !applied.replayed, case .success = applied.result { reusedID = registry.count == countBefore } else { reusedID = false }
        effects.append(.applied(e, applied, reusedID: reusedID, registry: observed))
        // Ours if the request id and the key or session match (another replica's request may
        // carry the same id). A discarded repeat has no outcome to answer with: the request
        // waits for another copy or times out (its first copy applied inside a snapshot).
        if timed.requestID != 0, !applied.discarded, let w = writes[timed.requestID], w.key == timed.key,
            w.key != nil || timed.session.map({ $0.replica == config.replicaID.rawValue && $0.base == config.requestIDBase }) == true
        {
            writes[timed.requestID] = nil
            effects.append(
                .writeDone(
                    timed.requestID,
                    WriteResult(result: applied.result, index: LogIndex(applied.index), leader: node.leader, replayed: applied.replayed)))
        }
    }

    private var observed: LeaseRegistry? { config.reportRegistryWithEntries ? registry : nil }

    private mutating func answerReads() {
        let applied = node.appliedIndex
        for id in reads.keys.sorted() {
            if let index = reads[id]!.index, index <= applied {
                reads[id] = nil
                effects.append(.readDone(id, index))
            }
        }
    }

    /// Asks the leader (or, as leader, the core) for a read index; without a known leader the
    /// request waits until one is known.
    private mutating func sendRead(_ id: UInt64, now: UInt64) {
        let isCatchUp = id == catchUpRead
        guard reads[id] != nil || isCatchUp else { return }
        do {
            try node.readIndex(ReadRequestID(id))
            if isCatchUp { catchUpSentAt = now } else { reads[id]!.sentAt = now }
        } catch {
            if isCatchUp { catchUpSentAt = nil } else { reads[id]!.sentAt = nil }
        }
    }
    private var catchUpSentAt: UInt64?

    /// Sends again every read-index request unanswered for `readResendNanos` (its message or
    /// the answer may be lost: no connection yet, a leader change), and those that waited for
    /// a leader once one is known.
    private mutating func resendReads(now: UInt64) {
        // A leader's own read requests are not lost on the way (they go through its core).
        guard node.role != .leader else { return }
        let before = now >= config.readResendNanos ? now - config.readResendNanos : 0
        for id in reads.keys.sorted() {
            let r = reads[id]!
            guard r.index == nil else { continue }
            if r.sentAt.map({ $0 <= before }) ?? (node.leader != nil) { sendRead(id, now: now) }
        }
        if let id = catchUpRead, catchUpIndex == nil, catchUpSentAt.map({ $0 <= before }) ?? (node.leader != nil) {
            sendRead(id, now: now)
        }
    }

    /// As a follower, sends again the writes unanswered for `writeResendNanos` (the leader
    /// proposes its own; those are lost only with its leadership, and then all are re-sent).
    private mutating func resendWrites(now: UInt64) {
        guard node.role != .leader, node.leader != nil, !writes.isEmpty else { return }
        let due = writes.keys.filter { writes[$0]!.lastSent + config.writeResendNanos <= now }
        guard !due.isEmpty else { return }
        let queued = Set(outbox.map(\.data))
        for id in due.sorted() where !queued.contains(writes[id]!.data) {
            writes[id]!.lastSent = now
            outbox.append((writes[id]!.data, writes[id]!.submittedAt))
        }
    }

    private mutating func updateCaughtUp(now: UInt64) {
        guard !caughtUp else { return }
        if let target = catchUpIndex {
            if node.appliedIndex >= target { caughtUp = true }
            return
        }
        guard catchUpRead == nil, node.leader != nil else { return }
        nextRequestID += 1
        catchUpRead = nextRequestID
        sendRead(nextRequestID, now: now)
    }

    private mutating func noteRoleChanges(now: UInt64) {
        let isLeader = node.role == .leader
        if isLeader != wasLeader {
            wasLeader = isLeader
            if isLeader {
                expiry.becameLeader()
                leaderSince = now
            } else {
                expiry.lostLeadership()
            }
        }
        if node.role != lastRole || node.term != lastTerm {
            lastRole = node.role
            lastTerm = node.term
            effects.append(.roleChanged(node.role, node.term))
        }
        guard node.leader != knownLeader else { return }
        let hadLeader = knownLeader != nil
        knownLeader = node.leader
        effects.append(.leaderChanged(node.leader))
        guard node.leader != nil else { return }
        if hadLeader || !writes.isEmpty {
            // Requests sent to the previous leader may be lost with it: send them again
            // (those still in the outbox go anyway).
            // They keep their submission time, so none is proposed after its request's deadline.
            let queued = Set(outbox.map(\.data))
            for id in writes.keys.sorted() where !queued.contains(writes[id]!.data) {
                outbox.append((writes[id]!.data, writes[id]!.submittedAt))
            }
        }
        // Reads that found no leader, or went to the old one, go (again) now.
        for id in reads.keys.sorted() where reads[id]!.index == nil { sendRead(id, now: now) }
        if let id = catchUpRead, catchUpIndex == nil { sendRead(id, now: now) }
    }

    /// Answers `timedOut` to every request whose deadline has passed.
    private mutating func expireOverdue(now: UInt64) {
        while deadlinesHead < deadlines.count && deadlines[deadlinesHead].at <= now {
            let id = deadlines[deadlinesHead].id
            deadlinesHead += 1
            if writes.removeValue(forKey: id) != nil || reads.removeValue(forKey: id) != nil
                || confChanges.removeValue(forKey: id) != nil
            {
                effects.append(.timedOut(id))
            }
        }
        // A request answered before its deadline leaves its entry here until then: at
        // 10,000 writes a second and 5 s, 50,000 of them. Once they are most of the queue
        // (past twice the requests waiting and 1024 more), only the waiting ones are kept,
        // in order: the others would time out nothing.
        let waiting = writes.count + reads.count + confChanges.count
        if deadlines.count - deadlinesHead > 2 * waiting + 1024 {
            deadlines = deadlines[deadlinesHead...].filter { writes[$0.id] != nil || reads[$0.id] != nil || confChanges[$0.id] != nil }
            deadlinesHead = 0
        } else if deadlinesHead > 1024 && deadlinesHead * 2 > deadlines.count {
            deadlines.removeFirst(deadlinesHead)
            deadlinesHead = 0
        }
    }

    /// Request deadlines queued, those of requests already answered included (bounded by
    /// about twice the requests waiting, for tests).
    public var queuedRequestDeadlines: Int { deadlines.count - deadlinesHead }

    /// Records in the log which data directory each replica takes part with: ourselves, and
    /// every peer that is connected and has acknowledged entries.
    private mutating func registerReplicas(now: UInt64, wall: UInt64, peerDirectories: [ReplicaID: UInt64]) {
        var candidates: [(UInt64, UInt64)] = []
        if config.dataDirectoryID != 0 { candidates.append((config.replicaID.rawValue, config.dataDirectoryID)) }
        for p in node.status.peers where p.id != config.replicaID && p.match > 0 {
            if let d = peerDirectories[p.id], d != 0 { candidates.append((p.id.rawValue, d)) }
        }
        for (replica, dir) in candidates where registry.replicaDirectories[replica] == nil {
            if let last = registrationAttempts[replica], now < last + config.leaderCommandRetryNanos { continue }
            registrationAttempts[replica] = now
            enqueue([TimedCommand(.registerReplica(replica: replica, dataDirectoryID: dir), now: wall, leaderNanos: now).encoded()], now: now)
        }
    }

    /// How long a learner that has never answered the leader's question about its versions is
    /// held anyway, counted from when it first takes part in replication; then it is promoted
    /// as before the cluster version existed (an unanswered question, e.g. client ports closed
    /// between replicas, must not keep a replacement from voting for good). A learner that
    /// has answered is held as long as its latest answer says so.
    public static let learnerReportPatienceNanos: UInt64 = 10_000_000_000

    /// Once the cluster version is above 1, a learner is made a voter (by the leader or by hand)
    /// only once it reports supporting that version and having applied it: a build that cannot
    /// apply everything the log holds, or a replica whose registry missed the change (one that
    /// ran such a build on the same data directory), never votes or leads.
    mutating func holdOutdatedLearners(now: UInt64) {
        let version = registry.clusterVersion
        var held: [ReplicaID: String] = [:]
        let learners = node.role == .leader ? node.membership.learners : []
        learnerSeenAt = learnerSeenAt.filter { learners.contains($0.key) }
        learnerReports = learnerReports.filter { learners.contains($0.key) }
        if version > 1 && !learners.isEmpty {
            let taking = Set(node.status.peers.filter { $0.match > 0 }.map(\.id))
            for l in learners {
                if learnerSeenAt[l] == nil && taking.contains(l) { learnerSeenAt[l] = now }
                let why: String
                if let r = learnerReports[l] {
                    if r.supported < version {
                        why = "supports cluster version \(r.supported) only; the cluster is at \(version): it stays a learner (remove it, and add a replica of a build that supports \(version))"
                    } else if r.applied < version {
                        why = "has applied cluster version \(r.applied), the cluster is at \(version): it stays a learner until it has (if it once ran an older build on this data directory, remove it and add it again with an empty one)"
                    } else {
                        continue
                    }
                } else if learnerSeenAt[l].map({ now < $0 + Self.learnerReportPatienceNanos }) ?? true {
                    why = "has not said yet which cluster version it supports (the leader asks every 2 s); retry in a moment"
                } else {
                    continue
                }
                held[l] = "replica \(l) " + why
            }
        }
        node.promotionHeld = held
    }

    /// Moves the cluster version up, through the log, to the lowest every member supports.
    private mutating func raiseClusterVersion(now: UInt64, wall: UInt64) {
        var supported = latestVersions.mapValues(\.supported)
        supported[config.replicaID] = config.supportedClusterVersion
        var members = node.membership.members.map(\.id)
        if config.breakClusterVersionGate { members = [config.replicaID] }
        guard let target = ClusterVersion.target(current: registry.clusterVersion, members: members, supported: supported) else { return }
        if let last = clusterVersionProposedAt, now < last + config.leaderCommandRetryNanos { return }
        clusterVersionProposedAt = now
        enqueue([TimedCommand(.setClusterVersion(target), now: wall, leaderNanos: now).encoded()], now: now)
    }

    /// Writes the configured idempotency window into the log when the registry's differs.
    private mutating func configureIdempotency(now: UInt64, wall: UInt64) {
        let want = config.idempotencyWindow
        guard registry.idempotencyWindow != want || registry.clock == 0 else { return }
        if let last = idempotencyConfiguredAt, now < last + config.leaderCommandRetryNanos { return }
        idempotencyConfiguredAt = now
        let command = LeaseCommand.configureIdempotency(windowSeconds: want.seconds, maxKeys: UInt32(want.maxKeys))
        enqueue([TimedCommand(command, now: wall, leaderNanos: now).encoded()], now: now)
    }
}

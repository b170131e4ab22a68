/// Everything the driver must do after feeding the core some input: persist `hardState`,
/// `entries` and `snapshot`; send `messages`; apply `snapshot` and `committedEntries` to the
/// state machine; answer `readStates`; then call `RaftNode.advance(_:)` with this value.
///
/// Order of effects (see `RaftNode.handleReady(_:)`, which does it for a synchronous driver):
/// messages with `maySendBeforePersist` may go out while the write is in progress; all other
/// messages only after `hardState`, `entries` and `snapshot` are durable. Committed entries
/// are applied after the write too (they can include entries of this same batch).
public struct Ready: Sendable {
    /// The hard state to persist, when it changed.
    public var hardState: HardState?
    /// Entries to append to stable storage (replacing any stored entries from the first one's
    /// index on).
    public var entries: [Entry]
    /// A snapshot received from the leader: persist it, then restore the state machine from it.
    public var snapshot: Snapshot?
    /// Entries known committed and not yet applied, in log order.
    public var committedEntries: [Entry]
    public var messages: [Message]
    /// Answers to `readIndex` requests made at this replica.
    public var readStates: [ReadState]
    /// Whether the write must be made durable (fsync) before anything depending on it.
    public var mustSync: Bool
    /// Broken on purpose (checker tests): kinds of messages let out before the write.
    public var unsafeEarly: FaultInjection = []

    public var isEmpty: Bool {
        hardState == nil && entries.isEmpty && snapshot == nil && committedEntries.isEmpty
            && messages.isEmpty && readStates.isEmpty
    }
}

/// A proposal the leader accepted: it succeeded if the entry applied at `index` has `term`.
public struct Proposal: Sendable, Hashable {
    public var index: LogIndex
    public var term: Term
    public init(index: LogIndex, term: Term) {
        self.index = index
        self.term = term
    }
}

/// A read-only summary of a replica's Raft state, for status pages and tests.
public struct RaftStatus: Sendable, Hashable {
    public struct Peer: Sendable, Hashable {
        public var id: ReplicaID
        public var match: LogIndex
        public var next: LogIndex
        public var state: String
        public var recentActive: Bool
        public var role: MemberRole
    }
    public var id: ReplicaID
    public var role: Role
    public var term: Term
    public var vote: ReplicaID?
    public var leader: ReplicaID?
    public var commitIndex: LogIndex
    public var appliedIndex: LogIndex
    public var lastIndex: LogIndex
    public var firstIndex: LogIndex
    public var leadTransferee: ReplicaID?
    /// Only on the leader: its view of each member, in replica order.
    public var peers: [Peer]
    public var membership: Membership
}

/// The Raft consensus algorithm for one replica, as a deterministic state machine.
///
/// Inputs are `tick()`, `step(_:)`, `propose(_:)`, `readIndex(_:)` and
/// `transferLeadership(to:)`; outputs are collected into a `Ready` (`ready()`), which the
/// driver carries out and acknowledges with `advance(_:)`. The core reads durable state from a
/// `RaftLogStorage` and never writes it, never reads a clock and draws randomness only from
/// the generator it was given, so the same inputs always give the same outputs.
public struct RaftNode {
    public let config: RaftConfig
    public var id: ReplicaID { config.id }
    public internal(set) var term: Term = 0
    public internal(set) var vote: ReplicaID?
    /// The leader of the current term, when known.
    public internal(set) var leader: ReplicaID?
    public internal(set) var role: Role = .follower
    /// The configuration entries of the retained log, oldest first; the first is the one at
    /// the snapshot (or the cluster's first). See RaftNode+Membership.swift.
    var configs: [ConfigRecord]
    /// Target of a leadership transfer in progress (leader only).
    public internal(set) var leadTransferee: ReplicaID?
    /// Learners the state machine holds back from becoming voters, and why (set by the caller
    /// every tick): neither promoted by `autoPromote` nor by hand.
    public var promotionHeld: [ReplicaID: String] = [:]

    var log: RaftLog
    var progress: [ReplicaID: Progress] = [:]
    var votes: [ReplicaID: Bool] = [:]
    var electionElapsed = 0
    var heartbeatElapsed = 0
    /// Ticks since this replica last became leader (or anything else), up to an election
    /// timeout: a peer not heard from in that first timeout is not known to be unreachable yet.
    var ticksInRole = 0
    var randomizedElectionTimeout = 0
    var random: any RandomNumberGenerator

    var messages: [Message] = []
    var readStates: [ReadState] = []
    /// Leader: read requests waiting for a quorum of heartbeat acknowledgements.
    var pendingReads: [PendingRead] = []
    /// Leader: read requests that arrived before the first commit of this term.
    var readsAwaitingCommit: [(from: ReplicaID, id: ReadRequestID)] = []
    var readSequence: UInt64 = 0
    var persistedHardState: HardState

    struct PendingRead {
        var sequence: UInt64
        var index: LogIndex
        var from: ReplicaID
        var requestID: ReadRequestID
        var acks: [ReplicaID]
    }

    /// Starts (or restarts) a replica from what `storage` holds.
    public init(config: RaftConfig, storage: any RaftLogStorage, random: any RandomNumberGenerator)
        throws
    {
        try config.validate()
        self.config = config
        self.random = random
        let (hs, base) = try storage.initialState()
        self.configs = try RaftNode.loadConfigs(storage: storage, base: base)
        self.log = try RaftLog(
            storage: storage, committed: hs.commit, applied: config.applied,
            maxApplyBytes: config.maxApplyBytes)
        self.term = hs.term
        self.vote = config.faults.contains(.forgetVoteOnRestart) ? nil : hs.vote
        self.persistedHardState = hs
        becomeFollower(term: hs.term, leader: nil)
    }

    // MARK: Public inputs

    /// Advances logical time by one tick.
    public mutating func tick() {
        if role == .leader {
            tickLeader()
        } else {
            electionElapsed += 1
            if electionElapsed >= randomizedElectionTimeout {
                electionElapsed = 0
                campaignIfPromotable(transfer: false)
            }
        }
    }

    /// Starts an election now (as when the election timer fires).
    public mutating func campaign() {
        guard role != .leader else { return }
        electionElapsed = 0
        campaignIfPromotable(transfer: false)
    }

    /// The transport could not reach `peer` at all (its connection was refused: the process
    /// is most likely gone). If that is our leader, stop counting on it: forget it, so that we
    /// grant other replicas' (pre)votes without waiting out the leader lease, and let the
    /// election timer fire after a short random delay (up to half the election timeout)
    /// instead of the full timeout. If the leader is in fact alive, its next heartbeat makes
    /// us its follower again, and PreVote keeps a mistaken campaign from disturbing anyone.
    public mutating func peerUnreachable(_ peer: ReplicaID) {
        guard role == .follower, let l = leader, l == peer else { return }
        leader = nil
        let delay = Int.random(in: 1...max(1, config.electionTicks / 2), using: &random)
        electionElapsed = max(electionElapsed, randomizedElectionTimeout - delay)
    }

    /// Proposes one command. Throws `notLeader` on a follower; the caller learns the outcome
    /// when the entry at the returned index applies (success only if its term matches).
    @discardableResult
    public mutating func propose(_ data: [UInt8]) throws -> Proposal {
        try propose(batch: [data])[0]
    }

    /// Proposes several commands as consecutive entries in one append.
    public mutating func propose(batch: [[UInt8]]) throws -> [Proposal] {
        guard role == .leader else { throw RaftError.notLeader(leader: leader) }
        guard leadTransferee == nil else { throw RaftError.transferInProgress }
        guard !batch.isEmpty else { return [] }
        let first = log.lastIndex() + 1
        var entries: [Entry] = []
        entries.reserveCapacity(batch.count)
        for (i, data) in batch.enumerated() {
            entries.append(Entry(term: term, index: first + i, kind: .normal, data: data))
        }
        appendAsLeader(entries)
        return entries.map { Proposal(index: $0.index, term: $0.term) }
    }

    /// Asks for a read index. A `ReadState` with `requestID` appears in a later `Ready` once
    /// the leader has confirmed with a quorum that it still leads; reading after applying up
    /// to its index is linearizable. On a follower the request is forwarded to the leader.
    /// Requests can be dropped (leader change, lost message): the caller keeps a timeout.
    public mutating func readIndex(_ requestID: ReadRequestID) throws {
        if role == .leader {
            handleReadRequest(from: id, requestID: requestID)
            return
        }
        guard let leader else { throw RaftError.notLeader(leader: nil) }
        send(Message(kind: .readIndex, from: id, to: leader, context: requestID.rawValue))
    }

    /// Hands leadership to `target` (leader only): brings it up to date, then tells it to
    /// campaign at once. Proposals are refused meanwhile; the attempt is abandoned after an
    /// election timeout.
    public mutating func transferLeadership(to target: ReplicaID) throws {
        guard role == .leader else { throw RaftError.notLeader(leader: leader) }
        guard target != id, membership.contains(target) else {
            throw RaftError.invalid("cannot transfer leadership to \(target)")
        }
        if leadTransferee == target { return }
        leadTransferee = target
        electionElapsed = 0
        if progress[target]?.match == log.lastIndex() {
            send(Message(kind: .timeoutNow, from: id, to: target))
        } else {
            _ = sendAppend(to: target)
        }
    }

    /// The transport could not deliver a snapshot to `to` (or it did): resume probing.
    public mutating func reportSnapshot(to target: ReplicaID, failed: Bool) {
        guard role == .leader, var pr = progress[target], pr.state == .snapshot else { return }
        if failed { pr.pendingSnapshot = 0 }
        pr.becomeProbe()
        pr.probeSent = !failed
        progress[target] = pr
    }

    /// The peer is unreachable: stop pipelining to it until it answers again.
    public mutating func reportUnreachable(_ target: ReplicaID) {
        guard role == .leader, var pr = progress[target], pr.state == .replicate else { return }
        pr.becomeProbe()
        progress[target] = pr
    }

    // MARK: Ready / advance

    var hardState: HardState { HardState(term: term, vote: vote, commit: log.committed) }

    /// Whether `ready()` has anything to do.
    public var hasReady: Bool {
        hardState != persistedHardState || !log.unstableEntries.isEmpty
            || log.unstableSnapshot != nil || !messages.isEmpty || !readStates.isEmpty
            || log.hasNextCommittedEntries
    }

    /// Collects the pending output. Call `advance(_:)` with it before the next `ready()`.
    public mutating func ready() -> Ready {
        let hs = hardState
        let changed = hs != persistedHardState
        let entries = log.unstableEntries
        let mustSync =
            !entries.isEmpty || log.unstableSnapshot != nil || hs.term != persistedHardState.term
            || hs.vote != persistedHardState.vote
        let rd = Ready(
            hardState: changed ? hs : nil,
            entries: entries,
            snapshot: log.unstableSnapshot,
            committedEntries: log.nextCommittedEntries(),
            messages: messages,
            readStates: readStates,
            mustSync: mustSync,
            unsafeEarly: config.faults.intersection([.sendVoteBeforePersist, .ackAppendBeforePersist]))
        messages = []
        readStates = []
        return rd
    }

    /// Acknowledges that `rd` was persisted and applied.
    public mutating func advance(_ rd: Ready) {
        if let hs = rd.hardState { persistedHardState = hs }
        if let s = rd.snapshot {
            log.stableSnapshot(to: s.metadata.index)
            log.appliedSnapshot(s.metadata.index)
        }
        if let last = rd.entries.last {
            log.stable(to: last.index, term: last.term)
            if role == .leader && !config.faults.contains(.countUnpersistedLeaderEntries) {
                selfPersisted()
            }
        }
        if let last = rd.committedEntries.last { log.applied(to: last.index) }
        stepDownIfRemoved()
    }

    /// Carries out a `Ready` with a synchronous driver in the required order, then advances.
    /// The server's asynchronous driver follows the same order.
    public mutating func handleReady(_ driver: inout some ReadyDriver) throws {
        let rd = ready()
        let early = rd.messagesBeforePersist
        if !early.isEmpty { driver.send(early) }
        try driver.persist(hardState: rd.hardState, entries: rd.entries, snapshot: rd.snapshot, sync: rd.mustSync)
        try rd.forEachStepAfterPersist { step in
            switch step {
            case .send(let messages): driver.send(messages)
            case .installSnapshot(let s): try driver.restore(s)
            case .apply(let entries): try driver.apply(entries)
            case .readStates(let states): driver.readsReady(states)
            }
        }
        advance(rd)
    }

    // MARK: Inspection

    /// Leader only: whether a majority (counting itself) has answered since the last
    /// CheckQuorum round. A leader without it should not start work of its own, such as
    /// expiring leases.
    public var hasQuorumContact: Bool {
        guard role == .leader else { return false }
        var n = 0
        for v in membership.voters where v == id || progress[v]?.recentActive == true { n += 1 }
        return n >= membership.quorum
    }

    public var commitIndex: LogIndex { log.committed }
    public var appliedIndex: LogIndex { log.applied }
    public var lastIndex: LogIndex { log.lastIndex() }
    public var firstIndex: LogIndex { log.firstIndex() }
    public var lastTerm: Term { log.lastTerm }

    /// The term of the entry at `index`, or nil when it is compacted or past the end.
    public func term(at index: LogIndex) -> Term? { try? log.term(index) }

    /// Entries of the log (stable and unstable) in `lo..<hi`, nil when compacted.
    public func entries(_ lo: LogIndex, _ hi: LogIndex) -> [Entry]? {
        try? log.entries(lo, hi, maxBytes: Int.max)
    }

    public var status: RaftStatus {
        var peers: [RaftStatus.Peer] = []
        if role == .leader {
            for m in membership.members {
                guard let pr = progress[m.id] else { continue }
                peers.append(
                    RaftStatus.Peer(
                        id: m.id, match: pr.match, next: pr.next, state: m.id == id ? "self" : pr.state.rawValue,
                        recentActive: pr.recentActive, role: m.role))
            }
        }
        return RaftStatus(
            id: id, role: role, term: term, vote: vote, leader: leader, commitIndex: log.committed,
            appliedIndex: log.applied, lastIndex: log.lastIndex(), firstIndex: log.firstIndex(),
            leadTransferee: leadTransferee, peers: peers, membership: membership)
    }
}

/// The effects a synchronous driver performs for `RaftNode.handleReady(_:)`.
public protocol ReadyDriver {
    /// Makes the hard state, entries and snapshot durable (when `sync`) before returning.
    mutating func persist(hardState: HardState?, entries: [Entry], snapshot: Snapshot?, sync: Bool) throws
    mutating func send(_ messages: [Message])
    /// Replaces the state machine with the snapshot's.
    mutating func restore(_ snapshot: Snapshot) throws
    mutating func apply(_ entries: [Entry]) throws
    mutating func readsReady(_ states: [ReadState])
}

/// One step of carrying out a `Ready` whose write is durable.
public enum ReadyStep: Sendable {
    /// Send the messages that had to wait for the write.
    case send([Message])
    /// Replace the state machine with the snapshot's.
    case installSnapshot(Snapshot)
    /// Apply these committed entries, in log order.
    case apply([Entry])
    /// Answer these read-index requests.
    case readStates([ReadState])
}

extension Ready {
    /// Whether carrying it out writes anything (hard state, entries or a snapshot).
    public var writes: Bool { hardState != nil || !entries.isEmpty || snapshot != nil }

    /// The Ready steps after the write, written once for every shell (the server's
    /// `ReplicaCore`, the simulator's register workload, `handleReady`): the messages that
    /// waited for the write, the snapshot, the committed entries, the read states, in this
    /// order, each only when present. The shell calls `RaftNode.advance` after the last; a
    /// step that throws stops the rest (and the shell does not advance).
    public func forEachStepAfterPersist(_ body: (ReadyStep) throws -> Void) rethrows {
        let late = messagesAfterPersist
        if !late.isEmpty { try body(.send(late)) }
        if let snapshot { try body(.installSnapshot(snapshot)) }
        if !committedEntries.isEmpty { try body(.apply(committedEntries)) }
        if !readStates.isEmpty { try body(.readStates(readStates)) }
    }

    /// Messages that may be sent while the write of this `Ready` is in progress.
    public var messagesBeforePersist: [Message] { messages.filter(mayGoEarly) }
    /// Messages that may be sent only once the write of this `Ready` is durable.
    public var messagesAfterPersist: [Message] { messages.filter { !mayGoEarly($0) } }

    private func mayGoEarly(_ m: Message) -> Bool {
        if m.maySendBeforePersist { return true }
        if unsafeEarly.isEmpty { return false }
        switch m.kind {
        case .voteResponse, .preVoteResponse: return unsafeEarly.contains(.sendVoteBeforePersist)
        case .appendResponse: return unsafeEarly.contains(.ackAppendBeforePersist)
        default: return false
        }
    }
}

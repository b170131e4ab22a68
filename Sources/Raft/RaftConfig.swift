/// How one replica's Raft core behaves. Times are in ticks; the driver decides how long a
/// tick is (the server uses 100 ms by default).
public struct RaftConfig: Sendable {
    /// This replica.
    public var id: ReplicaID
    /// Followers wait a random `electionTicks ..< 2 * electionTicks` without hearing from a
    /// leader before they campaign. A leader checks its quorum once per `electionTicks`.
    public var electionTicks: Int
    /// A leader sends heartbeats every `heartbeatTicks`.
    public var heartbeatTicks: Int
    /// Upper bound on the entry bytes of one append message.
    public var maxMessageBytes: Int
    /// Appends in flight to one follower in replicate state before the leader waits.
    public var maxInflightMessages: Int
    /// Upper bound on the bytes of committed entries handed out in one `Ready`.
    public var maxApplyBytes: Int
    /// Run a PreVote round before a real election, so a replica that was partitioned away
    /// does not raise the term of a healthy cluster when it rejoins (thesis 9.6).
    public var preVote: Bool
    /// A leader that has not heard from a majority within an election timeout steps down,
    /// and followers that hear from a leader ignore vote requests for that long (thesis 6.2).
    public var checkQuorum: Bool
    /// The leader promotes a learner to voter by itself once the learner's log has stayed
    /// within `learnerCatchUpEntries` of the commit index for an election timeout.
    public var autoPromote: Bool
    /// How far (in entries) a learner's log may trail the commit index and still count as
    /// caught up, for promotion by hand or by `autoPromote`.
    public var learnerCatchUpEntries: Int
    /// The last index the state machine had applied when the replica started (nil: the
    /// snapshot index; committed entries after it are handed out again).
    public var applied: LogIndex?
    /// What a leader does when a follower's in-flight window is full and the follower answers
    /// a heartbeat (see `FullWindowPolicy`).
    public var fullWindow: FullWindowPolicy = .probe
    /// Deliberately broken behaviour, for tests that prove the checkers catch it. Never set
    /// outside tests.
    public var faults: FaultInjection

    public init(
        id: ReplicaID, electionTicks: Int = 10, heartbeatTicks: Int = 1,
        maxMessageBytes: Int = 1 << 20, maxInflightMessages: Int = 256,
        maxApplyBytes: Int = 4 << 20, preVote: Bool = true, checkQuorum: Bool = true,
        autoPromote: Bool = true, learnerCatchUpEntries: Int = 256,
        applied: LogIndex? = nil, faults: FaultInjection = []
    ) {
        self.id = id
        self.electionTicks = electionTicks
        self.heartbeatTicks = heartbeatTicks
        self.maxMessageBytes = maxMessageBytes
        self.maxInflightMessages = maxInflightMessages
        self.maxApplyBytes = maxApplyBytes
        self.preVote = preVote
        self.checkQuorum = checkQuorum
        self.autoPromote = autoPromote
        self.learnerCatchUpEntries = learnerCatchUpEntries
        self.applied = applied
        self.faults = faults
    }

    /// Checks the settings; throws `RaftError.invalid` naming the bad one.
    public func validate() throws {
        if id.rawValue == 0 { throw RaftError.invalid("replica id must not be 0") }
        if heartbeatTicks < 1 { throw RaftError.invalid("heartbeatTicks must be at least 1") }
        if electionTicks <= heartbeatTicks {
            throw RaftError.invalid("electionTicks must be greater than heartbeatTicks")
        }
        if maxInflightMessages < 1 { throw RaftError.invalid("maxInflightMessages must be at least 1") }
        if maxMessageBytes < 1 { throw RaftError.invalid("maxMessageBytes must be at least 1") }
        if learnerCatchUpEntries < 0 { throw RaftError.invalid("learnerCatchUpEntries must not be negative") }
    }
}

/// A follower in replicate state whose window of in-flight appends is full, and that answers
/// a heartbeat, is alive: either its appends' answers are still on their way (a slow disk, a
/// long queue) or some appends were lost. The two ways on:
///
/// - `emptyAppend` (etcd's): stay in replicate and send one append with no entries at the
///   window's end. The follower acknowledges it once everything before it arrived, which
///   frees the window, or rejects it, which sends the leader back to probing from where the
///   follower's log ends. Nothing is sent twice while the follower is merely slow.
/// - `probe` (ours): drop to probe and send again from `match + 1`, up to a message's worth.
///   One round trip sooner when appends were really lost, but a slow follower gets what it
///   is still receiving a second time, and pipelining stops until it answers.
///
/// `nodelease-sim --flow-bench` measures both: on a slow follower over an in-order link
/// `emptyAppend` sends nothing twice where `probe` sends 7.6 times what was needed. But
/// `emptyAppend` assumes the empty append cannot overtake the appends before it: on the
/// simulator's network, which reorders, the empty append arrives first, is rejected, and
/// the leader goes back to probing anyway, after a round trip; with a window of one and
/// 64-byte messages that cost two of 10,000 seeds their liveness (seeds 3665 and 4671:
/// no write acknowledged in the 4 s after healing), where `probe` lost none. Our transport
/// keeps order on a connection, but not across a reconnect, so `probe` stays the default
/// until a policy that is both frugal and indifferent to order (resend only when `match`
/// has not moved for a heartbeat interval, say) has passed the same seeds.
public enum FullWindowPolicy: String, Sendable, CaseIterable {
    case emptyAppend
    case probe
}

/// Rule-breaking switches for checker tests. Each one disables one safety mechanism.
public struct FaultInjection: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Grant votes without the "candidate's log is at least as up to date" check (§5.4.1).
    public static let grantVoteIgnoringLog = FaultInjection(rawValue: 1 << 0)
    /// Commit entries of earlier terms by counting replicas (the Figure 8 bug, §5.4.2).
    public static let commitEarlierTermsByCounting = FaultInjection(rawValue: 1 << 1)
    /// Answer read requests with the commit index without confirming leadership (§6.4).
    public static let readIndexWithoutQuorum = FaultInjection(rawValue: 1 << 2)
    /// Forget the stored vote on restart, so a replica can vote twice in one term.
    public static let forgetVoteOnRestart = FaultInjection(rawValue: 1 << 3)
    /// Count the leader's own unpersisted entries toward commitment.
    public static let countUnpersistedLeaderEntries = FaultInjection(rawValue: 1 << 4)
    /// Send vote answers before the vote is durable (a crash then forgets a vote it gave).
    public static let sendVoteBeforePersist = FaultInjection(rawValue: 1 << 5)
    /// Acknowledge appends before the entries are durable (a crash then loses entries the
    /// leader counted toward commitment).
    public static let ackAppendBeforePersist = FaultInjection(rawValue: 1 << 6)
    /// Accept a membership change before an entry of the leader's own term has committed
    /// (the single-server-change bug of Ongaro's raft-dev post).
    public static let confChangeBeforeOwnTermCommit = FaultInjection(rawValue: 1 << 7)
    /// Let learners campaign, and count their votes and acknowledgements as a voter's.
    public static let learnersVote = FaultInjection(rawValue: 1 << 8)

    /// Command-line names of the faults.
    public static let names: [String: FaultInjection] = [
        "vote-ignoring-log": .grantVoteIgnoringLog,
        "commit-earlier-terms": .commitEarlierTermsByCounting,
        "read-without-quorum": .readIndexWithoutQuorum,
        "forget-vote": .forgetVoteOnRestart,
        "count-unpersisted": .countUnpersistedLeaderEntries,
        "vote-before-persist": .sendVoteBeforePersist,
        "ack-before-persist": .ackAppendBeforePersist,
        "conf-change-early": .confChangeBeforeOwnTermCommit,
        "learners-vote": .learnersVote,
    ]
}

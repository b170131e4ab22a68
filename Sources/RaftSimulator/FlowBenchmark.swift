import Raft

/// How a leader's flow control fares with a follower that falls behind: `nodelease-sim
/// --flow-bench` runs each scenario with each `FullWindowPolicy` and prints what was sent.
///
/// Three replicas in memory, ticked together; replica 1 leads and takes `proposalsPerTick`
/// entries every tick. Messages arrive `latency` ticks after they are sent, in order. During
/// the slow phase replica 3 handles only one message every `slowEvery` ticks (a slow disk):
/// its answers lag, and the leader's window to it fills. On a lossy link, messages to replica
/// 3 beyond `queueLimit` waiting are dropped (as the transport drops when a peer's buffer is
/// full). Deterministic: the same scenario always gives the same figures.
public struct FlowBenchmark {
    public struct Scenario: Sendable {
        public var name: String
        public var ticks = 400
        public var slowFrom = 50
        public var slowUntil = 200
        public var slowEvery = 4
        public var queueLimit: Int?
        public var proposalsPerTick = 10
        public var entryBytes = 200
        public var latency = 1
        public var inflight = 32
        public var maxMessageBytes = 64 << 10

        public init(name: String, queueLimit: Int? = nil) {
            self.name = name
            self.queueLimit = queueLimit
        }

        public static let standard: [Scenario] = [
            Scenario(name: "slow follower, lossless"),
            Scenario(name: "slow follower, lossy link (64 queued)", queueLimit: 64),
        ]
    }

    public struct Result: Sendable {
        /// Entries carried by appends to replica 3, counting repeats.
        public var entriesSent = 0
        /// Of those, entries sent again (an index already sent before).
        public var entriesResent = 0
        public var bytesSent = 0
        public var appendsSent = 0
        /// Appends to replica 3 dropped by the lossy link.
        public var dropped = 0
        /// Ticks after the slow phase until replica 3's log is within a tick's proposals of
        /// the leader's (nil: not within the run).
        public var catchUpTicks: Int?
        /// The leader's last index minus replica 3's, averaged over the slow phase and after.
        public var meanLag = 0.0
        /// Entries the leader committed (replica 2 keeps the quorum: the same for every policy).
        public var committed = 0
    }

    public static func run(_ s: Scenario, policy: FullWindowPolicy) throws -> Result {
        let members = Membership(voters: [1, 2, 3])
        var nodes: [ReplicaID: RaftNode] = [:]
        var storages: [ReplicaID: MemoryStorage] = [:]
        for i: UInt64 in 1...3 {
            var config = RaftConfig(
                id: ReplicaID(i), electionTicks: 10, heartbeatTicks: 1, maxMessageBytes: s.maxMessageBytes, maxInflightMessages: s.inflight)
            config.fullWindow = policy
            let storage = MemoryStorage(membership: members)
            storages[ReplicaID(i)] = storage
            nodes[ReplicaID(i)] = try RaftNode(config: config, storage: storage, random: DeterministicGenerator(seed: i))
        }
        var queues: [ReplicaID: [(at: Int, message: Message)]] = [1: [], 2: [], 3: []]
        var result = Result()
        var sentIndexes = Set<LogIndex>()
        var lagSum = 0
        var lagSamples = 0
        var now = 0

        func process(_ id: ReplicaID) throws {
            guard nodes[id]!.hasReady else { return }
            var driver = Driver(storage: storages[id]!)
            try nodes[id]!.handleReady(&driver)
            for m in driver.outbox {
                if m.to == 3 && m.kind == .append {
                    if let limit = s.queueLimit, queues[3]!.count >= limit {
                        result.dropped += 1
                        continue
                    }
                    result.appendsSent += 1
                    for e in m.entries {
                        result.entriesSent += 1
                        result.bytesSent += e.data.count
                        if !sentIndexes.insert(e.index).inserted { result.entriesResent += 1 }
                    }
                }
                queues[m.to]!.append((now + s.latency, m))
            }
        }

        nodes[1]!.campaign()
        let payload = [UInt8](repeating: 7, count: s.entryBytes)
        for tick in 0..<s.ticks {
            now = tick
            let slow = tick >= s.slowFrom && tick < s.slowUntil
            for id: ReplicaID in [1, 2, 3] {
                // Deliver what is due; the slow replica takes one message every `slowEvery` ticks.
                var budget = (id == 3 && slow) ? (tick % s.slowEvery == 0 ? 1 : 0) : Int.max
                while budget > 0, let first = queues[id]!.first, first.at <= tick {
                    queues[id]!.removeFirst()
                    nodes[id]!.step(first.message)
                    budget -= 1
                    try process(id)
                }
                nodes[id]!.tick()
                if id == 1 && nodes[1]!.role == .leader && tick > 5 {
                    _ = try nodes[1]!.propose(batch: Array(repeating: payload, count: s.proposalsPerTick))
                }
                try process(id)
            }
            if tick >= s.slowFrom {
                let lag = Int(nodes[1]!.lastIndex.rawValue) - Int(nodes[3]!.lastIndex.rawValue)
                lagSum += lag
                lagSamples += 1
                if tick >= s.slowUntil && result.catchUpTicks == nil && lag <= s.proposalsPerTick * (s.latency + 1) {
                    result.catchUpTicks = tick - s.slowUntil
                }
            }
        }
        result.meanLag = lagSamples == 0 ? 0 : Double(lagSum) / Double(lagSamples)
        result.committed = Int(nodes[1]!.commitIndex.rawValue)
        return result
    }

    struct Driver: ReadyDriver {
        let storage: MemoryStorage
        var outbox: [Message] = []

        mutating func persist(hardState: HardState?, entries: [Entry], snapshot: Snapshot?, sync: Bool) throws {
            if let snapshot { storage.applySnapshot(snapshot) }
            if let hardState { storage.setHardState(hardState) }
            if !entries.isEmpty { storage.append(entries) }
        }
        mutating func send(_ messages: [Message]) { outbox += messages }
        mutating func restore(_ snapshot: Snapshot) throws {}
        mutating func apply(_ entries: [Entry]) throws {}
        mutating func readsReady(_ states: [ReadState]) {}
    }
}

import Raft

/// A hand-driven cluster for unit tests: messages wait in `inFlight` until delivered, so a
/// test decides exactly what reaches whom.
final class TestCluster {
    var nodes: [ReplicaID: RaftNode] = [:]
    var storages: [ReplicaID: MemoryStorage] = [:]
    var configs: [ReplicaID: RaftConfig] = [:]
    var applied: [ReplicaID: [Entry]] = [:]
    var readStates: [ReplicaID: [ReadState]] = [:]
    var inFlight: [Message] = []
    /// Replicas that neither send nor receive.
    var isolated: Set<ReplicaID> = []
    let ids: [ReplicaID]

    init(
        size: Int, preVote: Bool = true, checkQuorum: Bool = true, electionTicks: Int = 10,
        maxInflight: Int = 256, maxMessageBytes: Int = 1 << 20,
        prepare: (ReplicaID, MemoryStorage) -> Void = { _, _ in }
    ) throws {
        ids = (1...size).map { ReplicaID(UInt64($0)) }
        let membership = Membership(voters: ids)
        for id in ids {
            let storage = MemoryStorage(membership: membership)
            prepare(id, storage)
            let config = RaftConfig(
                id: id, electionTicks: electionTicks, maxMessageBytes: maxMessageBytes,
                maxInflightMessages: maxInflight, preVote: preVote, checkQuorum: checkQuorum)
            storages[id] = storage
            configs[id] = config
            nodes[id] = try RaftNode(config: config, storage: storage, random: DeterministicGenerator(seed: id.rawValue))
            applied[id] = []
            readStates[id] = []
        }
    }

    subscript(_ id: ReplicaID) -> RaftNode { nodes[id]! }

    func with<T>(_ id: ReplicaID, _ body: (inout RaftNode) throws -> T) rethrows -> T {
        try body(&nodes[id]!)
    }

    /// Handles every pending Ready; messages go to `inFlight` (or are lost if isolated).
    func processReadies(only: [ReplicaID]? = nil) {
        for id in only ?? ids where nodes[id] != nil {
            while nodes[id]!.hasReady {
                var driver = Driver(cluster: self, id: id)
                try! nodes[id]!.handleReady(&driver)
            }
        }
    }

    /// Delivers every message in flight once (after processing readies first).
    @discardableResult
    func deliverAll(where filter: (Message) -> Bool = { _ in true }) -> Int {
        processReadies()
        let batch = inFlight
        inFlight = []
        var n = 0
        for m in batch {
            guard filter(m), nodes[m.to] != nil, !isolated.contains(m.to), !isolated.contains(m.from) else { continue }
            nodes[m.to]!.step(m)
            n += 1
        }
        processReadies()
        return n
    }

    /// Runs until no message is left.
    func stabilize(maxRounds: Int = 100) {
        for _ in 0..<maxRounds where deliverAll() > 0 || !inFlight.isEmpty {}
    }

    func elect(_ id: ReplicaID) {
        with(id) { $0.campaign() }
        stabilize()
    }

    func tick(_ id: ReplicaID, _ n: Int = 1) {
        with(id) { for _ in 0..<n { $0.tick() } }
    }

    func crash(_ id: ReplicaID) {
        nodes[id] = nil
        inFlight.removeAll { $0.to == id }
    }

    func restart(_ id: ReplicaID) throws {
        nodes[id] = try RaftNode(config: configs[id]!, storage: storages[id]!, random: DeterministicGenerator(seed: id.rawValue))
        applied[id] = []
    }

    var leaders: [ReplicaID] { ids.filter { nodes[$0]?.role == .leader } }

    struct Driver: ReadyDriver {
        let cluster: TestCluster
        let id: ReplicaID

        func persist(hardState: HardState?, entries: [Entry], snapshot: Snapshot?, sync: Bool) throws {
            let s = cluster.storages[id]!
            if let snapshot { s.applySnapshot(snapshot) }
            if let hardState { s.setHardState(hardState) }
            s.append(entries)
        }
        func send(_ messages: [Message]) {
            guard !cluster.isolated.contains(id) else { return }
            cluster.inFlight.append(contentsOf: messages)
        }
        func restore(_ snapshot: Snapshot) throws { cluster.applied[id] = [] }
        func apply(_ entries: [Entry]) throws { cluster.applied[id]!.append(contentsOf: entries) }
        func readsReady(_ states: [ReadState]) { cluster.readStates[id]!.append(contentsOf: states) }
    }
}

extension String {
    var bytes: [UInt8] { Array(utf8) }
}

import Raft

/// Drives a small cluster of `RaftNode`s by hand, one command at a time, and describes what
/// happened as text: the interpreter behind the protocol transcripts in
/// `Tests/RaftTests/testdata` (in the style of etcd-io/raft's interaction tests).
///
/// Commands (replica ids are 1-based):
/// - `add-nodes N [prevote=true|false] [checkquorum=true|false] [election=T] [heartbeat=T] [inflight=N] [msg-bytes=N] [index=K]`
///   (`index=K`: the new replicas start from a snapshot at index K, term 1)
/// - `bootstrap N [options]`: `add-nodes`, then the first new replica campaigns and the cluster settles,
///   quietly; prints only the resulting status
/// - `log-level none|info`: `none` hides the output of the commands that follow
/// - `report-unreachable ID PEER` (the transport tells the leader a peer cannot be reached)
/// - `campaign ID`, `propose ID TEXT`, `read-index ID REQ`, `transfer-leadership ID TARGET`
/// - `tick ID [COUNT]`, `tick-heartbeat ID`, `tick-election ID`
/// - `process-ready ID...`, `deliver-msgs ID...`, `stabilize [ID...]`
/// - `drop-msgs ID...` (drops messages waiting for those replicas)
/// - `partition A,B C,D` (only replicas in one group talk), `heal`
/// - `crash ID` (drops memory and the mailbox), `restart ID`
/// - `compact ID INDEX` (snapshot the applied state at INDEX and drop the log before it)
/// - `status [ID...]`, `raft-log ID`
public final class InteractionEnv {
    struct Replica {
        var node: RaftNode?
        var storage: MemoryStorage
        var config: RaftConfig
        var applied: [Entry] = []
        var snapshotApplied: Snapshot?
        var readStates: [ReadState] = []
    }

    private var replicas: [ReplicaID: Replica] = [:]
    private var order: [ReplicaID] = []
    private var mailboxes: [ReplicaID: [Message]] = [:]
    private var groups: [[ReplicaID]]? = nil
    private var output: [String] = []
    private var quiet = false

    public init() {}

    /// Runs one command line and returns its output (possibly empty).
    public func run(_ line: String) -> String {
        output = []
        let words = line.split(separator: " ").map(String.init)
        guard let command = words.first else { return "" }
        let args = Array(words.dropFirst())
        do {
            try execute(command, args)
        } catch {
            out("error: \(error)")
        }
        return output.joined(separator: "\n")
    }

    private func out(_ s: String) { if !quiet { output.append(s) } }

    private func ids(_ args: [String]) throws -> [ReplicaID] {
        if args.isEmpty { return order }
        return try args.map { try id($0) }
    }

    private func id(_ s: String) throws -> ReplicaID {
        guard let v = UInt64(s), replicas[ReplicaID(v)] != nil else { throw InteractionError.unknownReplica(s) }
        return ReplicaID(v)
    }

    private func node(_ id: ReplicaID) throws -> RaftNode {
        guard let n = replicas[id]?.node else { throw InteractionError.down(id) }
        return n
    }

    private func mutate(_ id: ReplicaID, _ body: (inout RaftNode) throws -> Void) throws {
        guard var n = replicas[id]?.node else { throw InteractionError.down(id) }
        replicas[id]!.node = nil
        defer { replicas[id]!.node = n }
        try body(&n)
    }

    private func execute(_ command: String, _ args: [String]) throws {
        switch command {
        case "add-nodes":
            try addNodes(args)
        case "bootstrap":
            let first = order.count
            let was = quiet
            quiet = true
            do {
                defer { quiet = was }
                try addNodes(args)
                try mutate(order[first]) { $0.campaign() }
                try stabilize(order)
            }
            for r in order { out(describeStatus(r)) }
        case "log-level":
            guard let level = args.first, level == "none" || level == "info" else { throw InteractionError.usage("log-level none|info") }
            quiet = level == "none"
        case "report-unreachable":
            guard args.count == 2 else { throw InteractionError.usage("report-unreachable ID PEER") }
            let peer = try id(args[1])
            try mutate(try id(args[0])) { $0.reportUnreachable(peer) }
        case "campaign":
            try mutate(try id(args[0])) { $0.campaign() }
        case "conf-change":
            try confChange(args)
        case "propose":
            let text = args.dropFirst().joined(separator: " ")
            try mutate(try id(args[0])) { _ = try $0.propose(Array(text.utf8)) }
        case "read-index":
            try mutate(try id(args[0])) { try $0.readIndex(ReadRequestID(UInt64(args[1]) ?? 0)) }
        case "transfer-leadership":
            let target = try id(args[1])
            try mutate(try id(args[0])) { try $0.transferLeadership(to: target) }
        case "tick":
            let count = args.count > 1 ? Int(args[1]) ?? 1 : 1
            try mutate(try id(args[0])) { for _ in 0..<count { $0.tick() } }
        case "tick-all":
            // N rounds of: every live replica ticks once, then everything stabilizes; quietly.
            let count = Int(args.first ?? "") ?? 1
            let was = quiet
            quiet = true
            defer { quiet = was }
            for _ in 0..<count {
                for r in order where replicas[r]?.node != nil { try mutate(r) { $0.tick() } }
                try stabilize(order.filter { replicas[$0]?.node != nil })
            }
        case "tick-heartbeat":
            let r = try id(args[0])
            let n = replicas[r]!.config.heartbeatTicks
            try mutate(r) { for _ in 0..<n { $0.tick() } }
        case "tick-election":
            let r = try id(args[0])
            let n = 2 * replicas[r]!.config.electionTicks
            try mutate(r) { for _ in 0..<n { $0.tick() } }
        case "process-ready":
            for r in try ids(args) { try processReady(r) }
        case "deliver-msgs":
            for r in try ids(args) { try deliver(r) }
        case "drop-msgs":
            for r in try ids(args) {
                for m in mailboxes[r] ?? [] { out("dropped: \(m)") }
                mailboxes[r] = []
            }
        case "stabilize":
            try stabilize(try ids(args))
        case "partition":
            groups = try args.map { try $0.split(separator: ",").map { try id(String($0)) } }
        case "heal":
            groups = nil
        case "crash":
            let r = try id(args[0])
            replicas[r]!.node = nil
            mailboxes[r] = []
        case "restart":
            let r = try id(args[0])
            var rep = replicas[r]!
            rep.node = try RaftNode(config: rep.config, storage: rep.storage, random: DeterministicGenerator(seed: r.rawValue))
            rep.applied = []
            replicas[r] = rep
        case "compact":
            let r = try id(args[0])
            let index = LogIndex(UInt64(args[1]) ?? 0)
            let storage = replicas[r]!.storage
            let membership = replicas[r]!.node?.membership(at: index)
            try storage.createSnapshot(at: index, membership: membership, data: Array("snap@\(index)".utf8))
            storage.compact(through: index)
        case "status":
            for r in try ids(args) { out(describeStatus(r)) }
        case "raft-log":
            let r = try id(args[0])
            let n = try node(r)
            if let entries = n.entries(n.firstIndex, n.lastIndex + 1) {
                if n.firstIndex > 1 { out("(entries through \(n.firstIndex - 1) compacted)") }
                for e in entries { out(e.shortDescription) }
                if entries.isEmpty { out("(empty)") }
            }
        default:
            throw InteractionError.unknownCommand(command)
        }
    }

    private func addNodes(_ args: [String]) throws {
        guard let count = Int(args.first ?? "") else { throw InteractionError.usage("add-nodes N [options]") }
        var preVote = true
        var checkQuorum = true
        var election = 10
        var heartbeat = 1
        var inflight = 256
        var msgBytes = 1 << 20
        var index: UInt64 = 0
        var join = false
        var voterCount: Int?
        var autoPromote = false
        var catchUp = 256
        for opt in args.dropFirst() {
            if opt == "join" {
                join = true
                continue
            }
            let kv = opt.split(separator: "=").map(String.init)
            guard kv.count == 2 else { throw InteractionError.usage(opt) }
            switch kv[0] {
            case "prevote": preVote = kv[1] == "true"
            case "checkquorum": checkQuorum = kv[1] == "true"
            case "election": election = Int(kv[1]) ?? election
            case "heartbeat": heartbeat = Int(kv[1]) ?? heartbeat
            case "inflight": inflight = Int(kv[1]) ?? inflight
            case "msg-bytes": msgBytes = Int(kv[1]) ?? msgBytes
            case "auto-promote": autoPromote = kv[1] == "true"
            case "catch-up": catchUp = Int(kv[1]) ?? catchUp
            case "voters":
                guard let n = Int(kv[1]), n >= order.count + count else { throw InteractionError.usage(opt) }
                voterCount = n
            case "index":
                guard let k = UInt64(kv[1]) else { throw InteractionError.usage(opt) }
                index = k
            default: throw InteractionError.usage(opt)
            }
        }
        let first = order.count + 1
        // `join`: new replicas of an existing cluster, with empty data directories and no
        // configuration until the leader's log (or snapshot) brings one.
        // `voters=N`: the configuration already holds replicas 1...N, some not added yet.
        let members = join ? Membership.empty : Membership(voters: (1...(voterCount ?? order.count + count)).map { ReplicaID(UInt64($0)) })
        for i in first..<(first + count) {
            let rid = ReplicaID(UInt64(i))
            let config = RaftConfig(
                id: rid, electionTicks: election, heartbeatTicks: heartbeat, maxMessageBytes: msgBytes,
                maxInflightMessages: inflight, preVote: preVote, checkQuorum: checkQuorum, autoPromote: autoPromote,
                learnerCatchUpEntries: catchUp)
            let storage = MemoryStorage(membership: members)
            if index > 0 {
                let at = LogIndex(index)
                storage.applySnapshot(
                    Snapshot(metadata: SnapshotMetadata(index: at, term: 1, membership: members), data: Array("snap@\(at)".utf8)))
                storage.setHardState(HardState(term: 1, commit: at))
            }
            let node = try RaftNode(config: config, storage: storage, random: DeterministicGenerator(seed: UInt64(i)))
            replicas[rid] = Replica(node: node, storage: storage, config: config)
            order.append(rid)
            mailboxes[rid] = []
        }
        out("added \(count) replicas: " + (join ? "joining, no configuration yet" : "\(members)") + (index > 0 ? " from a snapshot at \(index)" : ""))
    }

    /// `conf-change ID add-learner=N|promote=N|remove=N [expected=K] [force]`: proposes a
    /// membership change at replica ID, printing the entry's index or why it was refused.
    private func confChange(_ args: [String]) throws {
        let usage = InteractionError.usage("conf-change ID add-learner=N|promote=N|remove=N [expected=K] [force]")
        guard args.count >= 2 else { throw usage }
        let r = try id(args[0])
        var change: ConfChange?
        var expected: LogIndex?
        var force = false
        for opt in args.dropFirst() {
            if opt == "force" {
                force = true
                continue
            }
            let kv = opt.split(separator: "=").map(String.init)
            guard kv.count == 2 else { throw usage }
            switch kv[0] {
            case "add-learner": change = .addLearner(Member(id: try id(kv[1]), role: .learner))
            case "promote": change = .promote(try id(kv[1]))
            case "remove": change = .remove(try id(kv[1]))
            case "expected": expected = LogIndex(UInt64(kv[1]) ?? 0)
            default: throw usage
            }
        }
        guard let change else { throw usage }
        if case .addLearner(let m) = change, replicas[m.id] == nil {
            throw InteractionError.usage("add replica \(m.id) first: add-nodes 1 join")
        }
        do {
            var proposal: Proposal?
            try mutate(r) { proposal = try $0.proposeConfChange(change, expectedConfigIndex: expected, force: force) }
            out("\(change) proposed at \(proposal!.term)/\(proposal!.index)")
        } catch let e as ConfChangeError {
            out("refused: \(e)")
        } catch let e as RaftError {
            out("refused: \(e)")
        }
    }

    private func connected(_ a: ReplicaID, _ b: ReplicaID) -> Bool {
        guard let groups else { return true }
        return groups.contains { $0.contains(a) && $0.contains(b) }
    }

    /// Handles one Ready of replica `r`, printing it. Returns whether there was one.
    @discardableResult
    private func processReady(_ r: ReplicaID) throws -> Bool {
        guard let n = replicas[r]?.node, n.hasReady else { return false }
        out("> \(r) handling Ready")
        var driver = Driver(env: self, id: r)
        try mutate(r) { try $0.handleReady(&driver) }
        for line in driver.lines { out("  " + line) }
        let after = try node(r)
        out("  now: \(after.role.rawValue) term=\(after.term) commit=\(after.commitIndex) applied=\(after.appliedIndex) last=\(after.lastIndex)")
        return true
    }

    private func deliver(_ r: ReplicaID) throws -> Void {
        _ = try deliverCount(r)
    }

    private func deliverCount(_ r: ReplicaID) throws -> Int {
        let box = mailboxes[r] ?? []
        guard !box.isEmpty, replicas[r]?.node != nil else { return 0 }
        mailboxes[r] = []
        out("> \(r) receiving messages")
        for m in box {
            out("  \(m)")
            try mutate(r) { $0.step(m) }
        }
        return box.count
    }

    private func stabilize(_ which: [ReplicaID]) throws {
        var rounds = 0
        while rounds < 1000 {
            rounds += 1
            var progressed = false
            for r in which where replicas[r]?.node != nil {
                if try processReady(r) { progressed = true }
            }
            for r in which where replicas[r]?.node != nil {
                if try deliverCount(r) > 0 { progressed = true }
            }
            if !progressed { return }
        }
        out("stabilize: still busy after 1000 rounds")
    }

    private func describeStatus(_ r: ReplicaID) -> String {
        guard let n = replicas[r]?.node else { return "\(r): down" }
        let s = n.status
        var line = "\(r): \(s.role.rawValue) term=\(s.term) vote=\(s.vote.map(\.description) ?? "-") leader=\(s.leader.map(\.description) ?? "-") commit=\(s.commitIndex) applied=\(s.appliedIndex) last=\(s.lastIndex)"
        if !s.membership.learners.isEmpty || n.configIndex > 0 || s.membership.isEmpty {
            line += " config=\(n.configIndex) " + (s.membership.isEmpty ? "(none)" : s.membership.description)
            if !s.membership.isEmpty && !s.membership.isMember(r) { line += " (not a member)" }
        }
        if !s.peers.isEmpty {
            line += " progress: " + s.peers.map { "\($0.id):\($0.state)\($0.role == .learner ? "(learner)" : "") match=\($0.match) next=\($0.next)" }.joined(separator: ", ")
        }
        let reads = replicas[r]!.readStates
        if !reads.isEmpty { line += " reads: " + reads.map { "\($0.requestID)@\($0.index)" }.joined(separator: ",") }
        return line
    }

    /// Carries out a Ready for the harness, describing each effect.
    struct Driver: ReadyDriver {
        let env: InteractionEnv
        let id: ReplicaID
        var lines: [String] = []

        mutating func persist(hardState: HardState?, entries: [Entry], snapshot: Snapshot?, sync: Bool) throws {
            let storage = env.replicas[id]!.storage
            if let s = snapshot {
                storage.applySnapshot(s)
                lines.append("Snapshot: \(s.metadata.term)/\(s.metadata.index) \(s.metadata.membership)")
            }
            if let hs = hardState {
                storage.setHardState(hs)
                lines.append("HardState \(hs)")
            }
            if !entries.isEmpty {
                storage.append(entries)
                lines.append("Entries: " + entries.map(\.shortDescription).joined(separator: ", "))
            }
        }

        mutating func send(_ messages: [Message]) {
            for m in messages {
                if env.replicas[m.to]?.node == nil && m.to != id {
                    lines.append("lost: \(m) (replica down)")
                } else if env.connected(m.from, m.to) {
                    lines.append("send: \(m)")
                    env.mailboxes[m.to, default: []].append(m)
                } else {
                    lines.append("lost: \(m) (partition)")
                }
            }
        }

        mutating func restore(_ snapshot: Snapshot) throws {
            env.replicas[id]!.snapshotApplied = snapshot
            env.replicas[id]!.applied = []
        }

        mutating func apply(_ entries: [Entry]) throws {
            env.replicas[id]!.applied.append(contentsOf: entries)
            lines.append("Committed: " + entries.map(\.shortDescription).joined(separator: ", "))
        }

        mutating func readsReady(_ states: [ReadState]) {
            env.replicas[id]!.readStates.append(contentsOf: states)
            lines.append("ReadStates: " + states.map { "\($0.requestID)@\($0.index)" }.joined(separator: ", "))
        }
    }
}

enum InteractionError: Error, CustomStringConvertible {
    case unknownReplica(String)
    case unknownCommand(String)
    case down(ReplicaID)
    case usage(String)

    var description: String {
        switch self {
        case .unknownReplica(let s): "unknown replica \(s)"
        case .unknownCommand(let s): "unknown command \(s)"
        case .down(let id): "replica \(id) is down"
        case .usage(let s): "usage: \(s)"
        }
    }
}

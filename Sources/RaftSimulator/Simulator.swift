import LeaseRegistry
import Raft
import ReplicaCore

/// A seeded, single-threaded world that runs real `RaftNode`s: virtual time, a network that
/// delays, drops, duplicates, reorders and partitions messages, disks whose in-flight writes
/// are lost (or partly written) when a replica crashes, clocks that run at slightly different
/// rates, and clients that write and read a replicated state machine. `SafetyChecker` watches
/// every step; a liveness phase at the end requires the healed cluster to converge.
public final class Simulation {
    public let options: SimulationOptions
    public let knobs: Knobs
    let makeMachine: () -> any SimStateMachine

    /// A message on the wire, boxed so that events stay small in the queue.
    final class Envelope {
        let message: Message
        init(_ message: Message) { self.message = message }
    }

    enum Event {
        case tick(Int, epoch: Int)
        case deliver(Envelope)
        case persisted(Int, epoch: Int)
        case client(Int)
        /// Mail node `Int` reads the registry (lease workload).
        case leaseRead(Int)
        case clientTimeout(Int, op: UInt64)
        /// A forwarded client command reaches replica `Int`.
        case forwarded(Int, [UInt8], epoch: Int)
        /// Replica `Int` hears that its dial to `peer` was refused.
        case peerUnreachable(Int, peer: Int, epoch: Int)
        case nemesis
        case restart(Int)
        /// A crash inside the fsync window of the write in flight (epoch: that write's).
        case crashInFsync(Int, epoch: Int)
        /// A crash of that epoch's process, whatever it is doing.
        case crashNow(Int, epoch: Int)
        /// The Figure 8 schedule's next step, or its deadline for the step numbered.
        case figure8Step
        case figure8Timeout(step: Int)
        case ongaroStep
        case ongaroTimeout(step: Int)
        case ongaroPropose(m: Int, d: Int)
        case heal
        case livenessDeadline
        case finish
    }

    /// One application of a client key: its index and outcome, and the count of keyed
    /// applications with it.
    struct Application {
        var index: LogIndex
        var result: Result<LeaseReply, LeaseError>
        var sequence: Int
    }

    struct Waiter {
        var index: LogIndex
        var term: Term
        var client: Int
        var op: UInt64
        var command: [UInt8]
    }

    struct ReadWaiter {
        var client: Int
        var op: UInt64
        var requiredIndex: LogIndex
        var state: ReadState?
    }

    struct Replica {
        let id: ReplicaID
        let disk: SimDisk
        /// The register workload drives the Raft core itself...
        var node: RaftNode?
        /// ...the lease workload runs the server's `ReplicaCore`.
        var core: ReplicaCore?
        /// Requests waiting at this replica's core: request id → mail node and op.
        var requests: [UInt64: (client: Int, op: UInt64)] = [:]
        /// The entry a request of this replica's just applied at, for its acknowledgement.
        var justApplied: [UInt64: Entry] = [:]
        /// Linearizable reads waiting at this replica's core: the index acknowledged before
        /// each began, which it must reflect.
        var coreReads: [UInt64: LogIndex] = [:]
        /// The highest index this replica served a local read at, over all its restarts: a
        /// restarted replica must never serve an older registry than it served before.
        var servedLocal: LogIndex = 0
        var machine: any SimStateMachine
        var appliedIndex: LogIndex = 0
        var epoch = 0
        var rate = 1.0
        var inFlight: Ready?
        var waiters: [Waiter] = []
        var reads: [ReadWaiter] = []
        var ledTerm: Term = 0
        /// A paused process does nothing until then; its input waits.
        var pausedUntil: UInt64 = 0
        /// The highest commit and applied index seen in this epoch (they never go back while a
        /// process lives).
        var seenCommit: LogIndex = 0
        var seenApplied: LogIndex = 0
        /// A spare replica (membership changes) that has not been started yet.
        var spare = false
        var up: Bool { node != nil || core != nil }
        /// The Raft core, whichever workload runs it.
        var raft: RaftNode? { core?.node ?? node }
    }

    struct Client {
        var op: UInt64?
        var submitted = false
        var isWrite = true
        var command: [UInt8] = []
        var key = ""
        var leaderHint: Int?
        var startedAt: UInt64 = 0
    }

    var queue = EventQueue<Event>()
    var now: UInt64 = 0
    var random: DeterministicGenerator
    var replicas: [Replica] = []
    var clients: [Client]
    var nextOp: UInt64 = 0
    /// Directed links that drop everything (from index, to index).
    var blocked: Set<Int> = []
    var dropRate: Double
    var duplicateRate: Double
    var faultsOver = false
    var clientsStopped = false
    var healedAt: UInt64 = 0
    var acknowledged: [Waiter] = []
    var highestAcknowledged: LogIndex = 0
    var progressAfterHeal = false
    public internal(set) var checker = SafetyChecker()
    var leaseChecker = LeaseChecker()
    var mailNodes: [MailNode] = []
    var highestApplied: LogIndex = 0
    var renewalApplied: [RenewalKey: UInt64] = [:]
    /// The first application of every client key (lease workload): index and outcome.
    var applications: [String: [Application]] = [:]
    /// When each client key was first sent (true time).
    var keySubmittedAt: [String: UInt64] = [:]
    /// Renewals sent without a key (`Knobs.keylessRenewals`), by op.
    var keylessOps: Set<UInt64> = []
    /// The first application of each keyless request: through its replica's session (by
    /// replica, base and number) or, before cluster version 3, its replica-chosen key (base 0).
    var sessionApplications: [SessionRequest: Application] = [:]
    /// When (true time) each session (number 0) last had a request applied.
    var sessionLastApplied: [SessionRequest: UInt64] = [:]
    /// How many keyed commands have applied and been remembered (the registry's key limit
    /// counts these).
    var keyedApplications = 0
    var result: SimulationResult
    var traceLines: [String] = []
    var figure8 = Figure8.idle
    var ongaro = Ongaro.idle
    /// While the Figure 8 schedule's old leader is back: the highest index its appends got
    /// through to each replica.
    var figure8Through: [Int: LogIndex] = [:]
    /// Replicas removed by a committed configuration: they must never lead again.
    var removedIDs: Set<ReplicaID> = []

    /// A run of `options`, replicating `machine` (by default the one its workload uses).
    public init(options: SimulationOptions, machine: (any SimStateMachine.Type)? = nil) {
        let machine = machine ?? (options.workload == .leases ? LeaseMachine.self : RegisterMachine.self)
        self.options = options
        self.makeMachine = { machine.init() }
        self.knobs = Knobs(seed: options.seed, replicas: options.replicas)
        self.random = DeterministicGenerator(seed: options.seed)
        self.dropRate = knobs.dropRate
        self.duplicateRate = knobs.duplicateRate
        self.clients = Array(repeating: Client(), count: options.workload == .register ? options.clients : 0)
        self.result = SimulationResult(
            seed: options.seed, knobs: knobs, violations: [], events: 0, virtualMillis: 0,
            acknowledgedWrites: 0, failedWrites: 0, indeterminateOperations: 0, reads: 0,
            elections: 0, crashes: 0, snapshotsInstalled: 0, trace: [])
        let membership = Membership(voters: (1...knobs.replicas).map { ReplicaID(UInt64($0)) })
        for i in 0..<(knobs.replicas + knobs.spareReplicas) {
            // The in-memory file system cannot fail to open. Spares join an existing cluster:
            // they start with no configuration.
            let spare = i >= knobs.replicas
            let disk = try! SimDisk(membership: spare ? .empty : membership, durable: knobs.durableDisk)
            var r = Replica(id: ReplicaID(UInt64(i + 1)), disk: disk, machine: machine.init())
            r.spare = spare
            r.rate = 1 + (Double(random.next() % 2001) / 1000 - 1) * knobs.drift
            replicas.append(r)
        }
        if options.workload == .leases { setUpMailNodes() }
    }

    // MARK: Running

    /// Runs the whole scenario and returns what the checkers found.
    public func run() -> SimulationResult {
        trace("knobs \(knobs)")
        for i in replicas.indices where !replicas[i].spare { start(i) }
        for c in 0..<options.clients { queue.push(.client(c), at: micros(ms: random.next() % 50)) }
        if options.workload == .leases {
            for c in 0..<options.clients { queue.push(.leaseRead(c), at: micros(ms: 20 + random.next() % 100)) }
        }
        queue.push(.nemesis, at: micros(ms: nemesisDelay()))
        queue.push(.heal, at: micros(ms: options.faultMillis))
        queue.push(.livenessDeadline, at: micros(ms: options.faultMillis + options.livenessMillis))
        // Budgets: a run that exceeds one fails (with its replay command), never hangs.
        let eventLimit = 1_500_000
        let queueLimit = 50_000
        let logLimit = 200_000
        while let (t, event) = queue.pop() {
            now = t
            result.events += 1
            if case .finish = event { break }
            handle(event)
            if !checker.ok || !leaseChecker.ok || result.events > eventLimit { break }
            if queue.count > queueLimit || (result.events % 4096 == 0 && replicas.contains { ($0.raft?.lastIndex.rawValue ?? 0) > UInt64(logLimit) }) {
                checker.recordFailure(.liveness, "over budget: \(queue.count) events queued, logs up to \(replicas.compactMap { $0.raft?.lastIndex.rawValue }.max() ?? 0) entries")
                break
            }
        }
        if result.events > eventLimit {
            checker.recordFailure(.liveness, "more than \(eventLimit) events: the run does not settle")
        }
        for (rule, detail) in leaseChecker.failures {
            let r: Violation.Rule
            switch rule {
            case .twoHolders: r = .twoHolders
            case .holderOutlivedLease: r = .holderOutlivedLease
            case .fencing: r = .fencingToken
            case .mapping: r = .idHostnameMapping
            case .earlyExpiry: r = .earlyExpiry
            case .registryDivergence: r = .divergentState
            }
            checker.recordFailure(r, detail)
        }
        result.violations = checker.violations
        result.virtualMillis = now / 1000
        result.trace = traceLines
        return result
    }

    func micros(ms: UInt64) -> UInt64 { ms * 1000 }

    func nemesisDelay() -> UInt64 {
        knobs.nemesisMinMillis + random.next() % (knobs.nemesisMaxMillis - knobs.nemesisMinMillis + 1)
    }

    func trace(_ line: @autoclosure () -> String) {
        guard options.trace else { return }
        let ms = now / 1000
        let frac = now % 1000
        let pad = frac < 10 ? "00" : frac < 100 ? "0" : ""
        traceLines.append("\(ms).\(pad)\(frac)ms \(line())")
    }

    func handle(_ event: Event) {
        switch event {
        case .tick(let i, let epoch):
            guard replicas[i].epoch == epoch, replicas[i].up else { return }
            if deferIfPaused(i, event) { return }
            if replicas[i].core != nil {
                coreTick(i)
            } else {
                replicas[i].node!.tick()
                afterInput(i)
            }
            scheduleTick(i)
        case .deliver(let envelope):
            let m = envelope.message
            let i = Int(m.to.rawValue) - 1
            guard replicas[i].up else { return }
            if deferIfPaused(i, event) { return }
            if options.trace { trace("deliver \(m)") }
            if replicas[i].core != nil {
                coreDeliver(i, m)
            } else {
                replicas[i].node!.step(m)
                afterInput(i)
            }
        case .persisted(let i, let epoch):
            guard replicas[i].epoch == epoch else { return }
            if deferIfPaused(i, event) { return }
            if replicas[i].core != nil { corePersisted(i) } else { finishReady(i) }
        case .forwarded(let i, let data, let epoch):
            guard replicas[i].epoch == epoch, replicas[i].core != nil else { return }
            if deferIfPaused(i, event) { return }
            replicas[i].core!.forwarded(data, now: localNanos(i), wall: wallSeconds(i))
            coreCarryOut(i)
        case .peerUnreachable(let i, let peer, let epoch):
            guard replicas[i].epoch == epoch, replicas[i].core != nil, !replicas[peer].up else { return }
            if deferIfPaused(i, event) { return }
            replicas[i].core!.peerUnreachable(replicas[peer].id, now: localNanos(i))
            coreCarryOut(i)
        case .leaseRead(let c):
            leaseRead(c)
        case .client(let c):
            if options.workload == .leases { mailStep(c) } else { clientStep(c) }
        case .clientTimeout(let c, let op):
            if options.workload == .leases {
                // The op's own deadline: the mail node gives up on it (its attempts may still
                // apply, once: their key is the same).
                mailDone(c, op: op, outcome: .indeterminate, reply: nil)
                return
            }
            guard clients[c].op == op else { return }
            if faultsOver && clients[c].startedAt >= healedAt + micros(ms: 1500) {
                checker.recordFailure(
                    .liveness, "op \(op) started \((clients[c].startedAt - healedAt) / 1000)ms after heal timed out")
            }
            for i in replicas.indices {
                replicas[i].waiters.removeAll { $0.op == op }
                replicas[i].reads.removeAll { $0.op == op }
            }
            finishOp(c, outcome: .indeterminate)
        case .nemesis:
            guard !faultsOver else { return }
            nemesis()
            queue.push(.nemesis, at: now + micros(ms: nemesisDelay()))
        case .restart(let i):
            if !replicas[i].up { start(i) }
        case .crashInFsync(let i, let epoch):
            guard replicas[i].epoch == epoch, replicas[i].inFlight != nil, !faultsOver else { return }
            trace("nemesis: replica \(replicas[i].id) crashes inside its fsync")
            crash(i)
            queue.push(.restart(i), at: now + micros(ms: 10 + random.next() % 300))
        case .crashNow(let i, let epoch):
            guard replicas[i].epoch == epoch, replicas[i].up, !faultsOver else { return }
            trace("nemesis: new leader \(replicas[i].id) crashes right after replicating earlier terms' entries")
            crash(i)
            queue.push(.restart(i), at: now + micros(ms: 10 + random.next() % 300))
        case .figure8Step:
            figure8Step()
        case .figure8Timeout(let step):
            figure8Timeout(step: step)
        case .ongaroStep:
            ongaroStep()
        case .ongaroTimeout(let step):
            ongaroTimeout(step: step)
        case .ongaroPropose(let m, let d):
            ongaroPropose(m: m, d: d)
        case .heal:
            heal()
        case .livenessDeadline:
            livenessCheck()
        case .finish:
            break
        }
    }

    func deferIfPaused(_ i: Int, _ event: Event) -> Bool {
        guard replicas[i].pausedUntil > now else { return false }
        queue.push(event, at: replicas[i].pausedUntil)
        return true
    }

    // MARK: Replicas

    /// Starts (or restarts) replica `i` from its disk; `maxMessageBytes` overrides the knob for
    /// this incarnation.
    func start(_ i: Int, maxMessageBytes: Int? = nil) {
        var r = replicas[i]
        r.spare = false
        r.epoch += 1
        r.machine = makeMachine()
        do {
            try r.disk.reopen()
        } catch {
            checker.recordFailure(.acknowledgedWriteLost, "replica \(r.id) cannot recover its disk: \(error)")
            replicas[i] = r
            return
        }
        for note in r.disk.notes { trace("replica \(r.id) disk: \(note)") }
        let recovered = r.disk.retained()
        checker.observePersist(r.id, entries: recovered.entries, previousTerm: recovered.previousTerm)
        checker.observeHardState(r.id, r.disk.hardState)
        let snap = (try? r.disk.storage.snapshot())
        if let snap, !snap.isEmpty {
            do { try r.machine.restore(snap.data) } catch {
                checker.recordFailure(.divergentState, "replica \(r.id) cannot restore its snapshot")
            }
            r.appliedIndex = snap.metadata.index
        } else {
            r.appliedIndex = 0
        }
        let config = RaftConfig(
            id: r.id, electionTicks: knobs.electionTicks, heartbeatTicks: knobs.heartbeatTicks,
            maxMessageBytes: maxMessageBytes ?? knobs.maxMessageBytes, maxInflightMessages: knobs.maxInflight,
            preVote: knobs.preVote, checkQuorum: knobs.checkQuorum, autoPromote: !knobs.ongaro, faults: options.faults)
        do {
            r.node = try RaftNode(config: config, storage: r.disk.storage, random: random.fork())
        } catch {
            checker.recordFailure(.liveness, "replica \(r.id) cannot start: \(error)")
        }
        r.inFlight = nil
        r.ledTerm = 0
        r.seenCommit = 0
        r.seenApplied = 0
        replicas[i] = r
        if options.workload == .leases, let node = replicas[i].node, let machine = replicas[i].machine as? LeaseMachine {
            replicas[i].node = nil
            startCore(i, node: node, registry: machine.registry)
        }
        trace("replica \(r.id) starts: \(r.disk.hardState) last=\(replicas[i].raft?.lastIndex ?? 0)")
        scheduleTick(i)
    }

    func scheduleTick(_ i: Int) {
        let d = UInt64((Double(knobs.tickMicros) / replicas[i].rate).rounded())
        queue.push(.tick(i, epoch: replicas[i].epoch), at: now + d)
    }

    func crash(_ i: Int) {
        guard replicas[i].up else { return }
        result.crashes += 1
        // The write in progress may have reached the disk in part.
        let lost = replicas[i].disk.crash(inFlight: replicas[i].inFlight, random: &random)
        if let first = lost.entries.first {
            checker.observePersist(
                replicas[i].id, entries: lost.entries, previousTerm: try? replicas[i].disk.storage.term(first.index - 1))
        }
        if let hs = lost.hardState { checker.observeHardState(replicas[i].id, hs) }
        trace("replica \(replicas[i].id) crashes; \(lost.note)")
        replicas[i].node = nil
        replicas[i].core = nil
        replicas[i].inFlight = nil
        replicas[i].epoch += 1
        for w in replicas[i].waiters { finishOp(w.client, op: w.op, outcome: .indeterminate) }
        for r in replicas[i].reads { finishOp(r.client, op: r.op, outcome: .indeterminate) }
        replicas[i].waiters = []
        replicas[i].reads = []
        // Requests at a crashed replica get no answer: their mail nodes try another one.
        let orphaned = replicas[i].requests.values.sorted { $0.op < $1.op }
        replicas[i].requests = [:]
        replicas[i].justApplied = [:]
        replicas[i].coreReads = [:]
        for r in orphaned { mailRetry(r.client, op: r.op) }
        if options.workload == .leases { reportUnreachable(crashed: i) }
    }

    func afterInput(_ i: Int) {
        guard replicas[i].up else { return }
        if replicas[i].core != nil { return coreCarryOut(i) }
        defer { watchIndexes(i) }
        if replicas[i].node!.role == .leader && replicas[i].ledTerm != replicas[i].node!.term {
            observeNewLeader(i)
        }
        if replicas[i].inFlight == nil && replicas[i].node!.hasReady { startReady(i) }
    }

    /// Commit and applied indexes never go back within a process's life; every index up to a
    /// commit index is committed (leader completeness covers it before anyone applies it).
    func watchIndexes(_ i: Int) {
        // Read through the stored properties: `raft` would copy the whole replica per event.
        guard let commit = replicas[i].core?.node.commitIndex ?? replicas[i].node?.commitIndex else { return }
        let applied = replicas[i].appliedIndex
        if commit < replicas[i].seenCommit || applied < replicas[i].seenApplied {
            checker.recordFailure(
                .indexesMonotonic,
                "replica \(replicas[i].id): commit \(replicas[i].seenCommit) -> \(commit), applied \(replicas[i].seenApplied) -> \(applied)")
        }
        if commit > replicas[i].seenCommit, let node = replicas[i].raft {
            checker.observeCommitIndex(replicas[i].id, commit: commit, currentTerm: node.term, termAt: { node.term(at: $0) })
            if node.role == .leader { checkCommitQuorum(i, node) }
        }
        if let node = replicas[i].raft, node.role == .leader, node.pendingConfigChanges > 1 {
            checker.recordFailure(.membership, "leader \(node.id) has \(node.pendingConfigChanges) uncommitted configuration entries")
        }
        replicas[i].seenCommit = max(replicas[i].seenCommit, commit)
        replicas[i].seenApplied = max(replicas[i].seenApplied, applied)
    }

    /// During the faults, a write may be cut short by a crash inside its fsync window.
    func maybeCrashInFsync(_ i: Int, latency: UInt64) {
        guard !faultsOver, latency > 1, random.chance(knobs.fsyncCrashRate) else { return }
        queue.push(.crashInFsync(i, epoch: replicas[i].epoch), at: now + random.next() % latency)
    }

    func observeNewLeader(_ i: Int) {
        let node = replicas[i].raft!
        replicas[i].ledTerm = node.term
        // Figure 8: a new leader with entries of earlier terms not known committed sometimes
        // crashes right after replicating them.
        if figure8Running { figure8NewLeader(i) }
        if ongaroRunning { ongaroNewLeader(i) }
        if !faultsOver && !figure8Running && !ongaroRunning && node.lastIndex > node.commitIndex && random.chance(0.4) {
            queue.push(.crashNow(i, epoch: replicas[i].epoch), at: now + knobs.minDelayMicros + random.next() % (2 * knobs.maxDelayMicros + 1))
        }
        result.elections += 1
        noteRemoved()
        if removedIDs.contains(node.id) || !node.membership.contains(node.id) {
            checker.recordFailure(.membership, "replica \(node.id), removed from the cluster or not a voter (\(node.membership)), leads term \(node.term)")
        }
        trace("replica \(node.id) leads term \(node.term) last=\(node.lastIndex) commit=\(node.commitIndex)")
        checker.observeNewLeader(
            node.id, term: node.term, firstIndex: node.firstIndex, lastIndex: node.lastIndex,
            termAt: { node.term(at: $0) })
    }

    func startReady(_ i: Int) {
        let rd = replicas[i].node!.ready()
        send(rd.messagesBeforePersist)
        schedulePersist(i, rd)
    }

    /// The Ready is being written: it becomes durable after a random fsync latency (when it
    /// writes and must sync), unless the replica crashes inside that window.
    func schedulePersist(_ i: Int, _ rd: Ready) {
        replicas[i].inFlight = rd
        let latency = rd.writes && rd.mustSync ? 1 + random.next() % knobs.maxFsyncMicros : 0
        queue.push(.persisted(i, epoch: replicas[i].epoch), at: now + latency)
        maybeCrashInFsync(i, latency: latency)
    }

    /// Writes a Ready to the simulated disk and tells the checker what is now durable; false
    /// if the disk refused.
    func persistInFlight(_ i: Int, _ rd: Ready) -> Bool {
        let id = replicas[i].id
        let disk = replicas[i].disk
        do {
            try disk.save(hardState: rd.hardState, entries: rd.entries, snapshot: rd.snapshot, sync: rd.mustSync)
        } catch {
            checker.recordFailure(.acknowledgedWriteLost, "replica \(id) cannot write: \(error)")
            return false
        }
        if let first = rd.entries.first {
            checker.observePersist(id, entries: rd.entries, previousTerm: try? disk.storage.term(first.index - 1))
        }
        if let hs = rd.hardState, rd.mustSync || !disk.isDurable { checker.observeHardState(id, hs) }
        return true
    }

    func finishReady(_ i: Int) {
        guard let rd = replicas[i].inFlight else { return }
        let id = replicas[i].id
        guard persistInFlight(i, rd) else { return }
        rd.forEachStepAfterPersist { step in
            switch step {
            case .send(let messages):
                send(messages)
            case .installSnapshot(let s):
                result.snapshotsInstalled += 1
                trace("replica \(id) installs snapshot \(s.metadata.term)/\(s.metadata.index)")
                do { try replicas[i].machine.restore(s.data) } catch {
                    checker.recordFailure(.divergentState, "replica \(id) cannot restore a snapshot")
                }
                replicas[i].appliedIndex = s.metadata.index
                // Proposals covered by the snapshot: this replica never sees their entries.
                let covered = replicas[i].waiters.filter { $0.index <= s.metadata.index }
                replicas[i].waiters.removeAll { $0.index <= s.metadata.index }
                for w in covered { finishOp(w.client, op: w.op, outcome: .indeterminate) }
            case .apply(let entries):
                for e in entries { apply(i, e) }
            case .readStates(let states):
                for rs in states {
                    if let k = replicas[i].reads.firstIndex(where: { $0.op == rs.requestID.rawValue }) {
                        replicas[i].reads[k].state = rs
                    }
                }
            }
        }
        replicas[i].node!.advance(rd)
        replicas[i].inFlight = nil
        serveReads(i)
        maybeSnapshot(i)
        afterInput(i)
    }

    func apply(_ i: Int, _ e: Entry) {
        checker.observeApply(replicas[i].id, entry: e, currentTerm: replicas[i].node!.term)
        var reply: (any Sendable)?
        if e.kind == .normal { reply = replicas[i].machine.apply(e.data, index: e.index) }
        replicas[i].appliedIndex = e.index
        // Resolve proposals: ours if the term matches; lost if a newer term got there first
        // (terms never decrease along a log, so every waiter at or after it is lost too).
        var k = 0
        while k < replicas[i].waiters.count {
            let w = replicas[i].waiters[k]
            if w.index == e.index && w.term == e.term {
                replicas[i].waiters.remove(at: k)
                acknowledged.append(w)
                highestAcknowledged = max(highestAcknowledged, w.index)
                if faultsOver { progressAfterHeal = true }
                finishOp(w.client, op: w.op, outcome: .ok, reply: reply)
            } else if w.index <= e.index || w.term < e.term {
                replicas[i].waiters.remove(at: k)
                finishOp(w.client, op: w.op, outcome: .failed)
            } else {
                k += 1
            }
        }
    }

    func serveReads(_ i: Int) {
        var k = 0
        while k < replicas[i].reads.count {
            let r = replicas[i].reads[k]
            if let rs = r.state, replicas[i].appliedIndex >= rs.index {
                replicas[i].reads.remove(at: k)
                result.reads += 1
                checker.observeRead(
                    replica: replicas[i].id, index: rs.index, requiredIndex: r.requiredIndex,
                    detail: "op \(r.op) at \(now / 1000)ms")
                finishOp(r.client, op: r.op, outcome: .ok)
            } else {
                k += 1
            }
        }
    }

    func maybeSnapshot(_ i: Int) {
        let disk = replicas[i].disk
        let snapIndex = (try? disk.storage.snapshotMetadata().index) ?? 0
        let applied = replicas[i].appliedIndex
        guard applied >= snapIndex + knobs.snapshotEvery else { return }
        // Entries the state machine applied were persisted first, so they are in storage.
        do {
            try disk.createSnapshot(at: applied, membership: replicas[i].raft?.membership(at: applied), data: stateSnapshot(i))
            let keep = LogIndex(UInt64(knobs.keepAfterSnapshot))
            if applied > keep { try disk.compact(through: applied - Int(keep.rawValue)) }
        } catch {
            checker.recordFailure(.divergentState, "replica \(replicas[i].id) cannot snapshot at \(applied): \(error)")
        }
    }

    /// The replicated state's snapshot and digest, whichever workload holds it.
    func stateSnapshot(_ i: Int) -> [UInt8] { replicas[i].core?.registry.snapshot() ?? replicas[i].machine.snapshot() }

    func digest(_ i: Int) -> UInt64 {
        if let core = replicas[i].core { return FNV1a.hash(core.registry.snapshot()) }
        return replicas[i].machine.digest
    }

    // MARK: Network

    func send(_ messages: [Message]) {
        for m in messages {
            let from = Int(m.from.rawValue) - 1
            let to = Int(m.to.rawValue) - 1
            if blocked.contains(from * 16 + to) || random.chance(dropRate) || figure8Drops(m) {
                if options.trace { trace("drop \(m)") }
                continue
            }
            let copies = random.chance(duplicateRate) ? 2 : 1
            for _ in 0..<copies {
                let delay = knobs.minDelayMicros + random.next() % (knobs.maxDelayMicros - knobs.minDelayMicros + 1)
                queue.push(.deliver(Envelope(m)), at: now + delay)
            }
        }
    }

    // MARK: Faults

    func upCount() -> Int { replicas.filter(\.up).count }

    func currentLeader() -> Int? {
        var best: Int?
        for i in replicas.indices {
            guard let n = replicas[i].raft, n.role == .leader else { continue }
            if best == nil || n.term > replicas[best!].raft!.term { best = i }
        }
        return best
    }

    func block(_ a: [Int], _ b: [Int], bothWays: Bool) {
        for x in a {
            for y in b {
                blocked.insert(x * 16 + y)
                if bothWays { blocked.insert(y * 16 + x) }
            }
        }
    }

    func nemesis() {
        let n = replicas.count
        if figure8Running || ongaroRunning { return }
        if knobs.figure8, case .idle = figure8, random.chance(0.3), startFigure8() { return }
        if knobs.ongaro, case .idle = ongaro { return startOngaro() }
        if knobs.membershipChanges && random.chance(0.2) { return membershipNemesis() }
        let roll = random.next() % 100
        switch roll {
        case 0..<20:
            // Random halves.
            var a: [Int] = []
            var b: [Int] = []
            for i in 0..<n { if random.next() % 2 == 0 { a.append(i) } else { b.append(i) } }
            if a.isEmpty || b.isEmpty { return }
            blocked = []
            block(a, b, bothWays: true)
            trace("nemesis: partition \(a.map { $0 + 1 }) | \(b.map { $0 + 1 })")
        case 20..<32:
            guard let l = currentLeader() else { return }
            blocked = []
            block([l], Array(0..<n).filter { $0 != l }, bothWays: true)
            trace("nemesis: isolate leader \(l + 1)")
        case 32..<42:
            // One-way drops.
            blocked = []
            for x in 0..<n { for y in 0..<n where x != y && random.chance(0.3) { blocked.insert(x * 16 + y) } }
            trace("nemesis: one-way drops \(blocked.sorted().map { "\($0 / 16 + 1)->\($0 % 16 + 1)" })")
        case 42..<64:
            // Crash a replica (the leader half of the time), keeping a majority able to come
            // back: never more than a minority down at once.
            guard mayCrashAnotherVoter() else { return }
            let candidates = replicas.indices.filter { replicas[$0].up }
            let victim = random.chance(0.5) ? (currentLeader() ?? candidates[0]) : candidates[Int(random.next() % UInt64(candidates.count))]
            crash(victim)
            queue.push(.restart(victim), at: now + micros(ms: 20 + random.next() % 1200))
        case 64..<84:
            blocked = []
            trace("nemesis: heal network")
        case 84..<92:
            guard let l = currentLeader() else { return }
            let target = ReplicaID(UInt64(1 + random.next() % UInt64(n)))
            trace("nemesis: transfer leadership \(l + 1) -> \(target)")
            if replicas[l].core != nil {
                try? replicas[l].core!.transferLeadership(to: target, now: localNanos(l))
            } else {
                try? replicas[l].node!.transferLeadership(to: target)
            }
            afterInput(l)
        case 92..<94:
            // Power loss: every replica at once, each losing what it had not synced.
            trace("nemesis: power loss")
            for victim in replicas.indices where replicas[victim].up {
                crash(victim)
                queue.push(.restart(victim), at: now + micros(ms: 20 + random.next() % 500))
            }
        default:
            // Pause a process (SIGSTOP): it keeps its memory, its timers stop and its input
            // waits; on resume it acts on stale beliefs. Often the leader, often for longer
            // than an election timeout.
            let ups = replicas.indices.filter { replicas[$0].up }
            guard !ups.isEmpty else { return }
            let p = random.chance(0.5) ? (currentLeader() ?? ups[0]) : ups[Int(random.next() % UInt64(ups.count))]
            let ms = 50 + random.next() % 800
            replicas[p].pausedUntil = now + micros(ms: ms)
            trace("nemesis: pause \(p + 1) for \(ms)ms")
        }
    }

    func heal() {
        faultsOver = true
        healedAt = now
        blocked = []
        dropRate = 0
        if figure8Running {
            restartOneByteLeader()
            figure8 = .done
        }
        if ongaroRunning { ongaro = .done }
        for i in replicas.indices { replicas[i].pausedUntil = min(replicas[i].pausedUntil, now) }
        trace("heal: network healed, every replica up")
        for i in replicas.indices where !replicas[i].up && !replicas[i].spare { start(i) }
    }

    func livenessCheck() {
        clientsStopped = true
        let members = finalMembers()
        let ups = members.compactMap { replicas[$0].raft }
        let leaders = ups.filter { $0.role == .leader }
        guard let leader = leaders.max(by: { $0.term < $1.term }) else {
            checker.recordFailure(.liveness, "no leader \(options.livenessMillis)ms after healing")
            return
        }
        if !ups.allSatisfy({ $0.leader == leader.id && $0.term == leader.term }) {
            checker.recordFailure(.liveness, "replicas disagree on the leader \(options.livenessMillis)ms after healing")
        }
        if !progressAfterHeal && options.clients > 0 {
            checker.recordFailure(.liveness, "no write was acknowledged after healing")
        }
        // Let in-flight work finish, then everyone must agree.
        settle()
    }

    /// After the liveness deadline: no new client work; the cluster must finish what is in
    /// flight and converge (every replica applied the same commit index, same state).
    func settle() {
        let deadline = now + micros(ms: options.livenessMillis)
        var converged = isConverged()
        while !converged, let (t, event) = queue.pop() {
            if t > deadline { break }
            now = t
            result.events += 1
            handle(event)
            converged = isConverged()
        }
        let pending = replicas.reduce(0) { $0 + $1.waiters.count + $1.requests.count }
        if pending > 0 {
            checker.recordFailure(.liveness, "\(pending) proposals unresolved after healing")
        }
        let commit = replicas.compactMap(\.raft).map(\.commitIndex).max() ?? 0
        let members = finalMembers()
        for r in members.map({ replicas[$0] }) where r.appliedIndex != commit {
            checker.recordFailure(
                .liveness, "replica \(r.id) applied \(r.appliedIndex), the cluster committed \(commit)")
        }
        let atCommit = members.filter { replicas[$0].appliedIndex == commit }
        if Set(atCommit.map { digest($0) }).count > 1 {
            let detail = atCommit.map { "\(replicas[$0].id): digest \(digest($0))" }
            checker.recordFailure(
                .divergentState, "replicas at index \(commit) have different states (\(detail.joined(separator: ", ")))")
        }
        for w in acknowledged {
            checker.checkAcknowledged(index: w.index, term: w.term, data: w.command, operation: "op \(w.op)")
        }
        queue.push(.finish, at: now)
    }

    func isConverged() -> Bool {
        guard replicas.allSatisfy({ $0.waiters.isEmpty && $0.requests.isEmpty && $0.inFlight == nil }) else { return false }
        let members = finalMembers()
        let nodes = members.compactMap { replicas[$0].raft }
        guard nodes.count == members.count, let commit = nodes.map(\.commitIndex).max() else { return false }
        return members.allSatisfy { replicas[$0].appliedIndex == commit && replicas[$0].raft!.lastIndex == commit }
    }

    // MARK: Clients

    enum Outcome { case ok, failed, indeterminate }

    func clientStep(_ c: Int) {
        guard !clientsStopped, !clients[c].submitted else { return }
        if clients[c].op == nil {
            nextOp += 1
            clients[c].op = nextOp
            clients[c].isWrite = random.next() % 10 < 7
            clients[c].key = "k\(random.next() % 5)"
            clients[c].command = RegisterMachine.command(op: nextOp, key: clients[c].key, value: "v\(nextOp)")
            clients[c].startedAt = now
            queue.push(.clientTimeout(c, op: nextOp), at: now + micros(ms: 1000))
        }
        let op = clients[c].op!
        guard let target = pickReplica(hint: clients[c].leaderHint) else { return retry(c) }
        if clients[c].isWrite {
            do {
                let p = try replicas[target].node!.propose(clients[c].command)
                replicas[target].waiters.append(
                    Waiter(index: p.index, term: p.term, client: c, op: op, command: clients[c].command))
                trace("client \(c) op \(op) proposes at \(target + 1): \(p.term)/\(p.index)")
                clients[c].submitted = true
                clients[c].leaderHint = target
            } catch RaftError.notLeader(let hint) {
                clients[c].leaderHint = hint.map { Int($0.rawValue) - 1 }
                return retry(c)
            } catch {
                clients[c].leaderHint = nil
                return retry(c)
            }
        } else {
            do {
                try replicas[target].node!.readIndex(ReadRequestID(op))
                replicas[target].reads.append(
                    ReadWaiter(client: c, op: op, requiredIndex: highestAcknowledged, state: nil))
                trace("client \(c) op \(op) reads at \(target + 1), must see \(highestAcknowledged)")
                clients[c].submitted = true
            } catch {
                clients[c].leaderHint = nil
                return retry(c)
            }
        }
        afterInput(target)
    }

    /// The replica a client sends to: its hint when that one is up (and not paused), else a
    /// random live one; nil when none is.
    func pickReplica(hint: Int?) -> Int? {
        let ups = replicas.indices.filter { replicas[$0].up && replicas[$0].pausedUntil <= now }
        guard !ups.isEmpty else { return nil }
        if let hint, ups.contains(hint) { return hint }
        return ups[Int(random.next() % UInt64(ups.count))]
    }

    func retry(_ c: Int) {
        queue.push(.client(c), at: now + micros(ms: 5 + random.next() % 20))
    }

    func finishOp(_ c: Int, op: UInt64, outcome: Outcome, reply: (any Sendable)? = nil) {
        if options.workload == .leases { return mailDone(c, op: op, outcome: outcome, reply: reply) }
        guard clients[c].op == op else { return }
        finishOp(c, outcome: outcome)
    }

    func finishOp(_ c: Int, outcome: Outcome) {
        switch outcome {
        case .ok: if clients[c].isWrite { result.acknowledgedWrites += 1 }
        case .failed: result.failedWrites += 1
        case .indeterminate: result.indeterminateOperations += 1
        }
        clients[c].op = nil
        clients[c].submitted = false
        queue.push(.client(c), at: now + micros(ms: random.next() % 30))
    }
}

/// One request of a replica session: the replica, its session's base, the request's number.
struct SessionRequest: Hashable {
    var replica: UInt64
    var base: UInt64
    var number: UInt64
}

/// How the leader is replicating to one follower (etcd-io/raft's tracker, in small).
enum ReplicationState: String, Sendable {
    /// One append at a time until the follower's match point is found.
    case probe
    /// Pipelined appends, bounded by the in-flight window.
    case replicate
    /// An InstallSnapshot is on its way; appends wait.
    case snapshot
}

/// A bounded window of in-flight appends: the last index each one carries, oldest first.
struct Inflights {
    let capacity: Int
    private var lastIndexes: [LogIndex] = []
    private var start = 0

    init(capacity: Int) { self.capacity = max(1, capacity) }

    var count: Int { lastIndexes.count - start }
    var isFull: Bool { count >= capacity }

    mutating func add(_ index: LogIndex) { lastIndexes.append(index) }

    /// Frees every in-flight append whose last index is `<= index`.
    mutating func free(upTo index: LogIndex) {
        while start < lastIndexes.count && lastIndexes[start] <= index { start += 1 }
        if start > 64 && start * 2 > lastIndexes.count {
            lastIndexes.removeFirst(start)
            start = 0
        }
    }

    mutating func reset() {
        lastIndexes.removeAll(keepingCapacity: true)
        start = 0
    }
}

/// The leader's knowledge of one replica's log.
struct Progress {
    var match: LogIndex = 0
    var next: LogIndex
    var state: ReplicationState = .probe
    /// In probe state: an append was sent and no answer came yet.
    var probeSent = false
    /// In snapshot state: the index of the snapshot sent.
    var pendingSnapshot: LogIndex = 0
    /// Ticks since the snapshot was sent, to retry one that was lost.
    var snapshotTicks = 0
    /// Heard from since the last CheckQuorum round.
    var recentActive = false
    /// Leader ticks since this replica last answered.
    var silentTicks = 0
    /// Learners: ticks the log has stayed within `learnerCatchUpEntries` of the commit index.
    var caughtUpTicks = 0
    /// The highest commit index sent to this replica that it may not have yet (carried by an
    /// append or heartbeat in flight). When the leader's commit index is above it and the
    /// replica holds entries above it, the replica may be missing the commit index.
    var sentCommit: LogIndex = 0
    var inflights: Inflights

    init(next: LogIndex, inflightCapacity: Int) {
        self.next = next
        self.inflights = Inflights(capacity: inflightCapacity)
    }

    var isPaused: Bool {
        switch state {
        case .probe: probeSent
        case .replicate: inflights.isFull
        case .snapshot: true
        }
    }

    mutating func becomeProbe() {
        rewind(to: state == .snapshot ? max(match + 1, pendingSnapshot + 1) : match + 1)
        state = .probe
        probeSent = false
        pendingSnapshot = 0
        inflights.reset()
    }

    /// Sends resume from `index`: what was sent beyond it, commit index included, may not
    /// have arrived.
    mutating func rewind(to index: LogIndex) {
        next = index
        sentCommit = min(sentCommit, next - 1)
    }

    mutating func becomeReplicate() {
        state = .replicate
        next = match + 1
        probeSent = false
        pendingSnapshot = 0
        inflights.reset()
    }

    mutating func becomeSnapshot(_ index: LogIndex) {
        state = .snapshot
        pendingSnapshot = index
        sentCommit = index
        snapshotTicks = 0
        probeSent = false
        inflights.reset()
    }

    /// A successful acknowledgement up to `index`. Returns whether `match` moved.
    mutating func maybeUpdate(_ index: LogIndex) -> Bool {
        var updated = false
        if match < index {
            match = index
            updated = true
            probeSent = false
        }
        next = max(next, index + 1)
        return updated
    }

    /// An append to this replica went out carrying entries through `last`.
    mutating func sentEntries(last: LogIndex?) {
        switch state {
        case .replicate:
            if let last {
                next = last + 1
                inflights.add(last)
            }
        case .probe:
            probeSent = true
        case .snapshot:
            break
        }
    }

    /// A rejection of the append at `rejected`; `hint` is where the follower's log may match.
    /// Returns false when the rejection is stale.
    mutating func maybeDecrease(rejected: LogIndex, hint: LogIndex) -> Bool {
        if state == .replicate {
            if rejected <= match { return false }
            rewind(to: match + 1)
            return true
        }
        if next - 1 != rejected { return false }
        rewind(to: max(min(rejected, hint + 1), match + 1))
        probeSent = false
        return true
    }

    /// Whether this replica may be missing the commit index `committed`: it was never sent one
    /// that high, and it holds (or has been sent) entries above the one it was sent.
    func mayMissCommit(_ committed: LogIndex) -> Bool { committed > sentCommit && sentCommit < next - 1 }
}

/// The long polls of the registry waiting on one replica (shared/API.md, "Watching the
/// registry"): who waits for a registry index beyond which value, until when. Pure: the shell
/// gives it the registry index after each apply, the time on each tick and whether a leader is
/// known, and carries out what it answers (resuming the waiting requests).
///
/// Bounded: at most `limit` wait at once; a request beyond is refused, not queued.
public struct RegistryWatches: Sendable {
    public struct Waiter: Sendable, Hashable {
        public var id: UInt64
        /// Answer once the registry index is beyond this.
        public var after: UInt64
        /// Answer (with no change) at this time, in the shell's monotonic nanoseconds.
        public var deadline: UInt64

        public init(id: UInt64, after: UInt64, deadline: UInt64) {
            self.id = id
            self.after = after
            self.deadline = deadline
        }
    }

    /// Why a wait ends.
    public enum Outcome: Sendable, Hashable {
        /// The registry index moved beyond the waiter's.
        case changed
        /// The wait passed without a change.
        case timedOut
        /// This replica has known no leader for longer than `leaderlessLimit`: its registry may
        /// be ever older, so the watch ends with 503 and the client asks another replica.
        case noLeader
    }

    public let limit: Int
    /// How long a replica may go without a leader before its waits end (the election timeout).
    public let leaderlessLimit: UInt64
    /// In the order they came (so the oldest are answered first).
    private var waiters: [Waiter] = []
    /// Since when no leader is known (nil: one is).
    private var leaderlessSince: UInt64?

    public init(limit: Int, leaderlessLimitNanos: UInt64) {
        self.limit = limit
        self.leaderlessLimit = leaderlessLimitNanos
    }

    public var count: Int { waiters.count }

    /// Whether a new watch must be answered 503 at once: no leader for too long.
    public func leaderLost(now: UInt64) -> Bool {
        guard let since = leaderlessSince else { return false }
        return now >= since && now - since > leaderlessLimit
    }

    /// Whether a leader is known at `now` (each tick says so; so does a new watch, so that a
    /// leader found since the last tick counts).
    public mutating func observe(leaderKnown: Bool, now: UInt64) {
        if leaderKnown {
            leaderlessSince = nil
        } else if leaderlessSince == nil {
            leaderlessSince = now
        }
    }

    /// Adds a waiter; false when `limit` already wait.
    public mutating func add(_ w: Waiter) -> Bool {
        guard waiters.count < limit else { return false }
        waiters.append(w)
        return true
    }

    /// Removes a waiter that went away (its request was cancelled); true if it was waiting.
    @discardableResult
    public mutating func remove(id: UInt64) -> Bool {
        guard let k = waiters.firstIndex(where: { $0.id == id }) else { return false }
        waiters.remove(at: k)
        return true
    }

    /// The registry index is now `index`: the waiters it answers, oldest first.
    public mutating func registryChanged(to index: UInt64) -> [(id: UInt64, outcome: Outcome)] {
        take { $0.after < index ? .changed : nil }
    }

    /// A tick at `now`, with or without a known leader: the waiters whose wait has passed, and
    /// every waiter once no leader has been known for longer than `leaderlessLimit`.
    public mutating func tick(now: UInt64, leaderKnown: Bool) -> [(id: UInt64, outcome: Outcome)] {
        observe(leaderKnown: leaderKnown, now: now)
        if leaderLost(now: now) { return take { _ in .noLeader } }
        return take { $0.deadline <= now ? .timedOut : nil }
    }

    /// Every waiter (the replica is stopping).
    public mutating func removeAll() -> [UInt64] {
        defer { waiters.removeAll() }
        return waiters.map(\.id)
    }

    private mutating func take(_ decide: (Waiter) -> Outcome?) -> [(id: UInt64, outcome: Outcome)] {
        var out: [(id: UInt64, outcome: Outcome)] = []
        var kept: [Waiter] = []
        kept.reserveCapacity(waiters.count)
        for w in waiters {
            if let o = decide(w) { out.append((w.id, o)) } else { kept.append(w) }
        }
        if !out.isEmpty { waiters = kept }
        return out
    }
}

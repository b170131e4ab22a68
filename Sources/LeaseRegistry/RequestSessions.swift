import Raft

/// What the registry keeps of one replica session (`SessionStamp`): enough to apply each of
/// the session's requests at most once, however often the replica re-sends it and however
/// late a copy commits while the session is kept (it is forgotten after the idempotency
/// window's time idle), without keeping any request's outcome.
///
/// A copy of request `n` changes the registry only if `n >= done` and `n` is not in
/// `applied`. `done` only moves up, to what the session's entries say, and `applied` keeps only
/// numbers at or above it, so it holds the requests the replica still has in flight (bounded by
/// its request timeout), not a window of them. A copy below `done` is one the replica has
/// answered (it applied) or given up on (its client was told the outcome is unknown), so not
/// applying it is right either way.
struct RequestSession: Sendable, Hashable {
    var replica: UInt64
    var base: UInt64
    var done: UInt64 = 0
    /// The numbers at or above `done` that applied, ascending.
    var applied: [UInt64] = []
    /// The registry clock when a command of the session last came (applied or discarded).
    var at: UInt64
}

/// The sessions of the window, ordered by (replica, base). There are few: one per start of a
/// replica, forgotten once idle for the window's time.
struct RequestSessions: Sendable, Hashable {
    private(set) var all: [RequestSession] = []

    /// At most this many sessions are kept (the least recently used goes first): a thousand
    /// replica starts within the window, so never reached but by a fault.
    static let maxSessions = 1024

    /// At most this many numbers are kept for one session, far above the writes one replica
    /// has in flight at once (those its clients wait for, within its request timeout). Past
    /// it, the session's `done` moves up past the lowest, as if the replica had given up on
    /// it: a copy of that write still to come is discarded, and its request times out. The
    /// bound of the whole: 1,024 sessions of 65,536 numbers, 512 MiB, which only a fault could
    /// approach (a session holds what its replica has in flight, 65 numbers at 64 connections).
    static let maxInFlight = 65_536

    var isEmpty: Bool { all.isEmpty }

    /// Whether request `number` of `stamp`'s session is new, recording it as applied if so.
    /// `maxApplied`: past this many numbers in flight, `done` moves up past the lowest, as if
    /// the replica had given up on everything below it (`maxInFlight`; lower in tests).
    /// `ignoreApplied`: a planted fault, a repeat at or above `done` applies again.
    mutating func admit(
        _ stamp: SessionStamp, number: UInt64, clock: UInt64, maxApplied: Int = maxInFlight, ignoreApplied: Bool = false
    ) -> Bool {
        var i = position(replica: stamp.replica, base: stamp.base)
        if i == all.count || all[i].replica != stamp.replica || all[i].base != stamp.base {
            if all.count >= Self.maxSessions {
                forgetLeastRecent()
                i = position(replica: stamp.replica, base: stamp.base)
            }
            all.insert(RequestSession(replica: stamp.replica, base: stamp.base, at: clock), at: i)
        }
        return Self.admit(&all[i], done: stamp.done, number: number, clock: clock, maxApplied: maxApplied, ignoreApplied: ignoreApplied)
    }

    private static func admit(
        _ s: inout RequestSession, done: UInt64, number: UInt64, clock: UInt64, maxApplied: Int, ignoreApplied: Bool
    ) -> Bool {
        s.at = clock
        if done > s.done {
            s.done = done
            s.applied.removeFirst(s.applied.partitionPoint { $0 < done })
        }
        guard number >= s.done else { return false }
        let k = s.applied.partitionPoint { $0 < number }
        if k < s.applied.count && s.applied[k] == number && !ignoreApplied { return false }
        s.applied.insert(number, at: k)
        if s.applied.count > max(maxApplied, 1) {
            s.done = s.applied[0] + 1
            s.applied.removeFirst()
        }
        return true
    }

    /// Forgets the sessions idle for more than `span` nanoseconds of registry clock.
    mutating func forget(idleLongerThan span: UInt64, clock: UInt64) {
        guard clock != 0 else { return }
        all.removeAll { $0.at < clock && clock - $0.at > span }
    }

    private mutating func forgetLeastRecent() {
        var oldest = 0
        for (i, s) in all.enumerated() where s.at < all[oldest].at { oldest = i }
        all.remove(at: oldest)
    }

    /// Where (replica, base) is or would go.
    private func position(replica: UInt64, base: UInt64) -> Int { all.partitionPoint { ($0.replica, $0.base) < (replica, base) } }

    /// How many request numbers are kept over all sessions.
    var numbersKept: Int { all.reduce(0) { $0 + $1.applied.count } }

    // MARK: Snapshots

    func encode(into w: inout ByteWriter) {
        w.u32(UInt32(all.count))
        for s in all {
            w.u64(s.replica)
            w.u64(s.base)
            w.u64(s.done)
            w.u64(s.at)
            w.u32(UInt32(s.applied.count))
            for n in s.applied { w.u64(n) }
        }
    }

    /// Reads what `encode` wrote; nil if the sessions are out of order or their numbers are.
    static func decode(_ r: inout ByteReader) throws -> RequestSessions? {
        var out = RequestSessions()
        let count = Int(try r.u32())
        guard count <= maxSessions else { return nil }
        for _ in 0..<count {
            var s = RequestSession(replica: try r.u64(), base: try r.u64(), at: 0)
            s.done = try r.u64()
            s.at = try r.u64()
            let n = Int(try r.u32())
            guard n <= maxInFlight, n <= r.remaining / 8 else { return nil }
            s.applied.reserveCapacity(n)
            for _ in 0..<n {
                let v = try r.u64()
                guard v >= s.done, s.applied.last.map({ $0 < v }) ?? true else { return nil }
                s.applied.append(v)
            }
            if let last = out.all.last, (last.replica, last.base) >= (s.replica, s.base) { return nil }
            out.all.append(s)
        }
        return out
    }
}

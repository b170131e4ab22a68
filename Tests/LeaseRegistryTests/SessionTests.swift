@testable import LeaseRegistry
import Raft
import Testing

/// Replica sessions (cluster version 3): a write that came without an idempotency key carries
/// its replica's session stamp, and applies at most once however often it is re-sent, with
/// nothing remembered per write once the replica is done with it.
struct SessionTests {
    struct Log {
        var registry = LeaseRegistry()
        var index: UInt64 = 0

        init(faults: RegistryFaults = []) {
            registry.faults = faults
            run(.setClusterVersion(3), nanos: 1)
            run(.configureIdempotency(windowSeconds: 600, maxKeys: 100_000), nanos: 2)
        }

        /// Applies a command at the next index, through the encoding, as every replica sees it.
        @discardableResult
        mutating func run(_ c: LeaseCommand, request: UInt64 = 0, session: SessionStamp? = nil, nanos: UInt64 = 0) -> Applied {
            index += 1
            let timed = TimedCommand(c, now: 1000, requestID: request, leaderNanos: nanos, session: session)
            return registry.applied(entry: timed.encoded(), index: index, term: 1)
        }

        /// Request `number` of replica 2's session (base 1 << 20), the replica done below `done`.
        @discardableResult
        mutating func send(_ c: LeaseCommand, number: UInt64, done: UInt64, replica: UInt64 = 2, nanos: UInt64 = 0) -> Applied {
            let base: UInt64 = 1 << 20
            return run(c, request: base + number, session: SessionStamp(replica: replica, base: base, done: base + done), nanos: nanos)
        }
    }

    static func lease(_ a: Applied) -> Lease? {
        if case .success(.lease(let l)) = a.result { return l }
        return nil
    }

    @Test func aStampedEntryRoundTripsAsFormatVersion3AndOthersStayVersion2() throws {
        let stamp = SessionStamp(replica: 3, base: 7 << 16, done: (7 << 16) + 4)
        let timed = TimedCommand(.renew(leaseID: 9), now: 5, requestID: (7 << 16) + 6, leaderNanos: 8, session: stamp)
        let bytes = timed.encoded()
        #expect(bytes.first == 3)
        #expect(TimedCommand(decoding: bytes) == timed)
        #expect(TimedCommand.unknownFormat(bytes) == nil)
        #expect(TimedCommand.unknownFormat(bytes, supporting: 2)?.contains("format version 3 is unknown") == true)
        #expect(TimedCommand(.renew(leaseID: 9), now: 5, requestID: 1, key: .replica(1, request: 1)).encoded().first == 2)
        // A stamp whose `done` is above its own number is malformed.
        var bad = timed
        bad.session!.done = bad.requestID + 1
        #expect(TimedCommand(decoding: bad.encoded()) == nil)
    }

    /// The case exactly-once guards: an acquire re-sent after the lease was released must not
    /// bring it back.
    @Test func aRepeatAppliesOnceWhileTheReplicaStillWaitsForIt() throws {
        var log = Log()
        let acquire = LeaseCommand.acquire(hostname: "mx1.example.org", holder: "a", ttlSeconds: 30, idRange: 1...511)
        let first = log.send(acquire, number: 1, done: 1)
        let lease = try #require(Self.lease(first))
        #expect(log.send(.release(leaseID: lease.leaseID), number: 2, done: 1).replayed == false)
        let again = log.send(acquire, number: 1, done: 1)
        #expect(again.discarded && again.replayed)
        #expect(log.registry.node(lease.nodeID)?.status == .inactive)
        // With the fault planted, the repeat brings the lease back.
        var broken = Log(faults: .sessionRepeatsApply)
        let l = try #require(Self.lease(broken.send(acquire, number: 1, done: 1)))
        broken.send(.release(leaseID: l.leaseID), number: 2, done: 1)
        #expect(broken.send(acquire, number: 1, done: 1).discarded == false)
        #expect(broken.registry.node(l.nodeID)?.status == .active)
    }

    @Test func requestsBelowDoneAreDiscardedAndNoLongerKept() throws {
        var log = Log()
        for n in UInt64(1)...100 { log.send(.acquire(hostname: "h\(n).example.org", holder: "a", ttlSeconds: 30, idRange: 1...511), number: n, done: 1) }
        #expect(log.registry.sessionCounts == (1, 100))
        // The replica is done below 101: what it kept goes, and late copies change nothing.
        log.send(.renew(leaseID: 1), number: 101, done: 101)
        #expect(log.registry.sessionCounts == (1, 1))
        let late = log.send(.acquire(hostname: "h1.example.org", holder: "b", ttlSeconds: 30, idRange: 1...511), number: 1, done: 1)
        #expect(late.discarded)
        #expect(log.registry.node(hostname: "h1.example.org")?.holder == "a")
        // A request the replica gave up on (never applied), arriving below `done`: not applied.
        log.send(.renew(leaseID: 1), number: 200, done: 150)
        let abandoned = log.send(.acquire(hostname: "late.example.org", holder: "a", ttlSeconds: 30, idRange: 1...511), number: 149, done: 149)
        #expect(abandoned.discarded)
        #expect(log.registry.node(hostname: "late.example.org") == nil)
        // `done` never moves back.
        #expect(log.send(.renew(leaseID: 1), number: 201, done: 3).discarded == false)
        #expect(log.send(.renew(leaseID: 1), number: 120, done: 3).discarded)
    }

    @Test func sessionsOfDifferentReplicasAndStartsAreApart() throws {
        var log = Log()
        let acquire = LeaseCommand.acquire(hostname: "mx1.example.org", holder: "a", ttlSeconds: 30, idRange: 1...511)
        #expect(log.send(acquire, number: 1, done: 1, replica: 2).discarded == false)
        #expect(log.send(.renew(leaseID: 1), number: 1, done: 1, replica: 3).discarded == false)
        let restarted = SessionStamp(replica: 2, base: 5 << 20, done: (5 << 20) + 1)
        #expect(log.run(.renew(leaseID: 1), request: (5 << 20) + 1, session: restarted).discarded == false)
        #expect(log.registry.sessionCounts == (3, 3))
    }

    /// Sessions idle for the window's time are forgotten on every replica at the same index;
    /// one in use stays.
    @Test func idleSessionsAreForgottenAfterTheWindow() throws {
        var log = Log()
        log.run(.configureIdempotency(windowSeconds: 10, maxKeys: 100), nanos: 3)
        log.send(.renew(leaseID: 1), number: 1, done: 1, replica: 2, nanos: 1_000_000_000)
        log.send(.renew(leaseID: 1), number: 1, done: 1, replica: 3, nanos: 2_000_000_000)
        for s in UInt64(1)...12 { log.send(.renew(leaseID: 1), number: 1 + s, done: 1 + s, replica: 3, nanos: (2 + s) * 1_000_000_000) }
        #expect(log.registry.sessionCounts.sessions == 1, "replica 2's session idle for 13 s of a 10 s window")
        #expect(log.send(.renew(leaseID: 1), number: 1, done: 1, replica: 2, nanos: 15_000_000_000).discarded == false)
    }

    /// A replica that never moves `done` (a request stuck in flight) has at most
    /// `maxInFlight` numbers kept: the lowest go as if it had given up on them.
    @Test func numbersInFlightAreBounded() throws {
        var sessions = RequestSessions()
        let base: UInt64 = 1 << 20
        let stamp = SessionStamp(replica: 2, base: base, done: base + 1)
        func admit(_ n: UInt64) -> Bool { sessions.admit(stamp, number: base + n, clock: 1, maxApplied: 50) }
        let all = (UInt64(2)...201).map(admit)
        #expect(all.allSatisfy { $0 })
        #expect(sessions.numbersKept == 50)
        let (stale, repeated, next) = (admit(100), admit(201), admit(202))
        #expect(stale == false && repeated == false && next)
        #expect(RequestSessions.maxInFlight == 65_536)
    }

    /// Snapshots name their cluster version: a version 5 one claiming 3 (which is always
    /// written as 6, with its sessions) is malformed.
    @Test func aSnapshotWhoseVersionDoesNotMatchItsClusterVersionIsRefused() throws {
        var v2 = LeaseRegistry()
        _ = v2.apply(.setClusterVersion(2), now: 1, index: 1)
        var bytes = v2.snapshot()
        #expect(bytes[LeaseRegistry.snapshotVersionOffset] == 5)
        let at = LeaseRegistry.snapshotVersionOffset + 1 + 8 + 8
        #expect(bytes[at] == 2)
        bytes[at] = 3
        let body = bytes.count - 4
        bytes.replaceSubrange(body..., with: withUnsafeBytes(of: CRC32C.checksum(bytes[0..<body]).littleEndian, Array.init))
        #expect(throws: LeaseRegistry.SnapshotError.malformed("cluster version 3 in a version 5 snapshot")) { try LeaseRegistry(snapshot: bytes) }
    }

    @Test func sessionsSurviveASnapshotAndOlderFormatsAreKept() throws {
        var log = Log()
        for n in UInt64(1)...20 { log.send(.acquire(hostname: "h\(n).example.org", holder: "a", ttlSeconds: 30, idRange: 1...511), number: n, done: 5) }
        let bytes = log.registry.snapshot()
        #expect(bytes[LeaseRegistry.snapshotVersionOffset] == 6)
        var restored = try LeaseRegistry(snapshot: bytes)
        #expect(restored == log.registry)
        #expect(restored.sessionCounts == (1, 16))
        let base: UInt64 = 1 << 20
        let again = restored.applied(
            entry: TimedCommand(.renew(leaseID: 1), now: 1000, requestID: base + 7, session: SessionStamp(replica: 2, base: base, done: base + 5)).encoded(),
            index: log.index + 1)
        #expect(again.discarded)
        // A build that supports only cluster version 2 does not read it.
        #expect(throws: LeaseRegistry.SnapshotError.unknownVersion(6, known: 2...5)) { try LeaseRegistry(snapshot: bytes, supporting: 2) }
        // At cluster version 2 the snapshot is still version 5.
        var v2 = LeaseRegistry()
        _ = v2.apply(.setClusterVersion(2), now: 1, index: 1)
        #expect(v2.snapshot()[LeaseRegistry.snapshotVersionOffset] == 5)
    }
}

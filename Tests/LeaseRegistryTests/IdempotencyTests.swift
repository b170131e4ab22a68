@testable import LeaseRegistry
import Raft
import Testing

/// Exactly-once writes (shared/API.md, "Exactly once"): a command whose key applied before is
/// answered with its first outcome and changes nothing, whenever the repeat commits.
struct IdempotencyTests {
    /// Applies keyed commands at consecutive indexes, as the log would.
    struct Log {
        var registry = LeaseRegistry()
        var index: UInt64 = 0

        @discardableResult
        mutating func run(_ c: LeaseCommand, key: String? = nil, at now: UInt64 = 1000, nanos: UInt64 = 0, term: UInt64 = 1) -> Applied {
            index += 1
            let timed = TimedCommand(c, now: now, requestID: index, key: key.map { IdempotencyKey(origin: .client, value: $0) }, leaderNanos: nanos)
            // Through the encoding, as every replica sees it.
            return registry.applied(entry: timed.encoded(), index: index, term: term)
        }

        @discardableResult
        mutating func acquire(_ host: String, _ holder: String, key: String? = nil, at now: UInt64 = 1000) -> Applied {
            run(.acquire(hostname: host, holder: holder, ttlSeconds: 30, idRange: 1...511), key: key, at: now)
        }
    }

    static func lease(_ a: Applied) -> Lease? {
        if case .success(.lease(let l)) = a.result { return l }
        return nil
    }

    /// Replica-chosen keys: distinct for distinct requests, and short enough (15 bytes up to
    /// replica 999) that Swift stores them without an allocation.
    @Test func replicaChosenKeysAreDistinctAndShort() {
        #expect(IdempotencyKey.replica(3, request: 0).value == "3.0")
        #expect(IdempotencyKey.replica(1, request: 61).value == "1.z")
        #expect(IdempotencyKey.replica(1, request: 62).value == "1.10")
        #expect(IdempotencyKey.replica(999, request: .max).value == "999.LygHa16AHYF")
        #expect(IdempotencyKey.replica(999, request: .max).value.utf8.count == 15)
        let base: UInt64 = 0x3fa7_1c22_9b10_0000
        let keys = Set((0..<20_000).map { IdempotencyKey.replica(2, request: base + UInt64($0)).value })
        #expect(keys.count == 20_000)
        #expect(IdempotencyKey.replica(2, request: 5) != IdempotencyKey.replica(3, request: 5))
    }

    @Test func anAcquireResentAfterTheReleaseDoesNotBringTheLeaseBack() throws {
        var log = Log()
        let first = log.acquire("mx1.example.org", "a", key: "k-acquire")
        let lease = try #require(Self.lease(first))
        #expect(log.run(.release(leaseID: lease.leaseID), key: "k-release").replayed == false)
        // The acquire's request is sent again (a leader change) and commits a second time.
        let again = log.acquire("mx1.example.org", "a", key: "k-acquire")
        #expect(again.replayed)
        #expect(again.result == first.result)
        #expect(again.index == first.index)
        #expect(log.registry.node(lease.nodeID)?.status == .inactive)
        #expect(log.registry.lease(lease.leaseID) == nil)
        // Without a key, the same repeat would have brought the lease back: the case this guards.
        var unkeyed = Log()
        let l = try #require(Self.lease(unkeyed.acquire("mx1.example.org", "a")))
        unkeyed.run(.release(leaseID: l.leaseID))
        unkeyed.acquire("mx1.example.org", "a")
        #expect(unkeyed.registry.node(l.nodeID)?.status == .active)
    }

    @Test func aForgetResentAfterTheIDWasReusedDoesNotRemoveTheNewNode() throws {
        var log = Log()
        let a = try #require(Self.lease(log.acquire("old.example.org", "a")))
        log.run(.release(leaseID: a.leaseID))
        let forgot = log.run(.forget(nodeID: a.nodeID), key: "k-forget")
        #expect(forgot.replayed == false)
        // The freed ID goes to a new hostname.
        let b = try #require(Self.lease(log.acquire("new.example.org", "b")))
        #expect(b.nodeID == a.nodeID)
        let again = log.run(.forget(nodeID: a.nodeID), key: "k-forget")
        #expect(again.replayed)
        #expect(again.result == forgot.result)
        #expect(log.registry.node(b.nodeID)?.hostname == "new.example.org")
        #expect(log.registry.node(b.nodeID)?.status == .active)
    }

    @Test func aRefusedAcquireRetriedLaterIsStillRefused() throws {
        var log = Log()
        let a = try #require(Self.lease(log.acquire("mx1.example.org", "a")))
        let refused = log.acquire("mx1.example.org", "b", key: "k-b")
        guard case .failure(.hostnameInUse) = refused.result else {
            Issue.record("expected hostname_in_use, got \(refused.result)")
            return
        }
        log.run(.release(leaseID: a.leaseID))
        // B's retry of the same request commits after A let go: it must not win the ID now.
        let retry = log.acquire("mx1.example.org", "b", key: "k-b")
        #expect(retry.replayed)
        #expect(retry.result == refused.result)
        #expect(log.registry.node(a.nodeID)?.status == .inactive)
        // A new request (a new key) from B does get it.
        #expect(Self.lease(log.acquire("mx1.example.org", "b", key: "k-b2"))?.holder == "b")
    }

    @Test func aRetriedReleaseGetsItsFirstOutcome() throws {
        var log = Log()
        let a = try #require(Self.lease(log.acquire("mx1.example.org", "a")))
        let released = log.run(.release(leaseID: a.leaseID), key: "k-rel")
        guard case .success(.node(let n)) = released.result else {
            Issue.record("release failed: \(released.result)")
            return
        }
        #expect(n.status == .inactive)
        let retry = log.run(.release(leaseID: a.leaseID), key: "k-rel")
        #expect(retry.replayed)
        #expect(retry.result == released.result)
        // A second release with a new key is a new request: 404, as API.md says.
        #expect(log.run(.release(leaseID: a.leaseID), key: "k-rel-2").result == .failure(.leaseNotFound))
    }

    @Test func aKeyReusedForAnotherRequestIsRefusedAndChangesNothing() throws {
        var log = Log()
        let a = try #require(Self.lease(log.acquire("mx1.example.org", "a", key: "k")))
        let before = log.registry.nodes()
        let other = log.acquire("mx2.example.org", "a", key: "k")
        #expect(other.result == .failure(.idempotencyKeyMismatch))
        #expect(other.replayed == false)
        #expect(log.registry.nodes() == before)
        #expect(log.run(.renew(leaseID: a.leaseID), key: "k").result == .failure(.idempotencyKeyMismatch))
        // A replica's own key never meets a client's, even when the text is the same.
        let timed = TimedCommand(.acquire(hostname: "mx3.example.org", holder: "a", ttlSeconds: 30, idRange: 1...511), now: 1000, key: IdempotencyKey(origin: .replica, value: "k"))
        log.index += 1
        #expect(Self.lease(log.registry.applied(entry: timed.encoded(), index: log.index)) != nil)
    }

    @Test func keysAreForgottenByCountAndByLeaderTimeAlikeOnEveryReplica() throws {
        var log = Log()
        log.run(.configureIdempotency(windowSeconds: 600, maxKeys: 3))
        for i in 1...4 { log.run(.renew(leaseID: 999), key: "k\(i)", at: 1000) }
        #expect(log.registry.rememberedKeys == 3)
        // k1 went first (the oldest): its repeat applies again instead of replaying.
        #expect(log.run(.renew(leaseID: 999), key: "k1").replayed == false)
        #expect(log.run(.renew(leaseID: 999), key: "k4").replayed)

        // Leader time: the monotonic nanoseconds between entries of one term, counted from the
        // first configuration entry.
        let second: UInt64 = 1_000_000_000
        var timed = Log()
        timed.run(.renew(leaseID: 999), key: "before", at: 1000, nanos: 5 * second)
        #expect(timed.registry.clock == 0)
        timed.run(.configureIdempotency(windowSeconds: 600, maxKeys: 100), nanos: 10 * second)
        timed.run(.renew(leaseID: 999), key: "early", at: 1000, nanos: 11 * second)
        // The leader's wall clock jumps an hour ahead: leader time moves one second.
        timed.run(.renew(leaseID: 999), key: "late", at: 4600, nanos: 12 * second)
        #expect(timed.registry.clock == 1 + 2 * second)
        #expect(timed.run(.renew(leaseID: 999), key: "early", at: 4600, nanos: 12 * second).replayed)
        // A new leader (term 2) starts its own clock: its first entry does not move the time.
        timed.run(.renew(leaseID: 999), at: 4600, nanos: 3 * second, term: 2)
        #expect(timed.registry.clock == 1 + 2 * second)
        // Ten minutes of its time later the early keys are gone; a later one is not.
        var t = 3 * second
        for _ in 0..<10 {
            t += 60 * second
            timed.run(.renew(leaseID: 999), at: 4600, nanos: t, term: 2)
        }
        timed.run(.renew(leaseID: 999), key: "recent", at: 4600, nanos: t, term: 2)
        t += 2 * second
        timed.run(.renew(leaseID: 999), at: 4600, nanos: t, term: 2)
        #expect(timed.run(.renew(leaseID: 999), key: "early", at: 4600, nanos: t, term: 2).replayed == false)
        #expect(timed.run(.renew(leaseID: 999), key: "before", at: 4600, nanos: t, term: 2).replayed == false)
        #expect(timed.run(.renew(leaseID: 999), key: "recent", at: 4600, nanos: t, term: 2).replayed)
    }

    @Test func rememberedOutcomesSurviveASnapshot() throws {
        var log = Log()
        log.run(.configureIdempotency(windowSeconds: 300, maxKeys: 50))
        let a = try #require(Self.lease(log.acquire("mx1.example.org", "a", key: "k-a")))
        log.acquire("mx1.example.org", "b", key: "k-b")
        log.run(.release(leaseID: a.leaseID), key: "k-rel")
        log.run(.forget(nodeID: a.nodeID), key: "k-forget")
        var restored = try LeaseRegistry(snapshot: log.registry.snapshot())
        #expect(restored == log.registry)
        #expect(restored.idempotencyWindow == IdempotencyWindow(seconds: 300, maxKeys: 50))
        // The restored replica deduplicates exactly like the one it came from.
        for key in ["k-a", "k-b", "k-rel", "k-forget"] {
            var original = log
            let command: LeaseCommand =
                switch key {
                case "k-a": .acquire(hostname: "mx1.example.org", holder: "a", ttlSeconds: 30, idRange: 1...511)
                case "k-b": .acquire(hostname: "mx1.example.org", holder: "b", ttlSeconds: 30, idRange: 1...511)
                case "k-rel": .release(leaseID: a.leaseID)
                default: .forget(nodeID: a.nodeID)
                }
            let entry = TimedCommand(command, now: 1000, key: IdempotencyKey(origin: .client, value: key)).encoded()
            let x = original.registry.applied(entry: entry, index: log.index + 1)
            let y = restored.applied(entry: entry, index: log.index + 1)
            #expect(x == y)
            #expect(x.replayed)
        }
    }

    @Test func entriesWrittenBeforeKeysExistedStillDecode() throws {
        // Version 1: version, request id, type, time, fields; no key.
        var w = ByteWriter()
        w.u8(1)
        w.u64(7)
        w.u8(2)
        w.u64(1000)
        w.u64(42)
        let timed = try #require(TimedCommand(decoding: w.bytes))
        #expect(timed.command == .renew(leaseID: 42))
        #expect(timed.key == nil)
        #expect(timed.requestID == 7)
        let keyed = TimedCommand(.renew(leaseID: 42), now: 1000, requestID: 7, key: IdempotencyKey(origin: .client, value: "x"))
        #expect(TimedCommand(decoding: keyed.encoded()) == keyed)
    }
}

/// The chunked containers behind the registry, past their chunk sizes (ChunkedStorage.swift).
struct ChunkedStorageTests {
    @Test func aWindowOfThousandsOfKeysForgetsTheOldestAndSurvivesASnapshot() throws {
        var log = IdempotencyTests.Log()
        log.run(.configureIdempotency(windowSeconds: 600, maxKeys: 1500))
        let lease = try #require(IdempotencyTests.lease(log.acquire("mx1.example.org", "a", key: "acquire")))
        for i in 0..<5000 { log.run(.renew(leaseID: lease.leaseID), key: "k\(i)") }
        #expect(log.registry.rememberedKeys == 1500)
        let restored = try LeaseRegistry(snapshot: log.registry.snapshot())
        #expect(restored == log.registry)
        for var replica in [log, IdempotencyTests.Log(registry: restored, index: log.index)] {
            // The newest 1500 replay; the ones before them apply again.
            #expect(replica.run(.renew(leaseID: lease.leaseID), key: "k4999").replayed)
            #expect(replica.run(.renew(leaseID: lease.leaseID), key: "k3500").replayed)
            #expect(replica.run(.renew(leaseID: lease.leaseID), key: "k3499").replayed == false)
            #expect(replica.run(.renew(leaseID: lease.leaseID), key: "k0").replayed == false)
        }
    }

    @Test func chunkedArrayMatchesAnArrayAcrossChunks() {
        var random = DeterministicGenerator(seed: 11)
        var chunked = ChunkedArray<Int>()
        var reference: [Int] = []
        for step in 0..<20_000 {
            switch random.next() % 10 {
            case 0..<6:
                chunked.append(step)
                reference.append(step)
            case 6..<9 where !reference.isEmpty:
                chunked.removeFirst()
                reference.removeFirst()
            case 9 where !reference.isEmpty:
                let i = Int(random.next() % UInt64(reference.count))
                chunked[i] = -step
                reference[i] = -step
            default: break
            }
            if step % 500 == 0 || reference.count < 3 {
                #expect(Array(chunked) == reference)
                #expect(chunked.count == reference.count)
                #expect(chunked.first == reference.first)
            }
        }
        // Emptied across several chunk boundaries, then used again.
        while !reference.isEmpty {
            chunked.removeFirst()
            reference.removeFirst()
        }
        #expect(chunked.isEmpty && Array(chunked).isEmpty)
        chunked.append(7)
        #expect(Array(chunked) == [7])
    }

    @Test func shardedDictionaryMatchesADictionary() {
        var random = DeterministicGenerator(seed: 12)
        var sharded = ShardedDictionary<UInt64, Int>()
        var strings = ShardedDictionary<String, Int>()
        var reference: [UInt64: Int] = [:]
        for step in 0..<20_000 {
            let k = random.next() % 3000
            if random.next() % 3 == 0 {
                #expect(sharded.removeValue(forKey: k) == reference.removeValue(forKey: k))
                strings["s\(k)"] = nil
            } else {
                sharded[k] = step
                strings["s\(k)"] = step
                reference[k] = step
            }
            #expect(sharded[k] == reference[k])
            #expect(strings["s\(k)"] == reference[k])
        }
        #expect(sharded.count == reference.count && strings.count == reference.count)
    }
}

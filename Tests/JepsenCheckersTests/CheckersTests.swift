import JepsenCheckers
import Testing

let s: UInt64 = 1_000_000_000

func grant(_ p: Int, _ holder: String, node: UInt32, token: UInt64, at invoke: UInt64, done: UInt64, ttl: UInt32 = 4, host: String = "mx") -> HistoryOp {
    var o = HistoryOp(process: p, kind: .acquire, hostname: host, holder: holder, invoke: invoke, complete: done, outcome: .ok)
    o.nodeId = node
    o.fencingToken = token
    o.leaseId = String(token)
    o.ttlSeconds = ttl
    return o
}

/// Hand-made histories, valid and invalid: each invalid one is caught.
struct CheckersTests {
    @Test func holdersTakingTurnsAreValid() {
        let h = [grant(0, "a", node: 1, token: 5, at: 0, done: 1 * s), grant(1, "b", node: 1, token: 9, at: 5 * s, done: 6 * s)]
        #expect(LeaseCheckers.leaseSafety(h).isEmpty)
        #expect(LeaseCheckers.fencing(h).isEmpty)
        #expect(LeaseCheckers.mapping(h).isEmpty)
    }

    @Test func twoOverlappingHoldersAreCaught() {
        let h = [grant(0, "a", node: 1, token: 5, at: 0, done: 1 * s), grant(1, "b", node: 1, token: 9, at: 2 * s, done: 3 * s)]
        #expect(LeaseCheckers.leaseSafety(h).count == 1)
    }

    @Test func aReleaseEndsTheWindow() {
        var rel = HistoryOp(process: 0, kind: .release, hostname: "mx", holder: "a", invoke: 2 * s, complete: 2 * s + 1, outcome: .ok)
        rel.leaseId = "5"
        let h = [grant(0, "a", node: 1, token: 5, at: 0, done: 1 * s), rel, grant(1, "b", node: 1, token: 9, at: 3 * s, done: 3 * s + 1)]
        #expect(LeaseCheckers.leaseSafety(h).isEmpty)
    }

    @Test func aLeaseTheHolderTriedToReleaseIsNeverTrustedAgain() {
        // a's release (outcome unknown) may land after a's re-acquire returns the same lease.
        var rel = HistoryOp(process: 0, kind: .release, hostname: "mx", holder: "a", invoke: 2 * s, complete: 4 * s, outcome: .info)
        rel.leaseId = "5"
        let h = [
            grant(0, "a", node: 1, token: 5, at: 0, done: 1 * s), rel, grant(0, "a", node: 1, token: 5, at: 5 * s, done: 5 * s + 1),
            grant(1, "b", node: 1, token: 9, at: 6 * s, done: 7 * s),
        ]
        #expect(LeaseCheckers.leaseSafety(h).isEmpty)
    }

    @Test func aTokenGoingBackwardsIsCaught() {
        let h = [grant(0, "a", node: 1, token: 9, at: 0, done: 1 * s), grant(1, "b", node: 1, token: 5, at: 9 * s, done: 10 * s)]
        #expect(LeaseCheckers.fencing(h).count == 1)
    }

    @Test func oneIDForTwoHostnamesIsCaught() {
        let h = [grant(0, "a", node: 1, token: 5, at: 0, done: 1, host: "x"), grant(1, "b", node: 1, token: 9, at: 10 * s, done: 11 * s, host: "y")]
        #expect(LeaseCheckers.mapping(h).count == 1)
    }

    @Test func aLostWriteIsCaught() {
        let h = [grant(0, "a", node: 1, token: 5, at: 0, done: 1, host: "x"), grant(1, "b", node: 2, token: 9, at: 0, done: 1, host: "y")]
        #expect(LeaseCheckers.finalState(h, final: ["x": (1, "active"), "y": (2, "stale")]).isEmpty)
        #expect(LeaseCheckers.finalState(h, final: ["x": (1, "active")]).count == 1)
        #expect(LeaseCheckers.finalState(h, final: ["x": (1, "active"), "y": (3, "active")]).count == 1)
    }

    @Test func aReadGoingBackOnOneReplicaIsCaught() {
        func read(_ t: UInt64, _ index: UInt64) -> HistoryOp {
            var o = HistoryOp(process: 0, kind: .read, hostname: "x", holder: "a", invoke: t, complete: t + 1, outcome: .ok)
            o.replica = 2
            o.index = index
            return o
        }
        #expect(LeaseCheckers.readMonotonicity([read(1, 10), read(2, 12)]).isEmpty)
        #expect(LeaseCheckers.readMonotonicity([read(1, 10), read(2, 9)]).count == 1)
    }
}

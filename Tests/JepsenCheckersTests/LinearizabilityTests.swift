import JepsenCheckers
import Testing

/// Hand-made histories for the linearizability search and the indexed-read check. Times are in
/// seconds (`s`); leases use a 4 s TTL unless said otherwise.
private func linearizable(_ h: [HistoryOp]) -> Bool {
    let r = Linearizability.check(h)
    return r.anomalies.isEmpty
}

struct LinearizabilityTests {
    @Test func aPlainSequenceIsLinearizable() {
        let h = [
            read(9, at: 0, done: 1, nil),
            op(0, .acquire, "a", lease: "5", at: 1 * s, done: 2 * s),
            read(9, at: 2 * s + 1, done: 2 * s + 2, "active"),
            op(0, .renew, "a", lease: "5", at: 3 * s, done: 3 * s + 5),
            op(1, .acquire, "b", lease: nil, at: 3 * s + 1, done: 3 * s + 2, .fail, error: "hostname_in_use"),
            op(0, .release, "a", lease: "5", at: 4 * s, done: 4 * s + 5),
            read(9, at: 5 * s, done: 5 * s + 1, "inactive"),
            op(1, .acquire, "b", lease: "9", at: 6 * s, done: 6 * s + 1),
            op(0, .renew, "a", lease: "5", at: 7 * s, done: 7 * s + 1, .fail, error: "lease_not_found"),
        ]
        #expect(linearizable(h))
    }

    @Test func concurrentOperationsMayTakeEffectInEitherOrder() {
        // b's acquire and a's release overlap: b can be granted after the release.
        let h = [
            op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s),
            op(0, .release, "a", lease: "5", at: 2 * s, done: 5 * s),
            op(1, .acquire, "b", lease: "9", at: 3 * s, done: 4 * s),
        ]
        #expect(linearizable(h))
    }

    @Test func aLostWriteIsCaught() {
        // An acknowledged release, then a linearizable read that still shows the lease active
        // (well before it could have expired and with nobody re-acquiring).
        let h = [
            op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s),
            op(0, .release, "a", lease: "5", at: 1 * s + 1, done: 1 * s + 2),
            read(9, at: 1 * s + 3, done: 1 * s + 4, "active"),
        ]
        #expect(!linearizable(h))
    }

    @Test func aStaleReadPresentedAsLinearizableIsCaught() {
        // A linearizable read that starts after the grant completed must see the hostname.
        let h = [
            op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s),
            read(9, at: 2 * s, done: 2 * s + 1, nil),
        ]
        #expect(!linearizable(h))
        // The same read overlapping the grant may come before it.
        let overlapping = [
            op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s),
            read(9, at: 1 * s - 5, done: 2 * s, nil),
        ]
        #expect(linearizable(overlapping))
    }

    @Test func twoLiveHoldersAreCaught() {
        // b is granted while a's lease is live (a renews successfully afterwards).
        let h = [
            op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s),
            op(1, .acquire, "b", lease: "9", at: 2 * s, done: 2 * s + 1),
            op(0, .renew, "a", lease: "5", at: 2 * s + 2, done: 2 * s + 3),
        ]
        #expect(!linearizable(h))
    }

    @Test func anExpiryBeforeTheTTLIsCaught() {
        // A read shows the lease stale 2 s after it was granted with a 4 s TTL.
        let early = [op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s), read(9, at: 2 * s, done: 2 * s + 1, "stale")]
        #expect(!linearizable(early))
        let late = [op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s), read(9, at: 5 * s, done: 5 * s + 1, "stale")]
        #expect(linearizable(late))
    }

    @Test func aTokenGoingBackwardsIsCaught() {
        let h = [
            op(0, .acquire, "a", lease: "9", at: 0, done: 1 * s),
            op(0, .release, "a", lease: "9", at: 2 * s, done: 2 * s + 1),
            op(1, .acquire, "b", lease: "5", at: 3 * s, done: 3 * s + 1),
        ]
        #expect(!linearizable(h))
    }

    @Test func anUnknownReleaseMayLandAfterTheSameLeaseComesBack() {
        // The scenario the workload met: a's release times out, a re-acquires and gets the
        // same lease back, then the release lands; a linearizable read shows it inactive.
        let h = [
            op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s),
            op(0, .release, "a", lease: "5", at: 1 * s + 1, done: 3 * s, .info),
            op(0, .acquire, "a", lease: "5", at: 3 * s + 1, done: 3 * s + 2),
            read(9, at: 3 * s + 3, done: 3 * s + 4, "inactive"),
        ]
        #expect(linearizable(h))
        // Without the unknown release the read is wrong.
        #expect(!linearizable([h[0], h[2], h[3]]))
    }

    @Test func anUnknownAcquireMayHaveTakenEffect() {
        let h = [
            op(0, .acquire, "a", lease: nil, at: 0, done: 2 * s, .info),
            read(9, at: 3 * s, done: 3 * s + 1, "active"),
            op(1, .acquire, "b", lease: nil, at: 3 * s + 2, done: 3 * s + 3, .fail, error: "hostname_in_use"),
        ]
        #expect(linearizable(h))
        // ... or not.
        #expect(linearizable([h[0], read(9, at: 3 * s, done: 3 * s + 1, nil)]))
    }

    @Test func hostnamesAreCheckedSeparatelyAndAtScale() {
        // Two processes per hostname over many hostnames, renewing in turns, with concurrent
        // linearizable reads: the search stays near linear.
        var h: [HistoryOp] = []
        var lease: UInt64 = 1
        for host in 0..<4 {
            var t: UInt64 = 0
            for round in 0..<500 {
                let holder = round % 2 == 0 ? "a\(host)" : "b\(host)"
                let l = String(lease)
                lease += 1
                h.append(op(round % 2, .acquire, holder, lease: l, at: t, done: t + 10, node: UInt32(host + 1), host: "h\(host)"))
                h.append(op(round % 2, .renew, holder, lease: l, at: t + 20, done: t + 30, node: UInt32(host + 1), host: "h\(host)"))
                var r = read(2, at: t + 25, done: t + 35, node: UInt32(host + 1), "active")
                r.hostname = "h\(host)"
                h.append(r)
                h.append(op(round % 2, .release, holder, lease: l, at: t + 40, done: t + 50, node: UInt32(host + 1), host: "h\(host)"))
                t += 100
            }
        }
        let r = Linearizability.check(h.sorted { $0.invoke < $1.invoke })
        #expect(r.anomalies.isEmpty)
        #expect(r.operations.count == 4)
        #expect(r.steps < 20 * h.count)
    }
}

struct IndexedReadTests {
    @Test func aStaleFollowerReadIsAllowed() {
        let h = [
            op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s, index: 5),
            op(0, .release, "a", lease: "5", at: 2 * s, done: 2 * s + 1, index: 8),
            // A follower behind at index 6 still shows the lease active: stale, not wrong.
            read(9, at: 3 * s, done: 3 * s + 1, "active", index: 6, linearizable: false),
            read(9, at: 3 * s, done: 3 * s + 1, "inactive", index: 8, linearizable: false),
            read(9, at: 3 * s, done: 3 * s + 1, nil, index: 4, linearizable: false),
        ]
        #expect(LeaseCheckers.indexedReads(h).isEmpty)
    }

    @Test func aWrongFollowerReadIsCaught() {
        let base = [
            op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s, index: 5),
            op(0, .renew, "a", lease: "5", at: 2 * s, done: 2 * s + 1, index: 9),
            op(0, .release, "a", lease: "5", at: 3 * s, done: 3 * s + 1, index: 12),
        ]
        // Between the grant and the renewal the lease was live: stale there is wrong.
        #expect(LeaseCheckers.indexedReads(base + [read(9, at: 4 * s, done: 4 * s + 1, "stale", index: 7, linearizable: false)]).count == 1)
        // After the release (and no acquire since) active is wrong.
        #expect(LeaseCheckers.indexedReads(base + [read(9, at: 4 * s, done: 4 * s + 1, "active", index: 12, linearizable: false)]).count == 1)
        // Absent after the grant is wrong; so is another node ID.
        #expect(LeaseCheckers.indexedReads(base + [read(9, at: 4 * s, done: 4 * s + 1, nil, index: 6, linearizable: false)]).count == 1)
        #expect(LeaseCheckers.indexedReads(base + [read(9, at: 4 * s, done: 4 * s + 1, node: 2, "active", index: 6, linearizable: false)]).count == 1)
        // Inactive before the release, with no release of unknown outcome, is wrong.
        #expect(LeaseCheckers.indexedReads(base + [read(9, at: 4 * s, done: 4 * s + 1, "inactive", index: 10, linearizable: false)]).count == 1)
    }

    @Test func healToWriteFindsTheNextAcknowledgedWrite() {
        let h = [
            op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s),
            op(0, .renew, "a", lease: "5", at: 2 * s, done: 5 * s, .info),
            op(0, .renew, "a", lease: "5", at: 6 * s, done: 7 * s),
        ]
        #expect(LeaseCheckers.healToWrite(h, heals: [0, 3 * s, 8 * s]) == [1 * s, 4 * s, nil])
    }
}

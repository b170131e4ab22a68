import JepsenCheckers
import Testing

/// The model's rules for unknown outcomes (the horizon rule), retirement, IDs that move to
/// other hostnames and forgets; and the checkers over whole-registry reads.
private func valid(_ h: [HistoryOp], _ options: Linearizability.Options = .init()) -> Bool {
    Linearizability.check(h, options: options).anomalies.isEmpty
}

struct HorizonRuleTests {
    @Test func anUnknownRenewDoesNotLicenseAnEarlyExpiry() {
        // The example: acquired with a 4 s TTL, a renew of unknown outcome, then a
        // linearizable read 2 s in shows the lease stale. The old model let the expiry come
        // before the unknown renew "at any time"; the read's own completion bounds it.
        let h = [
            op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s),
            op(0, .renew, "a", lease: "5", at: 3 * s / 2, done: 0, .info),
            read(9, at: 2 * s, done: 2 * s + s / 10, "stale"),
        ]
        #expect(!valid(h))
    }

    @Test func anUnknownRenewMayOrMayNotHaveApplied() {
        let acquire = op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s)
        let renew = op(0, .renew, "a", lease: "5", at: 3 * s / 2, done: 0, .info)
        // Past the grant's deadline: stale if the renew never applied...
        #expect(valid([acquire, renew, read(9, at: 9 * s / 2, done: 46 * s / 10, "stale")]))
        // ... active if it did (its deadline is 5.5 s at the earliest).
        #expect(valid([acquire, renew, read(9, at: 5 * s, done: 51 * s / 10, "active")]))
        // Either way the lease cannot be stale before the grant's deadline.
        #expect(!valid([acquire, renew, read(9, at: 3 * s, done: 31 * s / 10, "stale")]))
    }

    @Test func anExpiryNeedsEveryPendingOperationToAllowIt() {
        // A read that completes before the deadline cannot be preceded by the expiry even when
        // an unknown acquire by another holder is pending.
        let h = [
            op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s),
            op(1, .acquire, "b", lease: nil, at: 1 * s, done: 0, .info),
            read(9, at: 2 * s, done: 2 * s + 1, "stale"),
        ]
        #expect(!valid(h))
    }
}

struct RetirementAndReuseTests {
    let retention = Linearizability.Options(retentionNanos: 6 * s)

    @Test func aStaleNodeIsRetiredOnlyAfterTheRetention() {
        let acquire = op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s)
        // Expiry at 4 s at the earliest, retirement at 10 s.
        #expect(!valid([acquire, read(9, at: 5 * s, done: 5 * s + 1, "inactive")], retention))
        #expect(valid([acquire, read(9, at: 11 * s, done: 11 * s + 1, "inactive")], retention))
        // Without retirement in the run, inactive needs a release.
        #expect(!valid([acquire, read(9, at: 11 * s, done: 11 * s + 1, "inactive")]))
    }

    @Test func anInactiveHostnameMayLoseItsIDOnlyWhenIDsAreReused() {
        let h = [
            op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s),
            op(0, .release, "a", lease: "5", at: 2 * s, done: 2 * s + 1),
            read(9, at: 3 * s, done: 3 * s + 1, nil),
            // Back with another ID.
            op(0, .acquire, "a", lease: "12", at: 4 * s, done: 4 * s + 1, node: 2),
        ]
        #expect(valid(h, .init(idReuse: true)))
        #expect(!valid(h))
        // An active hostname never loses its ID.
        let active = [op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s), read(9, at: 2 * s, done: 2 * s + 1, nil)]
        #expect(!valid(active, .init(idReuse: true)))
    }

    @Test func exhaustedIDsAreOnlyForHostnamesWithoutOne() {
        let registered = [
            op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s),
            op(0, .release, "a", lease: "5", at: 2 * s, done: 2 * s + 1),
            op(1, .acquire, "b", lease: nil, at: 3 * s, done: 3 * s + 1, .fail, error: "node_ids_exhausted"),
        ]
        #expect(!valid(registered))
        #expect(valid(registered, .init(idReuse: true)))
        #expect(valid([op(1, .acquire, "b", lease: nil, at: 0, done: 1, .fail, error: "node_ids_exhausted")]))
    }

    @Test func aForgetRemovesOnlyANodeThatIsNotActive() {
        var forget = op(5, .forget, "f", lease: nil, at: 3 * s, done: 3 * s + 1, node: 1)
        let released = [
            op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s),
            op(0, .release, "a", lease: "5", at: 2 * s, done: 2 * s + 1),
            forget,
            read(9, at: 4 * s, done: 4 * s + 1, nil),
        ]
        #expect(valid(released))
        forget.invoke = 1 * s + 1
        forget.complete = 1 * s + 2
        #expect(!valid([op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s), forget]))
    }
}

struct RegistryReadTests {
    let a1 = RegistryEntry(nodeId: 1, hostname: "a", status: "active")
    let b2 = RegistryEntry(nodeId: 2, hostname: "b", status: "active")

    @Test func readsAtOneIndexMustAgree() {
        let same = [registryRead(0, at: 0, done: 1, [a1, b2], index: 7, replica: 1), registryRead(1, at: 2, done: 3, [a1, b2], index: 7, replica: 2)]
        #expect(LeaseCheckers.sameIndexReads(same).isEmpty)
        var stale = b2
        stale.status = "stale"
        let differ = [registryRead(0, at: 0, done: 1, [a1, b2], index: 7, replica: 1), registryRead(1, at: 2, done: 3, [a1, stale], index: 7, replica: 2)]
        #expect(LeaseCheckers.sameIndexReads(differ).count == 1)
    }

    @Test func aLinearizableReadSeesEveryAcknowledgedWrite() {
        let write = op(0, .acquire, "a", lease: "9", at: 0, done: 1 * s, index: 9)
        let behind = registryRead(1, at: 2 * s, done: 2 * s + 1, [], index: 8, replica: 2, linearizable: true)
        #expect(LeaseCheckers.readsSeeAcknowledgedWrites([write, behind]).count == 1)
        var follower = behind
        follower.linearizable = false
        #expect(LeaseCheckers.readsSeeAcknowledgedWrites([write, follower]).isEmpty)
        var overlapping = behind
        overlapping.invoke = 1 * s - 1
        #expect(LeaseCheckers.readsSeeAcknowledgedWrites([write, overlapping]).isEmpty)
    }

    @Test func aWholeRegistryReadIsCheckedForEveryHostname() {
        // a's acknowledged grant, then a linearizable registry read that shows only b.
        let h = [
            op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s, host: "a"),
            registryRead(1, at: 2 * s, done: 2 * s + 1, [RegistryEntry(nodeId: 2, hostname: "b", status: "active")], index: 6, replica: 1, linearizable: true),
        ]
        #expect(!valid(h))
        #expect(!LeaseCheckers.indexedReads(h).isEmpty || !valid(h))
    }

    @Test func aLeaseKeepsItsTokenAndNode() {
        var renew = op(0, .renew, "a", lease: "5", at: 2 * s, done: 2 * s + 1)
        renew.fencingToken = 5
        #expect(LeaseCheckers.mapping([op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s), renew], fixedIDs: false).isEmpty)
        renew.fencingToken = 4
        #expect(LeaseCheckers.mapping([op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s), renew], fixedIDs: false).count == 1)
    }

    @Test func twoLeadersOfOneTermAreCaught() {
        #expect(LeaseCheckers.electionSafety([(term: 3, replica: 1), (term: 4, replica: 2)]).isEmpty)
        #expect(LeaseCheckers.electionSafety([(term: 3, replica: 1), (term: 3, replica: 2)]).count == 1)
    }
}

struct SearchBudgetTests {
    @Test func aSearchOutOfBudgetSaysWhereItStopped() {
        var h = [op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s)]
        for p in 1...12 { h.append(op(p, .acquire, "h\(p)", lease: nil, at: 2 * s + UInt64(p), done: 0, .info)) }
        h.append(read(99, at: 3 * s, done: 3 * s + 1, "stale"))
        let r = Linearizability.check(h, budget: 5)
        #expect(r.gaveUp == ["mx"])
        #expect(r.anomalies.count == 1)
        #expect(r.anomalies.first?.detail.contains("stuck at") == true)
        // With its budget the same history is decided: invalid (stale 3 s after a 4 s grant).
        #expect(Linearizability.check(h).gaveUp.isEmpty)
        #expect(!Linearizability.check(h).anomalies.isEmpty)
    }
}

struct IdempotencyCheckTests {
    @Test func copiesOfOneRequestGetOneAnswer() {
        var a = op(0, .release, "a", lease: "5", at: 0, done: 1 * s)
        a.key = "k1"
        var b = a
        b.hedge = true
        b.replica = 2
        #expect(LeaseCheckers.idempotency([a, b]).isEmpty)
        // The copy applied again instead of getting the first outcome.
        b.outcome = .fail
        b.error = "lease_not_found"
        #expect(LeaseCheckers.idempotency([a, b]).count == 1)
        // Unknown outcomes and undelivered copies say nothing.
        b.outcome = .info
        b.error = nil
        #expect(LeaseCheckers.idempotency([a, b]).isEmpty)
    }
}

struct ForgetAndForeignHostnameTests {
    @Test func anUnknownForgetOnlyRemovesItsNodeAfterItWasInvoked() {
        let acquire = op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s)
        let release = op(0, .release, "a", lease: "5", at: 2 * s, done: 2 * s + 1)
        let absent = read(9, at: 4 * s, done: 4 * s + 1, nil)
        #expect(!valid([acquire, release, absent]))
        func forget(_ node: UInt32, at t: UInt64) -> Linearizability.Options { .init(unknownForgets: [(node: node, invoke: t)]) }
        // An unknown forget of node 1 invoked at 3 s explains the absent read...
        #expect(valid([acquire, release, absent], forget(1, at: 3 * s)))
        // ... but not one of another node, nor one invoked after the read.
        #expect(!valid([acquire, release, absent], forget(2, at: 3 * s)))
        #expect(!valid([acquire, release, absent], forget(1, at: 5 * s)))
    }

    @Test func hostnamesWithoutLeaseOperationsAreNotModelled() {
        // A registry read shows a hostname the history never acquired (a keeper's), and a
        // forget names it: neither is checked against a model with no history for it.
        var forget = op(5, .forget, "f", lease: nil, at: 3 * s, done: 3 * s + 1, node: 2, host: "keeper")
        forget.nodeId = 2
        let h = [
            op(0, .acquire, "a", lease: "5", at: 0, done: 1 * s, host: "a"),
            registryRead(1, at: 2 * s, done: 2 * s + 1, [RegistryEntry(nodeId: 1, hostname: "a", status: "active"), RegistryEntry(nodeId: 2, hostname: "keeper", status: "active")], index: 6, replica: 1, linearizable: true),
            forget,
        ]
        #expect(valid(h))
        #expect(LeaseCheckers.indexedReads(h).isEmpty)
    }
}

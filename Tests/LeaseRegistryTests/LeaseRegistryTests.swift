import LeaseRegistry
import Raft
import Testing

let range: ClosedRange<UInt32> = 1...511

/// Applies commands at consecutive indexes from 1.
struct Harness {
    var registry = LeaseRegistry()
    var index: UInt64 = 0

    @discardableResult
    mutating func run(_ c: LeaseCommand, at now: UInt64 = 1000) -> Result<LeaseReply, LeaseError> {
        index += 1
        return registry.apply(c, now: now, index: index)
    }

    mutating func acquire(_ host: String, _ holder: String, ttl: UInt32 = 30, range: ClosedRange<UInt32> = range, at now: UInt64 = 1000) throws -> Lease {
        guard case .lease(let l) = try run(.acquire(hostname: host, holder: holder, ttlSeconds: ttl, idRange: range), at: now).get() else {
            throw LeaseError.leaseNotFound
        }
        return l
    }

    func error(_ r: Result<LeaseReply, LeaseError>) -> LeaseError? {
        if case .failure(let e) = r { return e }
        return nil
    }
}

struct LeaseRegistryTests {
    @Test func newHostnamesGetTheSmallestNeverUsedIDs() throws {
        var h = Harness()
        #expect(try h.acquire("mx1.example.org", "a").nodeID == 1)
        #expect(try h.acquire("mx2.example.org", "b").nodeID == 2)
        #expect(try h.acquire("MX3.Example.ORG", "c").hostname == "mx3.example.org")
        #expect(h.registry.nodes().map(\.nodeID) == [1, 2, 3])
    }

    @Test func theFencingTokenIsTheGrantingIndexAndOnlyGrows() throws {
        var h = Harness()
        let a = try h.acquire("mx1", "a")
        #expect(a.fencingToken == 1 && a.leaseID == 1 && a.transitions == 0)
        h.run(.release(leaseID: a.leaseID))
        let b = try h.acquire("mx1", "b")
        #expect(b.nodeID == a.nodeID && b.fencingToken == 3 && b.transitions == 1)
        h.run(.expire(leaseID: b.leaseID, renewalIndex: 3))
        let c = try h.acquire("mx1", "b")
        #expect(c.fencingToken == 5 && c.transitions == 1, "same holder again: a new lease, no change of holder")
    }

    @Test func sameHolderReacquiringGetsTheSameLeaseRenewed() throws {
        var h = Harness()
        let a = try h.acquire("mx1", "a", at: 1000)
        let again = try h.acquire("mx1", "a", ttl: 60, at: 1010)
        #expect(again.leaseID == a.leaseID && again.lastRenewal == 1010 && again.ttlSeconds == 60 && again.acquiredAt == 1000)
    }

    @Test func anotherHolderIsRefusedWhileTheLeaseLives() throws {
        var h = Harness()
        _ = try h.acquire("mx1", "a", ttl: 30, at: 1000)
        let e = h.error(h.run(.acquire(hostname: "mx1", holder: "b", ttlSeconds: 30, idRange: range), at: 1012))
        #expect(e == .hostnameInUse(nodeID: 1, holder: "a", expiresInSeconds: 18))
        #expect(e?.code == "hostname_in_use")
    }

    @Test func hostnamesKeepTheirIDAcrossExpiryAndRelease() throws {
        var h = Harness()
        let a = try h.acquire("mx1", "a")
        _ = try h.acquire("mx2", "b")
        h.run(.expire(leaseID: a.leaseID, renewalIndex: 1))
        #expect(h.registry.node(1)?.status == .stale)
        _ = try h.acquire("mx3", "c")
        #expect(try h.acquire("mx1", "a").nodeID == 1)
    }

    @Test func idsAreReusedOnlyWhenNoneIsFreeInactiveLongestFirst() throws {
        var h = Harness()
        let small: ClosedRange<UInt32> = 7...9
        let a = try h.acquire("a", "a", range: small)
        let b = try h.acquire("b", "b", range: small)
        let c = try h.acquire("c", "c", range: small)
        #expect([a.nodeID, b.nodeID, c.nodeID] == [7, 8, 9])
        #expect(h.error(h.run(.acquire(hostname: "d", holder: "d", ttlSeconds: 30, idRange: small))) == .nodeIDsExhausted)
        h.run(.release(leaseID: c.leaseID))  // 9 inactive first
        h.run(.release(leaseID: a.leaseID))  // then 7
        h.run(.expire(leaseID: b.leaseID, renewalIndex: b.leaseID))  // 8 stale: never reused
        let d = try h.acquire("d", "d", range: small)
        #expect(d.nodeID == 9 && d.transitions == 1)
        #expect(h.registry.node(hostname: "c") == nil)
        #expect(try h.acquire("e", "e", range: small).nodeID == 7)
        #expect(h.error(h.run(.acquire(hostname: "f", holder: "f", ttlSeconds: 30, idRange: small))) == .nodeIDsExhausted)
    }

    @Test func forgottenIDsAreFreeAgain() throws {
        var h = Harness()
        for i in 1...5 { _ = try h.acquire("h\(i)", "x\(i)") }
        let l3 = h.registry.node(3)!.leaseID
        #expect(h.error(h.run(.forget(nodeID: 3))) == .nodeActive(3))
        h.run(.release(leaseID: l3))
        guard case .node(let gone) = try h.run(.forget(nodeID: 3)).get() else { Issue.record("no node"); return }
        #expect(gone.hostname == "h3")
        #expect(h.error(h.run(.forget(nodeID: 3))) == .nodeNotFound)
        #expect(try h.acquire("new", "n").nodeID == 3)
        #expect(try h.acquire("newer", "n").nodeID == 6)
    }

    @Test(arguments: [
        LeaseCommand.renew(leaseID: 99), .release(leaseID: 99), .expire(leaseID: 99, renewalIndex: 1),
    ])
    func unknownLeasesChangeNothing(_ command: LeaseCommand) throws {
        var h = Harness()
        _ = try h.acquire("mx1", "a")
        let before = h.registry.nodes()
        #expect(h.error(h.run(command)) == .leaseNotFound)
        #expect(h.registry.nodes() == before)
    }

    @Test func lateCommandsAfterTheLeaseEndedAreHarmless() throws {
        var h = Harness()
        let a = try h.acquire("mx1", "a")
        h.run(.release(leaseID: a.leaseID))
        let b = try h.acquire("mx1", "b")
        // The old holder's retried renew and release, and an old leader's expire.
        #expect(h.error(h.run(.renew(leaseID: a.leaseID))) == .leaseNotFound)
        #expect(h.error(h.run(.release(leaseID: a.leaseID))) == .leaseNotFound)
        #expect(h.error(h.run(.expire(leaseID: a.leaseID, renewalIndex: 1))) == .leaseNotFound)
        #expect(h.registry.node(1)?.status == .active && h.registry.node(1)?.leaseID == b.leaseID)
    }

    @Test func anExpireDecidedBeforeARenewalDoesNotTakeEffect() throws {
        var h = Harness()
        let a = try h.acquire("mx1", "a")
        h.run(.renew(leaseID: a.leaseID), at: 1020)  // index 2
        #expect(h.error(h.run(.expire(leaseID: a.leaseID, renewalIndex: 1))) == .leaseNotFound)
        #expect(h.registry.node(1)?.status == .active)
        guard case .node(let n) = try h.run(.expire(leaseID: a.leaseID, renewalIndex: 2)).get() else { return }
        #expect(n.status == .stale)
    }

    @Test func retireTurnsOnlyAnUnchangedStaleNodeInactive() throws {
        var h = Harness()
        let a = try h.acquire("mx1", "a")
        h.run(.expire(leaseID: a.leaseID, renewalIndex: 1))  // stale at index 2
        #expect(h.error(h.run(.retire(nodeID: 1, statusIndex: 1))) == .nodeNotFound)
        guard case .node(let n) = try h.run(.retire(nodeID: 1, statusIndex: 2)).get() else { return }
        #expect(n.status == .inactive)
    }

    @Test(arguments: [
        ("", "a", "hostname"), (String(repeating: "a", count: 254), "a", "hostname"), ("mx 1", "a", "hostname"),
        ("mx/1", "a", "hostname"), ("mx1", "", "holder"), ("mx1", String(repeating: "h", count: 129), "holder"),
        ("mx1", "tab\there", "holder"),
    ])
    func invalidFieldsAreNamed(_ hostname: String, _ holder: String, _ field: String) {
        var h = Harness()
        guard case .invalid(let f, _)? = h.error(h.run(.acquire(hostname: hostname, holder: holder, ttlSeconds: 30, idRange: range))) else {
            Issue.record("accepted \(hostname) / \(holder)")
            return
        }
        #expect(f == field)
        #expect(h.registry.count == 0)
    }

    @Test func ttlValidation() throws {
        #expect(try Validation.ttl(5, range: 5...3600) == 5)
        #expect(throws: LeaseError.self) { try Validation.ttl(4, range: 5...3600) }
        #expect(throws: LeaseError.self) { try Validation.ttl(3601, range: 5...3600) }
        #expect(throws: LeaseError.self) { try Validation.ttl(-1, range: 5...3600) }
    }

    @Test func aWideRangeNearTheTopOfUInt32() throws {
        var h = Harness()
        let top: ClosedRange<UInt32> = (UInt32.max - 1)...UInt32.max
        #expect(try h.acquire("a", "a", range: top).nodeID == NodeID(UInt32.max - 1))
        #expect(try h.acquire("b", "b", range: top).nodeID == NodeID(UInt32.max))
        #expect(h.error(h.run(.acquire(hostname: "c", holder: "c", ttlSeconds: 30, idRange: top))) == .nodeIDsExhausted)
    }

    @Test func commandsRoundTripThroughTheirEncoding() {
        let commands: [LeaseCommand] = [
            .acquire(hostname: "mx1.example.org", holder: "3b2f-mx1", ttlSeconds: 30, idRange: 1...511),
            .renew(leaseID: 7978), .release(leaseID: 1), .expire(leaseID: 5, renewalIndex: 9),
            .retire(nodeID: 4, statusIndex: 12), .forget(nodeID: NodeID(UInt32.max)),
        ]
        for c in commands {
            let t = TimedCommand(c, now: 1_767_225_600)
            #expect(TimedCommand(decoding: t.encoded()) == t)
        }
        #expect(TimedCommand(decoding: []) == nil)
        #expect(TimedCommand(decoding: [9, 1]) == nil)
        #expect(TimedCommand(decoding: TimedCommand(.renew(leaseID: 1), now: 0).encoded() + [0]) == nil)
    }

    @Test func garbageEntriesChangeNothing() throws {
        var h = Harness()
        _ = try h.acquire("mx1", "a")
        let before = h.registry.nodes()
        let r = h.registry.apply(entry: [1, 2, 3], index: 2)
        #expect(h.error(r) != nil)
        #expect(h.registry.nodes() == before && h.registry.appliedIndex == 2)
    }
}

struct RegistrySnapshotTests {
    /// Random commands to two registries; one is snapshotted and restored midway. They end equal.
    @Test(arguments: 1...30)
    func snapshotMidwayEqualsReplay(seed: UInt64) throws {
        var random = DeterministicGenerator(seed: seed)
        var a = LeaseRegistry()
        var b = LeaseRegistry()
        let ids: ClosedRange<UInt32> = 1...UInt32(3 + random.next() % 10)
        var leases: [UInt64] = [0]
        let n = 300
        for i in 1...n {
            let index = UInt64(i)
            let now = 1000 + UInt64(i)
            let command: LeaseCommand
            switch random.next() % 7 {
            case 0, 1: command = .acquire(hostname: "h\(random.next() % 15)", holder: "x\(random.next() % 3)", ttlSeconds: 30, idRange: ids)
            case 2: command = .renew(leaseID: leases[Int(random.next() % UInt64(leases.count))])
            case 3: command = .release(leaseID: leases[Int(random.next() % UInt64(leases.count))])
            case 4:
                let l = leases[Int(random.next() % UInt64(leases.count))]
                command = .expire(leaseID: l, renewalIndex: a.lease(l)?.renewalIndex ?? 0)
            case 5:
                let id = NodeID(UInt32(1 + random.next() % 12))
                command = .retire(nodeID: id, statusIndex: a.node(id)?.statusIndex ?? 0)
            default: command = .forget(nodeID: NodeID(UInt32(1 + random.next() % 12)))
            }
            let encoded = TimedCommand(command, now: now).encoded()
            let ra = a.apply(entry: encoded, index: index)
            let rb = b.apply(entry: encoded, index: index)
            #expect(ra == rb)
            if case .success(.lease(let l)) = ra { leases.append(l.leaseID) }
            if i == n / 2 || (i % 97 == 0) {
                b = try LeaseRegistry(snapshot: b.snapshot())
            }
        }
        #expect(a == b)
        #expect(a.snapshot() == b.snapshot())
        #expect(a.count > 0)
        // The incremental counts agree with a recount, also after a restore.
        for r in [a, b] {
            let all = r.nodes()
            let recount = (all.filter { $0.status == .active }.count, all.filter { $0.status == .stale }.count, all.filter { $0.status == .inactive }.count)
            #expect(r.counts() == recount)
        }
    }

    @Test func damagedSnapshotsAreRefused() throws {
        var h = Harness()
        for i in 1...20 { _ = try h.acquire("h\(i)", "x") }
        var bytes = h.registry.snapshot()
        #expect(try LeaseRegistry(snapshot: bytes) == h.registry)
        bytes[bytes.count / 2] ^= 1
        #expect(throws: LeaseRegistry.SnapshotError.checksumMismatch) { try LeaseRegistry(snapshot: bytes) }
        #expect(throws: LeaseRegistry.SnapshotError.badMagic) { try LeaseRegistry(snapshot: [1, 2, 3]) }
    }

    @Test func theRegistryIndexMovesWithIDsHostnamesAndStatusesNotRenewals() throws {
        var h = Harness()
        #expect(h.registry.registryIndex == 0)
        let a = try h.acquire("mx1", "a")  // 1: a new node
        #expect(h.registry.registryIndex == 1)
        h.run(.renew(leaseID: a.leaseID))  // 2: a renewal
        _ = try h.acquire("mx1", "a")  // 3: the same holder again, only renewed
        h.run(.registerReplica(replica: 1, dataDirectoryID: 9))  // 4
        h.run(.expire(leaseID: a.leaseID, renewalIndex: 1))  // 5: refused, renewed since
        #expect(h.registry.registryIndex == 1 && h.registry.appliedIndex == 5)
        h.run(.expire(leaseID: a.leaseID, renewalIndex: 3))  // 6: stale
        #expect(h.registry.registryIndex == 6)
        let b = try h.acquire("mx1", "b")  // 7: stale -> active, another holder
        #expect(h.registry.registryIndex == 7)
        h.run(.release(leaseID: b.leaseID))  // 8: inactive
        #expect(h.registry.registryIndex == 8)
        h.run(.release(leaseID: b.leaseID))  // 9: 404, nothing changed
        #expect(h.registry.registryIndex == 8)
        h.run(.forget(nodeID: b.nodeID))  // 10: gone
        #expect(h.registry.registryIndex == 10 && h.registry.count == 0)
        h.run(.forget(nodeID: b.nodeID))  // 11: 404
        #expect(h.registry.registryIndex == 10)
        let restored = try LeaseRegistry(snapshot: h.registry.snapshot())
        #expect(restored.registryIndex == 10 && restored == h.registry)
    }

    @Test func aVersion3SnapshotLoadsWithItsAppliedIndexAsTheRegistryIndex() throws {
        var h = Harness()
        let a = try h.acquire("mx1", "a")
        h.run(.renew(leaseID: a.leaseID))
        // Version 4 without its registry index is version 3.
        var v4 = h.registry.snapshot()
        let at = 5 + 1 + 8
        #expect(v4[5] == 4)
        var v3 = Array(v4[0..<5]) + [3] + Array(v4[6..<at]) + Array(v4[(at + 8)..<(v4.count - 4)])
        let crc = CRC32C.checksum(v3)
        v3 += [UInt8(crc & 0xff), UInt8(crc >> 8 & 0xff), UInt8(crc >> 16 & 0xff), UInt8(crc >> 24)]
        let old = try LeaseRegistry(snapshot: v3)
        #expect(old.registryIndex == 2 && old.appliedIndex == 2 && old.nodes() == h.registry.nodes())
        // A registry index beyond the applied index is damage.
        v4[at] = 0xff
        let body = Array(v4[0..<(v4.count - 4)])
        let crc4 = CRC32C.checksum(body)
        let bad = body + [UInt8(crc4 & 0xff), UInt8(crc4 >> 8 & 0xff), UInt8(crc4 >> 16 & 0xff), UInt8(crc4 >> 24)]
        #expect(throws: LeaseRegistry.SnapshotError.malformed("registry index beyond the applied index")) { try LeaseRegistry(snapshot: bad) }
    }
}

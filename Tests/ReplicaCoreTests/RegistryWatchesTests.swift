import ReplicaCore
import Testing

struct RegistryWatchesTests {
    let second: UInt64 = 1_000_000_000

    @Test func aChangeAnswersOnlyThoseWaitingBelowIt() {
        var w = RegistryWatches(limit: 10, leaderlessLimitNanos: second)
        #expect(w.add(.init(id: 1, after: 5, deadline: 60 * second)) == true)
        #expect(w.add(.init(id: 2, after: 7, deadline: 60 * second)) == true)
        #expect(w.add(.init(id: 3, after: 5, deadline: 60 * second)) == true)
        #expect(w.registryChanged(to: 5).isEmpty, "not beyond 5")
        let woken = w.registryChanged(to: 6)
        #expect(woken.map(\.id) == [1, 3] && woken.allSatisfy { $0.outcome == .changed })
        #expect(w.count == 1)
        #expect(w.registryChanged(to: 8).map(\.id) == [2])
        #expect(w.count == 0)
    }

    @Test func waitsEndAtTheirDeadline() {
        var w = RegistryWatches(limit: 10, leaderlessLimitNanos: second)
        _ = w.add(.init(id: 1, after: 0, deadline: 2 * second))
        _ = w.add(.init(id: 2, after: 0, deadline: 5 * second))
        #expect(w.tick(now: 2 * second - 1, leaderKnown: true).isEmpty)
        let ended = w.tick(now: 2 * second, leaderKnown: true)
        #expect(ended.map(\.id) == [1] && ended[0].outcome == .timedOut)
        #expect(w.count == 1)
    }

    @Test func everyWaitEndsOnceNoLeaderIsKnownForLongerThanTheLimit() {
        var w = RegistryWatches(limit: 10, leaderlessLimitNanos: second)
        _ = w.add(.init(id: 1, after: 0, deadline: 60 * second))
        _ = w.add(.init(id: 2, after: 0, deadline: 60 * second))
        #expect(w.tick(now: 10 * second, leaderKnown: false).isEmpty, "the leader was just lost")
        #expect(w.tick(now: 11 * second, leaderKnown: false).isEmpty && !w.leaderLost(now: 11 * second), "exactly the limit")
        // A leader found again starts the count afresh.
        #expect(w.tick(now: 11 * second + 1, leaderKnown: true).isEmpty)
        #expect(w.tick(now: 12 * second, leaderKnown: false).isEmpty)
        #expect(w.tick(now: 13 * second, leaderKnown: false).isEmpty)
        let ended = w.tick(now: 13 * second + 1, leaderKnown: false)
        #expect(ended.map(\.id) == [1, 2] && ended.allSatisfy { $0.outcome == .noLeader })
        #expect(w.leaderLost(now: 13 * second + 1))
        // A leader known between ticks counts at once.
        w.observe(leaderKnown: true, now: 13 * second + 2)
        #expect(!w.leaderLost(now: 13 * second + 2))
    }

    @Test func theLimitRefusesAndRemovalFreesAPlace() {
        var w = RegistryWatches(limit: 2, leaderlessLimitNanos: second)
        #expect(w.add(.init(id: 1, after: 0, deadline: 9)) == true)
        #expect(w.add(.init(id: 2, after: 0, deadline: 9)) == true)
        #expect(w.add(.init(id: 3, after: 0, deadline: 9)) == false)
        let (first, second) = (w.remove(id: 1), w.remove(id: 1))
        #expect(first && !second)
        #expect(w.add(.init(id: 3, after: 0, deadline: 9)) == true)
        let all = w.removeAll()
        #expect(all == [2, 3] && w.count == 0)
    }
}

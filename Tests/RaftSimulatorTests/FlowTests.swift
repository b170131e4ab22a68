import Raft
import RaftSimulator
import Testing

/// The leader's flow control with a follower that falls behind (`FlowBenchmark`): what each
/// `FullWindowPolicy` does, whichever is the default.
struct FlowTests {
    @Test func aSlowFollowerIsNeverSentAnEntryTwiceAndCatchesUp() throws {
        let lossless = FlowBenchmark.Scenario.standard[0]
        let r = try FlowBenchmark.run(lossless, policy: .emptyAppend)
        #expect(r.entriesResent == 0, "a slow but lossless follower was sent \(r.entriesResent) entries again")
        #expect(r.catchUpTicks != nil)
        // The probe policy re-sends on every heartbeat answer: the scenario can tell.
        #expect(try FlowBenchmark.run(lossless, policy: .probe).entriesResent > 0)
    }

    @Test(arguments: FullWindowPolicy.allCases) func aFollowerWhoseAppendsWereLostCatchesUp(policy: FullWindowPolicy) throws {
        let lossy = FlowBenchmark.Scenario.standard[1]
        let r = try FlowBenchmark.run(lossy, policy: policy)
        #expect(r.dropped > 0, "the scenario lost nothing")
        #expect(r.catchUpTicks != nil, "replica 3 never caught up after losing appends")
    }
}

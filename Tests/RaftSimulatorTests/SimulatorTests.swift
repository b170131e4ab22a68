import Raft
import RaftSimulator
import Testing

struct SimulatorTests {
    @Test("a few hundred fixed seeds pass every safety and liveness check", arguments: 0..<4)
    func fixedSeeds(batch: Int) {
        var failures: [String] = []
        for seed in UInt64(batch * 60 + 1)...UInt64(batch * 60 + 60) {
            let result = Simulation(options: SimulationOptions(seed: seed)).run()
            if !result.ok { failures.append("seed \(seed): \(result.violations)") }
            #expect(result.acknowledgedWrites > 0, "seed \(seed) acknowledged no write")
        }
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
    }
}

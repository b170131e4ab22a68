import Raft
import RaftSimulator
import Testing

struct SimulatorTests {
    @Test(
        "a few hundred fixed seeds pass every safety and liveness check",
        arguments: [SimulationOptions.Workload.leases, .register], 0..<2)
    func fixedSeeds(workload: SimulationOptions.Workload, batch: Int) {
        var failures: [String] = []
        for seed in UInt64(batch * 75 + 1)...UInt64(batch * 75 + 75) {
            let result = Simulation(options: SimulationOptions(seed: seed, workload: workload)).run()
            if !result.ok { failures.append("seed \(seed): \(result.violations)") }
            #expect(result.acknowledgedWrites > 0, "seed \(seed) acknowledged nothing")
        }
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
    }
}

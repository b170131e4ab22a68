import JepsenCheckers
import NodeLeaseServer
import Testing

/// Planted bugs exist only in the fault build: a normal build (this one) refuses to start a
/// replica when any `NODELEASE_FAULT*` variable is set, and the Jepsen suite knows every bug
/// the server can plant.
struct PlantedFaultTests {
    @Test func aNormalBuildRefusesEveryFaultVariable() throws {
        #expect(!PlantedFault.available)
        for variable in FaultOptions.variables + ["NODELEASE_FAULT_SOMETHING_NEW"] {
            #expect(throws: ConfigError.self) { try FaultOptions.fromEnvironment([variable: "1"]) }
        }
        do {
            _ = try FaultOptions.fromEnvironment(["NODELEASE_FAULT": "no-fsync"])
            Issue.record("a planted fault was accepted by a normal build")
        } catch {
            #expect(error.flag == "NODELEASE_FAULT")
            #expect(error.problem.contains("normal build"))
        }
        // Unset or empty: nothing planted.
        #expect(try FaultOptions.fromEnvironment([:]).isEmpty)
        #expect(try FaultOptions.fromEnvironment(["NODELEASE_FAULT": ""]).isEmpty)
    }

    @Test func theJepsenSuiteKnowsEveryPlantedBug() {
        #expect(PlantedFault.allCases.map(\.rawValue).sorted() == PlantedBug.all.map(\.name).sorted())
    }
}

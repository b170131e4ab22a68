import ChildProcess
import Foundation

/// `--tls`: a throwaway CA for the run, a certificate per replica (made when the replica
/// first starts), and an admin token in a token file; the replicas then run with mutual TLS
/// between them, HTTPS and tokens, and the suite's clients use the CA and the token.
struct JepsenTLS: Sendable {
    let dir: String
    let token: String
    var caFile: String { dir + "/ca.pem" }
    var caKey: String { dir + "/ca.key" }
    var tokenFile: String { dir + "/tokens" }

    /// Makes the CA and the token (with the nodelease binary's `token create`).
    static func make(dir: String, binary: String) throws -> JepsenTLS {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try openssl([
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", dir + "/ca.key", "-out",
            dir + "/ca.pem", "-days", "2", "-subj", "/CN=NodeLease Jepsen CA",
        ])
        let out = try run(binary, ["token", "create", "--role", "admin", "--name", "jepsen"])
        let lines = out.split(separator: "\n").map(String.init)
        guard let token = lines.first(where: { $0.hasPrefix("token: ") })?.dropFirst(7),
            let line = lines.first(where: { $0.hasPrefix("token file line: ") })?.dropFirst(17)
        else { throw JepsenSetupError("nodelease token create printed no token") }
        try (String(line) + "\n").write(toFile: dir + "/tokens", atomically: true, encoding: .utf8)
        return JepsenTLS(dir: dir, token: String(token))
    }

    /// Replica `id`'s certificate and key (made once): its peer identity in cluster `cluster`,
    /// and the addresses clients dial.
    func certificate(replica id: Int, cluster: String, ips: [String]) throws -> (certificate: String, key: String) {
        let base = "\(dir)/replica-\(id)"
        if FileManager.default.fileExists(atPath: base + ".pem") { return (base + ".pem", base + ".key") }
        try Self.openssl([
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", base + ".key", "-out", base + ".csr", "-subj",
            "/CN=replica-\(id)",
        ])
        let names = ["URI:nodelease://\(cluster)/replica/\(id)", "DNS:localhost"] + Set(ips).sorted().map { "IP:\($0)" }
        try "subjectAltName=\(names.joined(separator: ","))\nextendedKeyUsage=serverAuth,clientAuth\n".write(
            toFile: base + ".ext", atomically: true, encoding: .utf8)
        try Self.openssl([
            "x509", "-req", "-in", base + ".csr", "-CA", caFile, "-CAkey", caKey, "-CAcreateserial", "-out", base + ".pem", "-days", "2",
            "-extfile", base + ".ext",
        ])
        return (base + ".pem", base + ".key")
    }

    static func openssl(_ arguments: [String]) throws { _ = try run("/usr/bin/openssl", arguments) }

    /// Runs a program to its end; its standard output, or an error with its standard error.
    static func run(_ program: String, _ arguments: [String]) throws -> String {
        do {
            return try ChildProcess.output(program, arguments)
        } catch let error as ChildProcessError {
            throw JepsenSetupError(error.description)
        }
    }
}

import ChildProcess
import Foundation

/// Certificates made at test time with the `openssl` command (none are committed): a CA, and
/// certificates it signs with the subject alternative names a test asks for. Removed with
/// `remove()`.
public final class TestPKI: @unchecked Sendable {
    public let directory: String
    public let name: String
    public var caCertificate: String { "\(directory)/\(name)-ca.pem" }
    var caKey: String { "\(directory)/\(name)-ca.key" }

    /// A new CA named `name` in a new temporary directory (or in `directory`).
    public init(name: String = "test", directory: String? = nil) throws {
        self.name = name
        self.directory = directory ?? FileManager.default.temporaryDirectory.appendingPathComponent("nodelease-pki-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: self.directory, withIntermediateDirectories: true)
        try Self.openssl([
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", caKey, "-out", caCertificate,
            "-days", "2", "-subj", "/CN=\(name) test CA",
        ])
    }

    /// A certificate signed by this CA: `(certificate, key)` paths. `days` below zero makes one
    /// that has already expired.
    public func issue(_ file: String, uris: [String] = [], dns: [String] = [], ips: [String] = [], days: Int = 2) throws -> (certificate: String, key: String) {
        let key = "\(directory)/\(file).key"
        let csr = "\(directory)/\(file).csr"
        let cert = "\(directory)/\(file).pem"
        let ext = "\(directory)/\(file).ext"
        try Self.openssl([
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=\(file)",
        ])
        let names = uris.map { "URI:\($0)" } + dns.map { "DNS:\($0)" } + ips.map { "IP:\($0)" }
        var extensions = "extendedKeyUsage=serverAuth,clientAuth\n"
        if !names.isEmpty { extensions += "subjectAltName=" + names.joined(separator: ",") + "\n" }
        try extensions.write(toFile: ext, atomically: true, encoding: .utf8)
        try Self.openssl([
            "x509", "-req", "-in", csr, "-CA", caCertificate, "-CAkey", caKey, "-CAcreateserial", "-out", cert, "-days", String(days),
            "-extfile", ext,
        ])
        return (cert, key)
    }

    public func remove() { try? FileManager.default.removeItem(atPath: directory) }

    static func openssl(_ arguments: [String]) throws {
        do {
            _ = try ChildProcess.output("/usr/bin/openssl", arguments)
        } catch let error as ChildProcessError {
            throw TestPKIError(description: error.description)
        }
    }
}

public struct TestPKIError: Error, CustomStringConvertible {
    public var description: String
}

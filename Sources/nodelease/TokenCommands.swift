import ArgumentParser
import Foundation
import NodeLeaseServer

/// `nodelease token create|hash`: tokens for the token file (shared/API.md, "Authentication
/// and roles").
struct Token: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make tokens for a replica's --token-file.",
        subcommands: [Create.self, Hash.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a new random token, then the line to add to the token file (which holds only its hash).")

        @OptionGroup var entry: EntryOptions

        func run() throws {
            let token = TokenFile.newToken()
            let line = try entry.line(token: token)
            print("token: \(token)")
            print("token file line: \(line)")
            FileHandle.standardError.write(
                Data("Give the token to its user (NODELEASE_TOKEN); add the line to every replica's token file and send them SIGHUP.\n".utf8))
        }
    }

    struct Hash: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Read a token from standard input and print its token-file line (to re-issue a line, or rotate roles).")

        @OptionGroup var entry: EntryOptions

        func run() throws {
            let input = FileHandle.standardInput.readDataToEndOfFile()
            let token = String(decoding: input, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard !token.isEmpty else { throw ValidationError("no token on standard input") }
            print(try entry.line(token: token))
        }
    }

    /// What a token-file line says besides the hash.
    struct EntryOptions: ParsableArguments {
        @Option(help: "node, reader or admin.")
        var role: String
        @Option(help: "For a node token: the hostnames it may lease, comma-separated (mx1.example.org, *.example.org).")
        var hostnames: String?
        @Option(help: "A label for the log (letters, digits, '-', '_', '.', '@').")
        var name: String?

        func line(token: String) throws -> String { try Token.line(token: token, role: role, hostnames: hostnames, name: name) }
    }

    /// The token file's line for `token`, checked by the same parser the replicas use.
    static func line(token: String, role: String, hostnames: String?, name: String?) throws -> String {
        var text = "sha256:\(SHA256.hex(token)) role=\(role)"
        if let hostnames { text += " hostnames=\(hostnames)" }
        if let name { text += " name=\(name)" }
        do {
            guard let entry = try TokenFile.parse(text).entries.first else { throw ValidationError("no token line") }
            return entry.line
        } catch let e as ConfigError {
            throw ValidationError(e.problem.replacingOccurrences(of: "line 1: ", with: ""))
        }
    }
}

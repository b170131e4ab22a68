import ArgumentParser
import Foundation
import NodeLeaseClient

/// `nodelease member ...`: the replicas of the cluster (shared/API.md, "Replicas (membership)").
struct Member: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the cluster's replicas, or change them one at a time.",
        discussion: """
            A new replica is added as a learner, started with an empty data directory, and becomes \
            a voter once it has caught up. Every change is committed before the next is accepted; \
            --expected-config-index makes a change fail if the configuration changed since it was listed.
            """,
        subcommands: [List.self, Add.self, Promote.self, Remove.self],
        defaultSubcommand: List.self)

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "Show the replicas and the config index.")
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let c = try client.client()
            let config = try await clientCall { () async throws(NodeLeaseError) in try await c.replicas() }
            print(client.json ? Render.json(config) : Render.replicasTable(config))
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "add", abstract: "Add a replica as a learner, and print the command that starts it.")
        @Argument(help: "The new replica's id (not used by any replica of the configuration).") var id: UInt64
        @Option(help: "Where the other replicas reach the new one (HOST:PORT).") var peerAddr: String
        @Option(help: "Where clients reach the new replica's API (HOST:PORT).") var clientAddr: String
        @Option(help: "The new replica's data directory, for the printed command (data-ID).") var dataDir: String?
        @Option(help: "Refuse the change unless the config index is still this one (see member list).") var expectedConfigIndex: UInt64?
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let c = try client.client()
            // The cluster id first, through the endpoints as given (the change makes the new
            // configuration's client addresses the endpoints, the new replica's among them).
            let status = try await clientCall { () async throws(NodeLeaseError) in try await c.status() }
            let config = try await clientCall { () async throws(NodeLeaseError) in
                try await c.addReplica(id: id, peerAddress: peerAddr, clientAddress: clientAddr, expectedConfigIndex: expectedConfigIndex)
            }
            if client.json {
                print(Render.json(config))
                return
            }
            let peers = config.replicas.sorted { $0.replicaId < $1.replicaId }.map { "\($0.replicaId)=\($0.peerAddress)" }
            var command = [
                "nodelease", "serve", "--replica-id", String(id), "--join", "--peers", peers.joined(separator: ","),
                "--peer-addr", peerAddr, "--client-addr", clientAddr, "--data-dir", dataDir ?? "data-\(id)",
            ]
            if let clusterId = status.clusterId { command += ["--cluster-id", clusterId] }
            print(Render.replicasTable(config))
            print("")
            print("Start replica \(id) with an empty data directory:")
            print("  " + command.map(Render.shellWord).joined(separator: " "))
            print("It joins as a learner; the leader promotes it to voter once it has caught up (or: nodelease member promote \(id)).")
        }
    }

    struct Promote: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "promote", abstract: "Make a learner that has caught up a voter.")
        @Argument(help: "The learner's replica id.") var id: UInt64
        @Option(help: "Refuse the change unless the config index is still this one (see member list).") var expectedConfigIndex: UInt64?
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let c = try client.client()
            let config = try await clientCall { () async throws(NodeLeaseError) in
                try await c.promoteReplica(id: id, expectedConfigIndex: expectedConfigIndex)
            }
            print(client.json ? Render.json(config) : Render.replicasTable(config))
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "remove", abstract: "Remove a voter or a learner (a leader removing itself hands over leadership first).")
        @Argument(help: "The replica id.") var id: UInt64
        @Option(help: "Refuse the change unless the config index is still this one (see member list).") var expectedConfigIndex: UInt64?
        @Flag(
            help: """
                Remove it even if the change would leave fewer reachable voters than the quorum. \
                For replacing a dead replica, which would otherwise be refused.
                """)
        var force = false
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let c = try client.client()
            let config = try await clientCall { () async throws(NodeLeaseError) in
                try await c.removeReplica(id: id, expectedConfigIndex: expectedConfigIndex, force: force)
            }
            print(client.json ? Render.json(config) : Render.replicasTable(config))
        }
    }
}

extension Render {
    static func json(_ c: ReplicaConfiguration) -> String {
        let replicas = c.replicas.map { r in
            "{\"replicaId\":\(r.replicaId),\"peerAddress\":\(q(r.peerAddress)),\"clientAddress\":\(q(r.clientAddress)),\"role\":\(q(r.role))}"
        }
        return "{\"configIndex\":\(c.configIndex),\"replicas\":[" + replicas.joined(separator: ",") + "]}"
    }

    /// `config index N`, then a table of the replicas by id.
    static func replicasTable(_ c: ReplicaConfiguration) -> String {
        let rows: [[String]] = c.replicas.sorted { $0.replicaId < $1.replicaId }.map {
            [String($0.replicaId), $0.role, $0.peerAddress, $0.clientAddress]
        }
        return "config index \(c.configIndex)\n" + table([["ID", "ROLE", "PEER", "CLIENT"]] + rows)
    }

    /// `word` as one shell word: as it is when it needs no quoting, else in single quotes.
    static func shellWord(_ word: String) -> String {
        let plain = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=,@%+")
        if !word.isEmpty && word.allSatisfy({ plain.contains($0) }) { return word }
        return "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}

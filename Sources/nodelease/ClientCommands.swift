import ArgumentParser
import Foundation
import Logging
import NodeLeaseClient

/// Flags of the client commands.
struct ClientOptions: ParsableArguments {
    @Option(help: "Replica endpoints, comma-separated (127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403). Env NODELEASE_ENDPOINTS.")
    var endpoints: String?
    @Flag(help: "Print the API's JSON instead of a line for people.")
    var json = false
    @Option(help: "Seconds a command may take, retries included.")
    var timeout: Double = 10

    @Option(help: "CA certificate (PEM) of the replicas' HTTPS certificates; endpoints without a scheme are then https. Env NODELEASE_CA_FILE.")
    var caFile: String?

    func client() throws -> NodeLeaseClient {
        let env = ProcessInfo.processInfo.environment
        let text = endpoints ?? env["NODELEASE_ENDPOINTS"] ?? "127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403"
        var tls = NodeLeaseClient.TLS.fromEnvironment()
        if let caFile { tls = NodeLeaseClient.TLS(caFile: caFile, certificateFile: tls?.certificateFile, keyFile: tls?.keyFile) }
        return NodeLeaseClient(
            endpoints: try NodeLeaseClient.parseEndpoints(text, defaultScheme: tls == nil ? "http" : "https"),
            timeout: .milliseconds(Int(timeout * 1000)), token: env["NODELEASE_TOKEN"], tls: tls)
    }
}

/// Runs a client call, printing errors as one line and exiting non-zero.
func clientCall<T>(_ body: () async throws(NodeLeaseError) -> T) async throws -> T {
    do {
        return try await body()
    } catch {
        FileHandle.standardError.write(Data("nodelease: \(error)\n".utf8))
        throw ExitCode(error == .noLeader || { if case .transport = error { return true } else { return false } }() ? 3 : 1)
    }
}

enum Render {
    static func json(_ l: Lease) -> String {
        "{\"leaseId\":\(q(l.leaseId)),\"nodeId\":\(l.nodeId),\"hostname\":\(q(l.hostname)),\"holder\":\(q(l.holder)),"
            + "\"fencingToken\":\(l.fencingToken),\"ttlSeconds\":\(l.ttlSeconds),\"acquiredAt\":\(q(l.acquiredAt)),"
            + "\"lastRenewal\":\(q(l.lastRenewal)),\"leaseTransitions\":\(l.leaseTransitions)}"
    }

    static func json(_ n: ClusterNode) -> String {
        "{\"nodeId\":\(n.nodeId),\"hostname\":\(q(n.hostname)),\"lastRenewal\":\(q(n.lastRenewal)),\"status\":\(q(n.status))}"
    }

    static func q(_ s: String) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: [s], options: [.withoutEscapingSlashes])) ?? Data("[\"\"]".utf8)
        return String(String(decoding: data, as: UTF8.self).dropFirst().dropLast())
    }

    static func line(_ l: Lease) -> String {
        "node \(l.nodeId) for \(l.hostname): lease \(l.leaseId), fencing token \(l.fencingToken), ttl \(l.ttlSeconds)s, holder \(l.holder)"
    }

    /// An aligned table; the first row is the header.
    static func table(_ rows: [[String]]) -> String {
        guard let first = rows.first else { return "" }
        var widths = first.map(\.count)
        for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
        return rows.map { r in
            r.enumerated().map { i, c in i == r.count - 1 ? c : c + String(repeating: " ", count: widths[i] - c.count) }
                .joined(separator: "  ")
        }.joined(separator: "\n")
    }

    /// Human age of an RFC 3339 instant relative to `now`.
    static func age(_ stamp: String, now: Date) -> String {
        let f = ISO8601DateFormatter()
        guard let d = f.date(from: stamp) else { return "?" }
        let s = max(0, Int(now.timeIntervalSince(d)))
        if s < 120 { return "\(s)s" }
        if s < 7200 { return "\(s / 60)m" }
        if s < 172_800 { return "\(s / 3600)h" }
        return "\(s / 86400)d"
    }

    static func nodesTable(_ nodes: [ClusterNode], now: Date) -> String {
        table([["NODE ID", "HOSTNAME", "LAST RENEWAL", "AGE", "STATUS"]] + nodes.map {
            [String($0.nodeId), $0.hostname, $0.lastRenewal, age($0.lastRenewal, now: now), $0.status]
        })
    }

    /// One line per change between two registries (by node ID): a node that appeared, changed
    /// status, went to another hostname, or was forgotten. Renewals are not changes.
    static func changes(from old: [ClusterNode], to new: [ClusterNode]) -> [String] {
        var before: [UInt32: ClusterNode] = [:]
        for n in old { before[n.nodeId] = n }
        var lines: [String] = []
        var seen = Set<UInt32>()
        for n in new {
            seen.insert(n.nodeId)
            guard let b = before[n.nodeId] else {
                lines.append("node \(n.nodeId) (\(n.hostname)) appeared, \(n.status)")
                continue
            }
            if b.hostname != n.hostname {
                lines.append("node \(n.nodeId) went from \(b.hostname) to \(n.hostname), \(n.status)")
            } else if b.status != n.status {
                let what =
                    switch n.status {
                    case "stale": "became stale (its lease expired)"
                    case "inactive": b.status == "stale" ? "became inactive (stale beyond the retention)" : "became inactive (released)"
                    case "active": "is active again"
                    default: "is \(n.status)"
                    }
                lines.append("node \(n.nodeId) (\(n.hostname)) \(what)")
            }
        }
        for n in old where !seen.contains(n.nodeId) {
            lines.append("node \(n.nodeId) (\(n.hostname)) was forgotten")
        }
        return lines
    }

    static func statusTable(_ all: [(endpoint: URL, status: Result<ReplicaStatusView, NodeLeaseError>)]) -> String {
        let leaderCommit = all.compactMap { try? $0.status.get() }.first { $0.role == "leader" }?.commitIndex
        var rows = [["REPLICA", "ENDPOINT", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAG", "VERSION", "REACHABLE"]]
        var clusterVersions: Set<UInt32> = []
        for (url, r) in all {
            let host = "\(url.host ?? "?"):\(url.port ?? 80)"
            switch r {
            case .success(let s):
                let lag = leaderCommit.map { $0 > s.appliedIndex ? String($0 - s.appliedIndex) : "0" } ?? "-"
                // A replica of the first release reports no versions: it supports cluster version 1.
                let version = "\(s.version ?? "0.1") (max \(s.supportedClusterVersion ?? 1))"
                clusterVersions.insert(s.clusterVersion ?? 1)
                rows.append([
                    String(s.replicaId), host, s.role, String(s.term), s.leaderId.map(String.init) ?? "-", String(s.commitIndex),
                    String(s.appliedIndex), lag, version, s.peers.map { "\($0.replicaId):\($0.reachable ? "yes" : "no")" }.joined(separator: " "),
                ])
            case .failure:
                rows.append(["?", host, "unreachable", "-", "-", "-", "-", "-", "-", "-"])
            }
        }
        let versions = clusterVersions.sorted().map(String.init).joined(separator: ", ")
        let footer =
            clusterVersions.count > 1
            ? "cluster version: \(versions) (replicas that have not applied the latest change yet)" : "cluster version: \(versions)"
        return table(rows) + (clusterVersions.isEmpty ? "" : "\n" + footer)
    }
}

struct Acquire: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Acquire (or renew, for the same holder) the lease of a hostname.")
    @Option(help: "Hostname (default: STALWART_HOSTNAME, else this machine's hostname).")
    var hostname: String?
    @Option(help: "Holder id (default: derived from /etc/machine-id).")
    var holder: String?
    @Option(help: "TTL in seconds (default: the server's).")
    var ttl: Int?
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let c = try client.client()
        let host = hostname ?? NodeIdentity.hostname()
        let who = try holder ?? NodeIdentity.holder()
        let l = try await clientCall { () async throws(NodeLeaseError) in try await c.acquire(hostname: host, holder: who, ttlSeconds: ttl) }
        print(client.json ? Render.json(l) : "acquired " + Render.line(l))
    }
}

struct Renew: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Renew a lease.")
    @Argument(help: "The lease id.") var lease: String
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let c = try client.client()
        let l = try await clientCall { () async throws(NodeLeaseError) in try await c.renew(leaseId: lease) }
        print(client.json ? Render.json(l) : "renewed " + Render.line(l))
    }
}

struct Release: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Release a lease; the node becomes inactive.")
    @Argument(help: "The lease id.") var lease: String
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let c = try client.client()
        let n = try await clientCall { () async throws(NodeLeaseError) in try await c.release(leaseId: lease) }
        print(client.json ? Render.json(n) : "released node \(n.nodeId) (\(n.hostname)), now \(n.status)")
    }
}

struct Forget: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Forget a stale or inactive node: its ID and hostname become free.")
    @Argument(help: "The node id.") var node: UInt32
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let c = try client.client()
        let n = try await clientCall { () async throws(NodeLeaseError) in try await c.forget(nodeId: node) }
        print(client.json ? Render.json(n) : "forgot node \(n.nodeId) (\(n.hostname))")
    }
}

struct Nodes: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the registry of cluster nodes.")
    @Option(help: "Only nodes with this status: active, stale or inactive.")
    var status: String?
    @Flag(help: "Read through the leader's quorum (linearizable) instead of any replica's applied state.")
    var linearizable = false
    @Flag(help: "Follow the registry through long polls (Ctrl-C to stop): a line per change (appeared, stale, inactive, forgotten); on a terminal, the table redrawn above the latest changes; with --json, one snapshot per line.")
    var watch = false
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let c = try client.client()
        guard watch else {
            let nodes = try await clientCall { () async throws(NodeLeaseError) in try await c.nodes(status: status, linearizable: linearizable) }
            print(client.json ? "[" + nodes.map(Render.json).joined(separator: ",") + "]" : Render.nodesTable(nodes, now: Date()))
            return
        }
        if let status, !["active", "stale", "inactive"].contains(status) {
            throw ValidationError("--status: unknown value \"\(status)\" (active, stale or inactive)")
        }
        let terminal = isatty(STDOUT_FILENO) == 1 && !client.json
        var previous: [ClusterNode]?
        var recent: [String] = []
        do {
            // The whole registry is watched and filtered here, so a node leaving the filter is
            // named for what happened to it (not "forgotten").
            for try await whole in c.watchNodes(linearizable: linearizable) {
                var snapshot = whole
                if let status { snapshot.nodes = whole.nodes.filter { $0.status == status } }
                let stamp = ISO8601DateFormatter().string(from: Date())
                if client.json {
                    print("{\"registryIndex\":\(snapshot.registryIndex),\"nodes\":[" + snapshot.nodes.map(Render.json).joined(separator: ",") + "]}")
                } else {
                    // Changes of the nodes shown before or now (named by the whole registry).
                    var lines = previous.map { before -> [String] in
                        guard let status else { return Render.changes(from: before, to: whole.nodes) }
                        let shown = Set(before.filter { $0.status == status }.map(\.nodeId) + snapshot.nodes.map(\.nodeId))
                        return Render.changes(from: before.filter { shown.contains($0.nodeId) }, to: whole.nodes.filter { shown.contains($0.nodeId) })
                    } ?? []
                    if snapshot.reset && previous != nil { lines.insert("the registry index went back (another cluster or a restore): the registry afresh", at: 0) }
                    let stamped = lines.map { "\(stamp)  \($0)" }
                    if terminal {
                        recent = Array((recent + stamped).suffix(20))
                        print("\u{1B}[2J\u{1B}[H" + Render.nodesTable(snapshot.nodes, now: Date()), terminator: "\n")
                        print("\nregistry index \(snapshot.registryIndex)" + (recent.isEmpty ? "" : "; latest changes:\n" + recent.joined(separator: "\n")))
                    } else if previous == nil {
                        print(Render.nodesTable(snapshot.nodes, now: Date()))
                    } else {
                        for line in stamped { print(line) }
                    }
                }
                fflush(nil)  // every output stream: a pipe sees each change at once
                previous = whole.nodes
            }
        } catch let e as NodeLeaseError {
            FileHandle.standardError.write(Data("nodelease: \(e)\n".utf8))
            throw ExitCode(1)
        }
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Every replica of the endpoint list, side by side.")
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let all = await (try client.client()).statusOfAll()
        if client.json {
            let items = all.map { e, r -> String in
                switch r {
                case .success(let s): return String(decoding: (try? JSONEncoder().encode(s)) ?? Data(), as: UTF8.self)
                case .failure(let err): return "{\"endpoint\":\(Render.q(e.absoluteString)),\"error\":\(Render.q(err.description))}"
                }
            }
            print("[" + items.joined(separator: ",") + "]")
        } else {
            print(Render.statusTable(all))
        }
    }
}

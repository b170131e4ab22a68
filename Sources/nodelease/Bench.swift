import ArgumentParser
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// `nodelease bench`: a closed-loop load generator. Each worker keeps one keep-alive HTTP/1.1
/// connection and sends its next request when the previous one answers. It speaks our API, or
/// etcd's JSON gateway (`--system etcd`), with the same client code, so the two can be
/// compared side by side.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load a cluster: ops/s, latency percentiles, errors and replica CPU time.")

    @Option(help: "Endpoints (host:port, comma-separated).") var endpoints: String = "127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403"
    @Option(help: "acquire, renew, read, mixed (5% acquire, 90% renew, 5% read) or fleet (--nodes leases, each renewed every TTL/3).") var op: String = "renew"
    @Option(help: "Concurrent workers (connections).") var concurrency: Int = 16
    @Option(help: "Measured time: 10s, 1500ms, 2m, or plain seconds (default 10 s; a fleet: 3 TTLs).", transform: BenchSeconds.parse) var duration: Double?
    @Option(help: "Fleet: how many nodes, each with its own lease.") var nodes: Int = 100_000
    @Option(help: "Fleet: the leases' TTL in seconds; each node renews every TTL/3, on schedule.") var ttl: Int = 30
    @Option(help: "Load before measuring, in the same units.", transform: BenchSeconds.parse) var warmup: Double = 2
    @Option(help: "Hostnames (leases) renewed in the renew and mixed workloads (default: one per worker).") var hostnames: Int?
    @Option(help: "Send writes to the leader or to a follower (reads always go to a follower).") var target: String = "leader"
    @Option(help: "The system under test: nodelease or etcd (its JSON gateway).") var system: String = "nodelease"
    @Option(help: "PIDs of the replica processes, for their CPU time (default: .cluster/replica-*.pid).") var pids: String?
    @Flag(help: "Print JSON instead of a table.") var json = false
    @Option(help: "Talk HTTPS, trusting this CA (PEM); the token comes from NODELEASE_TOKEN. Env NODELEASE_CA_FILE.") var caFile: String?

    func validate() throws {
        guard ["acquire", "renew", "read", "mixed", "fleet"].contains(op) else { throw ValidationError("--op must be acquire, renew, read, mixed or fleet") }
        guard nodes >= 1, ttl >= 3 else { throw ValidationError("--nodes must be at least 1 and --ttl at least 3") }
        guard ["leader", "follower"].contains(target) else { throw ValidationError("--target must be leader or follower") }
        guard ["nodelease", "etcd"].contains(system) else { throw ValidationError("--system must be nodelease or etcd") }
        guard concurrency >= 1, (duration ?? 1) > 0, warmup >= 0 else { throw ValidationError("--concurrency, --duration and --warmup must be positive") }
    }

    func run() async throws {
        let env = ProcessInfo.processInfo.environment
        if let ca = caFile ?? env["NODELEASE_CA_FILE"] {
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca))
            // The bench dials addresses, not names: the chain is checked, the name is not.
            tls.certificateVerification = .noHostnameVerification
            let context = try NIOSSLContext(configuration: tls)
            HTTP1.security.withLockedValue { $0.tls = context }
        }
        if let token = env["NODELEASE_TOKEN"], !token.isEmpty { HTTP1.security.withLockedValue { $0.token = token } }
        let addresses = endpoints.split(separator: ",").map { e -> (String, Int) in
            let parts = e.split(separator: ":")
            return (String(parts[0]), Int(parts.last!) ?? 80)
        }
        let etcd = system == "etcd"
        // Find the leader (ours: /v1/status; etcd forwards writes itself, so any member).
        var leaderIndex = 0
        if !etcd {
            for (i, a) in addresses.enumerated() {
                guard let r = try? await HTTP1.withConnection(host: a.0, port: a.1, { try await $0.request(.GET, "/v1/status", nil) }) else { continue }
                if let obj = try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any], obj["role"] as? String == "leader" {
                    leaderIndex = i
                }
            }
        }
        let followerIndex = addresses.count > 1 ? (leaderIndex + 1) % addresses.count : 0
        let writeIndex = target == "leader" ? leaderIndex : followerIndex
        if op == "fleet" {
            try await runFleet(write: addresses[writeIndex], etcd: etcd)
            return
        }
        let duration = self.duration ?? 10

        // Prepare: leases to renew, and a node to read.
        let leaseCount = hostnames ?? concurrency
        var leases: [String] = []
        if op == "renew" || op == "mixed" || op == "read" {
            let count = op == "read" ? 1 : leaseCount
            leases = try await HTTP1.withConnection(host: addresses[writeIndex].0, port: addresses[writeIndex].1) { c in
                var out: [String] = []
                for i in 0..<count {
                    let r = try await c.request(.POST, etcd ? "/v3/lease/grant" : "/v1/leases", Self.acquireBody(etcd: etcd, hostname: "bench-\(i).example.org"))
                    let obj = (try? JSONSerialization.jsonObject(with: Data(r.body))) as? [String: Any] ?? [:]
                    if let id = (etcd ? obj["ID"] : obj["leaseId"]) as? String { out.append(id) }
                    if etcd, i == 0 {
                        _ = try await c.request(.POST, "/v3/kv/put", Data("{\"key\":\"YmVuY2g=\",\"value\":\"MQ==\"}".utf8))
                    }
                }
                return out
            }
            guard !leases.isEmpty else {
                FileHandle.standardError.write(Data("nodelease bench: could not create leases to work with\n".utf8))
                throw ExitCode(1)
            }
        }

        let stats = BenchStats()
        let clock = ContinuousClock()
        let startMeasure = clock.now + .milliseconds(Int(warmup * 1000))
        let end = startMeasure + .milliseconds(Int(duration * 1000))
        // Replica CPU over the measured window only (not the warm-up).
        let pidList = Self.pidList(pids)
        let cpuBefore = NIOLockedValueBox<[(String, Double)]>([])
        let ownBefore = NIOLockedValueBox(0.0)
        let sampler = Task {
            try? await Task.sleep(until: startMeasure, clock: .continuous)
            cpuBefore.withLockedValue { $0 = Self.cpuSeconds(pids: pidList) }
            ownBefore.withLockedValue { $0 = Self.ownCPUSeconds() }
        }
        let progress = Task {
            while clock.now < end {
                guard (try? await Task.sleep(for: .seconds(1))) != nil else { break }
                let (n, e) = stats.counts()
                FileHandle.standardError.write(Data("\r\(n) ops, \(e) errors   ".utf8))
            }
        }
        let opName = op
        await withTaskGroup(of: Void.self) { group in
            for w in 0..<concurrency {
                let write = addresses[writeIndex]
                let read = addresses[followerIndex]
                let myLeases = leases
                group.addTask {
                    await Self.worker(
                        w, op: opName, etcd: etcd, write: write, read: read, leases: myLeases, start: startMeasure, end: end, stats: stats)
                }
            }
        }
        progress.cancel()
        await sampler.value
        FileHandle.standardError.write(Data("\r".utf8))
        let cpuAfter = Self.cpuSeconds(pids: pidList)
        let cpu = zip(cpuBefore.withLockedValue { $0 }, cpuAfter).map { ($0.0, max(0, $1.1 - $0.1)) }  // a process that died reads as 0
        let own = Self.ownCPUSeconds() - ownBefore.withLockedValue { $0 }
        print(
            stats.report(
                system: system, op: op, concurrency: concurrency, seconds: duration, cpu: cpu, rss: Self.residentBytes(pids: pidList),
                loadGeneratorCPU: own, json: json))
    }

    static func acquireBody(etcd: Bool, hostname: String) -> Data {
        etcd ? Data("{\"TTL\":30}".utf8) : Data("{\"hostname\":\"\(hostname)\",\"holder\":\"bench\",\"ttlSeconds\":30}".utf8)
    }

    static func worker(
        _ w: Int, op: String, etcd: Bool, write: (String, Int), read: (String, Int), leases: [String], start: ContinuousClock.Instant,
        end: ContinuousClock.Instant, stats: BenchStats
    ) async {
        // A lost connection (or an answer that takes longer than the read timeout) is counted
        // and the worker connects again, so a failover shows up as errors, not a stall.
        let clock = ContinuousClock()
        var n = 0
        while clock.now < end {
            do {
                try await HTTP1.withConnection(host: write.0, port: write.1) { wc in
                    try await HTTP1.withConnection(host: read.0, port: read.1) { rc in
                        try await loop(w, op: op, etcd: etcd, wc: &wc, rc: &rc, leases: leases, n: &n, start: start, end: end, stats: stats)
                    }
                }
                return
            } catch {
                if clock.now >= start { stats.error("connection lost or timed out") }
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    static func loop(
        _ w: Int, op: String, etcd: Bool, wc: inout HTTP1.Session, rc: inout HTTP1.Session, leases: [String], n: inout Int,
        start: ContinuousClock.Instant, end: ContinuousClock.Instant, stats: BenchStats
    ) async throws {
        var random = UInt64(w + 1) &* 0x9E37_79B9_7F4A_7C15
        let clock = ContinuousClock()
        while clock.now < end {
            random = random &* 6_364_136_223_846_793_005 &+ 1
            let roll = Int(random >> 33) % 100
            let kind = op == "mixed" ? (roll < 5 ? "acquire" : roll < 95 ? "renew" : "read") : op
            n += 1
            let t0 = clock.now
            let result: HTTP1.Response
            switch kind {
            case "acquire":
                result = try await wc.request(.POST, etcd ? "/v3/lease/grant" : "/v1/leases", acquireBody(etcd: etcd, hostname: "b\(w)-\(n)-\(random % 1_000_000).example.org"))
            case "renew":
                let id = leases[(w + n * 7) % leases.count]
                result = try await wc.request(.POST, etcd ? "/v3/lease/keepalive" : "/v1/leases/\(id)/renew", etcd ? Data("{\"ID\":\"\(id)\"}".utf8) : nil)
            default:
                result = try await rc.request(etcd ? .POST : .GET, etcd ? "/v3/kv/range" : "/v1/cluster/nodes/1", etcd ? Data("{\"key\":\"YmVuY2g=\",\"serializable\":true}".utf8) : nil)
            }
            let latency = clock.now - t0
            guard t0 >= start else { continue }
            if result.status == 200 { stats.record(latency, kind: kind) } else { stats.error("http \(result.status)") }
        }
    }

    static func pidList(_ text: String?) -> [(String, Int32)] {
        if let text { return text.split(separator: ",").compactMap { Int32($0) }.map { ("pid \($0)", $0) } }
        var out: [(String, Int32)] = []
        for i in 1...5 {
            if let s = try? String(contentsOfFile: ".cluster/replica-\(i).pid", encoding: .utf8), let p = Int32(s.trimmingCharacters(in: .whitespacesAndNewlines)) {
                out.append(("replica \(i)", p))
            }
        }
        return out
    }

    /// Resident memory of each process (VmRSS in /proc/PID/status), in bytes.
    static func residentBytes(pids: [(String, Int32)]) -> [(String, Int)] {
        pids.compactMap { name, pid in
            guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
                let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
                let kb = line.split(separator: " ").dropFirst().first.flatMap({ Int($0) })
            else { return nil }
            return (name, kb * 1024)
        }
    }

    /// This process's user + system CPU seconds: the load generator's share of the machine.
    static func ownCPUSeconds() -> Double { cpuSeconds(pids: [("self", getpid())]).first?.1 ?? 0 }

    /// User + system CPU seconds of each process, from /proc.
    static func cpuSeconds(pids: [(String, Int32)]) -> [(String, Double)] {
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        return pids.map { name, pid in
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return (name, 0) }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            // After the command: state is field 3, utime 14 and stime 15 (1-based) of the whole line.
            guard fields.count > 13, let u = Double(fields[11]), let s = Double(fields[12]) else { return (name, 0) }
            return (name, (u + s) / ticks)
        }
    }
}

/// Latencies (by operation) and errors over all workers.
final class BenchStats: Sendable {
    private let state = NIOLockedValueBox<(latencies: [String: [UInt64]], errors: [String: Int])>(([:], [:]))

    static func micros(_ d: Duration) -> UInt64 {
        let (s, a) = d.components
        return s < 0 ? 0 : UInt64(s) * 1_000_000 + UInt64(max(0, a) / 1_000_000_000_000)
    }

    func record(_ d: Duration, kind: String) {
        let micros = Self.micros(d)
        state.withLockedValue { $0.latencies[kind, default: []].append(micros) }
    }

    /// A batch of latencies, in microseconds.
    func record(micros: [UInt64], kind: String) {
        guard !micros.isEmpty else { return }
        state.withLockedValue { $0.latencies[kind, default: []].append(contentsOf: micros) }
    }

    func error(_ kind: String, count: Int = 1) { state.withLockedValue { $0.errors[kind, default: 0] += count } }

    func counts() -> (Int, Int) {
        state.withLockedValue { ($0.latencies.values.reduce(0) { $0 + $1.count }, $0.errors.values.reduce(0, +)) }
    }

    /// Percentiles of one sorted list, in milliseconds.
    struct Summary {
        var count: Int
        var p50, p90, p99, p999, max: Double

        init(_ lat: [UInt64]) {
            func pct(_ p: Double) -> Double {
                guard !lat.isEmpty else { return 0 }
                return Double(lat[min(lat.count - 1, Int(Double(lat.count) * p))]) / 1000
            }
            count = lat.count
            (p50, p90, p99, p999, max) = (pct(0.5), pct(0.9), pct(0.99), pct(0.999), Double(lat.last ?? 0) / 1000)
        }

        var line: String {
            func f(_ v: Double) -> String { String(format: "%.2f", v) }
            return "p50 \(f(p50))  p90 \(f(p90))  p99 \(f(p99))  p99.9 \(f(p999))  max \(f(max))"
        }

        var json: [String: Any] { ["ops": count, "p50Ms": p50, "p90Ms": p90, "p99Ms": p99, "p999Ms": p999, "maxMs": max] }
    }

    func summaries() -> (all: Summary, byKind: [(String, Summary)], errors: [String: Int]) {
        let (byKind, errors) = state.withLockedValue { ($0.latencies, $0.errors) }
        let all = Summary(byKind.values.flatMap { $0 }.sorted())
        return (all, byKind.keys.sorted().map { ($0, Summary(byKind[$0]!.sorted())) }, errors)
    }

    func report(
        system: String, op: String, concurrency: Int, seconds: Double, cpu: [(String, Double)], rss: [(String, Int)], loadGeneratorCPU: Double,
        json: Bool
    ) -> String {
        let (all, byKind, errors) = summaries()
        let rate = Double(all.count) / seconds
        let cpuTotal = cpu.reduce(0) { $0 + $1.1 }
        let cpuPerOp = all.count == 0 ? 0 : cpuTotal * 1e6 / Double(all.count)
        if json {
            var o: [String: Any] = [
                "system": system, "op": op, "concurrency": concurrency, "seconds": seconds, "opsPerSecond": rate, "errors": errors,
            ]
            o.merge(all.json) { a, _ in a }
            if byKind.count > 1 {
                o["byOp"] = Dictionary(uniqueKeysWithValues: byKind.map { k, v in (k, v.json.merging(["opsPerSecond": Double(v.count) / seconds]) { a, _ in a }) })
            }
            o["cpuSeconds"] = Dictionary(uniqueKeysWithValues: cpu.map { ($0.0, $0.1) })
            o["cpuMicrosPerOp"] = cpuPerOp
            o["loadGeneratorCpuSeconds"] = loadGeneratorCPU
            o["rssBytes"] = Dictionary(uniqueKeysWithValues: rss.map { ($0.0, $0.1) })
            let data = (try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys])) ?? Data()
            return String(decoding: data, as: UTF8.self)
        }
        func f(_ v: Double) -> String { String(format: "%.2f", v) }
        var lines = [
            "\(system) \(op), \(concurrency) connections, \(Int(seconds)) s: \(Int(rate)) ops/s",
            "latency ms: " + all.line,
        ]
        if byKind.count > 1 {
            for (k, v) in byKind { lines.append("  \(k): \(Int(Double(v.count) / seconds)) ops/s, " + v.line) }
        }
        lines.append("errors: " + (errors.isEmpty ? "none" : errors.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ")))
        if !cpu.isEmpty {
            lines.append("replica CPU s: " + cpu.map { "\($0.0) \(f($0.1))" }.joined(separator: ", ") + "  (\(Int(cpuPerOp)) us per op in total)")
        }
        lines.append(
            "load generator CPU s: \(f(loadGeneratorCPU))  (\(all.count == 0 ? 0 : Int(loadGeneratorCPU * 1e6 / Double(all.count))) us per op, this process)")
        if !rss.isEmpty {
            lines.append("replica RSS MiB: " + rss.map { "\($0.0) \(f(Double($0.1) / 1_048_576))" }.joined(separator: ", "))
        }
        return lines.joined(separator: "\n")
    }
}

/// Keep-alive HTTP/1.1 connections, one request at a time.
/// Closes a connection when `IdleStateHandler` reports it idle.
final class CloseWhenIdle: ChannelInboundHandler, Sendable {
    typealias InboundIn = NIOAny
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent { context.close(promise: nil) } else { context.fireUserInboundEventTriggered(event) }
    }
}

enum HTTP1 {
    /// TLS and the token for every connection of this run (set once, before any).
    static let security = NIOLockedValueBox<(tls: NIOSSLContext?, token: String?)>((nil, nil))

    struct Response {
        var status: Int
        var body: [UInt8]
    }

    /// Connects, runs `body` with the connection, closes it.
    static func withConnection<T: Sendable>(
        host: String, port: Int, readTimeout: TimeAmount = .seconds(5), _ body: (inout Session) async throws -> T
    ) async throws -> T {
        let (tls, token) = security.withLockedValue { $0 }
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(3))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // No byte for this long while open: the connection is closed, and a
                    // request waiting on it fails instead of hanging.
                    if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: nil)) }
                    try channel.pipeline.syncOperations.addHandlers([IdleStateHandler(readTimeout: readTimeout), CloseWhenIdle()])
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(ExchangeHandler())
                }
            }
            .connect(host: host, port: port).get()
        var session = Session(channel: channel, host: "\(host):\(port)", token: token)
        do {
            let result = try await body(&session)
            try? await channel.close()
            return result
        } catch {
            try? await channel.close()
            throw error
        }
    }

    /// One request on a connection, and where its answer goes.
    struct Exchange: Sendable {
        var head: HTTPRequestHead
        var body: ByteBuffer?
        var answer: EventLoopPromise<Response>
    }

    /// Sends each request whole (head, body and end in one flush) and completes its promise
    /// with the whole answer, on the event loop: one hand-off each way per request, where an
    /// async channel makes one per part (the load generator shares the replicas' two cores,
    /// so what it spends they do not get).
    final class ExchangeHandler: ChannelDuplexHandler {
        typealias InboundIn = HTTPClientResponsePart
        typealias OutboundIn = Exchange
        typealias OutboundOut = HTTPClientRequestPart

        private var waiting: EventLoopPromise<Response>?
        private var status = 0
        private var body: [UInt8] = []

        func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
            let exchange = unwrapOutboundIn(data)
            guard waiting == nil else {
                exchange.answer.fail(ChannelError.inappropriateOperationForState)
                promise?.fail(ChannelError.inappropriateOperationForState)
                return
            }
            waiting = exchange.answer
            context.write(wrapOutboundOut(.head(exchange.head)), promise: nil)
            if let b = exchange.body { context.write(wrapOutboundOut(.body(.byteBuffer(b))), promise: nil) }
            context.write(wrapOutboundOut(.end(nil)), promise: promise)
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let h):
                status = Int(h.status.code)
                body.removeAll(keepingCapacity: true)
            case .body(let b): body += b.readableBytesView
            case .end:
                let answer = Response(status: status, body: body)
                let promise = waiting
                waiting = nil
                promise?.succeed(answer)
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            fail(error)
            context.close(promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            fail(ChannelError.eof)
            context.fireChannelInactive()
        }

        private func fail(_ error: any Error) {
            let promise = waiting
            waiting = nil
            promise?.fail(error)
        }
    }

    struct Session {
        let channel: any Channel
        let host: String
        let token: String?

        /// A request's head on this connection: its host, the token, and the body's length
        /// (a JSON body when there is one).
        func head(_ method: HTTPMethod, _ uri: String, bodyLength: Int?) -> HTTPRequestHead {
            var headers = HTTPHeaders()
            headers.add(name: "Host", value: host)
            if let token { headers.add(name: "Authorization", value: "Bearer \(token)") }
            headers.add(name: "Content-Length", value: String(bodyLength ?? 0))
            if bodyLength != nil { headers.add(name: "Content-Type", value: "application/json") }
            return HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: headers)
        }

        mutating func request(_ method: HTTPMethod, _ uri: String, _ body: Data?) async throws -> Response {
            let answer = channel.eventLoop.makePromise(of: Response.self)
            let exchange = Exchange(head: head(method, uri, bodyLength: body?.count), body: body.map { ByteBuffer(bytes: $0) }, answer: answer)
            channel.writeAndFlush(exchange).whenFailure { answer.fail($0) }
            return try await answer.futureResult.get()
        }
    }
}

/// Durations on the command line: "10s", "1500ms", "2m", or plain seconds ("2.5").
enum BenchSeconds {
    static func parse(_ text: String) throws -> Double {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            if let v = Double(text.dropLast(suffix.count)), v >= 0 { return v * scale }
            break
        }
        if let v = Double(text), v >= 0 { return v }
        throw ValidationError("'\(text)' is not a duration (try 10s, 1500ms or 2m)")
    }
}

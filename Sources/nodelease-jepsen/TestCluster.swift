import AsyncHTTPClient
import ChildProcess
import Foundation
import JepsenCheckers
import NodeLeaseClient
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

struct JepsenSetupError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A membership change that did not go through (or not all the way), and the server's error
/// code if it refused it.
struct MembershipError: Error, CustomStringConvertible {
    var description: String
    var code: String?
    init(_ description: String, code: String? = nil) {
        self.description = description
        self.code = code
    }
}

/// The replica configuration (`GET /v1/cluster/replicas`), as far as the test needs it.
struct ClusterConfig: Sendable {
    struct Replica: Sendable {
        var id: Int
        var role: String
    }
    var configIndex: Int
    var replicas: [Replica]
    /// The member that answered.
    var answeredBy: Int

    /// "voter" or "learner", nil if it is not in the configuration.
    func role(of id: Int) -> String? { replicas.first { $0.id == id }?.role }
}

/// The replicas under test: real `nodelease serve` processes. Replica i binds 127.0.0.(10+i)
/// inside the test's namespace (127.0.0.1 with distinct ports otherwise). Only the processes
/// started here are ever signalled, by PID.
///
/// The cluster starts with replicas 1...size; the membership nemesis adds replicas (new ids,
/// started with `--join`) and removes them. `members` is the set the test counts as the
/// cluster now: every fault, client and check picks replicas from it, and only a member is
/// ever started or restarted (a removed replica, or one killed for good, never comes back).
final class TestCluster: Sendable {
    /// The initial number of replicas (ids 1...size).
    let size: Int
    let binary: String
    let dir: String
    let distinctAddresses: Bool
    private let processes = NIOLockedValueBox<[Int: ChildProcess]>([:])
    private let paused = NIOLockedValueBox<Set<Int>>([])
    private let membership: NIOLockedValueBox<Members>

    private struct Members: Sendable {
        /// The replicas the test counts as members now, sorted by id.
        var current: [Int]
        /// Replicas added during the run (started with `--join`).
        var joined: Set<Int> = []
        /// Replicas given up for good (removed, killed to be replaced, or an add that failed):
        /// never started again.
        var gone: Set<Int> = []
        /// Killed for good but not known to be out of the configuration yet.
        var unremoved: Set<Int> = []
        /// The highest id used so far (ids are never reused).
        var lastId: Int
    }
    private let http: HTTPClient
    /// `--tls`: mutual TLS between the replicas, HTTPS and a token for the clients.
    let tls: JepsenTLS?

    /// libfaketime, when the clock nemesis is on.
    let clockLibrary: String?
    /// The replicas' workload settings: node IDs to hand out, retention of stale nodes.
    let idRange: String
    let retentionSeconds: Int
    /// The fault build's switches: the planted bug (if any); with `faultBuild`, the lazy disk
    /// and a monotonic-clock rate file per replica are always on.
    let planted: String?
    let faultBuild: Bool
    /// The `upgrade` nemesis: replicas that run as the older version until upgraded, with
    /// `oldBinary` if given (a build of the previous release), else this binary limited to
    /// cluster version `olderVersion` (`--max-cluster-version`; 1 plays 0.1, 2 plays 0.2).
    let older = NIOLockedValueBox<Set<Int>>([])
    let oldBinary: String?
    let olderVersion: Int

    /// Where Debian's `faketime` package puts the library, if it is installed.
    static func findFaketime() -> String? {
        for dir in ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib", "/usr/local/lib"] {
            let path = dir + "/faketime/libfaketime.so.1"
            if FileManager.default.fileExists(atPath: path) { return path }
        }
        return nil
    }

    init(
        size: Int, binary: String, dir: String, distinctAddresses: Bool, clockLibrary: String?, idRange: String, retentionSeconds: Int,
        planted: String?, faultBuild: Bool, tls: JepsenTLS? = nil, oldBinary: String? = nil, olderVersion: Int = 1
    ) throws {
        self.tls = tls
        self.oldBinary = oldBinary
        self.olderVersion = olderVersion
        self.clockLibrary = clockLibrary
        self.idRange = idRange
        self.retentionSeconds = retentionSeconds
        self.planted = planted
        self.faultBuild = faultBuild
        self.size = size
        self.binary = binary
        self.dir = dir
        self.distinctAddresses = distinctAddresses
        membership = NIOLockedValueBox(Members(current: Array(1...size), lastId: size))
        var c = HTTPClient.Configuration(timeout: .init(connect: .seconds(1)), connectionPool: .init(idleTimeout: .seconds(5)))
        c.httpVersion = .http1Only
        // A refused connection is reported at once (and counted as not delivered).
        c.connectionPool.retryConnectionEstablishment = false
        if let tls { c.tlsConfiguration = try NodeLeaseClient.TLS(caFile: tls.caFile).configuration() }
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: c)
    }

    deinit { http.shutdown { _ in } }

    func host(_ i: Int) -> String { distinctAddresses ? "127.0.0.\(10 + i)" : "127.0.0.1" }
    func clientPort(_ i: Int) -> Int { distinctAddresses ? 7400 : 17400 + i }
    func peerPort(_ i: Int) -> Int { distinctAddresses ? 7500 : 17500 + i }
    func url(_ i: Int, _ path: String) -> URL { URL(string: "\(tls == nil ? "http" : "https")://\(host(i)):\(clientPort(i))\(path)")! }

    /// The initial replicas' `--peers` (after its first start a replica goes by the
    /// configuration in its data directory, so the initial replicas always start with this).
    var peers: String { peerList(Array(1...size)) }

    func peerList(_ ids: [Int]) -> String { ids.map { "\($0)=\(host($0)):\(peerPort($0))" }.joined(separator: ",") }

    // MARK: Members

    /// The replicas the test counts as the cluster's members now, sorted by id.
    var members: [Int] { membership.withLockedValue { $0.current } }

    func isMember(_ i: Int) -> Bool { membership.withLockedValue { $0.current.contains(i) } }

    /// One of the initial replicas (1...size), as opposed to one added during the run.
    func isInitial(_ i: Int) -> Bool { (1...size).contains(i) }

    /// The id the next added replica gets (ids are never reused).
    var nextReplicaId: Int { membership.withLockedValue { $0.lastId + 1 } }
    /// The highest replica id used so far.
    var lastReplicaId: Int { membership.withLockedValue { $0.lastId } }

    /// Replicas killed for good whose removal from the configuration has not been confirmed.
    var unremoved: [Int] { membership.withLockedValue { $0.unremoved.sorted() } }

    /// A random member (with the initial members 1...size, the same draw as `1 + random.below(size)`).
    func randomMember(_ random: inout SplitMix) -> Int {
        let m = members
        guard !m.isEmpty else { return 1 }
        return m[random.below(m.count)]
    }

    /// The member after replica i in id order, wrapping around (another replica to send a copy
    /// or a retry to); the first member above i if i is no longer a member.
    func member(after i: Int) -> Int {
        let m = members
        return m.first { $0 > i } ?? m.first ?? i
    }

    /// Members whose process runs and is not paused (to send membership changes and reads of
    /// the configuration through), without `except`.
    func runningMembers(except: Int? = nil) -> [Int] { members.filter { $0 != except && isRunning($0) && !isPaused($0) } }

    func start(_ i: Int) throws {
        // Only a member is started (or an added replica that is about to become one); a
        // replica that was removed or killed for good never runs again.
        let (allowed, joiner, current) = membership.withLockedValue { m in
            (!m.gone.contains(i) && (m.current.contains(i) || m.joined.contains(i)), m.joined.contains(i), m.current)
        }
        guard allowed else { throw JepsenSetupError("replica \(i) is not a member: not started") }
        // Added during the run: it joins with no configuration of its own (the leader's log
        // brings it); its --peers names every current member and itself, only to say where the
        // others are until the log does.
        let peerArgument = joiner ? peerList(Array(Set(current + [i])).sorted()) : peers
        let isOlder = older.withLockedValue { $0.contains(i) }
        let binary = isOlder ? oldBinary ?? self.binary : self.binary
        var arguments = [
            "serve", "--replica-id", "\(i)", "--peers", peerArgument, "--client-addr", "\(host(i)):\(clientPort(i))",
            "--data-dir", "\(dir)/replica-\(i)", "--cluster-id", "jepsen", "--election-timeout", "600",
            "--heartbeat-interval", "20", "--request-timeout", "2000", "--min-ttl", "1",
            // Snapshots, compaction and catch-up by snapshot every few seconds, under faults.
            "--snapshot-every", "200", "--snapshot-keep", "10",
            "--node-id-range", idRange, "--retention", "\(retentionSeconds)",
        ]
        if joiner { arguments += ["--join", "--peer-addr", "\(host(i)):\(peerPort(i))"] }
        if let tls {
            let (certificate, key) = try tls.certificate(replica: i, cluster: "jepsen", ips: [host(i), "127.0.0.1"])
            arguments += [
                "--peer-cert", certificate, "--peer-key", key, "--peer-ca", tls.caFile, "--client-cert", certificate, "--client-key", key,
                "--token-file", tls.tokenFile,
            ]
        }
        var env = ProcessInfo.processInfo.environment
        for k in env.keys where k.hasPrefix("NODELEASE_") { env[k] = nil }
        if isOlder && oldBinary == nil { env["NODELEASE_MAX_CLUSTER_VERSION"] = "\(olderVersion)" }
        if faultBuild {
            // The fault build: a disk that loses unsynced writes on a crash, a monotonic clock
            // whose rate the drift nemesis sets, and the planted bug if there is one.
            env["NODELEASE_FAULT_LAZY_DISK"] = "1"
            let rate = rateFile(i)
            if !FileManager.default.fileExists(atPath: rate) { try "1.0\n".write(toFile: rate, atomically: true, encoding: .utf8) }
            env["NODELEASE_FAULT_CLOCK_FILE"] = rate
            env["NODELEASE_FAULT_DISK_FILE"] = diskFile(i)
            if let planted { env["NODELEASE_FAULT"] = planted }
        }
        var program = binary
        if let lib = clockLibrary {
            // Each replica's wall clock follows its own faketime file (re-read every second);
            // the monotonic clock, which lease timing uses, is left alone.
            let file = "\(dir)/replica-\(i).faketime"
            if !FileManager.default.fileExists(atPath: file) { try "+0 x1\n".write(toFile: file, atomically: true, encoding: .utf8) }
            env["LD_PRELOAD"] = lib
            env["FAKETIME_TIMESTAMP_FILE"] = file
            env["FAKETIME_CACHE_DURATION"] = "1"
            env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
            // Started straight from a spawn with libfaketime preloaded, the Swift runtime sees
            // no command-line arguments (it prints the usage); through env(1) it does.
            arguments = [binary] + arguments
            program = "/usr/bin/env"
        }
        let log = "\(dir)/replica-\(i).log"
        let p = try ChildProcess(program, arguments, environment: env, stdin: .discard, stdout: .append(log), stderr: .append(log))
        processes.withLockedValue { $0[i] = p }
        try? "\(p.pid)\n".write(toFile: "\(dir)/replica-\(i).pid", atomically: true, encoding: .utf8)
    }

    func startAll() throws { for i in members { try start(i) } }

    func rateFile(_ i: Int) -> String { "\(dir)/replica-\(i).rate" }

    /// Sets replica i's monotonic clock rate (fault build only; 1.0 is true time).
    func setRate(_ i: Int, _ rate: Double) {
        guard faultBuild else { return }
        try? String(format: "%.4f\n", rate).write(toFile: rateFile(i), atomically: true, encoding: .utf8)
    }

    func diskFile(_ i: Int) -> String { "\(dir)/replica-\(i).disk" }

    /// Sets replica i's disk condition (fault build only): "" healthy, "slow MILLIS", "fail".
    func setDisk(_ i: Int, _ condition: String) {
        guard faultBuild else { return }
        try? (condition + "\n").write(toFile: diskFile(i), atomically: true, encoding: .utf8)
    }

    // MARK: Full disks

    /// Bytes of the size-limited file system under each replica's data directory.
    static let smallDiskBytes = 32 << 20

    func dataDir(_ i: Int) -> String { "\(dir)/replica-\(i)" }

    /// Replica i's data directory as an absolute path (what mount and umount take).
    func mountPoint(_ i: Int) -> String { URL(fileURLWithPath: dataDir(i)).standardizedFileURL.path }

    /// Mounts a tmpfs of `smallDiskBytes` on every initial replica's data directory (root only),
    /// so the disk-full nemesis can fill one (replicas added later get a plain directory, and
    /// the nemesis picks only initial replicas that are still members). Inside the run's network namespace the mounts belong to
    /// its own mount namespace and vanish with it; `unmountSmallDisks` removes them anyway.
    func mountSmallDisks() throws {
        for i in 1...size {
            let path = mountPoint(i)
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            guard mount("nodelease-jepsen", path, "tmpfs", 0, "size=\(Self.smallDiskBytes),mode=0700") == 0 else {
                let why = String(cString: strerror(errno))
                for k in 1..<i { _ = umount2(mountPoint(k), Int32(MNT_DETACH)) }
                throw JepsenSetupError("cannot mount a tmpfs on \(path): \(why) (the disk-full nemesis needs root)")
            }
        }
    }

    /// Keeps a copy of each replica's data (`replica-N.data`, for reading after the run), then
    /// unmounts the small disks.
    func unmountSmallDisks() {
        for i in 1...size {
            let path = mountPoint(i)
            try? FileManager.default.removeItem(atPath: ballast(i))
            try? FileManager.default.copyItem(atPath: path, toPath: "\(dir)/replica-\(i).data")
            _ = umount2(path, Int32(MNT_DETACH))
        }
    }

    func ballast(_ i: Int) -> String { dataDir(i) + "/ballast" }

    /// Fills replica i's disk: a ballast file takes every free block, in 1 MiB steps and then
    /// page by page until the file system refuses (a single large reservation is all or
    /// nothing, and the replica may take a page meanwhile). Returns the bytes taken.
    func fillDisk(_ i: Int) -> Int {
        let fd = open(ballast(i), O_CREAT | O_WRONLY, 0o600)
        guard fd >= 0 else { return 0 }
        defer { close(fd) }
        var taken = 0
        for step in [1 << 20, 4096] {
            while posix_fallocate(fd, off_t(taken), off_t(step)) == 0 { taken += step }
        }
        return taken
    }

    /// Bytes free on replica i's disk.
    func freeBytes(_ i: Int) -> Int {
        var st = statvfs()
        guard statvfs(dataDir(i), &st) == 0 else { return -1 }
        return Int(st.f_bavail) * Int(st.f_frsize)
    }

    /// The size of replica i's log file now (to read what it logs from here on).
    func logSize(_ i: Int) -> UInt64 {
        ((try? FileManager.default.attributesOfItem(atPath: "\(dir)/replica-\(i).log"))?[.size] as? NSNumber)?.uint64Value ?? 0
    }

    /// What replica i logged after `offset`.
    func log(_ i: Int, after offset: UInt64) -> String {
        guard let h = FileHandle(forReadingAtPath: "\(dir)/replica-\(i).log") else { return "" }
        defer { try? h.close() }
        try? h.seek(toOffset: offset)
        return String(decoding: h.readDataToEndOfFile(), as: UTF8.self)
    }

    /// Gives replica i's disk its space back.
    func emptyDisk(_ i: Int) { unlink(ballast(i)) }

    /// Waits until replica i's process has exited (true) or `seconds` passed.
    func waitForExit(_ i: Int, seconds: Double) async -> Bool {
        let end = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while ContinuousClock.now < end {
            if !isRunning(i) { return true }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return !isRunning(i)
    }

    /// Kills every member at once: a power cut of the whole cluster (in the fault build, with
    /// its lazy disk, each loses what it had not synced).
    func killAll() { for i in members { kill9(i) } }

    func isRunning(_ i: Int) -> Bool { processes.withLockedValue { $0[i] }?.isRunning ?? false }

    func isPaused(_ i: Int) -> Bool { paused.withLockedValue { $0.contains(i) } }

    func kill9(_ i: Int) {
        guard let p = processes.withLockedValue({ $0[i] }), p.signal(SIGKILL) else { return }
        p.waitUntilExit()
        paused.withLockedValue { _ = $0.remove(i) }
    }

    func pause(_ i: Int) {
        guard let p = processes.withLockedValue({ $0[i] }), p.signal(SIGSTOP) else { return }
        paused.withLockedValue { _ = $0.insert(i) }
    }

    func resume(_ i: Int) {
        processes.withLockedValue { $0[i] }?.signal(SIGCONT)
        paused.withLockedValue { _ = $0.remove(i) }
    }

    /// Partitions with nftables inside the namespace: drop traffic between the given groups.
    func partition(_ groups: [[Int]]) {
        var drops: [(Int, Int)] = []
        for (a, g) in groups.enumerated() {
            for (b, h) in groups.enumerated() where a != b {
                for x in g { for y in h { drops.append((x, y)) } }
            }
        }
        drop(drops)
    }

    /// Drops both directions of each given link between two replicas.
    func dropLinks(_ links: [(Int, Int)]) { drop(links + links.map { ($0.1, $0.0) }) }

    /// One-way drops: nothing from `from` reaches `to`.
    func dropOneWay(from: [Int], to: [Int]) { drop(from.flatMap { x in to.map { (x, $0) } }) }

    /// Replaces the namespace's rules with drops of the packets from x to y for each pair.
    private func drop(_ pairs: [(from: Int, to: Int)]) {
        var rules = ["flush ruleset", "table inet jepsen {", "  chain input {", "    type filter hook input priority 0; policy accept;"]
        for (x, y) in pairs { rules.append("    ip saddr \(host(x)) ip daddr \(host(y)) drop") }
        rules += ["  }", "}"]
        nft(rules.joined(separator: "\n"))
    }

    func healNetwork() {
        guard distinctAddresses else { return }
        nft("flush ruleset")
    }

    private func nft(_ script: String) {
        guard distinctAddresses else { return }
        guard let p = try? ChildProcess("/usr/sbin/nft", ["-f", "-"], stdin: .pipe), let input = p.standardInput else { return }
        input.write(Data(script.utf8))
        try? input.close()
        p.waitUntilExit()
    }

    /// Sets replica i's wall clock: an offset like "+90" or "-3600" seconds, and a rate like
    /// "x1.5" (libfaketime's syntax). It takes effect within a second.
    func setClock(_ i: Int, _ spec: String) {
        guard clockLibrary != nil else { return }
        try? (spec + "\n").write(toFile: "\(dir)/replica-\(i).faketime", atomically: true, encoding: .utf8)
    }

    func healClocks() {
        for i in members {
            setClock(i, "+0 x1")
            setRate(i, 1.0)
            setDisk(i, "")
        }
    }

    /// The leader the first member to answer names, if it is a member.
    func currentLeader() async -> Int? {
        for i in members {
            if let (status, json, _) = await request(i, "GET", "/v1/status", timeout: 1), status == 200, let l = json["leaderId"] as? Int,
                isMember(l)
            {
                return l
            }
        }
        return nil
    }


    /// Stops replica i as an operator does for an upgrade (SIGTERM: it hands leadership over
    /// and finishes its requests), SIGKILL after `seconds`; whether it stopped by itself.
    func stopGracefully(_ i: Int, seconds: Double = 15) async -> Bool {
        guard let p = processes.withLockedValue({ $0[i] }), p.signal(SIGTERM) else { return true }
        if await waitForExit(i, seconds: seconds) { return true }
        kill9(i)
        return false
    }

    /// A rolling upgrade's step: replica i stops gracefully, stays down for `down` (the new
    /// binary being put in place), and starts again as this build.
    func upgrade(_ i: Int, down: Duration) async throws -> Bool {
        let graceful = await stopGracefully(i)
        try? await Task.sleep(for: down)
        older.withLockedValue { _ = $0.remove(i) }
        try start(i)
        return graceful
    }

    /// Heals everything: network, paused and killed replicas.
    func healAll() {
        healNetwork()
        healClocks()
        for i in paused.withLockedValue({ $0 }) { resume(i) }
        for i in members where !isRunning(i) { try? start(i) }
    }

    func stopAll() {
        healNetwork()
        for (_, p) in processes.withLockedValue({ $0 }) where p.signal(SIGKILL) {
            p.waitUntilExit()
        }
    }

    func request(
        _ i: Int, _ method: String, _ path: String, body: String? = nil, headers extra: [String: String] = [:], timeout: Double = 2
    ) async -> (Int, [String: Any], [String: String])? {
        var r = HTTPClientRequest(url: url(i, path).absoluteString)
        r.method = HTTPMethod(rawValue: method)
        for (k, v) in extra { r.headers.add(name: k, value: v) }
        // Every request on a connection of its own, never a pooled one: a refused connection is
        // then certain to have carried nothing (see Workload's writes).
        r.headers.replaceOrAdd(name: "Connection", value: "close")
        if let tls { r.headers.add(name: "Authorization", value: "Bearer \(tls.token)") }
        if let body {
            r.body = .bytes(ByteBuffer(string: body))
            r.headers.add(name: "Content-Type", value: "application/json")
        }
        let status: Int
        let data: ByteBuffer
        var headers: [String: String] = [:]
        do {
            let answer = try await http.exchange(r, deadline: .now + .milliseconds(Int64(timeout * 1000)), maxBody: 64 << 20)
            data = answer.body
            status = Int(answer.status.code)
            for h in answer.headers { headers[h.name.lowercased()] = h.value }
        } catch where Self.refused(error) {
            // The connection was refused: the request never left this process, a definite
            // no-op (status -1), unlike a timeout or a connection lost after sending.
            return (-1, ["error": "not_delivered"], [:])
        } catch {
            return nil
        }
        let bytes = Data(data.readableBytesView)
        let json = (try? JSONSerialization.jsonObject(with: bytes)) as? [String: Any] ?? ["_array": (try? JSONSerialization.jsonObject(with: bytes)) ?? []]
        return (status, json, headers)
    }

    /// Whether `error` is a refused connection (nothing was sent).
    static func refused(_ error: any Error) -> Bool {
        if let e = error as? IOError { return e.errnoCode == ECONNREFUSED }
        if let e = error as? NIOConnectionError {
            return !e.connectionErrors.isEmpty && e.connectionErrors.allSatisfy { refused($0.error) }
        }
        return false
    }

    // MARK: Membership changes

    /// How long a membership change is retried, and how long an added replica may take to
    /// become a voter.
    static let changeBound: Duration = .seconds(20)

    /// The configuration (`GET /v1/cluster/replicas`) from the first running member that
    /// answers, asking for at most `seconds` in all.
    func configuration(seconds: Double = 3) async -> ClusterConfig? {
        let end = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        for v in runningMembers() {
            guard ContinuousClock.now < end else { break }
            guard let (status, json, _) = await request(v, "GET", "/v1/cluster/replicas", timeout: 1), status == 200,
                let list = json["replicas"] as? [[String: Any]]
            else { continue }
            let replicas = list.compactMap { r -> ClusterConfig.Replica? in
                guard let id = r["replicaId"] as? Int, let role = r["role"] as? String else { return nil }
                return ClusterConfig.Replica(id: id, role: role)
            }
            return ClusterConfig(configIndex: json["configIndex"] as? Int ?? 0, replicas: replicas, answeredBy: v)
        }
        return nil
    }

    /// Adds replica `id`, a new id: asks a running member (a follower passes it on to the
    /// leader) to add it as a learner, retrying `503` and `config_change_in_progress` for up to
    /// `changeBound`; starts it with `--join`, and it is a member from then on; then waits up to
    /// `changeBound` for the leader to make it a voter. Throws if it could not be added (it is
    /// then never started), or if it was started but is not a voter in time (it stays a member:
    /// the leader may still promote it).
    func addReplica(_ id: Int) async throws {
        let fresh = membership.withLockedValue { m -> Bool in
            guard id > m.lastId else { return false }
            m.lastId = id
            m.joined.insert(id)
            return true
        }
        guard fresh else { throw MembershipError("add \(id): the id was used before (ids are never reused)") }
        let body = "{\"replicaId\":\(id),\"peerAddress\":\"\(host(id)):\(peerPort(id))\",\"clientAddress\":\"\(host(id)):\(clientPort(id))\"}"
        let sent = await sendChange("POST", "/v1/cluster/replicas", body: body, except: id, firstTry: "no running member to ask") { code in
            // replica_exists for an id never used before: an earlier attempt whose answer was
            // lost went through.
            code == "replica_exists" ? await self.configuration()?.role(of: id) != nil : false
        }
        var added = sent.done
        let last = sent.last
        // Out of time with no definite answer: an attempt may still have gone through.
        if !added, await configuration()?.role(of: id) != nil { added = true }
        guard added else {
            membership.withLockedValue { _ = $0.gone.insert(id) }
            throw MembershipError("add \(id): \(last)")
        }
        do {
            try start(id)
        } catch {
            membership.withLockedValue { _ = $0.gone.insert(id) }
            throw MembershipError("add \(id): in the configuration, but its process did not start: \(error)")
        }
        membership.withLockedValue { m in
            if !m.current.contains(id) { m.current = (m.current + [id]).sorted() }
        }
        let started = ContinuousClock.now
        while ContinuousClock.now < started + Self.changeBound {
            if await configuration()?.role(of: id) == "voter" { return }
            try? await Task.sleep(for: .milliseconds(200))
        }
        throw MembershipError("add \(id): started, but not a voter after \(Self.changeBound.components.seconds) s")
    }

    /// Removes replica `id` from the configuration (`?force=true` with `force`), asking another
    /// running member (the leader hands over first if it is the one removed), retrying `503`
    /// and `config_change_in_progress` for up to `changeBound`. Once the configuration no longer
    /// has it, its process is killed for good and it leaves the members. Throws if it could
    /// not be removed; `MembershipError.code` is the server's refusal, if it answered one
    /// (such as `would_lose_quorum`).
    func removeReplica(_ id: Int, force: Bool) async throws {
        let path = "/v1/cluster/replicas/\(id)" + (force ? "?force=true" : "")
        // not_found: it is not in the configuration (an earlier attempt whose answer was lost
        // went through).
        let sent = await sendChange("DELETE", path, except: id, firstTry: "no other running member to ask") { $0 == "not_found" }
        var removed = sent.done
        let (last, refusal) = (sent.last, sent.refusal)
        // Out of time with no definite answer: an attempt may still have gone through.
        if !removed && refusal == nil, let config = await configuration(), config.role(of: id) == nil { removed = true }
        guard removed else { throw MembershipError("remove \(id)\(force ? " (forced)" : ""): \(last)", code: refusal) }
        giveUp(id, removed: true)
    }

    /// Sends a membership change through the running members other than `id`, one after
    /// another, retrying `503`, `config_change_in_progress` and lost answers until it is done,
    /// refused, or `changeBound` passes. `doneDespite` says whether a refusal's code means an
    /// earlier attempt went through. Returns the outcome, the last answer, and the refusal code.
    private func sendChange(
        _ method: String, _ path: String, body: String? = nil, except id: Int, firstTry: String,
        doneDespite: (String?) async -> Bool
    ) async -> (done: Bool, last: String, refusal: String?) {
        let deadline = ContinuousClock.now + Self.changeBound
        let headers = body == nil ? [:] : ["Content-Type": "application/json"]
        var attempt = 0
        var last = firstTry
        while ContinuousClock.now < deadline {
            let via = runningMembers(except: id)
            if !via.isEmpty {
                let v = via[attempt % via.count]
                attempt += 1
                switch Self.changeAnswer(await request(v, method, path, body: body, headers: headers, timeout: 5)) {
                case .done:
                    return (true, last, nil)
                case .retry(let why):
                    last = "via \(v): \(why)"
                case .refused(let code, let why):
                    if await doneDespite(code) { return (true, last, nil) }
                    return (false, "via \(v): \(why)", code)
                }
            }
            try? await Task.sleep(for: .milliseconds(300))
        }
        return (false, last, nil)
    }

    /// Kills replica i for good: it leaves the members, and nothing starts it again. Until
    /// `removeReplica` takes it out of the configuration it is listed in `unremoved`.
    func killForGood(_ i: Int) { giveUp(i, removed: false) }

    private func giveUp(_ i: Int, removed: Bool) {
        membership.withLockedValue { m in
            m.current.removeAll { $0 == i }
            if removed {
                m.unremoved.remove(i)
            } else if !m.gone.contains(i) {
                m.unremoved.insert(i)
            }
            m.gone.insert(i)
        }
        kill9(i)
    }

    private enum ChangeAnswer {
        case done
        /// No answer, a refused connection, 503 or another change in progress: worth retrying.
        case retry(String)
        /// A definite refusal: the error code (if any) and a description.
        case refused(String?, String)
    }

    private static func changeAnswer(_ answer: (Int, [String: Any], [String: String])?) -> ChangeAnswer {
        guard let (status, json, _) = answer else { return .retry("no answer") }
        let code = json["error"] as? String
        let message = json["message"] as? String
        let why = "\(status) \(code ?? "")" + (message.map { ": \($0)" } ?? "")
        switch status {
        case 200: return .done
        case -1: return .retry("connection refused")
        case 503: return .retry(why)
        case 409 where code == "config_change_in_progress": return .retry(why)
        default: return .refused(code, why)
        }
    }

    /// `majority`: a leader named by a majority of the members is enough (not every member
    /// need answer).
    func waitForLeader(seconds: Double, majority: Bool = false) async -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            var leaders: Set<Int> = []
            var answered = 0
            let current = members
            for i in current {
                if let (status, json, _) = await request(i, "GET", "/v1/status", timeout: 1), status == 200 {
                    answered += 1
                    if let l = json["leaderId"] as? Int { leaders.insert(l) }
                }
            }
            if (answered == current.count || majority && answered > current.count / 2) && leaders.count == 1 { return true }
            try? await Task.sleep(for: .milliseconds(200))
        }
        return false
    }

    static func registry(_ list: [[String: Any]]) -> [RegistryEntry] {
        list.compactMap { n in
            guard let h = n["hostname"] as? String, let id = n["nodeId"] as? Int, let s = n["status"] as? String else { return nil }
            return RegistryEntry(nodeId: UInt32(id), hostname: h, status: s)
        }
    }

    /// The registry by linearizable read, hostname → (node, status).
    func finalRead() async -> [String: (nodeId: UInt32, status: String)]? {
        let end = Date().addingTimeInterval(30)
        while Date() < end {
            for i in members {
                if let (status, json, _) = await request(i, "GET", "/v1/cluster/nodes?consistency=linearizable", timeout: 3), status == 200,
                    let list = json["_array"] as? [[String: Any]]
                {
                    var out: [String: (UInt32, String)] = [:]
                    for n in list {
                        if let h = n["hostname"] as? String, let id = n["nodeId"] as? Int, let s = n["status"] as? String { out[h] = (UInt32(id), s) }
                    }
                    return out
                }
            }
            try? await Task.sleep(for: .milliseconds(500))
        }
        return nil
    }
}

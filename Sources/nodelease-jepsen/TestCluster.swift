import Foundation
import JepsenCheckers
import NIOConcurrencyHelpers

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

struct JepsenSetupError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// The replicas under test: real `nodelease serve` processes. Replica i binds 127.0.0.(10+i)
/// inside the test's namespace (127.0.0.1 with distinct ports otherwise). Only the processes
/// started here are ever signalled, by PID.
final class TestCluster: Sendable {
    let size: Int
    let binary: String
    let dir: String
    let distinctAddresses: Bool
    private let processes = NIOLockedValueBox<[Int: Process]>([:])
    private let paused = NIOLockedValueBox<Set<Int>>([])
    private let session: URLSession

    /// libfaketime, when the clock nemesis is on.
    let clockLibrary: String?
    /// The replicas' workload settings: node IDs to hand out, retention of stale nodes.
    let idRange: String
    let retentionSeconds: Int
    /// The fault build's switches: the planted bug (if any); with `faultBuild`, the lazy disk
    /// and a monotonic-clock rate file per replica are always on.
    let planted: String?
    let faultBuild: Bool

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
        planted: String?, faultBuild: Bool
    ) {
        self.clockLibrary = clockLibrary
        self.idRange = idRange
        self.retentionSeconds = retentionSeconds
        self.planted = planted
        self.faultBuild = faultBuild
        self.size = size
        self.binary = binary
        self.dir = dir
        self.distinctAddresses = distinctAddresses
        let c = URLSessionConfiguration.ephemeral
        c.timeoutIntervalForRequest = 2
        session = URLSession(configuration: c)
    }

    func host(_ i: Int) -> String { distinctAddresses ? "127.0.0.\(10 + i)" : "127.0.0.1" }
    func clientPort(_ i: Int) -> Int { distinctAddresses ? 7400 : 17400 + i }
    func peerPort(_ i: Int) -> Int { distinctAddresses ? 7500 : 17500 + i }
    func url(_ i: Int, _ path: String) -> URL { URL(string: "http://\(host(i)):\(clientPort(i))\(path)")! }

    var peers: String { (1...size).map { "\($0)=\(host($0)):\(peerPort($0))" }.joined(separator: ",") }

    func start(_ i: Int) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = [
            "serve", "--replica-id", "\(i)", "--peers", peers, "--client-addr", "\(host(i)):\(clientPort(i))",
            "--data-dir", "\(dir)/replica-\(i)", "--cluster-id", "jepsen", "--election-timeout", "600",
            "--heartbeat-interval", "20", "--request-timeout", "2000", "--min-ttl", "1",
            // Snapshots, compaction and catch-up by snapshot every few seconds, under faults.
            "--snapshot-every", "200", "--snapshot-keep", "10",
            "--node-id-range", idRange, "--retention", "\(retentionSeconds)",
        ]
        var env = ProcessInfo.processInfo.environment
        for k in env.keys where k.hasPrefix("NODELEASE_") { env[k] = nil }
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
        p.environment = env
        if let lib = clockLibrary {
            // Each replica's wall clock follows its own faketime file (re-read every second);
            // the monotonic clock, which lease timing uses, is left alone.
            let file = "\(dir)/replica-\(i).faketime"
            if !FileManager.default.fileExists(atPath: file) { try "+0 x1\n".write(toFile: file, atomically: true, encoding: .utf8) }
            env["LD_PRELOAD"] = lib
            env["FAKETIME_TIMESTAMP_FILE"] = file
            env["FAKETIME_CACHE_DURATION"] = "1"
            env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
            p.environment = env
            // Started straight from a spawn with libfaketime preloaded, the Swift runtime sees
            // no command-line arguments (it prints the usage); through env(1) it does.
            p.arguments = [binary] + (p.arguments ?? [])
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        }
        let log = "\(dir)/replica-\(i).log"
        if !FileManager.default.fileExists(atPath: log) { _ = FileManager.default.createFile(atPath: log, contents: nil) }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        handle.seekToEndOfFile()
        p.standardOutput = handle
        p.standardError = handle
        try p.run()
        processes.withLockedValue { $0[i] = p }
        try? "\(p.processIdentifier)\n".write(toFile: "\(dir)/replica-\(i).pid", atomically: true, encoding: .utf8)
    }

    func startAll() throws { for i in 1...size { try start(i) } }

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

    /// Mounts a tmpfs of `smallDiskBytes` on every replica's data directory (root only), so the
    /// disk-full nemesis can fill one. Inside the run's network namespace the mounts belong to
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

    /// Kills every replica at once: a power cut of the whole cluster (in the fault build, with
    /// its lazy disk, each loses what it had not synced).
    func killAll() { for i in 1...size { kill9(i) } }

    func isRunning(_ i: Int) -> Bool { processes.withLockedValue { $0[i]?.isRunning ?? false } }

    func kill9(_ i: Int) {
        guard let p = processes.withLockedValue({ $0[i] }), p.isRunning else { return }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        paused.withLockedValue { _ = $0.remove(i) }
    }

    func pause(_ i: Int) {
        guard let p = processes.withLockedValue({ $0[i] }), p.isRunning else { return }
        kill(p.processIdentifier, SIGSTOP)
        paused.withLockedValue { _ = $0.insert(i) }
    }

    func resume(_ i: Int) {
        guard let p = processes.withLockedValue({ $0[i] }) else { return }
        kill(p.processIdentifier, SIGCONT)
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
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/sbin/nft")
        p.arguments = ["-f", "-"]
        let pipe = Pipe()
        p.standardInput = pipe
        try? p.run()
        pipe.fileHandleForWriting.write(Data(script.utf8))
        try? pipe.fileHandleForWriting.close()
        p.waitUntilExit()
    }

    /// Sets replica i's wall clock: an offset like "+90" or "-3600" seconds, and a rate like
    /// "x1.5" (libfaketime's syntax). It takes effect within a second.
    func setClock(_ i: Int, _ spec: String) {
        guard clockLibrary != nil else { return }
        try? (spec + "\n").write(toFile: "\(dir)/replica-\(i).faketime", atomically: true, encoding: .utf8)
    }

    func healClocks() {
        for i in 1...size {
            setClock(i, "+0 x1")
            setRate(i, 1.0)
            setDisk(i, "")
        }
    }

    /// The replica that a majority of replicas names as leader, if any answers.
    func currentLeader() async -> Int? {
        for i in 1...size {
            if let (status, json, _) = await request(i, "GET", "/v1/status", timeout: 1), status == 200, let l = json["leaderId"] as? Int {
                return l
            }
        }
        return nil
    }


    /// Heals everything: network, paused and killed replicas.
    func healAll() {
        healNetwork()
        healClocks()
        for i in paused.withLockedValue({ $0 }) { resume(i) }
        for i in 1...size where !isRunning(i) { try? start(i) }
    }

    func stopAll() {
        healNetwork()
        for (_, p) in processes.withLockedValue({ $0 }) where p.isRunning {
            kill(p.processIdentifier, SIGCONT)
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
        }
    }

    func request(
        _ i: Int, _ method: String, _ path: String, body: String? = nil, headers extra: [String: String] = [:], timeout: Double = 2
    ) async -> (Int, [String: Any], [String: String])? {
        var r = URLRequest(url: url(i, path))
        r.httpMethod = method
        for (k, v) in extra { r.setValue(v, forHTTPHeaderField: k) }
        r.timeoutInterval = timeout
        if let body { r.httpBody = Data(body.utf8) }
        let data: Data
        let response: URLResponse
        do {
            (data, response) = try await session.data(for: r)
        } catch let e as URLError where e.code == .cannotConnectToHost {
            // The connection was refused: the request never left this process, a definite
            // no-op (status -1), unlike a timeout or a connection lost after sending.
            return (-1, ["error": "not_delivered"], [:])
        } catch {
            return nil
        }
        guard let http = response as? HTTPURLResponse else { return nil }
        var headers: [String: String] = [:]
        for (k, v) in http.allHeaderFields { headers[String(describing: k).lowercased()] = String(describing: v) }
        let json = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? ["_array": (try? JSONSerialization.jsonObject(with: data)) ?? []]
        return (http.statusCode, json, headers)
    }

    func waitForLeader(seconds: Double) async -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            var leaders: Set<Int> = []
            var answered = 0
            for i in 1...size {
                if let (status, json, _) = await request(i, "GET", "/v1/status", timeout: 1), status == 200 {
                    answered += 1
                    if let l = json["leaderId"] as? Int { leaders.insert(l) }
                }
            }
            if answered == size && leaders.count == 1 { return true }
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
            for i in 1...size {
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

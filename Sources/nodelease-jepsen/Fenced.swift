import ChildProcess
import Foundation
import JepsenCheckers
import NIOConcurrencyHelpers
import NodeLeaseClient

#if canImport(Glibc)
    import Glibc
#endif

/// The fenced resource: a small store shared by every holder of the run (the workers in the
/// runner's process, the keepers in their own), in a file guarded by `flock`. A write carries
/// the writer's node ID and fencing token; the store keeps the highest token seen per node ID
/// and rejects a write carrying a lower one, as a database guarded by fencing tokens would.
/// Every attempt is logged, with the instant until which the writer believed it held the ID.
struct FencedStore: Sendable {
    let path: String

    /// The monotonic clock every process of the run shares (nanoseconds).
    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// Writes, returning whether the store accepted the token.
    @discardableResult
    func write(node: UInt32, token: UInt64, writer: String, believedUntil: UInt64) -> Bool {
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return false }
        defer { Glibc.close(fd) }
        flock(fd, LOCK_EX)
        defer { flock(fd, LOCK_UN) }
        // The highest accepted token per node lives in a small side file (read and written
        // under the same lock), so a write costs the same at the end of a run as at its start.
        var highest = Self.readHighest(path + ".max")
        let accepted = token >= (highest[node] ?? 0)
        if accepted && token > (highest[node] ?? 0) {
            highest[node] = token
            if let data = try? JSONEncoder().encode(highest) { try? data.write(to: URL(fileURLWithPath: path + ".max")) }
        }
        let w = FencedWrite(time: Self.now(), node: node, token: token, writer: writer, believedUntil: believedUntil, accepted: accepted)
        let line = (try? JSONEncoder().encode(w)).map { String(decoding: $0, as: UTF8.self) + "\n" } ?? ""
        _ = line.withCString { Glibc.write(fd, $0, strlen($0)) }
        return accepted
    }

    static func readHighest(_ path: String) -> [UInt32: UInt64] {
        guard let data = try? Data(contentsOf: URL(fileURLWithPath: path)) else { return [:] }
        return (try? JSONDecoder().decode([UInt32: UInt64].self, from: data)) ?? [:]
    }

    static func load(path: String) -> [FencedWrite] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
        let d = JSONDecoder()
        return text.split(separator: "\n").compactMap { try? d.decode(FencedWrite.self, from: Data($0.utf8)) }
    }
}

/// One attempt to write the fenced resource.
struct FencedWrite: Codable, Sendable {
    var time: UInt64
    var node: UInt32
    var token: UInt64
    var writer: String
    var believedUntil: UInt64
    var accepted: Bool
}

extension FencedStore {
    /// Within one node ID, accepted writes never interleave between leases: one fencing token
    /// belongs to one holder, and once a newer lease's write is accepted no older lease's
    /// is again. And no write is refused while its writer still believed it held the ID: a
    /// newer holder's token was accepted while the older holder's lease had not run out by its
    /// own clock, so two holders overlapped.
    static func check(_ writes: [FencedWrite]) -> [Anomaly] {
        var out: [Anomaly] = []
        var highest: [UInt32: UInt64] = [:]
        var owner: [UInt32: [UInt64: String]] = [:]
        for w in writes {
            if w.accepted {
                if let o = owner[w.node]?[w.token], o != w.writer {
                    out.append(Anomaly(checker: "fenced-store", detail: "node \(w.node): token \(w.token) was used by \(o) and by \(w.writer)"))
                }
                owner[w.node, default: [:]][w.token] = w.writer
                if let h = highest[w.node], w.token < h {
                    out.append(Anomaly(checker: "fenced-store", detail: "node \(w.node): token \(w.token) of \(w.writer) accepted after token \(h)"))
                }
                highest[w.node] = max(highest[w.node] ?? 0, w.token)
            } else if w.time < w.believedUntil {
                out.append(
                    Anomaly(
                        checker: "fenced-store",
                        detail: "node \(w.node): \(w.writer)'s write with token \(w.token) was refused at \(w.time)ns, while it believed it held the ID until \(w.believedUntil)ns"))
            }
            if out.count > 20 { return out }
        }
        return out
    }
}

/// A holder that is a real `LeaseKeeper` in a process of its own (`nodelease-jepsen --keeper`):
/// it keeps its hostname's lease with the client library and writes the fenced store every
/// 100 ms while the keeper says the lease is valid. The nemesis pauses these processes.
struct KeeperProcess {
    let hostname: String
    let holder: String
    let endpoints: [URL]
    let store: FencedStore
    let ttl: Int

    func run() async {
        let env = ProcessInfo.processInfo.environment
        let client = NodeLeaseClient(endpoints: endpoints, timeout: .seconds(2), token: env["NODELEASE_TOKEN"], tls: .fromEnvironment(env))
        let keeper = LeaseKeeper(client: client, hostname: hostname, holder: holder, ttlSeconds: ttl)
        await keeper.start()
        let clock = ContinuousClock()
        signal(SIGTERM, SIG_IGN)
        let term = DispatchSource.makeSignalSource(signal: SIGTERM)
        let stop = StopFlag()
        term.setEventHandler { stop.set() }
        term.resume()
        while !stop.isSet {
            try? await Task.sleep(for: .milliseconds(100))
            // The keeper's view, then the write: a pause between the two is what fencing is for.
            guard let lease = await keeper.currentLease, let until = await keeper.validUntil else { continue }
            // Some work between deciding and writing: a pause that lands here makes the write
            // late, with a token that may have been superseded meanwhile.
            try? await Task.sleep(for: .milliseconds(50))
            let left = until - clock.now
            let believedUntil = FencedStore.now() + UInt64(max(0, left.components.seconds)) * 1_000_000_000 + UInt64(max(0, left.components.attoseconds / 1_000_000_000))
            store.write(node: lease.nodeId, token: lease.fencingToken, writer: holder, believedUntil: believedUntil)
        }
        await keeper.stop()
    }
}

/// The keeper processes of a run, started and signalled by PID.
final class Keepers: Sendable {
    private let processes = NIOLockedValueBox<[ChildProcess]>([])

    func start(count: Int, binary: String, endpoints: [URL], store: String, dir: String, ttl: Int) throws {
        for k in 0..<count {
            let log = "\(dir)/keeper-\(k).log"
            let arguments = [
                "--keeper", "keeper.jepsen.test", "--keeper-holder", "keeper-\(k)", "--endpoints",
                endpoints.map(\.absoluteString).joined(separator: ","), "--fenced-store", store, "--keeper-ttl", "\(ttl)",
            ]
            let p = try ChildProcess(binary, arguments, stdin: .discard, stdout: .append(log), stderr: .append(log))
            try? "\(p.pid)\n".write(toFile: "\(dir)/keeper-\(k).pid", atomically: true, encoding: .utf8)
            processes.withLockedValue { $0.append(p) }
        }
    }

    var count: Int { processes.withLockedValue { $0.count } }

    func pause(_ k: Int) { signal(k, SIGSTOP) }
    func resume(_ k: Int) { signal(k, SIGCONT) }

    private func signal(_ k: Int, _ sig: Int32) {
        guard let p = processes.withLockedValue({ $0.indices.contains(k) ? $0[k] : nil }) else { return }
        p.signal(sig)
    }

    /// SIGTERM (the keeper releases its lease), then SIGKILL after 5 s.
    func stopAll() {
        let ps = processes.withLockedValue { $0 }
        for p in ps {
            p.signal(SIGCONT)
            p.signal(SIGTERM)
        }
        let end = ContinuousClock.now + .seconds(5)
        for p in ps {
            while p.isRunning && ContinuousClock.now < end { usleep(50_000) }
            if p.signal(SIGKILL) { p.waitUntilExit() }
        }
    }
}

final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
}

import ArgumentParser
import LeaseRegistry
import Raft
import RaftStorage

#if canImport(Glibc)
    import Glibc
#endif

/// Benchmarks of the local building blocks. They print figures and assert nothing.
@main
struct Microbench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nodelease-microbench",
        abstract: "Benchmarks of the write-ahead log and the lease registry.",
        subcommands: [StorageBench.self, RegistryBench.self, AllocationBench.self, IdempotencyBench.self, ExpiryBench.self, StorageWriter.self])
}

/// Prints what the write-ahead log sustains on this machine's disk, beside the raw fsync
/// latency that bounds it.
struct StorageBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "storage",
        abstract: "WAL appends/s and fsyncs/s for batches of 1, 16 and 256 small entries.")

    @Option(help: "Directory to write in (a fresh temporary directory under it is used and removed).")
    var dir: String = "/tmp"

    @Option(help: "Seconds per measurement.")
    var seconds: Double = 2

    @Option(help: "Payload bytes per entry.")
    var entryBytes: Int = 64

    @Flag(help: "Also measure with fsync off, to show what our code costs without the disk.")
    var cpu = false

    func run() throws {
        let base = "\(dir)/nodelease-bench-\(getpid())"
        defer { _ = try? removeTree(base) }
        let fs = PosixFileSystem()
        try fs.createDirectory(base)

        // Raw fsync latency: append 4 KiB and fdatasync, repeatedly.
        let raw = try fs.open(base + "/raw", create: true)
        let page = [UInt8](repeating: 0xab, count: 4096)
        var offset: UInt64 = 0
        var rawLatencies: [Double] = []
        let clock = ContinuousClock()
        let rawEnd = clock.now + .milliseconds(Int(seconds * 1000))
        while clock.now < rawEnd {
            let t = clock.now
            try raw.write(page, at: offset)
            try raw.sync()
            rawLatencies.append(Self.micros(clock.now - t))
            offset += 4096
        }
        raw.close()
        rawLatencies.sort()
        let rawMedian = rawLatencies[rawLatencies.count / 2]
        print("machine: raw 4 KiB append + fdatasync: median \(Self.fmt(rawMedian)) us, p99 \(Self.fmt(rawLatencies[rawLatencies.count * 99 / 100])) us, \(Self.fmt(1e6 / rawMedian)) fsyncs/s possible")
        print("")
        print("fsync  batch  entries/s     fsyncs/s   us/batch   bytes/entry")
        for (fsync, batch) in [(true, 1), (true, 16), (true, 256)] + (cpu ? [(false, 1), (false, 16), (false, 256)] : []) {
            let path = "\(base)/wal-\(batch)-\(fsync)"
            let log = try DurableLog(
                directory: path, fileSystem: fs, membership: Membership(voters: [1]), options: .init(fsync: fsync))
            let payload = [UInt8](repeating: 0x5a, count: entryBytes)
            var next: LogIndex = 1
            var batches = 0
            let start = clock.now
            let end = start + .milliseconds(Int(seconds * 1000))
            while clock.now < end {
                var entries: [Entry] = []
                entries.reserveCapacity(batch)
                for i in 0..<batch { entries.append(Entry(term: 1, index: next + i, data: payload)) }
                try log.save(hardState: HardState(term: 1, vote: 1, commit: next - 1), entries: entries, snapshot: nil, sync: true)
                next = next + batch
                batches += 1
            }
            let elapsed = Self.micros(clock.now - start) / 1e6
            let appended = Double(batches * batch)
            print(
                "\(fsync ? "  on " : "  off") \(Self.pad(String(batch), 5))  \(Self.pad(Self.fmt(appended / elapsed), 11))  \(Self.pad(Self.fmt(Double(fsync ? log.syncCount : 0) / elapsed), 9))  \(Self.pad(Self.fmt(elapsed * 1e6 / Double(batches)), 9))  \(Self.pad(String(log.bytesAppended / max(1, batches * batch)), 11))"
            )
            log.close()
        }
    }

    static func micros(_ d: Duration) -> Double {
        Double(d.components.seconds) * 1e6 + Double(d.components.attoseconds) / 1e12
    }

    static func fmt(_ v: Double) -> String {
        v >= 100 ? String(Int(v.rounded())) : String(Double(Int(v * 10)) / 10)
    }

    static func pad(_ s: String, _ n: Int) -> String { String(repeating: " ", count: max(0, n - s.count)) + s }

    func removeTree(_ path: String) throws {
        guard let d = opendir(path) else { return }
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name == "." || name == ".." { continue }
            let child = path + "/" + name
            if unlink(child) != 0 { try removeTree(child) }
        }
        closedir(d)
        rmdir(path)
    }
}

/// Snapshot and restore of a large registry.
struct RegistryBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "registry",
        abstract: "Builds a registry of N nodes, then times snapshot, restore and command apply.")

    @Option(help: "Number of registered nodes.")
    var nodes: Int = 65_536

    func run() throws {
        let clock = ContinuousClock()
        var registry = LeaseRegistry()
        var index: UInt64 = 0
        let range: ClosedRange<UInt32> = 1...UInt32(max(nodes, 1))
        let residentBefore = IdempotencyBench().residentBytes()
        let t0 = clock.now
        for i in 0..<nodes {
            index += 1
            let data = TimedCommand(
                .acquire(hostname: "mx\(i).mail.example.org", holder: "holder-\(i)-3b2f0c1e", ttlSeconds: 30, idRange: range),
                now: 1_767_225_600
            ).encoded()
            _ = registry.apply(entry: data, index: index)
        }
        let build = clock.now - t0
        let residentAfter = IdempotencyBench().residentBytes()
        // A mix of states: a quarter stale, a quarter inactive.
        for i in stride(from: 0, to: nodes, by: 4) {
            let lease = UInt64(i + 1)
            index += 1
            _ = registry.apply(.release(leaseID: lease), now: 1_767_225_700, index: index)
            if i + 1 < nodes {
                index += 1
                _ = registry.apply(.expire(leaseID: lease + 1, renewalIndex: lease + 1), now: 1_767_225_700, index: index)
            }
        }
        var snapshot: [UInt8] = []
        var restored = LeaseRegistry()
        let snapTimes = (0..<5).map { _ in clock.measure { snapshot = registry.snapshot() } }
        let restoreTimes = try (0..<5).map { _ in try clock.measure { restored = try LeaseRegistry(snapshot: snapshot) } }
        precondition(restored == registry, "restored registry differs")
        // Renew throughput on the large registry.
        let renewals = 200_000
        let t1 = clock.now
        for k in 0..<renewals {
            index += 1
            let lease = UInt64((k % nodes) | 2) + 1
            _ = registry.apply(.renew(leaseID: lease), now: 1_767_225_800, index: index)
        }
        let renewTime = clock.now - t1
        let counts = registry.counts()
        print("registry of \(registry.count) nodes (\(counts.active) active, \(counts.stale) stale, \(counts.inactive) inactive)")
        print("  build by \(nodes) acquires: \(ms(build)) ms (\(us(build) / Double(nodes)) us per acquire)")
        print("  resident memory: +\((residentAfter - residentBefore) / 1_048_576) MiB (\((residentAfter - residentBefore) / max(1, nodes)) bytes per node)")
        print("  snapshot: \(snapshot.count) bytes, best of 5 \(ms(snapTimes.min()!)) ms")
        print("  restore:  best of 5 \(ms(restoreTimes.min()!)) ms")
        print("  renew apply: \(us(renewTime) / Double(renewals)) us per renew")
    }

    func us(_ d: Duration) -> Double { StorageBench.micros(d) }
    func ms(_ d: Duration) -> Double { (StorageBench.micros(d) / 100).rounded() / 10 }
}

/// What one acquire of a new hostname costs the state machine as the registry grows, in the
/// three ways an ID is found: the next never-used ID, a forgotten ID below the highest one,
/// and (the range full) the ID inactive the longest.
struct AllocationBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "allocation",
        abstract: "Microseconds per acquire of a new hostname at each registry size (default 1k and 1M nodes).")

    @Option(help: "Registry sizes, comma-separated.")
    var nodes: String = "1000,1000000"

    @Option(help: "Acquires timed per case.")
    var acquires: Int = 2000

    func run() throws {
        print("nodes      | next free ID | forgotten ID below the top | range full: longest inactive   (us per acquire, apply only)")
        for n in nodes.split(separator: ",").compactMap({ Int($0) }) {
            let (fresh, hole, reuse) = measure(n)
            print("\(StorageBench.pad(String(n), 10)) | \(StorageBench.pad(StorageBench.fmt(fresh), 12)) | \(StorageBench.pad(StorageBench.fmt(hole), 26)) | \(StorageBench.pad(StorageBench.fmt(reuse), 14))")
        }
    }

    func measure(_ n: Int) -> (Double, Double, Double) {
        let clock = ContinuousClock()
        let wide: ClosedRange<UInt32> = 1...UInt32.max
        var registry = LeaseRegistry()
        var index: UInt64 = 0
        func acquire(_ name: String, _ range: ClosedRange<UInt32>) -> Result<LeaseReply, LeaseError> {
            index += 1
            return registry.apply(.acquire(hostname: name, holder: "bench", ttlSeconds: 30, idRange: range), now: 1_767_225_600, index: index)
        }
        for i in 0..<n { _ = acquire("mx\(i).example.org", wide) }
        // Next free ID, at the top of the registry.
        let t0 = clock.now
        for i in 0..<acquires { _ = acquire("fresh\(i).example.org", wide) }
        let fresh = StorageBench.micros(clock.now - t0) / Double(acquires)
        // Release and forget IDs spread through the registry, then acquire them back.
        let step = max(1, n / acquires)
        var forgotten = 0
        for k in stride(from: 0, to: n, by: step) where forgotten < acquires {
            guard case .success(.lease(let lease)) = acquire("mx\(k).example.org", wide) else { continue }
            index += 1
            _ = registry.apply(.release(leaseID: lease.leaseID), now: 1_767_225_600, index: index)
            index += 1
            _ = registry.apply(.forget(nodeID: lease.nodeID), now: 1_767_225_600, index: index)
            forgotten += 1
        }
        let t1 = clock.now
        for i in 0..<forgotten { _ = acquire("hole\(i).example.org", wide) }
        let hole = StorageBench.micros(clock.now - t1) / Double(max(1, forgotten))
        // The range is full: release some nodes spread through it, then new hostnames take
        // the IDs inactive the longest.
        let full: ClosedRange<UInt32> = 1...UInt32(registry.count)
        var released = 0
        for k in stride(from: 0, to: registry.count, by: max(1, registry.count / acquires)) where released < acquires {
            guard let r = registry.node(NodeID(UInt32(k + 1))), r.status == .active else { continue }
            index += 1
            _ = registry.apply(.release(leaseID: r.leaseID), now: 1_767_225_600, index: index)
            released += 1
        }
        let t2 = clock.now
        var reused = 0
        for i in 0..<released {
            if case .success = acquire("reuse\(i).example.org", full) { reused += 1 }
        }
        precondition(reused == released, "the full range did not reuse every inactive ID")
        let reuse = StorageBench.micros(clock.now - t2) / Double(max(1, released))
        return (fresh, hole, reuse)
    }
}

/// What the leader's lease deadlines cost per renewal: the heap's upkeep as each renewal
/// applies (the mean and the longest call: a rebuild is a stall of the driver's actor) and
/// the most entries the heap held.
struct ExpiryBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "expiry",
        abstract: "Renews every lease of a registry several times and prints the deadline heap's cost per renewal and its size.")

    @Option(help: "Active leases.")
    var nodes: Int = 65_536

    @Option(help: "Renewals of each lease.")
    var rounds: Int = 6

    func validate() throws {
        guard nodes > 0, rounds > 0 else { throw ValidationError("--nodes and --rounds must be positive") }
    }

    func run() throws {
        let clock = ContinuousClock()
        var registry = LeaseRegistry()
        var index: UInt64 = 0
        var ids: [UInt64] = []
        ids.reserveCapacity(nodes)
        for i in 0..<nodes {
            index += 1
            if case .success(.lease(let l)) = registry.apply(
                .acquire(hostname: "mx\(i).example.org", holder: "bench", ttlSeconds: 30, idRange: 1...UInt32.max), now: 1_767_225_600, index: index)
            {
                ids.append(l.leaseID)
            }
        }
        var expiry = LeaseExpiry()
        expiry.becameLeader()
        expiry.leaderReady(now: 0, registry: registry)
        // A renewal every 100 us of the leader's clock: 10,000 a second. Nothing is popped
        // (`due` is not called): this is the upkeep of pushes alone.
        var now: UInt64 = 1_000_000
        var total = Duration.zero
        var longest = Duration.zero
        var calls: [Double] = []
        calls.reserveCapacity(ids.count * rounds)
        var most = expiry.queuedDeadlines
        for _ in 0..<rounds {
            for id in ids {
                index += 1
                now += 100_000
                _ = registry.apply(.renew(leaseID: id), now: 1_767_225_600, index: index)
                guard let node = registry.lease(id) else { continue }
                let t = clock.now
                expiry.applied(node, now: now, registry: registry)
                let d = clock.now - t
                total += d
                longest = max(longest, d)
                calls.append(StorageBench.micros(d))
                most = max(most, expiry.queuedDeadlines)
            }
        }
        calls.sort()
        let n = Double(calls.count)
        print("leases \(nodes), renewals \(calls.count): \(StorageBench.fmt(StorageBench.micros(total) / n)) us a renewal (mean), p99.99 \(StorageBench.fmt(calls[Int(n * 0.9999)])) us, longest \(StorageBench.fmt(StorageBench.micros(longest))) us; heap at most \(most) entries (\(String(format: "%.2f", Double(most) / Double(nodes)))x the leases), \(expiry.queuedDeadlines) at the end")
    }
}

/// How much memory the remembered idempotency keys take, and what they cost per write.
struct IdempotencyBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "idempotency",
        abstract: "Fills the registry's idempotency window (renewals under UUID keys) and prints memory and time per key.")

    @Option(help: "Keys to remember (the default window holds at most 100000).")
    var keys: Int = 100_000

    @Option(help: "Registered nodes the renewals go to.")
    var nodes: Int = 511

    func run() throws {
        var registry = LeaseRegistry()
        var index: UInt64 = 0
        for i in 0..<nodes {
            index += 1
            _ = registry.apply(.acquire(hostname: "mx\(i).mail.example.org", holder: "holder-\(i)-3b2f0c1e", ttlSeconds: 30, idRange: 1...UInt32(nodes)), now: 1_767_225_600, index: index)
        }
        index += 1
        _ = registry.apply(TimedCommand(.configureIdempotency(windowSeconds: 600, maxKeys: UInt32(keys)), now: 1_767_225_600, leaderNanos: 1), index: index)
        let before = residentBytes()
        let clock = ContinuousClock()
        let t0 = clock.now
        for k in 0..<keys {
            index += 1
            // A UUID-shaped key, as the client library sends.
            let key = IdempotencyKey(origin: .client, value: "3b2f0c1e-\(String(k, radix: 16))-4f1a-9c2e-7d1b6a5e\(k % 10_000)")
            let timed = TimedCommand(.renew(leaseID: UInt64(k % nodes) + 1), now: 1_767_225_600, key: key, leaderNanos: UInt64(k + 2))
            _ = registry.apply(timed, index: index, term: 1)
        }
        let elapsed = clock.now - t0
        let after = residentBytes()
        // A snapshot is encoded from a copy of the registry on another thread; the first
        // write after it pays for copying what it touches (copy-on-write), on the actor.
        var firstWrites: [Double] = []
        var copies: [LeaseRegistry] = []
        for round in 0..<5 {
            copies.append(registry)
            index += 1
            let key = IdempotencyKey.replica(1, request: UInt64(index) << 8 | UInt64(round))
            let t = clock.now
            _ = registry.apply(TimedCommand(.renew(leaseID: 1), now: 1_767_225_600, key: key, leaderNanos: UInt64(keys + 10 + round)), index: index, term: 1)
            firstWrites.append(StorageBench.micros(clock.now - t) / 1000)
            copies.removeAll()
        }
        let snapshot = registry.snapshot()
        print("\(registry.rememberedKeys) keys remembered (renew outcomes, 45-character keys)")
        print("  resident memory: +\((after - before) / 1_048_576) MiB (\((after - before) / max(1, keys)) bytes per key)")
        print("  snapshot: \(snapshot.count / 1024) KiB (\(snapshot.count / max(1, keys)) bytes per key)")
        print("  apply with a new key: \(StorageBench.micros(elapsed) / Double(keys)) us per write")
        print("  first write after a snapshot's copy: best of 5 \(StorageBench.fmt(firstWrites.min()!)) ms, worst \(StorageBench.fmt(firstWrites.max()!)) ms (copy-on-write)")
        copies = []
        // The same renewals without a key, at cluster version 3: one replica's session stamp,
        // 64 in flight (each says it is done below the one sent 64 before it).
        var sessions = registry
        registry = LeaseRegistry()  // the only reference left: no copy-on-write below
        index += 1
        _ = sessions.apply(TimedCommand(.setClusterVersion(3), now: 1_767_225_600, leaderNanos: UInt64(keys + 100)), index: index, term: 1)
        let base: UInt64 = 0x7a3_0000 << 16
        let sessionBefore = residentBytes()
        let t1 = clock.now
        for k in 0..<keys {
            index += 1
            let number = base + UInt64(k) + 1
            let stamp = SessionStamp(replica: 2, base: base, done: k >= 64 ? number - 64 : base + 1)
            let timed = TimedCommand(.renew(leaseID: UInt64(k % nodes) + 1), now: 1_767_225_600, requestID: number, leaderNanos: UInt64(keys + 101 + k), session: stamp)
            _ = sessions.apply(timed, index: index, term: 1)
        }
        let sessionElapsed = clock.now - t1
        let sessionAfter = residentBytes()
        print("the same \(keys) renewals without a key (session stamps, 64 in flight): \(sessions.sessionCounts.numbers) numbers kept")
        print("  resident memory: +\(max(0, sessionAfter - sessionBefore) / 1024) KiB; apply: \(StorageBench.micros(sessionElapsed) / Double(keys)) us per write")
    }

    /// Resident set size from /proc/self/statm (0 where there is none).
    func residentBytes() -> Int {
        guard let f = fopen("/proc/self/statm", "r") else { return 0 }
        defer { fclose(f) }
        var buffer = [CChar](repeating: 0, count: 128)
        guard fgets(&buffer, 128, f) != nil else { return 0 }
        let text = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let fields = text.split(separator: " ").compactMap { Int($0) }
        return fields.count >= 2 ? fields[1] * Int(sysconf(Int32(_SC_PAGESIZE))) : 0
    }
}

/// Appends to a write-ahead log until killed, printing `acked N` after every batch whose
/// fsync returned. The SIGKILL test in RaftStorageTests kills it at random moments and
/// checks that every acknowledged entry survives.
struct StorageWriter: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "storage-writer", abstract: "Test helper: append and acknowledge until killed.", shouldDisplay: false)

    @Option(help: "Data directory.")
    var dir: String

    @Option(help: "Seed for batch sizes.")
    var seed: UInt64 = 1

    func run() throws {
        var random = DeterministicGenerator(seed: seed)
        let log = try DurableLog(directory: dir, membership: Membership(voters: [1]), options: .init(segmentBytes: 64 << 10))
        var next = try log.lastIndex() + 1
        while true {
            let n = 1 + Int(random.next() % 32)
            let entries = (0..<n).map { Entry(term: 1, index: next + $0, data: Array("entry-\((next + $0).rawValue)".utf8)) }
            try log.save(hardState: HardState(term: 1, vote: 1, commit: next - 1), entries: entries, snapshot: nil, sync: true)
            next = next + n
            let line = Array("acked \((next - 1).rawValue)\n".utf8)
            _ = line.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
            if random.chance(0.02), next.rawValue > 100 {
                let at = next - 10
                try log.createSnapshot(at: at, data: Array("snap".utf8))
                try log.compact(through: at - 50)
            }
        }
    }
}

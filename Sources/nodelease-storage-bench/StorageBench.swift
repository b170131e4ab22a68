import ArgumentParser
import Raft
import RaftStorage

#if canImport(Glibc)
    import Glibc
#endif

/// Prints what the write-ahead log sustains on this machine's disk, beside the raw fsync
/// latency that bounds it. A benchmark, not a test: it asserts nothing.
@main
struct StorageBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nodelease-storage-bench",
        abstract: "Measures WAL appends/s and fsyncs/s for batches of 1, 16 and 256 small entries.")

    @Option(help: "Directory to write in (a fresh temporary directory under it is used and removed).")
    var dir: String = "/tmp"

    @Option(help: "Seconds per measurement.")
    var seconds: Double = 2

    @Option(help: "Payload bytes per entry.")
    var entryBytes: Int = 64

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
        print("batch  entries/s     fsyncs/s   us/batch   bytes/entry")
        for batch in [1, 16, 256] {
            let path = "\(base)/wal-\(batch)"
            let log = try DurableLog(directory: path, fileSystem: fs, membership: Membership(voters: [1]))
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
                "\(Self.pad(String(batch), 5))  \(Self.pad(Self.fmt(appended / elapsed), 11))  \(Self.pad(Self.fmt(Double(log.syncCount) / elapsed), 9))  \(Self.pad(Self.fmt(elapsed * 1e6 / Double(batches)), 9))  \(Self.pad(String(log.bytesAppended / max(1, batches * batch)), 11))"
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

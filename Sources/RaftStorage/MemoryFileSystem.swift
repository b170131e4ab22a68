import Raft

/// An in-memory file system that behaves like a disk across a power cut: writes and
/// directory changes are volatile until synced, and `crash` throws away (or tears) what was
/// not. It can also be told to fail fsync. For tests and the simulator.
public final class MemoryFileSystem: StorageFileSystem {
    final class Node {
        /// What a crash would leave: the content as of the last sync.
        var durable: [UInt8] = []
        /// What reads see now.
        var current: [UInt8] = []
        var dirty = false
    }

    /// Directory entries as the process sees them, and as a crash would leave them.
    private var names: [String: Node] = [:]
    private var durableNames: [String: Node] = [:]
    private var directories: Set<String> = []
    private var locks: Set<String> = []

    /// When set, every sync fails with EIO (and keeps failing).
    public var failSync = false
    /// Counts of operations, for benchmarks and tests.
    public private(set) var syncs = 0
    public private(set) var bytesWritten = 0
    public private(set) var reads = 0

    public init() {}

    public func createDirectory(_ path: String) throws { directories.insert(path) }

    public func list(_ directory: String) throws -> [String] {
        let prefix = directory.hasSuffix("/") ? directory : directory + "/"
        return names.keys.filter { $0.hasPrefix(prefix) && !$0.dropFirst(prefix.count).contains("/") }
            .map { String($0.dropFirst(prefix.count)) }.sorted()
    }

    public func exists(_ path: String) -> Bool { names[path] != nil || directories.contains(path) }

    public func open(_ path: String, create: Bool) throws -> any StorageFile {
        if let n = names[path] { return MemoryFile(fs: self, node: n, path: path) }
        guard create else { throw StorageFailure.io("open \(path)", errno: 2) }
        let n = Node()
        names[path] = n
        return MemoryFile(fs: self, node: n, path: path)
    }

    public func rename(_ from: String, to: String) throws {
        guard let n = names[from] else { throw StorageFailure.io("rename \(from)", errno: 2) }
        names[from] = nil
        names[to] = n
    }

    public func remove(_ path: String) throws { names[path] = nil }

    public func syncDirectory(_ directory: String) throws {
        syncs += 1
        if failSync { throw StorageFailure.failed("fsync of directory \(directory) failed (errno 5)") }
        let prefix = directory.hasSuffix("/") ? directory : directory + "/"
        for (k, _) in durableNames where k.hasPrefix(prefix) && names[k] == nil { durableNames[k] = nil }
        for (k, v) in names where k.hasPrefix(prefix) { durableNames[k] = v }
    }

    public func lock(_ path: String) throws -> any StorageLock {
        if locks.contains(path) { throw StorageFailure.locked(path) }
        locks.insert(path)
        if names[path] == nil { names[path] = Node() }
        return MemoryLock(fs: self, path: path)
    }

    fileprivate func unlock(_ path: String) { locks.remove(path) }

    fileprivate func synced(_ count: Int) {
        syncs += count
    }

    fileprivate func wrote(_ count: Int) { bytesWritten += count }
    fileprivate func read() { reads += 1 }

    /// A power cut: every file falls back to its synced content, except that, with `tear`,
    /// an unsynced file may keep a prefix of its new bytes, or a later page without the
    /// earlier ones (writes reach the disk in any order). Unsynced directory changes are lost.
    /// Locks are released (the process died).
    public func crash(tear random: inout DeterministicGenerator, tearing: Bool = true) {
        names = durableNames
        locks = []
        // Visit files in name order, so a seeded crash is deterministic.
        for key in names.keys.sorted() {
            let n = names[key]!
            guard n.dirty else { continue }
            var kept = n.durable
            if tearing && n.current.count > n.durable.count && random.chance(0.5) {
                let extra = n.current.count - n.durable.count
                let cut = Int(random.next() % UInt64(extra + 1))
                if random.chance(0.7) {
                    // A prefix of the appended bytes made it.
                    kept = Array(n.current.prefix(n.durable.count + cut))
                } else {
                    // A later page made it, the one before did not: zeros in between.
                    kept = n.durable + [UInt8](repeating: 0, count: cut) + Array(n.current[(n.durable.count + cut)...])
                }
            }
            n.durable = kept
            n.current = kept
            n.dirty = false
        }
    }

    /// Flips one byte of a file, durably (for corruption tests).
    public func corrupt(_ path: String, at offset: Int) {
        guard let n = names[path], offset < n.current.count else { return }
        n.current[offset] ^= 0xff
        n.durable = n.current
    }

    /// The current content of a file.
    public func contents(_ path: String) -> [UInt8]? { names[path]?.current }

    /// Replaces a file's content durably (for tests that cut files).
    public func setContents(_ path: String, _ bytes: [UInt8]) {
        let n = names[path] ?? Node()
        n.current = bytes
        n.durable = bytes
        n.dirty = false
        names[path] = n
        durableNames[path] = n
    }
}

final class MemoryLock: StorageLock {
    weak var fs: MemoryFileSystem?
    let path: String
    init(fs: MemoryFileSystem, path: String) {
        self.fs = fs
        self.path = path
    }
    func release() { fs?.unlock(path) }
}

final class MemoryFile: StorageFile {
    let fs: MemoryFileSystem
    let node: MemoryFileSystem.Node
    let path: String

    init(fs: MemoryFileSystem, node: MemoryFileSystem.Node, path: String) {
        self.fs = fs
        self.node = node
        self.path = path
    }

    func size() throws -> UInt64 { UInt64(node.current.count) }

    func read(at offset: UInt64, count: Int) throws -> [UInt8] {
        fs.read()
        let start = min(Int(offset), node.current.count)
        let end = min(start + count, node.current.count)
        return Array(node.current[start..<end])
    }

    func write(_ bytes: [UInt8], at offset: UInt64) throws {
        let o = Int(offset)
        if node.current.count < o { node.current += [UInt8](repeating: 0, count: o - node.current.count) }
        let overlap = min(bytes.count, node.current.count - o)
        if overlap > 0 { node.current.replaceSubrange(o..<(o + overlap), with: bytes[0..<overlap]) }
        if overlap < bytes.count { node.current.append(contentsOf: bytes[overlap...]) }
        node.dirty = true
        fs.wrote(bytes.count)
    }

    func truncate(to size: UInt64) throws {
        if Int(size) < node.current.count { node.current.removeSubrange(Int(size)...) }
        node.dirty = true
    }

    func sync() throws {
        fs.synced(1)
        if fs.failSync { throw StorageFailure.failed("fsync of \(path) failed (errno 5)") }
        node.durable = node.current
        node.dirty = false
    }

    func close() {}
}

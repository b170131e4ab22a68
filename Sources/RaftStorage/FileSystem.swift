#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The seam between the storage and the disk. Everything `DurableLog` does to files goes
/// through these two protocols, so tests can substitute a file system that loses unsynced
/// writes, tears them, or fails fsync.
public protocol StorageFileSystem: AnyObject {
    func createDirectory(_ path: String) throws
    /// The names (not paths) of the entries of a directory.
    func list(_ directory: String) throws -> [String]
    func exists(_ path: String) -> Bool
    /// Opens a file for reading and writing, creating it when `create` is set.
    func open(_ path: String, create: Bool) throws -> any StorageFile
    func rename(_ from: String, to: String) throws
    func remove(_ path: String) throws
    /// Makes creations, renames and removals in `directory` durable.
    func syncDirectory(_ directory: String) throws
    /// Takes an exclusive lock on `path` (created if missing) for the life of the process, or
    /// throws `StorageFailure.locked` if another holder has it.
    func lock(_ path: String) throws -> any StorageLock
}

extension StorageFileSystem {
    /// Replaces `path` (in `directory`) with `bytes` so that a crash leaves the old file or the
    /// new one: a temporary file beside it, written and fsynced, renamed over it, and the
    /// directory fsynced.
    public func replaceAtomically(_ path: String, in directory: String, with bytes: [UInt8]) throws {
        let tmp = path + ".tmp"
        let file = try open(tmp, create: true)
        defer { file.close() }
        try file.truncate(to: 0)
        try file.write(bytes, at: 0)
        try file.sync()
        try rename(tmp, to: path)
        try syncDirectory(directory)
    }
}

public protocol StorageFile: AnyObject {
    func size() throws -> UInt64
    func read(at offset: UInt64, count: Int) throws -> [UInt8]
    func write(_ bytes: [UInt8], at offset: UInt64) throws
    func truncate(to size: UInt64) throws
    /// Makes every write so far durable (fdatasync).
    func sync() throws
    func close()
}

public protocol StorageLock: AnyObject {
    func release()
}

/// Why the storage refused to go on.
public enum StorageFailure: Error, CustomStringConvertible, Equatable {
    /// Another process holds the data directory.
    case locked(String)
    /// Data that was once written completely is damaged; starting would lose committed entries.
    case corrupt(file: String, offset: UInt64, reason: String)
    /// An fsync (or a write) failed. The data on disk is in an unknown state, so the storage
    /// refuses every further operation: the replica must stop (fail-stop).
    case failed(String)
    /// A system call failed.
    case io(String, errno: Int32)
    /// The caller asked for something the storage cannot do.
    case invalid(String)

    /// A failed system call that leaves the disk in an unknown state (a write or an fsync).
    static func failed(_ what: String, errno e: Int32) -> StorageFailure { .failed(StorageFailure.io(what, errno: e).description) }

    public var description: String {
        switch self {
        case .locked(let p): "the data directory is locked by another process (\(p))"
        case .corrupt(let f, let o, let r): "corrupt data in \(f) at offset \(o): \(r); refusing to start"
        case .failed(let why): "storage failed and stopped: \(why)"
        case .io(let what, let e): "\(what) failed: \(String(cString: strerror(e))) (errno \(e))"
        case .invalid(let why): why
        }
    }
}

func join(_ directory: String, _ name: String) -> String {
    directory.hasSuffix("/") ? directory + name : directory + "/" + name
}

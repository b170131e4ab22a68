#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The real file system, through POSIX calls.
public final class PosixFileSystem: StorageFileSystem {
    public init() {}

    public func createDirectory(_ path: String) throws {
        var built = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            built += "/" + part
            if mkdir(built, 0o755) != 0 && errno != EEXIST {
                throw StorageFailure.io("mkdir \(built)", errno: errno)
            }
        }
    }

    public func list(_ directory: String) throws -> [String] {
        guard let dir = opendir(directory) else { throw StorageFailure.io("opendir \(directory)", errno: errno) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    public func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    public func open(_ path: String, create: Bool) throws -> any StorageFile {
        let fd = Glibc.open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0o644)
        if fd < 0 { throw StorageFailure.io("open \(path)", errno: errno) }
        return PosixFile(fd: fd, path: path)
    }

    public func rename(_ from: String, to: String) throws {
        if Glibc.rename(from, to) != 0 { throw StorageFailure.io("rename \(from)", errno: errno) }
    }

    public func remove(_ path: String) throws {
        if unlink(path) != 0 && errno != ENOENT { throw StorageFailure.io("unlink \(path)", errno: errno) }
    }

    public func syncDirectory(_ directory: String) throws {
        let fd = Glibc.open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd < 0 { throw StorageFailure.io("open directory \(directory)", errno: errno) }
        defer { Glibc.close(fd) }
        if fsync(fd) != 0 {
            let e = errno
            throw StorageFailure.failed("fsync of directory \(directory)", errno: e)
        }
    }

    public func lock(_ path: String) throws -> any StorageLock {
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        if fd < 0 { throw StorageFailure.io("open lock file \(path)", errno: errno) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let e = errno
            Glibc.close(fd)
            if e == EWOULDBLOCK { throw StorageFailure.locked(path) }
            throw StorageFailure.io("flock \(path)", errno: e)
        }
        return PosixLock(fd: fd)
    }
}

final class PosixLock: StorageLock {
    private var fd: Int32
    init(fd: Int32) { self.fd = fd }
    func release() {
        if fd >= 0 {
            flock(fd, LOCK_UN)
            Glibc.close(fd)
            fd = -1
        }
    }
    deinit { release() }
}

final class PosixFile: StorageFile {
    private var fd: Int32
    let path: String

    init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    deinit { close() }

    func size() throws -> UInt64 {
        var st = stat()
        if fstat(fd, &st) != 0 { throw StorageFailure.io("fstat \(path)", errno: errno) }
        return UInt64(st.st_size)
    }

    func read(at offset: UInt64, count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = out.withUnsafeMutableBytes { buf in
                pread(fd, buf.baseAddress! + done, count - done, off_t(offset) + off_t(done))
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw StorageFailure.io("read \(path)", errno: errno)
            }
            if n == 0 { break }
            done += n
        }
        if done < count { out.removeSubrange(done...) }
        return out
    }

    func write(_ bytes: [UInt8], at offset: UInt64) throws {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { buf in
                pwrite(fd, buf.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            }
            if n < 0 {
                let e = errno
                if e == EINTR { continue }
                throw StorageFailure.failed("write to \(path)", errno: e)
            }
            done += n
        }
    }

    func truncate(to size: UInt64) throws {
        if ftruncate(fd, off_t(size)) != 0 { throw StorageFailure.io("truncate \(path)", errno: errno) }
    }

    func sync() throws {
        #if os(Linux)
            let rc = fdatasync(fd)
        #else
            let rc = fsync(fd)
        #endif
        if rc != 0 {
            let e = errno
            throw StorageFailure.failed("fsync of \(path)", errno: e)
        }
    }

    func close() {
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
        }
    }
}

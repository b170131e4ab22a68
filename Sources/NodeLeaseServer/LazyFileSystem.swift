#if NODELEASE_FAULTS
    import Foundation
    import RaftStorage

    /// The fault build's disk that forgets (`NODELEASE_FAULT_LAZY_DISK=1`), in the spirit of
    /// Jepsen's LazyFS: every write since a file's last fsync stays in this process's memory,
    /// as if in a page cache that a power cut empties, so a SIGKILL loses exactly what a power
    /// loss would. Reads see the unsynced writes. A file with many unsynced writes is written
    /// back without a sync now and then, as a kernel's writeback would. Directory operations
    /// (create, rename, remove) are durable at once. A control file lets the disk nemesis make
    /// fsyncs slow or fail.
    final class LazyFileSystem: StorageFileSystem, @unchecked Sendable {
        private let real = PosixFileSystem()
        private let lock = NSLock()
        /// The disk nemesis's control file (`NODELEASE_FAULT_DISK_FILE`): empty for a healthy
        /// disk, `slow MILLIS` for fsyncs that take that long, `fail` for fsyncs that fail.
        private let control: String?
        private var controlText = ""
        private var controlRead = ContinuousClock.now - .seconds(1)

        init(control: String?) { self.control = control }

        /// What the disk nemesis asks of the next fsync (re-read at most every 100 ms).
        func condition() -> (delayMillis: Int, fail: Bool) {
            guard let control else { return (0, false) }
            let text: String = locked {
                if ContinuousClock.now - controlRead > .milliseconds(100) {
                    controlRead = ContinuousClock.now
                    controlText = ((try? String(contentsOfFile: control, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
                }
                return controlText
            }
            if text == "fail" { return (0, true) }
            if text.hasPrefix("slow "), let ms = Int(text.dropFirst(5)) { return (min(ms, 10_000), false) }
            return (0, false)
        }
        /// Unsynced writes per path, in the order they were made.
        private var pending: [String: [(offset: UInt64, bytes: [UInt8])]] = [:]
        /// Past this many unsynced writes a file is written back (still without an fsync).
        static let writebackAfter = 256

        func createDirectory(_ path: String) throws { try real.createDirectory(path) }
        func list(_ directory: String) throws -> [String] { try real.list(directory) }
        func exists(_ path: String) -> Bool { real.exists(path) }
        func syncDirectory(_ directory: String) throws { try real.syncDirectory(directory) }
        func lock(_ path: String) throws -> any StorageLock { try real.lock(path) }

        func open(_ path: String, create: Bool) throws -> any StorageFile {
            LazyFile(path: path, real: try real.open(path, create: create), fs: self)
        }

        func rename(_ from: String, to: String) throws {
            try locked {
                try real.rename(from, to: to)
                pending[to] = pending.removeValue(forKey: from)
            }
        }

        func remove(_ path: String) throws {
            try locked {
                try real.remove(path)
                pending[path] = nil
            }
        }

        func locked<T>(_ body: () throws -> T) rethrows -> T {
            lock.lock()
            defer { lock.unlock() }
            return try body()
        }

        // Called with the lock held.

        func size(_ path: String, real file: any StorageFile) throws -> UInt64 {
            var s = try file.size()
            for w in pending[path] ?? [] { s = max(s, w.offset + UInt64(w.bytes.count)) }
            return s
        }

        func read(_ path: String, real file: any StorageFile, at offset: UInt64, count: Int) throws -> [UInt8] {
            let end = min(offset + UInt64(count), try size(path, real: file))
            guard end > offset else { return [] }
            var out = try file.read(at: offset, count: Int(end - offset))
            if out.count < Int(end - offset) { out += [UInt8](repeating: 0, count: Int(end - offset) - out.count) }
            for w in pending[path] ?? [] {
                let lo = max(offset, w.offset)
                let hi = min(end, w.offset + UInt64(w.bytes.count))
                guard lo < hi else { continue }
                out.replaceSubrange(Int(lo - offset)..<Int(hi - offset), with: w.bytes[Int(lo - w.offset)..<Int(hi - w.offset)])
            }
            return out
        }

        func write(_ path: String, real file: any StorageFile, _ bytes: [UInt8], at offset: UInt64) throws {
            pending[path, default: []].append((offset, bytes))
            if pending[path]!.count >= Self.writebackAfter { try writeBack(path, real: file) }
        }

        func writeBack(_ path: String, real file: any StorageFile) throws {
            for w in pending.removeValue(forKey: path) ?? [] { try file.write(w.bytes, at: w.offset) }
        }
    }

    final class LazyFile: StorageFile {
        let path: String
        let real: any StorageFile
        let fs: LazyFileSystem

        init(path: String, real: any StorageFile, fs: LazyFileSystem) {
            self.path = path
            self.real = real
            self.fs = fs
        }

        func size() throws -> UInt64 { try fs.locked { try fs.size(path, real: real) } }

        func read(at offset: UInt64, count: Int) throws -> [UInt8] {
            try fs.locked { try fs.read(path, real: real, at: offset, count: count) }
        }

        func write(_ bytes: [UInt8], at offset: UInt64) throws {
            try fs.locked { try fs.write(path, real: real, bytes, at: offset) }
        }

        func truncate(to size: UInt64) throws {
            // Treated as durable: what was written goes to the file first, then it is cut.
            try fs.locked {
                try fs.writeBack(path, real: real)
                try real.truncate(to: size)
            }
        }

        func sync() throws {
            let c = fs.condition()
            if c.fail { throw StorageFailure.failed("fsync of \(path) failed (planted by the disk nemesis)") }
            if c.delayMillis > 0 { usleep(UInt32(c.delayMillis) * 1000) }
            try fs.locked { try fs.writeBack(path, real: real) }
            try real.sync()
        }

        func close() { real.close() }
    }
#endif

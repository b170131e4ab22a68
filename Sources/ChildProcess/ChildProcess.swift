#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CNodeLeaseShims
import Foundation
import NIOConcurrencyHelpers

/// A program started with `posix_spawn` and reaped by its own `waitpid`: what the Jepsen
/// harness and the tests start replicas, keepers, openssl and the CLI with.
///
/// Not Foundation's `Process`: on Linux it finds the descriptors to close by copying every
/// `/proc/self/fd` entry's whole 256-byte `d_name`, which reads past the end of readdir's
/// buffer; with a thousand descriptors open (a test process running several clusters) that
/// crashed the test process with SIGSEGV. Here the child closes every descriptor from 3 up
/// with `posix_spawn_file_actions_addclosefrom_np`, and nothing is read from `/proc`.
///
/// Signals go only to a child that has not exited (it is reaped first if it has), so a
/// recycled PID is never hit.
public final class ChildProcess: Sendable {
    public enum Input: Sendable {
        case inherit
        /// /dev/null.
        case discard
        /// A pipe whose writing end is `standardInput`.
        case pipe
    }

    public enum Output: Sendable {
        case inherit
        /// /dev/null.
        case discard
        /// Appended to this file, created (0644) if missing.
        case append(String)
        /// A pipe whose reading end is `standardOutput` or `standardError`.
        case pipe
    }

    /// How the child ended.
    public enum Termination: Sendable, Equatable, CustomStringConvertible {
        case exited(Int32)
        case signalled(Int32)
        /// Somebody else reaped it (nothing in this project does).
        case unknown

        public var description: String {
            switch self {
            case .exited(let code): "exited with \(code)"
            case .signalled(let signal): "killed by signal \(signal)"
            case .unknown: "reaped elsewhere"
            }
        }
    }

    public let pid: pid_t
    public let standardInput: FileHandle?
    public let standardOutput: FileHandle?
    public let standardError: FileHandle?
    private let ended = NIOLockedValueBox<Termination?>(nil)

    /// Starts `path` with `arguments` (argv[0] is `path`) and `environment` (this process's when
    /// nil), every signal at its default action and none blocked.
    public init(
        _ path: String, _ arguments: [String], environment: [String: String]? = nil,
        stdin: Input = .inherit, stdout: Output = .inherit, stderr: Output = .inherit
    ) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        // Descriptors this process keeps (the parent's pipe ends), and the child's ends, closed
        // here once it has started.
        var parentEnds: [Int32?] = [nil, nil, nil]
        var childEnds: [Int32] = []
        var started = false
        defer {
            for fd in childEnds { close(fd) }
            if !started { for case let fd? in parentEnds { close(fd) } }
        }
        for (target, how) in [(Int32(0), Self.describe(stdin)), (1, Self.describe(stdout)), (2, Self.describe(stderr))] {
            switch how {
            case .inherit:
                break
            case .open(let file, let flags):
                try Self.check(posix_spawn_file_actions_addopen(&actions, target, file, flags, 0o644), "open \(file) for", path)
            case .pipe:
                var ends: [Int32] = [-1, -1]
                guard nodelease_pipe_cloexec(&ends) == 0 else { throw ChildProcessError("cannot make a pipe for \(path): \(Self.text(errno))") }
                let (child, parent) = target == 0 ? (ends[0], ends[1]) : (ends[1], ends[0])
                childEnds.append(child)
                parentEnds[Int(target)] = parent
                try Self.check(posix_spawn_file_actions_adddup2(&actions, child, target), "redirect", path)
            }
        }
        try Self.check(nodelease_spawn_close_from(&actions, 3), "close descriptors for", path)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigdefault(&attributes, &all)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { env in env.sorted { $0.key < $1.key }.map { strdup("\($0.key)=\($0.value)") } + [nil] }
        defer {
            for p in argv { free(p) }
            for p in envp ?? [] { free(p) }
        }
        var pid = pid_t()
        let rc = envp.map { posix_spawn(&pid, path, &actions, &attributes, argv, $0) } ?? posix_spawn(&pid, path, &actions, &attributes, argv, environ)
        guard rc == 0 else { throw ChildProcessError("cannot start \(path): \(Self.text(rc))") }
        started = true
        self.pid = pid
        standardInput = parentEnds[0].map { FileHandle(fileDescriptor: $0, closeOnDealloc: true) }
        standardOutput = parentEnds[1].map { FileHandle(fileDescriptor: $0, closeOnDealloc: true) }
        standardError = parentEnds[2].map { FileHandle(fileDescriptor: $0, closeOnDealloc: true) }
    }

    /// Whether it has not exited yet (a stopped child runs).
    public var isRunning: Bool { reap() == nil }

    /// Sends `signal` unless it has exited (it is reaped first if it has); whether it was sent.
    @discardableResult
    public func signal(_ signal: Int32) -> Bool {
        ended.withLockedValue { ended in
            Self.reap(pid, &ended)
            return ended == nil && kill(pid, signal) == 0
        }
    }

    /// Blocks the calling thread until it exits.
    @discardableResult
    public func waitUntilExit() -> Termination {
        while true {
            if let done = reap() { return done }
            // Wait without reaping, then reap under the lock: a concurrent `isRunning` never
            // sees it reaped but not recorded.
            var info = siginfo_t()
            if waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) != 0 && errno != EINTR && errno != ECHILD {
                return ended.withLockedValue { $0 ?? .unknown }
            }
        }
    }

    /// Waits without blocking a thread, polling every 10 ms, up to `timeout`; nil if it still runs.
    public func waitForExit(within timeout: Duration) async -> Termination? {
        let end = ContinuousClock.now + timeout
        while ContinuousClock.now < end {
            if let done = reap() { return done }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return reap()
    }

    private func reap() -> Termination? {
        ended.withLockedValue { ended in
            Self.reap(pid, &ended)
            return ended
        }
    }

    /// Records how `pid` ended if it has (under the lock, so a status is never lost).
    private static func reap(_ pid: pid_t, _ ended: inout Termination?) {
        guard ended == nil else { return }
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        if r == pid {
            let signal = status & 0x7f
            ended = signal == 0 ? .exited((status >> 8) & 0xff) : .signalled(signal)
        } else if r == -1 && errno == ECHILD {
            ended = .unknown
        }
    }

    /// A child that has exited is reaped here at the latest (one still running is left alone).
    deinit { _ = reap() }

    /// Runs a program to its end, `input` written to its standard input, its standard output
    /// collected (standard error too, for the error it throws when the exit code is not 0).
    public static func output(_ path: String, _ arguments: [String], input: String? = nil) throws -> String {
        let child = try ChildProcess(path, arguments, stdin: input == nil ? .discard : .pipe, stdout: .pipe, stderr: .pipe)
        // Input and standard error each on a thread of their own: a child that fills one pipe
        // while this one waits on another would never end. A child that exits without reading
        // its input is no error here (SIGPIPE is ignored; the exit code tells).
        let done = DispatchGroup()
        if let input, let writer = child.standardInput {
            Foundation.signal(SIGPIPE, SIG_IGN)
            done.enter()
            Thread {
                var bytes = Array(input.utf8)[...]
                while !bytes.isEmpty {
                    let n = bytes.withUnsafeBytes { write(writer.fileDescriptor, $0.baseAddress, $0.count) }
                    if n < 0 && errno == EINTR { continue }
                    if n <= 0 { break }
                    bytes = bytes.dropFirst(n)
                }
                try? writer.close()
                done.leave()
            }.start()
        }
        let errors = NIOLockedValueBox(Data())
        done.enter()
        Thread {
            errors.withLockedValue { $0 = child.standardError?.readDataToEndOfFile() ?? Data() }
            done.leave()
        }.start()
        let out = child.standardOutput?.readDataToEndOfFile() ?? Data()
        done.wait()
        let end = child.waitUntilExit()
        guard end == .exited(0) else {
            let message = String(decoding: errors.withLockedValue { $0 }, as: UTF8.self)
            throw ChildProcessError("\(path) \(arguments.prefix(2).joined(separator: " ")) \(end): \(message)")
        }
        return String(decoding: out, as: UTF8.self)
    }

    private enum Plan {
        case inherit
        case open(String, Int32)
        case pipe
    }

    private static func describe(_ input: Input) -> Plan {
        switch input {
        case .inherit: .inherit
        case .discard: .open("/dev/null", O_RDONLY)
        case .pipe: .pipe
        }
    }

    private static func describe(_ output: Output) -> Plan {
        switch output {
        case .inherit: .inherit
        case .discard: .open("/dev/null", O_WRONLY)
        case .append(let file): .open(file, O_WRONLY | O_CREAT | O_APPEND)
        case .pipe: .pipe
        }
    }

    private static func check(_ rc: Int32, _ what: String, _ path: String) throws {
        guard rc == 0 else { throw ChildProcessError("cannot \(what) \(path): \(text(rc))") }
    }

    private static func text(_ code: Int32) -> String { String(cString: strerror(code)) }
}

public struct ChildProcessError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

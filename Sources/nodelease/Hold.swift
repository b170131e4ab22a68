import ArgumentParser
import CNodeLeaseShims
import Foundation
import NodeLeaseClient

#if canImport(Glibc)
    import Glibc
#endif

/// When `hold` stops its command, counted back from the holder-side deadline (the instant the
/// last successful renew was sent plus the TTL, which is never later than the leader's expiry).
/// The command gets SIGTERM `grace + margin` before the deadline and SIGKILL `margin` before it,
/// so it is gone before the deadline even if it ignores SIGTERM. A grace of at most a third of
/// the TTL leaves the renewals (sent a third of the TTL after the last one) time to succeed.
struct HoldTiming: Equatable {
    var ttl: Duration
    var grace: Duration

    /// - Parameter graceSeconds: nil for the default, 10 s or a third of the TTL if less.
    init(ttlSeconds: Int, graceSeconds: Double?) throws(ValidationError) {
        guard ttlSeconds >= 1 else { throw ValidationError("--ttl must be at least 1 second") }
        ttl = .seconds(ttlSeconds)
        let most = Double(ttlSeconds) / 3
        let g = graceSeconds ?? min(10, most)
        guard g >= 0, g <= most else {
            throw ValidationError(
                "--grace must be between 0 and a third of --ttl (\(String(format: "%.2f", most)) s), so that the command is stopped before the lease's deadline")
        }
        grace = .milliseconds(Int64(g * 1000))
    }

    /// Kept between the command's SIGKILL and the deadline: a second, or a tenth of the TTL.
    var margin: Duration { min(.seconds(1), ttl / 10) }

    func terminateAt(_ deadline: ContinuousClock.Instant) -> ContinuousClock.Instant { deadline - grace - margin }
    func killAt(_ deadline: ContinuousClock.Instant) -> ContinuousClock.Instant { deadline - margin }
}

struct Hold: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Hold this node's ID while a command runs.",
        discussion: """
            Acquires the lease, runs CMD with NODELEASE_NODE_ID, NODELEASE_FENCING_TOKEN and
            NODELEASE_HOSTNAME set, and renews at a third of the TTL while it runs. If no renewal
            succeeds in time, CMD gets SIGTERM --grace plus a margin (1 s, or a tenth of the TTL)
            before the lease's holder-side deadline and SIGKILL the margin before it, so it is
            gone before any other node can be given its ID; hold then exits with 75. SIGTERM,
            SIGINT and SIGHUP sent to hold go to CMD's process group (CMD runs in a group of its
            own, so it should not read from the terminal). When CMD exits, the lease is released
            and hold exits with CMD's status (128+N if signal N ended it). On Linux CMD dies with
            hold: killing hold, even with SIGKILL, kills CMD (CMD itself: a wrapper script should
            `exec` the server).
            """)
    @Option(help: "TTL in seconds.") var ttl: Int = 30
    @Option(help: "Seconds between SIGTERM and SIGKILL when the lease is lost: at most a third of the TTL (default 10, or a third of the TTL if less).")
    var grace: Double?
    @Option(help: "Hostname (default: STALWART_HOSTNAME, else this machine's hostname).") var hostname: String?
    @Option(help: "Holder id (default: derived from /etc/machine-id).") var holder: String?
    @OptionGroup var client: ClientOptions
    @Argument(parsing: .postTerminator, help: "The command to run.") var command: [String]

    func validate() throws {
        if command.isEmpty { throw ValidationError("give the command after --: nodelease hold -- CMD ARGS...") }
        _ = try HoldTiming(ttlSeconds: ttl, graceSeconds: grace)
    }

    func run() async throws {
        // Before the client opens anything: what hold was given to pass on.
        let inherited = InheritedDescriptors.scan()
        let timing = try HoldTiming(ttlSeconds: ttl, graceSeconds: grace)
        let host = hostname ?? NodeIdentity.hostname()
        let keeper = LeaseKeeper(client: try client.client(), hostname: host, holder: try holder ?? NodeIdentity.holder(), ttlSeconds: ttl)
        let supervisor = HoldSupervisor(keeper: keeper, timing: timing)
        let forwarding = SignalForwarding([SIGTERM, SIGINT, SIGHUP]) { sig in Task { await supervisor.received(sig) } }
        defer { forwarding.cancel() }
        await keeper.start()
        for await event in keeper.events {
            switch event {
            case .acquired(let nodeId, let token):
                var env = ProcessInfo.processInfo.environment
                env["NODELEASE_NODE_ID"] = String(nodeId)
                env["NODELEASE_FENCING_TOKEN"] = String(token)
                env["NODELEASE_HOSTNAME"] = host
                let pid = try await supervisor.start(command, environment: env, keeping: inherited)
                if let pid {
                    holdSays("node \(nodeId) for \(host); running \(command.joined(separator: " ")) (pid \(pid))")
                }
            case .lost(let reason):
                await supervisor.lost(reason)
            case .waiting(let other, let s):
                holdSays("\(host) is held by \(other) (\(s)s left); waiting")
            case .renewed:
                break
            }
        }
        throw ExitCode(await supervisor.exitCode)
    }
}

private func holdSays(_ line: String) {
    FileHandle.standardError.write(Data("nodelease hold: \(line)\n".utf8))
}

/// Runs `hold`'s command and decides when it must stop. One actor, so the watchdog, the
/// keeper's events and forwarded signals see one state.
actor HoldSupervisor {
    let keeper: LeaseKeeper
    let timing: HoldTiming
    private var child: HeldCommand?
    private var deadline: ContinuousClock.Instant?
    private var stoppingForLoss = false
    private var signalBeforeStart: Int32?
    private(set) var exitCode: Int32 = 0

    init(keeper: LeaseKeeper, timing: HoldTiming) {
        self.keeper = keeper
        self.timing = timing
    }

    /// Starts the command once (a later `acquired` after a loss does not start it again);
    /// returns its pid.
    func start(_ command: [String], environment: [String: String], keeping inherited: [Int32]) async throws -> pid_t? {
        guard child == nil, !stoppingForLoss, signalBeforeStart == nil else { return nil }
        let valid = await keeper.validUntil
        // Checked again after the wait: a signal may have arrived meanwhile, and a lease
        // already too close to its deadline is not worth starting the command for.
        guard child == nil, !stoppingForLoss, signalBeforeStart == nil, let valid, ContinuousClock.now < timing.terminateAt(valid) else {
            return nil
        }
        deadline = valid
        let c: HeldCommand
        do {
            c = try HeldCommand.spawn(command, environment: environment, keeping: inherited)
        } catch {
            holdSays("\(error)")
            exitCode = 127
            await keeper.stop()
            return nil
        }
        child = c
        Task { await self.watch() }
        Task.detached { [keeper] in
            let code = await c.exitCode()
            await self.commandExited(code)
            // Releases the lease (if still held) and ends the keeper's events.
            await keeper.stop()
        }
        return c.pid
    }

    private func commandExited(_ code: Int32) {
        if stoppingForLoss {
            exitCode = 75
        } else {
            exitCode = code
            holdSays("\(child.map { String($0.pid) } ?? "command") exited with \(code); releasing the lease")
        }
    }

    /// Stops the command before the holder-side deadline unless a renewal moves it.
    private func watch() async {
        while let c = child, c.isRunning, !stoppingForLoss {
            if let d = await keeper.validUntil { deadline = d }
            if let d = deadline, ContinuousClock.now >= timing.terminateAt(d) {
                await stop(c, killAt: timing.killAt(d), reason: "no renewal succeeded in time")
                return
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    /// The keeper reports the lease lost (a 404: the lease is gone, or its own deadline): the
    /// command must stop at once, SIGKILL after the margin.
    func lost(_ reason: String) async {
        guard let c = child, c.isRunning else { return }
        await stop(c, killAt: ContinuousClock.now + timing.margin, reason: reason)
    }

    private func stop(_ c: HeldCommand, killAt: ContinuousClock.Instant, reason: String) async {
        guard !stoppingForLoss else { return }
        stoppingForLoss = true
        holdSays("lease lost (\(reason)); stopping the command")
        c.signal(SIGTERM)
        while c.isRunning && ContinuousClock.now < killAt { try? await Task.sleep(for: .milliseconds(10)) }
        if c.isRunning {
            holdSays("the command did not stop in time: SIGKILL")
            c.signal(SIGKILL)
        }
    }

    /// SIGTERM, SIGINT or SIGHUP sent to hold: the command's to handle; before it started,
    /// hold gives the lease back and exits.
    func received(_ sig: Int32) async {
        if let c = child {
            c.signal(sig)
            return
        }
        guard signalBeforeStart == nil else { return }
        signalBeforeStart = sig
        exitCode = 128 + sig
        await keeper.stop()
    }
}

/// Signals to hold are caught and handed to `handler` (on a dispatch queue) instead of
/// ending the process.
final class SignalForwarding: @unchecked Sendable {
    /// Set once in init.
    private let sources: [any DispatchSourceSignal]

    init(_ signals: [Int32], handler: @escaping @Sendable (Int32) -> Void) {
        var sources: [any DispatchSourceSignal] = []
        for sig in signals {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { handler(sig) }
            source.resume()
            sources.append(source)
        }
        self.sources = sources
    }

    func cancel() { for s in sources { s.cancel() } }
}

/// The command, started through `nodelease hold-exec` (which makes it die with hold) from a
/// thread of its own that then waits for it: the parent-death signal follows the thread that
/// started the process, so that thread lives exactly as long as the command.
final class HeldCommand: Sendable {
    let pid: pid_t
    private let status: ExitBox

    private init(pid: pid_t, status: ExitBox) {
        self.pid = pid
        self.status = status
    }

    static func spawn(_ command: [String], environment: [String: String], keeping inherited: [Int32]) throws -> HeldCommand {
        let exe = FileManager.default.fileExists(atPath: "/proc/self/exe") ? "/proc/self/exe" : CommandLine.arguments[0]
        let keep = inherited.isEmpty ? [] : ["--keep-fds", inherited.map(String.init).joined(separator: ",")]
        let args = ["nodelease", "hold-exec", "--parent", String(getpid())] + keep + ["--"] + command
        let env = environment.keys.sorted().map { "\($0)=\(environment[$0]!)" }
        let box = ExitBox()
        let started = DispatchSemaphore(value: 0)
        let result = SpawnResult()
        let thread = Thread {
            var pid: pid_t = 0
            var attr = posix_spawnattr_t()
            posix_spawnattr_init(&attr)
            // A process group of its own, so that hold's signals reach everything the command
            // starts, and a terminal's Ctrl-C reaches it once (through hold).
            posix_spawnattr_setpgroup(&attr, 0)
            // hold ignores the signals it forwards; the command gets them as usual.
            var defaults = sigset_t()
            sigemptyset(&defaults)
            for s in [SIGTERM, SIGINT, SIGHUP, SIGPIPE] { sigaddset(&defaults, s) }
            posix_spawnattr_setsigdefault(&attr, &defaults)
            var empty = sigset_t()
            sigemptyset(&empty)
            posix_spawnattr_setsigmask(&attr, &empty)
            posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP))
            var argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
            var envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup($0) } + [nil]
            let rc = posix_spawn(&pid, exe, nil, &attr, &argv, &envp)
            posix_spawnattr_destroy(&attr)
            for p in argv + envp { free(p) }
            result.set(pid: rc == 0 ? pid : nil, error: rc)
            started.signal()
            guard rc == 0 else { return }
            var raw: Int32 = 0
            while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
            // WIFEXITED / WEXITSTATUS / WTERMSIG, spelled out (they are macros).
            let code: Int32 = (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
            box.exited(code)
        }
        thread.start()
        started.wait()
        guard let pid = result.pid else {
            throw HoldError(message: "cannot start \(command[0]): \(String(cString: strerror(result.error)))")
        }
        return HeldCommand(pid: pid, status: box)
    }

    var isRunning: Bool { !status.done }

    /// Signals the command's process group (the command and what it started).
    func signal(_ sig: Int32) {
        if isRunning { kill(-pid, sig) }
    }

    /// The command's exit status, or 128+N if signal N ended it.
    func exitCode() async -> Int32 { await status.wait() }
}

struct HoldError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// The spawning thread's answer.
private final class SpawnResult: @unchecked Sendable {
    private let lock = NSLock()
    private var _pid: pid_t?
    private var _error: Int32 = 0
    func set(pid: pid_t?, error: Int32) { lock.withLock { (_pid, _error) = (pid, error) } }
    var pid: pid_t? { lock.withLock { _pid } }
    var error: Int32 { lock.withLock { _error } }
}

/// The command's exit, set once by its waiting thread.
private final class ExitBox: @unchecked Sendable {
    private let lock = NSLock()
    private var code: Int32?
    private var waiters: [CheckedContinuation<Int32, Never>] = []

    var done: Bool { lock.withLock { code != nil } }

    func exited(_ c: Int32) {
        let w = lock.withLock {
            code = c
            defer { waiters = [] }
            return waiters
        }
        for x in w { x.resume(returning: c) }
    }

    func wait() async -> Int32 {
        await withCheckedContinuation { k in
            let now: Int32? = lock.withLock {
                if let code { return code }
                waiters.append(k)
                return nil
            }
            if let now { k.resume(returning: now) }
        }
    }
}

/// The descriptors above standard error that hold was started with and that survive an exec
/// (a socket a service manager passes, a lock file): the command gets these, and none of the
/// ones hold opened itself (its connections to the cluster, its event loops' epoll and eventfd).
/// Only the first 1,024 are looked at.
enum InheritedDescriptors {
    static func scan() -> [Int32] {
        (3..<Int32(1024)).filter { fd in
            let flags = fcntl(fd, F_GETFD)
            return flags >= 0 && flags & FD_CLOEXEC == 0
        }
    }

    /// In the command's process, before the exec: every descriptor above standard error but
    /// `keep` is marked close-on-exec, so the exec closes them (closing them here could pull a
    /// descriptor from under this process's runtime before the exec).
    static func closeOnExec(allBut keep: Set<Int32>) {
        nodelease_cloexec_from(3)
        for fd in keep.sorted() {
            let flags = fcntl(fd, F_GETFD)
            if flags >= 0 { _ = fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC) }
        }
    }
}

/// `nodelease hold`'s command starts as this: it asks to be killed when hold dies (Linux's
/// parent-death signal), makes sure hold did not die before that, lets go of the descriptors
/// hold opened, then becomes the command.
struct HoldExec: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hold-exec", abstract: "Internal to hold: run a command that dies with its parent.", shouldDisplay: false)
    @Option(help: "The pid of the hold that started this.") var parent: Int32
    @Option(help: "Descriptors to pass on (hold was started with them).") var keepFds: String?
    @Argument(parsing: .postTerminator) var command: [String]

    func run() throws {
        guard !command.isEmpty else { throw ExitCode(127) }
        InheritedDescriptors.closeOnExec(allBut: Set((keepFds ?? "").split(separator: ",").compactMap { Int32($0) }))
        // Sockets a service manager passed to hold are the command's now (sd_listen_fds checks
        // LISTEN_PID; the exec keeps this process's pid).
        // LISTEN_PIDFDID (newer systemd) names hold's pidfd, which this process cannot claim:
        // without it sd_listen_fds checks LISTEN_PID alone.
        if ProcessInfo.processInfo.environment["LISTEN_PID"] == String(parent) {
            setenv("LISTEN_PID", String(getpid()), 1)
            unsetenv("LISTEN_PIDFDID")
        }
        guard nodelease_set_parent_death_signal(SIGKILL) == 0 else {
            FileHandle.standardError.write(Data("nodelease hold: cannot set the parent-death signal: \(String(cString: strerror(errno)))\n".utf8))
            throw ExitCode(126)
        }
        // hold may have died between starting this and the line above.
        guard getppid() == parent else { throw ExitCode(126) }
        var argv: [UnsafeMutablePointer<CChar>?] = command.map { strdup($0) } + [nil]
        execvp(command[0], &argv)
        FileHandle.standardError.write(Data("nodelease hold: cannot run \(command[0]): \(String(cString: strerror(errno)))\n".utf8))
        throw ExitCode(127)
    }
}

import Foundation
import Logging

/// Who this node is: its hostname and a stable holder id for this installation.
public enum NodeIdentity {
    /// `STALWART_HOSTNAME` when set and non-empty, else the OS hostname; lower-cased.
    public static func hostname(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let h = environment["STALWART_HOSTNAME"]?.trimmingCharacters(in: .whitespaces), !h.isEmpty {
            return h.lowercased()
        }
        return ProcessInfo.processInfo.hostName.lowercased()
    }

    /// A stable id of this installation: derived from `/etc/machine-id` when readable (hashed,
    /// so the machine id itself is not published), else a random id kept in `stateDirectory`.
    public static func holder(machineIDPath: String = "/etc/machine-id", stateDirectory: String? = nil) throws -> String {
        if let raw = try? String(contentsOfFile: machineIDPath, encoding: .utf8) {
            let id = raw.trimmingCharacters(in: .whitespacesAndNewlines)
            if !id.isEmpty { return "mid-" + hex(fnv1a(Array(("nodelease:" + id).utf8))) }
        }
        let dir = stateDirectory ?? (NSHomeDirectory() + "/.nodelease")
        let file = dir + "/holder-id"
        if let saved = try? String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines),
            !saved.isEmpty
        {
            return saved
        }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let fresh = "rnd-" + hex(UInt64.random(in: 0...UInt64.max))
        try fresh.write(toFile: file, atomically: true, encoding: .utf8)
        return fresh
    }

    static func fnv1a(_ bytes: [UInt8]) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes {
            h ^= UInt64(b)
            h = h &* 0x0000_0100_0000_01B3
        }
        return h
    }

    static func hex(_ v: UInt64) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}

/// Holds a node ID for as long as it runs: acquires (waiting while another holder has the
/// hostname), renews at a third of the TTL, and keeps the holder-side deadline — the instant
/// it *sent* its last successful renew (or acquire) plus the TTL, by the monotonic clock. When
/// that deadline passes without a successful renew it reports `lost` (before the leader can
/// have expired the lease) and starts acquiring again. `stop()` releases the lease.
public actor LeaseKeeper {
    public enum Event: Sendable, Equatable {
        case acquired(nodeId: UInt32, fencingToken: UInt64)
        case renewed(nodeId: UInt32)
        /// The node must stop using its node ID now.
        case lost(reason: String)
        /// Another installation holds the hostname; the keeper keeps trying.
        case waiting(holder: String, expiresInSeconds: UInt64)
    }

    public let client: NodeLeaseClient
    public let hostname: String
    public let holder: String
    public let ttlSeconds: Int
    private let logger: Logger
    public nonisolated let events: AsyncStream<Event>
    private let continuation: AsyncStream<Event>.Continuation
    private var lease: Lease?
    private var deadline: ContinuousClock.Instant?
    private var lastSent: ContinuousClock.Instant?
    private var loop: Task<Void, Never>?
    /// Set by `stop()`. The loop is never cancelled: cancelling an HTTP request in flight
    /// crashes FoundationNetworking's URLSession on Linux; the loop sees this flag instead.
    private var stopping = false
    private var watchdog: Task<Void, Never>?
    private var generation = 0

    public init(client: NodeLeaseClient, hostname: String, holder: String, ttlSeconds: Int = 30, logger: Logger = Logger(label: "nodelease.keeper")) {
        self.client = client
        self.hostname = hostname
        self.holder = holder
        self.ttlSeconds = ttlSeconds
        self.logger = logger
        (events, continuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(64))
    }

    /// The lease, while the holder-side deadline has not passed.
    public var currentLease: Lease? {
        guard let lease, let deadline, ContinuousClock.now < deadline else { return nil }
        return lease
    }

    /// Until when this node may use its node ID (monotonic clock).
    public var validUntil: ContinuousClock.Instant? { currentLease == nil ? nil : deadline }

    public func start() {
        guard loop == nil else { return }
        loop = Task { await self.run() }
    }

    /// Stops renewing and releases the lease (best effort, within the client's timeout and
    /// never past the lease's deadline: a release after it would be pointless).
    public func stop() async {
        stopping = true
        loop = nil
        watchdog?.cancel()
        watchdog = nil
        generation += 1
        if let l = lease, let d = deadline, ContinuousClock.now < d {
            lease = nil
            deadline = nil
            _ = try? await client.release(leaseId: l.leaseId, timeout: min(client.timeout, d - ContinuousClock.now))
        }
        continuation.finish()
    }

    private var ttl: Duration { .seconds(ttlSeconds) }

    private func run() async {
        var backoff = Duration.milliseconds(100)
        while !stopping {
            if lease == nil {
                let sent = ContinuousClock.now
                do {
                    let l = try await client.acquire(hostname: hostname, holder: holder, ttlSeconds: ttlSeconds, timeout: ttl)
                    if stopping {
                        // Acquired while stopping: give it back.
                        _ = try? await client.release(leaseId: l.leaseId)
                        break
                    }
                    held(l, sent: sent)
                    continuation.yield(.acquired(nodeId: l.nodeId, fencingToken: l.fencingToken))
                    logger.info("holding node ID \(l.nodeId) for \(hostname) (fencing token \(l.fencingToken))")
                    backoff = .milliseconds(100)
                } catch .hostnameInUse(_, let other, let seconds) {
                    logger.warning("hostname \(hostname) is held by another installation (\(other)) for \(seconds) s more; waiting")
                    continuation.yield(.waiting(holder: other, expiresInSeconds: seconds))
                    try? await Task.sleep(for: .milliseconds(min(max(seconds, 1), UInt64(max(1, ttlSeconds / 3))) * 1000 / 2 + 200))
                } catch {
                    logger.warning("cannot acquire a node ID for \(hostname): \(error)")
                    try? await Task.sleep(for: backoff)
                    backoff = min(backoff * 2, .seconds(5))
                }
                continue
            }
            // Renew a third of the TTL after the last successful send.
            guard let sentBefore = lastSent else { continue }
            let next = sentBefore + ttl / 3
            if ContinuousClock.now < next { try? await Task.sleep(until: next) }
            if stopping { break }
            if expireIfDue() { continue }
            let sent = ContinuousClock.now
            let current = lease!
            do {
                let l = try await client.renew(leaseId: current.leaseId, timeout: deadline! - sent)
                // The watchdog may have declared the lease lost meanwhile: then this answer
                // came too late to count, and the keeper acquires afresh.
                guard lease?.leaseId == current.leaseId, !stopping else { continue }
                held(l, sent: sent)
                continuation.yield(.renewed(nodeId: l.nodeId))
            } catch .leaseNotFound {
                if lease != nil { lose("the lease is gone (expired or superseded)") }
            } catch {
                if lease != nil && !expireIfDue() {
                    // Try again soon; the deadline still protects us.
                    try? await Task.sleep(for: min(.milliseconds(500), ttl / 10))
                    lastSent = ContinuousClock.now - ttl / 3
                }
            }
        }
    }

    private func held(_ l: Lease, sent: ContinuousClock.Instant) {
        lease = l
        lastSent = sent
        let d = sent + .seconds(Int(l.ttlSeconds))
        deadline = d
        // A watchdog reports the loss at the deadline itself, even while a renew is in flight.
        generation += 1
        let g = generation
        watchdog?.cancel()
        watchdog = Task {
            try? await Task.sleep(until: d)
            guard !Task.isCancelled else { return }
            self.watchdogFired(g)
        }
    }

    private func watchdogFired(_ g: Int) {
        guard g == generation, lease != nil else { return }
        _ = expireIfDue()
    }

    /// Reports `lost` if the holder-side deadline has passed.
    private func expireIfDue() -> Bool {
        guard let d = deadline, ContinuousClock.now >= d else { return false }
        lose("no successful renewal before the lease's deadline")
        return true
    }

    private func lose(_ reason: String) {
        generation += 1
        watchdog?.cancel()
        watchdog = nil
        logger.error("lost node ID \(lease.map { String($0.nodeId) } ?? "?") for \(hostname): \(reason); stop using it")
        lease = nil
        deadline = nil
        continuation.yield(.lost(reason: reason))
    }
}

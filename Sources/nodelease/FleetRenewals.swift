import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import Raft

/// The renewal phase of one fleet connection, once it has registered its share: run wholly on
/// the connection's event loop. Each renewal is written when it is due (one loop timer while
/// nothing is due, none while the connection is behind) and its answer is handled by a
/// callback on the same loop; latencies are kept here and handed to the shared stats in
/// batches. The async loop it replaced resumed a task twice per renewal (after the wait and
/// after the answer), each a hand-off between the event loop and a worker thread, and took a
/// lock per recorded latency: on this machine the generator shares the replicas' two cores.
final class FleetRenewals {
    /// How the phase ended: the schedule as it stands (to go on with on a new connection),
    /// and whether the connection failed (its renewal in flight is counted as an error by the
    /// caller, which reconnects).
    struct End: Sendable {
        var due: MinHeap<FleetDue>
        var failed: Bool
    }

    /// Shared across connections (each a lock taken once per batch).
    struct Shared: Sendable {
        var fromSchedule: BenchStats
        var service: BenchStats
        var expired: NIOLockedValueBox<Set<Int>>
        /// (measuring from, until), once every connection has registered.
        var window: NIOLockedValueBox<(start: ContinuousClock.Instant, end: ContinuousClock.Instant)?>
    }

    private let channel: any Channel
    private let loop: NIOIsolatedEventLoop
    private let shared: Shared
    private let etcd: Bool
    private let periodNanos: Int64
    /// Per node of this connection: the request head and body of its renewal, and its number
    /// in the fleet.
    private let heads: [HTTPRequestHead]
    private let bodies: [ByteBuffer?]
    private let fleetNumbers: [Int]
    private var due: MinHeap<FleetDue>
    private var window: (start: ContinuousClock.Instant, end: ContinuousClock.Instant)?
    private let done: EventLoopPromise<End>
    private var fromSchedule: [UInt64] = []
    private var service: [UInt64] = []
    private var expired: [Int] = []
    private var errors: [String: Int] = [:]

    private init(
        channel: any Channel, shared: Shared, etcd: Bool, period: Double, heads: [HTTPRequestHead], bodies: [ByteBuffer?],
        fleetNumbers: [Int], due: MinHeap<FleetDue>, done: EventLoopPromise<End>
    ) {
        self.channel = channel
        self.loop = channel.eventLoop.assumeIsolated()
        self.shared = shared
        self.etcd = etcd
        self.periodNanos = Int64(period * 1e9)
        self.heads = heads
        self.bodies = bodies
        self.fleetNumbers = fleetNumbers
        self.due = due
        self.done = done
    }

    /// Renews `ids` (the connection's nodes, fleet numbers `fleetNumbers`) on `session`'s
    /// connection as `due` schedules them, until the next one due is past the measured window.
    static func run(
        _ session: HTTP1.Session, ids: [String], fleetNumbers: [Int], due: MinHeap<FleetDue>, period: Double, etcd: Bool, shared: Shared
    ) async throws -> End {
        var heads: [HTTPRequestHead] = []
        var bodies: [ByteBuffer?] = []
        heads.reserveCapacity(ids.count)
        bodies.reserveCapacity(ids.count)
        for id in ids {
            let (uri, body) = renewal(of: id, etcd: etcd)
            heads.append(session.head(.POST, uri, bodyLength: body?.count))
            bodies.append(body.map { ByteBuffer(bytes: $0) })
        }
        let channel = session.channel
        let done = channel.eventLoop.makePromise(of: End.self)
        channel.eventLoop.execute { [heads, bodies] in
            let phase = FleetRenewals(
                channel: channel, shared: shared, etcd: etcd, period: period, heads: heads, bodies: bodies, fleetNumbers: fleetNumbers,
                due: due, done: done)
            phase.step()
        }
        return try await done.futureResult.get()
    }

    /// The request that renews lease `id`: our renew route, or etcd's keepalive.
    static func renewal(of id: String, etcd: Bool) -> (uri: String, body: Data?) {
        etcd ? ("/v3/lease/keepalive", Data("{\"ID\":\"\(id)\"}".utf8)) : ("/v1/leases/\(id)/renew", nil)
    }

    /// What a renewal's answer says.
    enum Outcome {
        case renewed
        /// 404 from us; 200 with no TTL left from etcd.
        case expired
        case failed(String)
    }

    static func outcome(_ r: HTTP1.Response, etcd: Bool) -> Outcome {
        if r.status == 200 && !(etcd && Bench.etcdKeepaliveExpired(r.body)) { return .renewed }
        if r.status == 404 || r.status == 200 { return .expired }
        return .failed("renew: http \(r.status)")
    }

    /// Sends the renewal due next, or waits for it, or ends the phase.
    private func step() {
        guard let top = due.min else { return finish(failed: false) }
        if window == nil { window = shared.window.withLockedValue { $0 } }
        if let window, top.at >= window.end { return finish(failed: false) }
        let now = ContinuousClock.now
        if now < top.at {
            let (s, a) = (top.at - now).components
            let wait = Int64(s) * 1_000_000_000 + a / 1_000_000_000
            // On a 1 ms grid shared by every connection, so the loop wakes once for all those
            // due in the same millisecond (a renewal is at most 1 ms late, and its latency is
            // counted from its schedule).
            let at = NIODeadline.now().uptimeNanoseconds + UInt64(wait)
            let grid: UInt64 = 1_000_000
            loop.scheduleTask(deadline: .uptimeNanoseconds((at + grid - 1) / grid * grid)) { self.step() }
            return
        }
        due.removeMin()
        due.insert(FleetDue(at: top.at + .nanoseconds(periodNanos), k: top.k))
        let answer = channel.eventLoop.makePromise(of: HTTP1.Response.self)
        channel.writeAndFlush(HTTP1.Exchange(head: heads[top.k], body: bodies[top.k], answer: answer)).whenFailure { answer.fail($0) }
        answer.futureResult.assumeIsolated().whenComplete { result in
            switch result {
            case .success(let r):
                self.answered(r, top, sent: now)
                self.step()
            case .failure:
                self.finish(failed: true)
            }
        }
    }

    private func answered(_ r: HTTP1.Response, _ top: FleetDue, sent: ContinuousClock.Instant) {
        let answeredAt = ContinuousClock.now
        switch Self.outcome(r, etcd: etcd) {
        case .renewed:
            if window.map({ top.at >= $0.start }) ?? false {
                fromSchedule.append(BenchStats.micros(answeredAt - top.at))
                service.append(BenchStats.micros(answeredAt - sent))
            }
        case .expired:
            expired.append(fleetNumbers[top.k])
            errors["lease expired", default: 0] += 1
        case .failed(let kind):
            errors[kind, default: 0] += 1
        }
        if fromSchedule.count >= 512 { flush() }
    }

    private func flush() {
        shared.fromSchedule.record(micros: fromSchedule, kind: "renew")
        shared.service.record(micros: service, kind: "renew")
        for (kind, count) in errors { shared.fromSchedule.error(kind, count: count) }
        if !expired.isEmpty { shared.expired.withLockedValue { $0.formUnion(expired) } }
        fromSchedule.removeAll(keepingCapacity: true)
        service.removeAll(keepingCapacity: true)
        expired.removeAll()
        errors.removeAll()
    }

    private func finish(failed: Bool) {
        flush()
        done.succeed(End(due: due, failed: failed))
    }
}

import Foundation
import HTTPTypes
import Hummingbird
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTPTypes

/// Serves the hot routes (acquire, renew, release, the registry) from the connection's event
/// loop: the request is gathered here and answered by `HTTPAPI.respond`, the same function
/// Hummingbird calls for every other route, so the API cannot differ between the two paths.
/// What this saves is Hummingbird's per-connection task: each request part handed from the
/// event loop to that task and each response part handed back (`perf` gave those hand-offs
/// and the async response writer about a sixth of the leader's samples in a renew run).
///
/// It sits after the deadline handler and before Hummingbird's, and keeps HTTP/1's order: one
/// exchange at a time. An exchange ends when its request has ended and its response has been
/// written, whichever path answered it. A pipelining client's next requests wait here; reads
/// go on while few parts wait (so a client that goes away during a long poll is still seen)
/// and are held beyond that, and while the connection's output is full (a client that does
/// not read its answers is not sent more). What Hummingbird would have seen in order behind an
/// exchange answered here or behind waiting requests (a parse error, the client's end of
/// input) waits until they are over; one that cuts a request here short ends it. When the
/// replica stops, the exchange in progress is finished and nothing more is started, as
/// Hummingbird's state handler does. `Connection: close` ends the connection after its
/// answer, whichever path gave it, as Hummingbird does.
final class LeaseFastPathHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    /// Parts waiting beyond which reads are held.
    static let readAheadParts = 64
    /// What may wait at most (NIO reads on to the end of input after a client closes its
    /// side, held reads or not, and a body's pieces wait as one part): beyond either, nothing
    /// more is taken, and the connection is closed once the exchange in progress is answered.
    static let maxQueuedParts = 16_384
    static let maxQueuedBytes = 4 << 20

    private struct Exchange {
        /// Answered here, or passed on to Hummingbird.
        var fast: Bool
        var head: HTTPRequest
        var requestEnded = false
        var responseEnded = false
        /// For a fast one: the body so far (at most `maxBody` + 1 bytes: one more is enough
        /// for `respond` to answer 413).
        var body: ByteBuffer
        var dispatched = false
        /// Hummingbird ends a connection after a request with exactly this header.
        var closes: Bool { head.headerFields.value(.connection) == "close" }
    }

    /// Inbound events held while an exchange answered here is in progress.
    private enum Held {
        case error(any Error)
        case inputClosed
        case quiesce
    }

    private let api: HTTPAPI
    private var current: Exchange?
    private var queued = CircularBuffer<HTTPRequestPart>()
    private var held: [Held] = []
    private var queuedBytes = 0
    private var readHeld = false
    /// False once the connection ended (closed, or `Connection: close` answered): nothing
    /// more is read or answered.
    private var open = true
    /// The replica is stopping, or too much waits: the exchange in progress is finished,
    /// nothing more is started.
    private var winding = false
    /// Too much waited: the connection is closed once the exchange in progress is answered.
    private var closeWhenDone = false

    init(api: HTTPAPI) { self.api = api }

    /// The routes answered here: the lease writes and the registry (with its long polls).
    static func isFast(_ head: HTTPRequest) -> Bool {
        guard let path = head.path else { return false }
        // As `HTTPAPI.template` reads the path (the query cut off, empty segments skipped),
        // without the arrays: `perf` gave the split 2 % of the leader in a renew run.
        var parts = FirstSegments()
        var start: String.Index?
        var i = path.startIndex
        while i < path.endIndex, parts.count <= 4 {
            let c = path.utf8[i]
            if c == UInt8(ascii: "?") { break }
            if c == UInt8(ascii: "/") {
                if let s = start { parts.add(path[s..<i]) }
                start = nil
            } else if start == nil {
                start = i
            }
            i = path.utf8.index(after: i)
        }
        if let s = start, parts.count <= 4 { parts.add(path[s..<i]) }
        guard parts.count >= 2, parts.count <= 4, parts.first == "v1" else { return false }
        switch (head.method, parts.count) {
        case (.post, 2): return parts.second == "leases"
        case (.post, 4): return parts.second == "leases" && parts.fourth == "renew"
        case (.delete, 3): return parts.second == "leases"
        case (.get, 3), (.get, 4): return parts.second == "cluster" && parts.third == "nodes"
        default: return false
        }
    }

    /// A path's first four segments, and how many it has (counted up to five).
    private struct FirstSegments {
        var count = 0
        var first: Substring = ""
        var second: Substring = ""
        var third: Substring = ""
        var fourth: Substring = ""

        mutating func add(_ s: Substring) {
            switch count {
            case 0: first = s
            case 1: second = s
            case 2: third = s
            case 3: fourth = s
            default: break
            }
            count += 1
        }
    }

    /// Whether what arrives now must wait: an exchange answered here is in progress, or
    /// requests already wait.
    private var mustHold: Bool { current?.fast == true || !queued.isEmpty }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard open else { return }
        let part = unwrapInboundIn(data)
        if current?.requestEnded == true || !queued.isEmpty {
            // The next request, behind the exchange in progress.
            guard !winding else { return }
            if case .body(var bytes) = part, case .body(var joined)? = queued.last {
                // Taken out first, so the buffer is not shared and grows in place.
                queued.removeLast()
                queuedBytes += bytes.readableBytes
                joined.writeBuffer(&bytes)
                queued.append(.body(joined))
            } else {
                if case .body(let bytes) = part { queuedBytes += bytes.readableBytes }
                queued.append(part)
            }
            if queued.count > Self.maxQueuedParts || queuedBytes > Self.maxQueuedBytes {
                // Those waiting are dropped unanswered, none of them started.
                dropQueued()
                winding = true
                closeWhenDone = true
            }
            return
        }
        take(part, context)
    }

    private func take(_ part: HTTPRequestPart, _ context: ChannelHandlerContext) {
        switch part {
        case .head(let head):
            // Stopping: no request is started (the connection is about to close).
            guard !winding else { return }
            if Self.isFast(head) {
                current = Exchange(fast: true, head: head, body: context.channel.allocator.buffer(capacity: 0))
                // Declared too large: answered at once, as Hummingbird's path does (the body
                // is then read and dropped).
                if let length = head.headerFields.value(.contentLength).flatMap({ Int($0) }), length > HTTPAPI.maxBody {
                    dispatch(context)
                }
            } else {
                current = Exchange(fast: false, head: head, body: context.channel.allocator.buffer(capacity: 0))
                context.fireChannelRead(wrapInboundOut(part))
            }
        case .body(var bytes):
            guard let fast = current?.fast else { return }
            if !fast {
                context.fireChannelRead(wrapInboundOut(part))
                return
            }
            guard !current!.dispatched else { return }
            // In place: the body is not copied for every part.
            let room = HTTPAPI.maxBody + 1 - current!.body.readableBytes
            if let piece = bytes.readSlice(length: min(room, bytes.readableBytes)) {
                current!.body.writeImmutableBuffer(piece)
            }
            if current!.body.readableBytes > HTTPAPI.maxBody { dispatch(context) }
        case .end:
            guard current != nil else { return }
            current!.requestEnded = true
            if current!.fast {
                if !current!.dispatched { dispatch(context) }
            } else {
                context.fireChannelRead(wrapInboundOut(part))
            }
            finishIfDone(context)
        }
    }

    /// Hands the request to `HTTPAPI.respond` and writes its answer on this event loop.
    private func dispatch(_ context: ChannelHandlerContext) {
        guard let exchange = current else { return }
        current!.dispatched = true
        let request = Request(head: exchange.head, body: RequestBody(buffer: exchange.body))
        let api = self.api
        let channel = context.channel
        let loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        Task {
            let response = await api.respond(to: request, connection: channel)
            let sink = NIOLockedValueBox<ByteBuffer?>(nil)
            let body: ByteBuffer?
            do {
                try await response.body.write(CollectedBody(sink: sink))
                body = sink.withLockedValue { $0 } ?? channel.allocator.buffer(capacity: 0)
            } catch {
                body = nil
            }
            let head = { var h = response.head; h.headerFields[.date] = HTTPDate.now(); return h }()
            loop.execute {
                let (handler, context) = bound.value
                handler.answer(context, head, body)
            }
        }
    }

    /// `body` nil: writing the answer's body failed.
    private func answer(_ context: ChannelHandlerContext, _ head: HTTPResponse, _ body: ByteBuffer?) {
        guard open, let exchange = current, exchange.fast, !exchange.responseEnded else { return }
        guard let body else {
            // Nothing of the answer went out: the connection is no longer in step.
            open = false
            context.close(promise: nil)
            return
        }
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if body.readableBytes > 0 { context.write(wrapOutboundOut(.body(body)), promise: nil) }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        current!.responseEnded = true
        if exchange.closes {
            // As Hummingbird does: answered, then no more is read (even the rest of a body
            // answered early), and this side is closed.
            end()
            let gone = held.contains { if case .error = $0 { false } else { true } }
            context.close(mode: gone ? .all : .output, promise: nil)
            return
        }
        finishIfDone(context)
    }

    /// Hummingbird's answers pass through; the end of one ends its exchange.
    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        context.write(data, promise: promise)
        guard case .end = unwrapOutboundIn(data), let exchange = current, !exchange.fast else { return }
        current!.responseEnded = true
        if exchange.closes {
            // Hummingbird closes its side after this answer and reads no more.
            end()
            return
        }
        finishIfDone(context)
    }

    /// No more exchanges on this connection.
    private func end() {
        open = false
        current = nil
        dropQueued()
    }

    /// Forgets the requests waiting (none of them started).
    private func dropQueued() {
        queued.removeAll()
        queuedBytes = 0
    }

    private func finishIfDone(_ context: ChannelHandlerContext) {
        guard let exchange = current, exchange.requestEnded, exchange.responseEnded else { return }
        current = nil
        if closeWhenDone {
            // Hummingbird's answer may still be unflushed (its flush follows its last write).
            end()
            context.flush()
            context.close(promise: nil)
            return
        }
        if winding {
            // The replica is stopping: as Hummingbird's state handler does for a request in
            // progress, the connection ends after this answer (the pipelined ones are dropped).
            dropQueued()
        }
        var drained = false
        while current?.requestEnded != true, open, let next = queued.popFirst() {
            if case .body(let bytes) = next { queuedBytes -= bytes.readableBytes }
            take(next, context)
            drained = true
        }
        // Hummingbird's channel hands what it was given on at the end of a read.
        if drained { context.fireChannelReadComplete() }
        // A request just taken from the queue that a held event had cut short.
        if let exchange = current, exchange.fast, !exchange.requestEnded,
            let k = held.firstIndex(where: { if case .quiesce = $0 { false } else { true } })
        {
            let event = held.remove(at: k)
            holdOrPass(event, context) { fire(event, context) }
        }
        releaseHeld(context)
        releaseRead(context)
    }

    /// The held events, once nothing they must follow is left.
    private func releaseHeld(_ context: ChannelHandlerContext) {
        guard !mustHold && !held.isEmpty else { return }
        let events = held
        held = []
        for event in events { fire(event, context) }
    }

    private func fire(_ event: Held, _ context: ChannelHandlerContext) {
        switch event {
        case .error(let error): context.fireErrorCaught(error)
        case .inputClosed: context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        case .quiesce: context.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        }
    }

    // MARK: Reads and backpressure

    private func holdsReads(_ context: ChannelHandlerContext) -> Bool {
        !open || queued.count > Self.readAheadParts || queuedBytes > HTTPAPI.maxBody || !context.channel.isWritable
    }

    func read(context: ChannelHandlerContext) {
        if holdsReads(context) {
            readHeld = true
        } else {
            context.read()
        }
    }

    private func releaseRead(_ context: ChannelHandlerContext) {
        if readHeld && !holdsReads(context) {
            readHeld = false
            context.read()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        context.fireChannelWritabilityChanged()
        releaseRead(context)
    }

    // MARK: Events behind an exchange

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            // Nothing more is started. An exchange answered here is finished first (the state
            // handler would close the connection at once, thinking it idle); with one of
            // Hummingbird's in progress, its state handler closes after that answer.
            winding = true
            // (A fast exchange already answered, its body still coming in, is not waited for:
            // the state handler closes the connection, as for its own early answers.)
            if let exchange = current, exchange.fast, !exchange.responseEnded {
                held.append(.quiesce)
                return
            }
            dropQueued()
        } else if let e = event as? ChannelEvent, e == .inputClosed {
            holdOrPass(.inputClosed, context) { context.fireUserInboundEventTriggered(event) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// A parse error of a pipelined request must not be answered before the requests ahead.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        holdOrPass(.error(error), context) { context.fireErrorCaught(error) }
    }

    /// Passes `event` (a parse error, the end of input) on now, or holds it behind what must
    /// come first.
    private func holdOrPass(_ event: Held, _ context: ChannelHandlerContext, pass: () -> Void) {
        if let exchange = current, exchange.fast, !exchange.requestEnded {
            // It cuts short the request of an exchange answered here: that request will not end.
            if exchange.dispatched {
                // Answered early (a 413): its request counts as ended, the event waits for
                // the answer.
                current!.requestEnded = true
                held.append(event)
                finishIfDone(context)
            } else if winding {
                // Stopping: the connection ends here, unanswered.
                current = nil
                end()
                held.removeAll()
                context.close(promise: nil)
            } else {
                // Not handed on: dropped, and the event goes on as if it had never come.
                current = nil
                pass()
                releaseHeld(context)
            }
            return
        }
        if mustHold { held.append(event) } else { pass() }
    }

    func channelInactive(context: ChannelHandlerContext) {
        open = false
        dropQueued()
        held.removeAll()
        context.fireChannelInactive()
    }
}

/// A response body gathered into one buffer (the hot routes' answers are small JSON, the
/// registry's at most a few MiB, which Hummingbird's path also holds whole).
private struct CollectedBody: ResponseBodyWriter, Sendable {
    /// Nil until the first piece, which is kept as it is: the answers are one buffer, shared,
    /// not copied (a copy of the whole registry for each of a hundred watchers woken by one
    /// change was half the event loop's time, most of it in page faults).
    let sink: NIOLockedValueBox<ByteBuffer?>

    mutating func write(_ buffer: ByteBuffer) async throws {
        sink.withLockedValue {
            if $0 == nil { $0 = buffer } else { $0!.writeImmutableBuffer(buffer) }
        }
    }

    consuming func finish(_ trailingHeaders: HTTPFields?) async throws {}
}

/// The `Date` header (RFC 9110's IMF-fixdate), formatted once a second.
enum HTTPDate {
    private static let cache = NIOLockedValueBox<(second: Int, text: String)>((-1, ""))
    private static let days = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]
    private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    static func now() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let second = ts.tv_sec
        return cache.withLockedValue { c in
            if c.second != second {
                c = (second, format(second))
            }
            return c.text
        }
    }

    static func format(_ second: Int) -> String {
        var t = time_t(second)
        var parts = tm()
        gmtime_r(&t, &parts)
        func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
        let day = days[(second / 86_400 % 7 + 7) % 7]
        return "\(day), \(two(parts.tm_mday)) \(months[Int(parts.tm_mon)]) \(parts.tm_year + 1900) \(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) GMT"
    }
}

extension HTTPFields {
    /// The value of the field `name`, as the subscript gives it (several fields joined with
    /// ", "), without the subscript's joining when there is one field (`perf` gave it 2 % of
    /// the leader in a renew run: two lookups a request).
    func value(_ name: HTTPField.Name) -> String? {
        var found: String?
        for field in self where field.name == name {
            if found != nil { return self[name] }
            found = field.value
        }
        return found
    }
}

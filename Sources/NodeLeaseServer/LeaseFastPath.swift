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
/// exchange at a time; the next request's parts, if a client pipelines, wait here, and reads
/// are held while any wait (reads otherwise go on during an exchange, so a client that goes
/// away during a long poll is still seen). An exchange ends when its request has ended and its
/// response has been written, whichever path answered it.
final class LeaseFastPathHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    /// The parts a pipelining client may have waiting (what one read delivers, as reads are
    /// held while any wait); beyond it, the connection is closed.
    static let maxQueuedParts = 4096

    private struct Exchange {
        /// Answered here, or passed on to Hummingbird.
        var fast: Bool
        var requestEnded = false
        var responseEnded = false
        /// For a fast one: the request's head and the body so far (at most `maxBody` + 1 bytes:
        /// one more is enough for `respond` to answer 413).
        var head: HTTPRequest
        var body: ByteBuffer?
        var dispatched = false
    }

    private let api: HTTPAPI
    private var current: Exchange?
    private var queued = CircularBuffer<HTTPRequestPart>()
    private var readHeld = false
    private var quiesceHeld = false
    private var active = true

    init(api: HTTPAPI) { self.api = api }

    /// The routes answered here: the lease writes and the registry (with its long polls).
    static func isFast(_ head: HTTPRequest) -> Bool {
        guard let path = head.path else { return false }
        let route = path.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        let parts = route.split(separator: "/", omittingEmptySubsequences: true)
        switch HTTPAPI.template(parts) {
        case "/v1/leases", "/v1/leases/{leaseId}/renew": return head.method == .post
        case "/v1/leases/{leaseId}": return head.method == .delete
        case "/v1/cluster/nodes", "/v1/cluster/nodes/{nodeId}": return head.method == .get
        default: return false
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard active else { return }
        let part = unwrapInboundIn(data)
        if current?.requestEnded == true || !queued.isEmpty {
            // The next request, behind the exchange in progress.
            guard queued.count < Self.maxQueuedParts else {
                context.close(promise: nil)
                return
            }
            queued.append(part)
            return
        }
        take(part, context)
    }

    private func take(_ part: HTTPRequestPart, _ context: ChannelHandlerContext) {
        switch part {
        case .head(let head):
            if Self.isFast(head) {
                current = Exchange(fast: true, head: head, body: context.channel.allocator.buffer(capacity: 0))
                // Declared too large: answered at once, as Hummingbird's path does (the body
                // is then read and dropped).
                if let length = head.headerFields[.contentLength].flatMap({ Int($0) }), length > HTTPAPI.maxBody {
                    dispatch(context)
                }
            } else {
                current = Exchange(fast: false, head: head)
                context.fireChannelRead(wrapInboundOut(part))
            }
        case .body(var bytes):
            guard var exchange = current else { return }
            if !exchange.fast {
                context.fireChannelRead(wrapInboundOut(part))
                return
            }
            if !exchange.dispatched {
                let room = HTTPAPI.maxBody + 1 - (exchange.body?.readableBytes ?? 0)
                if let piece = bytes.readSlice(length: min(room, bytes.readableBytes)) {
                    exchange.body?.writeImmutableBuffer(piece)
                }
                current = exchange
                if (exchange.body?.readableBytes ?? 0) > HTTPAPI.maxBody { dispatch(context) }
            }
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
        guard var exchange = current else { return }
        exchange.dispatched = true
        current = exchange
        let request = Request(head: exchange.head, body: RequestBody(buffer: exchange.body ?? ByteBuffer()))
        let api = self.api
        let channel = context.channel
        let loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        Task {
            let response = await api.respond(to: request, connection: channel)
            let sink = NIOLockedValueBox(channel.allocator.buffer(capacity: response.body.contentLength ?? 256))
            let body: ByteBuffer?
            do {
                try await response.body.write(CollectedBody(sink: sink))
                body = sink.withLockedValue { $0 }
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
        guard active, current?.fast == true else { return }
        guard let body else {
            // Nothing of the answer went out: the connection is no longer in step.
            context.close(promise: nil)
            return
        }
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if body.readableBytes > 0 { context.write(wrapOutboundOut(.body(body)), promise: nil) }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        current!.responseEnded = true
        finishIfDone(context)
    }

    /// Hummingbird's answers pass through; the end of one ends its exchange.
    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        context.write(data, promise: promise)
        if case .end = unwrapOutboundIn(data), current?.fast == false {
            current!.responseEnded = true
            finishIfDone(context)
        }
    }

    /// Reads wait while a pipelined request waits: such a client is held back here.
    func read(context: ChannelHandlerContext) {
        if !queued.isEmpty {
            readHeld = true
        } else {
            context.read()
        }
    }

    private func finishIfDone(_ context: ChannelHandlerContext) {
        guard let exchange = current, exchange.requestEnded, exchange.responseEnded else { return }
        current = nil
        if exchange.fast && exchange.head.headerFields[.connection]?.lowercased() == "close" {
            // As Hummingbird does: no more is read on this connection.
            context.close(mode: .output, promise: nil)
            active = false
            queued.removeAll()
            return
        }
        if quiesceHeld {
            // The replica is stopping: Hummingbird's state handler closes the connection now
            // that it is idle.
            quiesceHeld = false
            queued.removeAll()
            context.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
            return
        }
        var drained = false
        while current?.requestEnded != true, active, let next = queued.popFirst() {
            take(next, context)
            drained = true
        }
        // Hummingbird's channel hands what it was given on at the end of a read.
        if drained { context.fireChannelReadComplete() }
        if queued.isEmpty && readHeld {
            readHeld = false
            context.read()
        }
    }

    /// A replica stopping gracefully lets an exchange answered here finish first.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent, current?.fast == true {
            quiesceHeld = true
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        active = false
        queued.removeAll()
        context.fireChannelInactive()
    }
}

/// A response body gathered into one buffer (the hot routes' answers are small JSON, the
/// registry's at most a few MiB, which Hummingbird's path also holds whole).
private struct CollectedBody: ResponseBodyWriter, Sendable {
    let sink: NIOLockedValueBox<ByteBuffer>

    mutating func write(_ buffer: ByteBuffer) async throws {
        _ = sink.withLockedValue { $0.writeImmutableBuffer(buffer) }
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

import Hummingbird
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTPTypes

/// Deadlines for slow clients on the client port. A connection must deliver a request's head
/// within `headTimeout` of opening or of the end of the previous exchange (a client trickling
/// a header a byte a second is cut off then, as is an idle keep-alive connection), and the
/// rest of the request within `bodyTimeout` of its head; while responses are pending, the
/// connection lives at most `responseTimeout` more (beyond what any answer takes). An
/// exchange ends when both its request and
/// its response have ended, in either order: the server answers some requests (401, 403, 413)
/// before their body has arrived, and the body must still come in time.
final class RequestDeadlineHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    let headTimeout: TimeAmount
    let bodyTimeout: TimeAmount
    /// While responses are pending: no request of ours takes longer (the request timeout,
    /// and a margin). A connection is never without a deadline: a client that pipelines a
    /// request behind one the server closes after (`Connection: close`) would otherwise keep
    /// it open for ever, unanswered.
    let responseTimeout: TimeAmount
    /// When the connection is closed, as last set (moved at every head, end and answer).
    private var deadline: NIODeadline?
    /// The one timer, due at `timerAt`, never later than `deadline`. A deadline moved later
    /// keeps it, and it sets itself again for the rest when it fires: three moves a request
    /// no longer cost three timers (`perf` gave them 6 % of the leader in a fleet run).
    private var timer: Scheduled<Void>?
    private var timerAt: NIODeadline?
    /// A request's head arrived and its end has not.
    private var receiving = false
    /// Requests whose response has not ended yet (more than one when a client pipelines).
    private var unanswered = 0
    /// The longest wait of the long polls among them (shared/API.md's `wait`): their
    /// responses may take that much longer.
    private var longPoll = TimeAmount.zero

    init(headTimeout: TimeAmount, bodyTimeout: TimeAmount, responseTimeout: TimeAmount) {
        self.headTimeout = headTimeout
        self.bodyTimeout = bodyTimeout
        self.responseTimeout = responseTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { arm(context, headTimeout) }
    }

    func channelActive(context: ChannelHandlerContext) {
        arm(context, headTimeout)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            receiving = true
            unanswered += 1
            if head.method == .get, let path = head.path, let wait = WatchQuery.responseAllowance(path: path) {
                longPoll = max(longPoll, .nanoseconds(Int64(wait)))
            }
            arm(context, bodyTimeout)
        case .body: break
        case .end:
            receiving = false
            settle(context)
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .end:
            unanswered = max(0, unanswered - 1)
            // While a body is still coming in, its deadline stands.
            if !receiving { settle(context) }
        case .body(let part) where unanswered > 0 && !receiving && part.readableBytes >= Self.progressPiece:
            // A large answer streaming out (a backup, in pieces of 1 MiB): its deadline counts
            // from its latest piece, so a slow reader gets all of it and a stalled one is still
            // cut off. Small answers do not pay for a new timer.
            arm(context, responseTimeout + longPoll)
        default:
            break
        }
        context.write(data, promise: promise)
    }

    static let progressPiece = 256 << 10

    func channelInactive(context: ChannelHandlerContext) {
        cancel()
        context.fireChannelInactive()
    }

    /// The client closed its side while a long poll waits for its answer: it went away (the
    /// server allows half-closed connections, so nothing else would notice until the answer,
    /// minutes later). Closing the connection lets the poll give its place back.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, e == .inputClosed, unanswered > 0, longPoll > .zero {
            context.close(promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func handlerRemoved(context: ChannelHandlerContext) { cancel() }

    /// No request is arriving: wait for the next head if every response has gone out, else
    /// for the responses.
    private func settle(_ context: ChannelHandlerContext) {
        if unanswered == 0 { longPoll = .zero }
        arm(context, unanswered == 0 ? headTimeout : responseTimeout + longPoll)
    }

    private func cancel() {
        timer?.cancel()
        timer = nil
        timerAt = nil
        deadline = nil
    }

    private func arm(_ context: ChannelHandlerContext, _ timeout: TimeAmount) {
        guard context.channel.isActive else {
            cancel()
            return
        }
        let at = NIODeadline.now() + timeout
        deadline = at
        // A timer due no later stays: when it fires, it finds the deadline moved.
        if let timerAt, timerAt <= at { return }
        timer?.cancel()
        schedule(context, at)
    }

    private func schedule(_ context: ChannelHandlerContext, _ at: NIODeadline) {
        timerAt = at
        timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: at) { [self] in
            timer = nil
            timerAt = nil
            guard let deadline else { return }
            if NIODeadline.now() >= deadline {
                context.channel.close(promise: nil)
            } else {
                schedule(context, deadline)
            }
        }
    }
}

/// A count of things in progress (requests, connections) that refuses to go past a limit.
final class BoundedCounter: Sendable {
    private let count = NIOLockedValueBox(0)

    /// Counts one more, unless `limit` are in progress: then false.
    func enter(limit: Int) -> Bool {
        count.withLockedValue { n in
            guard n < limit else { return false }
            n += 1
            return true
        }
    }

    func leave() { count.withLockedValue { $0 -= 1 } }
}

/// One request's place in a `BoundedCounter`, given back once however often `leave` is
/// called (a long poll leaves while it waits, and again when it ends).
final class GateSlot: Sendable {
    private let counter: BoundedCounter
    /// 0: not entered, 1: in, 2: left.
    private let state = NIOLockedValueBox(0)

    init(_ counter: BoundedCounter) { self.counter = counter }

    func enter(limit: Int) -> Bool {
        guard counter.enter(limit: limit) else { return false }
        state.withLockedValue { $0 = 1 }
        return true
    }

    func leave() {
        let wasIn = state.withLockedValue { s -> Bool in
            defer { if s == 1 { s = 2 } }
            return s == 1
        }
        if wasIn { counter.leave() }
    }
}

/// Caps the client connections open at once: one beyond `limit` is closed as soon as it
/// opens, so a flood of connections cannot use up the replica's file descriptors, and the
/// head deadline above clears idle ones: to keep real clients out, a flood must open
/// `limit` connections every head timeout (4096 every 10 s by default).
final class ConnectionCapHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart

    /// The connections open now, shared by every connection's handler.
    final class Counter: Sendable {
        let open = BoundedCounter()
        private let lastLogged = NIOLockedValueBox<NIODeadline?>(nil)
        /// Whether a refusal should be logged now (at most every 10 s).
        func shouldLog() -> Bool {
            let now = NIODeadline.now()
            return lastLogged.withLockedValue { last in
                if let l = last, now - l < .seconds(10) { return false }
                last = now
                return true
            }
        }
    }

    let counter: Counter
    let limit: Int
    let logger: Logger
    private var counted = false

    init(counter: Counter, limit: Int, logger: Logger) {
        self.counter = counter
        self.limit = limit
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { enter(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        // A refused connection goes no further (the handlers after this one arm no timers).
        if enter(context) { context.fireChannelActive() }
    }

    func channelInactive(context: ChannelHandlerContext) {
        leave()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) { leave() }

    /// Counts this connection in; false (and closes it) when `limit` are open.
    @discardableResult
    private func enter(_ context: ChannelHandlerContext) -> Bool {
        guard !counted else { return true }
        if counter.open.enter(limit: limit) {
            counted = true
            return true
        }
        if counter.shouldLog() {
            logger.warning("refusing client connections: \(limit) are open (logged at most every 10 s)")
        }
        context.close(promise: nil)
        return false
    }

    private func leave() {
        if counted {
            counted = false
            counter.open.leave()
        }
    }
}

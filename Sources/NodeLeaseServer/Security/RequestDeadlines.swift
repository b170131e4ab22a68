import Hummingbird
import NIOCore
import NIOHTTPTypes

/// Deadlines for slow clients on the client port. A connection must deliver a request's head
/// within `headTimeout` of opening or of the end of the previous exchange (a client trickling
/// a header a byte a second is cut off then, as is an idle keep-alive connection), and the
/// rest of the request within `bodyTimeout` of its head. The time a response takes is not
/// limited here (the request timeout bounds it). An exchange ends when both its request and
/// its response have ended, in either order: the server answers some requests (401, 403, 413)
/// before their body has arrived, and the body must still come in time.
final class RequestDeadlineHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    let headTimeout: TimeAmount
    let bodyTimeout: TimeAmount
    private var timer: Scheduled<Void>?
    /// A request's head arrived and its end has not.
    private var receiving = false
    /// Requests whose response has not ended yet (more than one when a client pipelines).
    private var unanswered = 0

    init(headTimeout: TimeAmount, bodyTimeout: TimeAmount) {
        self.headTimeout = headTimeout
        self.bodyTimeout = bodyTimeout
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
        case .head:
            receiving = true
            unanswered += 1
            arm(context, bodyTimeout)
        case .body: break
        case .end:
            receiving = false
            settle(context)
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) {
            unanswered = max(0, unanswered - 1)
            // While a body is still coming in, its deadline stands.
            if !receiving { settle(context) }
        }
        context.write(data, promise: promise)
    }

    func channelInactive(context: ChannelHandlerContext) {
        cancel()
        context.fireChannelInactive()
    }

    /// No request is arriving: wait for the next head if every response has gone out, else
    /// for the responses (no deadline of ours).
    private func settle(_ context: ChannelHandlerContext) {
        if unanswered == 0 { arm(context, headTimeout) } else { cancel() }
    }

    private func cancel() {
        timer?.cancel()
        timer = nil
    }

    private func arm(_ context: ChannelHandlerContext, _ timeout: TimeAmount) {
        timer?.cancel()
        let channel = context.channel
        timer = context.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
    }
}

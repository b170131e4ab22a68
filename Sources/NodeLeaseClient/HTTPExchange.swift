import AsyncHTTPClient
import NIOCore
import NIOHTTP1

/// Thrown when an exchange's deadline passes first.
public struct HTTPDeadlineExceeded: Error, CustomStringConvertible {
    public var description: String { "no complete answer before the deadline" }
}

extension HTTPClient {
    /// One request and its whole answer, head and body, within `deadline`. AsyncHTTPClient's
    /// own deadline stops at the response head, so a replica that sends a head and then
    /// stalls would hold the body's read forever; here a timer races the whole exchange and
    /// cancels it (which AsyncHTTPClient honours by closing the connection).
    public func exchange(_ request: HTTPClientRequest, deadline: ContinuousClock.Instant, maxBody: Int) async throws
        -> (status: HTTPResponseStatus, headers: HTTPHeaders, body: ByteBuffer)
    {
        try await Self.within(deadline) { nioDeadline in
            let response = try await self.execute(request, deadline: nioDeadline)
            let body = try await response.body.collect(upTo: maxBody)
            return (response.status, response.headers, body)
        }
    }

    /// Runs `body` (given `deadline` as NIO's, for AsyncHTTPClient's own) against a timer:
    /// `HTTPDeadlineExceeded` if the timer ends first, and `body` is cancelled (which
    /// AsyncHTTPClient honours by closing the connection).
    static func within<T: Sendable>(_ deadline: ContinuousClock.Instant, _ body: @escaping @Sendable (NIODeadline) async throws -> T) async throws -> T {
        let left = (deadline - .now).components
        let nioDeadline = NIODeadline.now() + .nanoseconds(max(0, left.seconds * 1_000_000_000 + left.attoseconds / 1_000_000_000))
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await body(nioDeadline) }
            group.addTask {
                try await _Concurrency.Task.sleep(until: deadline)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let answer = first else { throw HTTPDeadlineExceeded() }
            return answer
        }
    }
}

/// Where a streamed answer goes (a backup): `reset` before each attempt, so a failed attempt's
/// bytes are dropped, then `write` for each piece as it arrives.
public protocol DownloadSink: Sendable {
    func reset() throws
    func write(_ bytes: ByteBuffer) throws
}

extension HTTPClient {
    /// One request whose 200 answer's body is streamed into `sink` as it arrives, within
    /// `deadline` (the whole body included, as `exchange`). Another status's body is read (up
    /// to `maxErrorBody`) and returned instead.
    public func download(_ request: HTTPClientRequest, deadline: ContinuousClock.Instant, into sink: any DownloadSink, maxErrorBody: Int)
        async throws -> (status: HTTPResponseStatus, headers: HTTPHeaders, errorBody: ByteBuffer?)
    {
        try await Self.within(deadline) { nioDeadline in
            let response = try await self.execute(request, deadline: nioDeadline)
            guard response.status == .ok else {
                return (response.status, response.headers, try await response.body.collect(upTo: maxErrorBody))
            }
            try sink.reset()
            for try await piece in response.body { try sink.write(piece) }
            return (response.status, response.headers, nil)
        }
    }
}

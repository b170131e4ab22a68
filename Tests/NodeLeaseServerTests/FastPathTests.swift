import Foundation
import HTTPTypes
import NIOCore
import NIOPosix
import Raft
import Testing

@testable import NodeLeaseServer

/// The lease routes answered from the event loop (`LeaseFastPathHandler`) against the same
/// routes through Hummingbird: the same answers, HTTP/1's order kept for pipelining clients.
@Suite(.serialized) struct FastPathTests {
    /// Pipelined requests, answered here and by Hummingbird in turn: every answer comes, in
    /// order, and both paths answer alike.
    @Test(arguments: [true, false]) func pipelinedRequestsAreAnsweredInOrder(fastPath: Bool) async throws {
        let c = try await Self.oneReplica { $0.leaseFastPath = fastPath }
        let requests = [
            Self.acquire,
            "GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n",
            "POST /v1/leases/999/renew HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
            "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /v1/cluster/nodes HTTP/1.1\r\nHost: x\r\n\r\n",
            "DELETE /v1/leases/999 HTTP/1.1\r\nHost: x\r\n\r\n",
        ]
        let (channel, reader) = try await Self.send(c, requests.joined(), halfClosure: false)
        #expect(await eventually(5) { reader.text.components(separatedBy: "HTTP/1.1 ").count - 1 == requests.count }, "\(reader.text)")
        let answers = reader.text.components(separatedBy: "HTTP/1.1 ").dropFirst().map { String($0.prefix(3)) }
        #expect(answers == ["200", "200", "404", "200", "200", "404"], "\(reader.text)")
        // Each answer's body is where its request was.
        let marks = [#""fencingToken""#, #""replicaId""#, "lease_not_found", #"{"status":"ok"}"#, #""mx1.example.org""#, "lease_not_found"]
        var at = reader.text.startIndex
        for mark in marks {
            let found = reader.text.range(of: mark, range: at..<reader.text.endIndex)
            #expect(found != nil, "\(mark) not found in order in \(reader.text)")
            if let found { at = found.upperBound }
        }
        // The first answer (an acquire, answered on the event loop when `fastPath`) has a Date.
        let first = reader.text.components(separatedBy: "HTTP/1.1 ")[1]
        #expect(first.contains("Date: "), "\(first)")
        try await channel.close()
        await c.stopAll()
    }

    /// An `Idempotency-Key` given twice is refused before anything is proposed; given once,
    /// the request goes on (here to a lease that does not exist).
    @Test(arguments: [true, false]) func anIdempotencyKeyGivenTwiceIsRefused(fastPath: Bool) async throws {
        let c = try await Self.oneReplica { $0.leaseFastPath = fastPath }
        let requests = [
            "POST /v1/leases/999/renew HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k-1\r\nIdempotency-Key: k-2\r\nContent-Length: 2\r\n\r\n{}",
            "POST /v1/leases/999/renew HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k-1\r\nContent-Length: 2\r\n\r\n{}",
        ]
        let (channel, reader) = try await Self.send(c, requests.joined(), halfClosure: false)
        #expect(await eventually(5) { reader.text.components(separatedBy: "HTTP/1.1 ").count - 1 == requests.count }, "\(reader.text)")
        let answers = reader.text.components(separatedBy: "HTTP/1.1 ").dropFirst()
        #expect(answers.map { String($0.prefix(3)) } == ["400", "404"], "\(reader.text)")
        #expect(answers.first?.contains("invalid_request") == true && answers.first?.contains("Idempotency-Key") == true, "\(reader.text)")
        try await channel.close()
        await c.stopAll()
    }

    /// `Connection: close` on a lease route: answered, then the server closes its side.
    @Test(arguments: [true, false]) func aClosingRequestIsAnsweredAndTheConnectionEnds(fastPath: Bool) async throws {
        let c = try await Self.oneReplica {
            $0.httpHeadTimeoutMillis = 30_000
            $0.leaseFastPath = fastPath
        }
        let (channel, reader) = try await Self.send(
            c, "GET /v1/cluster/nodes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /v1/cluster/nodes HTTP/1.1\r\nHost: x\r\n\r\n", halfClosure: false)
        // Well before the head deadline (30 s), and the pipelined request is not answered.
        #expect(await eventually(3) { !channel.isActive })
        #expect(reader.text.components(separatedBy: "HTTP/1.1 ").count - 1 == 1, "\(reader.text)")
        await c.stopAll()
    }

    /// Over 64 KiB: 413 whether the length is declared (answered before the body comes) or
    /// the body is chunked; the connection then serves the next request.
    @Test(arguments: [true, false]) func largeBodiesAre413OnTheLeaseRoutes(fastPath: Bool) async throws {
        let c = try await Self.oneReplica { $0.leaseFastPath = fastPath }
        let (a, declared) = try await Self.send(c, "POST /v1/leases HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n", halfClosure: false)
        #expect(await eventually(3) { declared.text.contains("HTTP/1.1 413") }, "\(declared.text)")
        try await a.writeAndFlush(ByteBuffer(string: String(repeating: "x", count: 100_000) + "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")).get()
        #expect(await eventually(3) { declared.text.contains("HTTP/1.1 200") }, "\(declared.text)")
        try await a.close()

        let chunk = String(repeating: "y", count: 40_000)
        let size = String(chunk.utf8.count, radix: 16)
        let (b, chunked) = try await Self.send(
            c,
            "POST /v1/leases HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\(size)\r\n\(chunk)\r\n\(size)\r\n\(chunk)\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            halfClosure: false)
        #expect(await eventually(3) { chunked.text.contains("HTTP/1.1 200") }, "\(chunked.text)")
        #expect(chunked.text.hasPrefix("HTTP/1.1 413"), "\(chunked.text)")
        #expect(chunked.text.contains("request_too_large"))
        try await b.close()
        await c.stopAll()
    }

    /// A client that sends its request and closes its side (`nc -N`) still gets the answer.
    @Test(arguments: [true, false]) func aClientThatHalfClosesIsAnswered(fastPath: Bool) async throws {
        let c = try await Self.oneReplica { $0.leaseFastPath = fastPath }
        let (channel, reader) = try await Self.send(c, Self.acquire)
        try await channel.close(mode: .output)
        #expect(await eventually(5) { reader.text.contains(#""fencingToken""#) }, "\(reader.text)")
        #expect(reader.text.hasPrefix("HTTP/1.1 200"), "\(reader.text)")
        await c.stopAll()
    }

    /// A body cut short by a parse error (a bad chunk size): answered 400 at once, not after
    /// the body deadline (30 s). (Through Hummingbird the exchange waits for that deadline: its
    /// body stream fails while the request is being read, and no 400 is written.) Cut short
    /// by the client's end of input: closed at once, and nothing is carried out.
    @Test func aBrokenBodyEndsTheExchangeAtOnce() async throws {
        let c = try await Self.oneReplica()
        let (channel, reader) = try await Self.send(c, "POST /v1/leases HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nZZ\r\n")
        #expect(await eventually(3) { reader.text.contains("HTTP/1.1 400") }, "\(reader.text)")
        try? await channel.close()
        // The same pipelined behind an acquire: the acquire's answer, then the 400.
        let (second, behind) = try await Self.send(c, Self.acquire + "POST /v1/leases HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nZZ\r\n")
        #expect(await eventually(3) { behind.text.contains("HTTP/1.1 400") }, "\(behind.text)")
        #expect(behind.text.hasPrefix("HTTP/1.1 200"), "\(behind.text)")
        try? await second.close()
        let cut = try await Self.connect(c, ResponseCounter())
        try await cut.writeAndFlush(ByteBuffer(string: "POST /v1/leases HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n{\"hostname\"")).get()
        try await cut.close(mode: .output)
        #expect(await eventually(3) { !cut.isActive })
        // Only the pipelined acquire's node.
        let nodes = try await c.get(1, "/v1/cluster/nodes").body
        #expect(nodes.components(separatedBy: "\"nodeId\"").count - 1 == 1, "\(nodes)")
        await c.stopAll()
    }

    /// Garbage pipelined behind an acquire: the acquire's answer comes first, then the 400.
    @Test(arguments: [true, false]) func aParseErrorIsAnsweredAfterTheRequestsAhead(fastPath: Bool) async throws {
        let c = try await Self.oneReplica { $0.leaseFastPath = fastPath }
        let (channel, reader) = try await Self.send(c, Self.acquire + "NOT HTTP AT ALL\r\n\r\n")
        #expect(await eventually(5) { reader.text.contains("HTTP/1.1 400") }, "\(reader.text)")
        #expect(reader.text.hasPrefix("HTTP/1.1 200"), "\(reader.text)")
        #expect(reader.text.contains(#""fencingToken""#))
        try? await channel.close()
        await c.stopAll()
    }

    /// A request for mx1.example.org's lease.
    static let acquire: String = {
        let body = #"{"hostname":"mx1.example.org","holder":"h1"}"#
        return "POST /v1/leases HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
    }()

    /// A started one-replica cluster, ready.
    static func oneReplica(_ configure: (inout ServerConfig) -> Void = { _ in }) async throws -> LocalCluster {
        let c = try LocalCluster(size: 1, configure: configure)
        try await c.startAll()
        #expect(await eventually(5) { (try? await c.get(1, "/readyz").status) == 200 })
        return c
    }

    /// Connects to replica 1 and sends `text`: the connection and what it receives.
    static func send(_ c: LocalCluster, _ text: String, halfClosure: Bool = true) async throws -> (any Channel, ResponseCounter) {
        let reader = ResponseCounter()
        let channel = try await connect(c, reader, halfClosure: halfClosure)
        try await channel.writeAndFlush(ByteBuffer(string: text)).get()
        return (channel, reader)
    }

    /// `halfClosure`: the connection stays open when the server closes its side.
    static func connect(_ c: LocalCluster, _ reader: ResponseCounter, halfClosure: Bool = true) async throws -> any Channel {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.allowRemoteHalfClosure, value: halfClosure)
            .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(reader) } }
            .connect(host: "127.0.0.1", port: c.configs[1]!.clientListen.port).get()
    }

    /// The fast path takes exactly the routes it serves, read as `HTTPAPI.template` reads a
    /// path (the query cut off, empty segments skipped).
    @Test func theFastRoutesAreThoseTheTemplateNames() {
        let paths = [
            "/v1/leases", "/v1/leases/", "//v1//leases", "/v1/leases?x=1", "/v1/leases/7", "/v1/leases/7/renew",
            "/v1/leases/7/renew?a=b", "/v1/leases/7/renew/x", "/v1/leases/7/renewal", "/v1/leasesx", "/v2/leases",
            "/v1/cluster/nodes", "/v1/cluster/nodes/5?wait=2s&index=9", "/v1/cluster/nodes/5/x", "/v1/cluster/replicas",
            "/v1/status", "/v1", "/", "", "?", "/?v1/leases", "/v1/leases?/7/renew", "/ui/nodes/3/forget", "v1/leases",
        ]
        let methods: [HTTPRequest.Method] = [.get, .post, .delete, .put]
        for path in paths {
            let parts = path.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first?
                .split(separator: "/", omittingEmptySubsequences: true) ?? []
            let template = HTTPAPI.template(parts)
            for method in methods {
                let expected: Bool
                switch template {
                case "/v1/leases", "/v1/leases/{leaseId}/renew": expected = method == .post
                case "/v1/leases/{leaseId}": expected = method == .delete
                case "/v1/cluster/nodes", "/v1/cluster/nodes/{nodeId}": expected = method == .get
                default: expected = false
                }
                let head = HTTPRequest(method: method, scheme: nil, authority: nil, path: path)
                #expect(LeaseFastPathHandler.isFast(head) == expected, "\(method) \(path)")
            }
        }
    }

    @Test func aFieldsValueIsTheSubscriptsValue() {
        var fields = HTTPFields()
        #expect(fields.value(.connection) == nil)
        fields[.connection] = "close"
        #expect(fields.value(.connection) == "close")
        fields.append(HTTPField(name: .connection, value: "keep-alive"))
        #expect(fields.value(.connection) == fields[.connection])
        #expect(fields.value(.connection) != "close")
    }

    @Test func theDateHeaderIsIMFFixdate() {
        #expect(HTTPDate.format(0) == "Thu, 01 Jan 1970 00:00:00 GMT")
        #expect(HTTPDate.format(784_111_777) == "Sun, 06 Nov 1994 08:49:37 GMT")
        #expect(HTTPDate.format(1_796_601_600) == "Mon, 07 Dec 2026 00:00:00 GMT")
    }
}

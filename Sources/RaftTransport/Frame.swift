import NIOCore
import Raft

/// One unit on a peer connection.
///
///     length u32 (of what follows) | version u8 | type u8 | payload
///
/// Little-endian like the rest of our formats. A connection starts with `hello` from the
/// dialing side, answered by `welcome` or `refused`; then the dialer sends `message` frames.
public enum Frame: Sendable, Equatable {
    /// The dialer introduces itself: its cluster, its replica id, the replica it meant to
    /// reach, and an incarnation number that is new for every process start.
    /// `clientAddress`: where the dialer serves clients (the leader writes it into the
    /// configuration); `peerAddress`: where it listens for peers (so a replica whose log is
    /// behind, and does not know the dialer as a member yet, can answer it). Older dialers
    /// omit both.
    case hello(
        clusterID: String, from: ReplicaID, to: ReplicaID, incarnation: UInt64, dataDirectoryID: UInt64 = 0, clientAddress: String = "",
        peerAddress: String = "")
    case welcome
    /// The acceptor refuses the connection, saying why (it closes right after).
    case refused(reason: String)
    case message(Message)
    /// A client command a follower passes to the leader to propose (opaque to the transport).
    case forward([UInt8])

    public static let version: UInt8 = 1
    /// Upper bound on a frame, so a damaged or hostile length cannot make us buffer gigabytes.
    public static let maxLength = 256 << 20

    enum Kind: UInt8 {
        case hello = 1
        case welcome = 2
        case refused = 3
        case message = 4
        case forward = 5
    }

    /// The frame's bytes, length prefix included.
    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 64)
        w.u32(0)  // length, patched below
        w.u8(Self.version)
        switch self {
        case .hello(let cluster, let from, let to, let incarnation, let dir, let client, let peer):
            w.u8(Kind.hello.rawValue)
            w.string(cluster)
            w.u64(from.rawValue)
            w.u64(to.rawValue)
            w.u64(incarnation)
            w.u64(dir)
            w.string(String(client.prefix(255)))
            w.string(String(peer.prefix(255)))
        case .welcome:
            w.u8(Kind.welcome.rawValue)
        case .refused(let reason):
            w.u8(Kind.refused.rawValue)
            w.string(String(reason.prefix(1000)))
        case .message(let m):
            w.u8(Kind.message.rawValue)
            MessageCodec.encode(m, into: &w)
        case .forward(let data):
            w.u8(Kind.forward.rawValue)
            w.blob(data)
        }
        let n = UInt32(w.bytes.count - 4)
        w.bytes[0] = UInt8(n & 0xff)
        w.bytes[1] = UInt8((n >> 8) & 0xff)
        w.bytes[2] = UInt8((n >> 16) & 0xff)
        w.bytes[3] = UInt8(n >> 24)
        return w.bytes
    }

    /// Decodes the body of one frame (everything after the length).
    public init(body: [UInt8]) throws(FrameError) {
        var r = ByteReader(body)
        do {
            let version = try r.u8()
            guard version == Self.version else { throw FrameError.unsupportedVersion(version) }
            guard let kind = Kind(rawValue: try r.u8()) else { throw FrameError.malformed("unknown frame type") }
            switch kind {
            case .hello:
                let cluster = try r.string()
                let from = ReplicaID(try r.u64())
                let to = ReplicaID(try r.u64())
                let incarnation = try r.u64()
                let dir = try r.u64()
                let client = r.remaining > 0 ? try r.string() : ""
                let peer = r.remaining > 0 ? try r.string() : ""
                self = .hello(
                    clusterID: cluster, from: from, to: to, incarnation: incarnation, dataDirectoryID: dir, clientAddress: client,
                    peerAddress: peer)
            case .welcome:
                self = .welcome
            case .refused:
                self = .refused(reason: try r.string())
            case .message:
                self = .message(try MessageCodec.decode(&r))
            case .forward:
                self = .forward(try r.blob())
            }
            guard r.remaining == 0 else { throw FrameError.malformed("\(r.remaining) bytes after the frame") }
        } catch let e as FrameError {
            throw e
        } catch {
            throw FrameError.malformed("truncated frame")
        }
    }
}

public enum FrameError: Error, Equatable, CustomStringConvertible {
    case unsupportedVersion(UInt8)
    case tooLarge(Int)
    case malformed(String)

    public var description: String {
        switch self {
        case .unsupportedVersion(let v): "peer frame format version \(v) is unknown to this build (it speaks version \(Frame.version)); the peer runs a newer nodelease"
        case .tooLarge(let n): "frame of \(n) bytes is over the limit"
        case .malformed(let why): "malformed frame: \(why)"
        }
    }
}

/// The binary form of a Raft `Message`.
public enum MessageCodec {
    public static func encode(_ m: Message, into w: inout ByteWriter) {
        w.u8(m.kind.rawValue)
        w.u64(m.from.rawValue)
        w.u64(m.to.rawValue)
        w.u64(m.term.rawValue)
        w.u64(m.logTerm.rawValue)
        w.u64(m.index.rawValue)
        w.u64(m.commit.rawValue)
        w.u8((m.reject ? 1 : 0) | (m.leaderTransfer ? 2 : 0) | (m.snapshot != nil ? 4 : 0))
        w.u64(m.rejectHint.rawValue)
        w.u64(m.context)
        w.u32(UInt32(m.entries.count))
        for e in m.entries { w.entry(e) }
        if let s = m.snapshot {
            w.u64(s.metadata.index.rawValue)
            w.u64(s.metadata.term.rawValue)
            w.membership(s.metadata.membership)
            w.blob(s.data)
        }
    }

    public static func decode(_ r: inout ByteReader) throws -> Message {
        guard let kind = MessageKind(rawValue: try r.u8()) else { throw FrameError.malformed("unknown message kind") }
        var m = Message(kind: kind, from: ReplicaID(try r.u64()), to: ReplicaID(try r.u64()))
        m.term = Term(try r.u64())
        m.logTerm = Term(try r.u64())
        m.index = LogIndex(try r.u64())
        m.commit = LogIndex(try r.u64())
        let flags = try r.u8()
        m.reject = flags & 1 != 0
        m.leaderTransfer = flags & 2 != 0
        m.rejectHint = LogIndex(try r.u64())
        m.context = try r.u64()
        let count = Int(try r.u32())
        // Each entry takes at least 21 bytes: refuse counts the frame cannot hold.
        guard count <= r.remaining / 21 else { throw FrameError.malformed("entry count \(count) exceeds the frame") }
        m.entries.reserveCapacity(count)
        for _ in 0..<count { m.entries.append(try r.entry()) }
        if flags & 4 != 0 {
            let index = LogIndex(try r.u64())
            let term = Term(try r.u64())
            let membership = try r.membership()
            m.snapshot = Snapshot(metadata: SnapshotMetadata(index: index, term: term, membership: membership), data: try r.blob())
        }
        return m
    }
}

/// Splits a byte stream into frames (NIO's length-prefix framing, with our limit).
public struct FrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = Frame
    /// The largest frame accepted now: small until the handshake is done (a stranger cannot
    /// make a replica allocate a large frame), then `Frame.maxLength`.
    let limit: FrameLimit

    public init(limit: FrameLimit = FrameLimit(Frame.maxLength)) { self.limit = limit }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let length = buffer.getInteger(at: buffer.readerIndex, endianness: .little, as: UInt32.self) else {
            return .needMoreData
        }
        let n = Int(length)
        guard n <= limit.bytes else { throw FrameError.tooLarge(n) }
        guard n >= 2 else { throw FrameError.malformed("frame of \(n) bytes") }
        guard buffer.readableBytes >= 4 + n else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 4)
        let body = buffer.readBytes(length: n)!
        context.fireChannelRead(wrapInboundOut(try Frame(body: body)))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try decode(context: context, buffer: &buffer)
    }
}

/// The frame size a connection's decoder accepts, raised once its handshake is done. Used on
/// the connection's event loop only.
public final class FrameLimit: @unchecked Sendable {
    public var bytes: Int
    public init(_ bytes: Int) { self.bytes = bytes }
    /// Enough for a hello, a welcome or a refusal.
    public static let handshake = 16 << 10
}

/// Writes frames.
public struct FrameEncoder: MessageToByteEncoder {
    public typealias OutboundIn = Frame

    public init() {}

    public func encode(data: Frame, out: inout ByteBuffer) throws {
        out.writeBytes(data.encoded())
    }
}

/// Little-endian binary encoding, for the WAL, snapshots, commands and peer messages.
public struct ByteWriter: Sendable {
    public var bytes: [UInt8] = []

    public init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u32(_ v: UInt32) {
        withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
    }
    public mutating func u64(_ v: UInt64) {
        withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
    }
    public mutating func blob(_ b: [UInt8]) {
        u32(UInt32(b.count))
        bytes.append(contentsOf: b)
    }
}

public struct ByteReader: Sendable {
    public let bytes: [UInt8]
    public var position: Int

    public init(_ bytes: [UInt8], at position: Int = 0) {
        self.bytes = bytes
        self.position = position
    }

    public var remaining: Int { bytes.count - position }

    public mutating func u8() throws -> UInt8 {
        guard remaining >= 1 else { throw DecodeError.truncated }
        defer { position += 1 }
        return bytes[position]
    }

    public mutating func u32() throws -> UInt32 {
        guard remaining >= 4 else { throw DecodeError.truncated }
        var v: UInt32 = 0
        for i in 0..<4 { v |= UInt32(bytes[position + i]) << (8 * i) }
        position += 4
        return v
    }

    public mutating func u64() throws -> UInt64 {
        guard remaining >= 8 else { throw DecodeError.truncated }
        var v: UInt64 = 0
        for i in 0..<8 { v |= UInt64(bytes[position + i]) << (8 * i) }
        position += 8
        return v
    }

    public mutating func blob(max: Int = Int(UInt32.max)) throws -> [UInt8] {
        let n = Int(try u32())
        guard n <= max, remaining >= n else { throw DecodeError.truncated }
        defer { position += n }
        return Array(bytes[position..<(position + n)])
    }
}

public enum DecodeError: Error, Sendable {
    case truncated
    case invalid(String)
}

extension ByteWriter {
    /// A string as u16 length and UTF-8 bytes (callers bound the length).
    public mutating func string(_ s: String) {
        let b = Array(s.utf8)
        precondition(b.count <= Int(UInt16.max))
        bytes.append(UInt8(b.count & 0xff))
        bytes.append(UInt8(b.count >> 8))
        bytes.append(contentsOf: b)
    }
}

extension ByteReader {
    public mutating func string() throws -> String {
        let lo = Int(try u8())
        let hi = Int(try u8())
        let n = lo | hi << 8
        guard remaining >= n else { throw DecodeError.truncated }
        defer { position += n }
        return String(decoding: bytes[position..<(position + n)], as: UTF8.self)
    }
}

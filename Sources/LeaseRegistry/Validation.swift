/// Field validation shared by the HTTP layer and `apply` (which re-checks, so a malformed
/// command in the log can never corrupt the state).
public enum Validation {
    /// 1 to 253 characters of letters, digits, `-`, `_` and `.`; returned lower-cased.
    public static func hostname(_ raw: String) throws(LeaseError) -> String {
        let bytes = Array(raw.utf8)
        guard !bytes.isEmpty else { throw .invalid(field: "hostname", message: "must not be empty") }
        guard bytes.count <= 253 else { throw .invalid(field: "hostname", message: "must be at most 253 characters") }
        var out = [UInt8]()
        out.reserveCapacity(bytes.count)
        for b in bytes {
            switch b {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): out.append(b + 32)
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."):
                out.append(b)
            default:
                throw .invalid(field: "hostname", message: "may contain only letters, digits, '-', '_' and '.'")
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// 1 to 128 printable ASCII characters.
    public static func holder(_ raw: String) throws(LeaseError) -> String {
        let bytes = Array(raw.utf8)
        guard !bytes.isEmpty else { throw .invalid(field: "holder", message: "must not be empty") }
        guard bytes.count <= 128 else { throw .invalid(field: "holder", message: "must be at most 128 characters") }
        guard bytes.allSatisfy({ $0 >= 0x20 && $0 < 0x7f }) else {
            throw .invalid(field: "holder", message: "must be printable ASCII")
        }
        return raw
    }

    /// A TTL inside `range` (seconds).
    public static func ttl(_ seconds: Int64, range: ClosedRange<UInt32>) throws(LeaseError) -> UInt32 {
        guard seconds >= Int64(range.lowerBound), seconds <= Int64(range.upperBound) else {
            throw .invalid(field: "ttlSeconds", message: "must be between \(range.lowerBound) and \(range.upperBound)")
        }
        return UInt32(seconds)
    }
}

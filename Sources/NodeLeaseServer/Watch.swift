/// The long-poll parameters of a registry read (shared/API.md, "Watching the registry").
struct WatchQuery: Sendable, Equatable {
    /// Answer once the registry index is beyond this.
    var waitIndex: UInt64
    /// How long to wait for that, in nanoseconds (before jitter).
    var waitNanos: UInt64

    static let defaultWait: UInt64 = 60_000_000_000
    static let maxWait: UInt64 = 300_000_000_000

    /// The wait with its jitter: up to a sixteenth more, so that watchers started together
    /// do not all come back in the same instant.
    func jittered<R: RandomNumberGenerator>(using random: inout R) -> UInt64 {
        waitNanos + UInt64.random(in: 0...(waitNanos / 16), using: &random)
    }

    /// The longest a response to `path` (a request target with its query) may take, if it is
    /// a long poll: its wait and the jitter; a wait that does not parse counts as the longest
    /// allowed (the request is refused anyway). Nil: not a long poll. For the connection's
    /// deadline, which sees the raw request before routing.
    static func responseAllowance(path: String) -> UInt64? {
        guard let q = path.firstIndex(of: "?") else { return nil }
        // Only the paths that wait: any other request gets no longer deadline for asking.
        let route = path[..<q].split(separator: "/")
        let watches =
            (route.count == 3 && route[0] == "v1" && route[1] == "cluster" && route[2] == "nodes")
            || (route.count == 4 && route[0] == "v1" && route[1] == "cluster" && route[2] == "nodes")
            || (route.count == 2 && route[0] == "ui" && route[1] == "live")
        guard watches else { return nil }
        var isWatch = false
        var wait = defaultWait
        for pair in path[path.index(after: q)...].split(separator: "&") {
            let (rawKey, v) = pair.firstIndex(of: "=").map { (pair[..<$0], pair[pair.index(after: $0)...]) } ?? (pair, "")
            let k = rawKey.removingPercentEncodingASCII
            if k == "waitIndex" { isWatch = true }
            if k == "wait" {
                if let n = GoDuration.nanoseconds(v.removingPercentEncodingASCII), n >= 0, UInt64(n) <= maxWait { wait = UInt64(n) } else { wait = maxWait }
            }
        }
        return isWatch ? wait + wait / 16 : nil
    }
}

extension Substring {
    /// `%XX` decoded for ASCII bytes; anything else left as it is.
    var removingPercentEncodingASCII: Substring {
        guard contains("%") else { return self }
        var bytes: [UInt8] = []
        var it = utf8.makeIterator()
        while let b = it.next() {
            if b == UInt8(ascii: "%"), let h = it.next(), let l = it.next(), let v = UInt8(String(decoding: [h, l], as: UTF8.self), radix: 16) {
                bytes.append(v)
            } else {
                bytes.append(b)
            }
        }
        return Substring(String(decoding: bytes, as: UTF8.self))
    }
}

/// Go's duration syntax (`time.ParseDuration`), as Consul's blocking queries take it: an
/// optional sign, then one or more decimal numbers each with a unit (`ns`, `us`, `µs`, `ms`,
/// `s`, `m`, `h`), such as `1500ms`, `30s`, `1m30s`, `1.5h`; `0` alone is zero.
enum GoDuration {
    /// Nanoseconds, or nil when `text` is not a duration or does not fit.
    static func nanoseconds(_ text: Substring) -> Int64? {
        let s = Array(text.unicodeScalars)
        func isDigit(_ c: Unicode.Scalar) -> Bool { c >= "0" && c <= "9" }
        var i = 0
        var negative = false
        if i < s.count, s[i] == "-" || s[i] == "+" {
            negative = s[i] == "-"
            i += 1
        }
        if i == s.count - 1 && s[i] == "0" { return 0 }
        guard i < s.count else { return nil }
        var total: Int64 = 0
        while i < s.count {
            var whole = ""
            while i < s.count, isDigit(s[i]) { whole.unicodeScalars.append(s[i]); i += 1 }
            var fraction = ""
            if i < s.count, s[i] == "." {
                i += 1
                while i < s.count, isDigit(s[i]) { fraction.unicodeScalars.append(s[i]); i += 1 }
            }
            guard !whole.isEmpty || !fraction.isEmpty else { return nil }
            var unitText = ""
            while i < s.count, !isDigit(s[i]), s[i] != "." { unitText.unicodeScalars.append(s[i]); i += 1 }
            let unit: Int64
            switch unitText {
            case "ns": unit = 1
            case "us", "\u{B5}s", "\u{3BC}s": unit = 1_000
            case "ms": unit = 1_000_000
            case "s": unit = 1_000_000_000
            case "m": unit = 60_000_000_000
            case "h": unit = 3_600_000_000_000
            default: return nil
            }
            guard let w = whole.isEmpty ? 0 : Int64(whole) else { return nil }
            let (part, o1) = w.multipliedReportingOverflow(by: unit)
            guard !o1 else { return nil }
            let (sum, o2) = total.addingReportingOverflow(part)
            guard !o2 else { return nil }
            total = sum
            if !fraction.isEmpty {
                // Digits beyond the nanosecond do not count (as in Go).
                let f = Double("0." + fraction.prefix(18)) ?? 0
                let (t, o3) = total.addingReportingOverflow(Int64(f * Double(unit)))
                guard !o3 else { return nil }
                total = t
            }
        }
        return negative ? -total : total
    }
}

import Foundation
import LeaseRegistry
import NIOConcurrencyHelpers

/// What a token may do (shared/API.md, "Authentication and roles").
public enum TokenRole: String, Sendable, CaseIterable {
    /// Acquire, renew and release, for hostnames matching the token's patterns.
    case node
    /// Every GET.
    case reader
    /// Everything.
    case admin
}

/// `mx1.example.org` (that hostname) or `*.example.org` (one more label in front of
/// `example.org`, as in a TLS wildcard: `mx1.example.org`, not `a.b.example.org` nor
/// `example.org`). Compared after the API's hostname normalisation (lower case).
public struct HostnamePattern: Sendable, Equatable, CustomStringConvertible {
    public let wildcard: Bool
    /// The whole hostname, or for a wildcard the part after `*.`.
    public let suffix: String

    public init(_ text: String) throws(ConfigError) {
        let t = text.trimmingSpaces
        let body = t.hasPrefix("*.") ? String(t.dropFirst(2)) : t
        guard let normal = try? Validation.hostname(body), !normal.contains("*"), !normal.hasPrefix("."), !normal.hasSuffix("."),
            !normal.contains("..")
        else {
            throw ConfigError("hostnames", "\"\(text)\" is not a hostname or *.DOMAIN pattern")
        }
        wildcard = t.hasPrefix("*.")
        suffix = normal
    }

    /// `hostname` as the API normalised it.
    public func matches(_ hostname: String) -> Bool {
        guard wildcard else { return hostname == suffix }
        guard hostname.hasSuffix("." + suffix) else { return false }
        let label = hostname.dropLast(suffix.count + 1)
        return !label.isEmpty && !label.contains(".")
    }

    public var description: String { wildcard ? "*." + suffix : suffix }
}

/// One line of the token file: the SHA-256 of a token (never the token), its role, and for
/// the `node` role the hostnames it may lease.
public struct TokenEntry: Sendable, Equatable {
    public var digest: [UInt8]
    public var role: TokenRole
    public var hostnames: [HostnamePattern]
    /// A label for log lines ("token mx-fleet"): never the token or its hash.
    public var name: String

    public init(digest: [UInt8], role: TokenRole, hostnames: [HostnamePattern] = [], name: String) {
        self.digest = digest
        self.role = role
        self.hostnames = hostnames
        self.name = name
    }

    /// Whether this token may acquire, renew or release the lease of `hostname`.
    public func mayLease(_ hostname: String) -> Bool {
        switch role {
        case .admin: true
        case .reader: false
        case .node: hostnames.contains { $0.matches(hostname) }
        }
    }

    /// The token file's line for this entry.
    public var line: String {
        var s = "sha256:\(SHA256.hexString(digest)) role=\(role.rawValue)"
        if role == .node { s += " hostnames=" + hostnames.map(\.description).joined(separator: ",") }
        if !name.isEmpty { s += " name=\(name)" }
        return s
    }
}

/// The tokens a replica accepts, from a token file:
///
///     # comment
///     sha256:<64 hex digits> role=node hostnames=*.example.org,mx1.example.net name=mx-fleet
///     sha256:<64 hex digits> role=reader name=grafana
///     sha256:<64 hex digits> role=admin name=ops
///
/// Every line's hash is of the token's UTF-8 bytes (`printf %s TOKEN | sha256sum`). A file with
/// any bad line is refused as a whole, naming the line (a reload then keeps the tokens in use).
public struct TokenFile: Sendable, Equatable {
    public var entries: [TokenEntry]

    public init(entries: [TokenEntry]) { self.entries = entries }

    public static let maxEntries = 10_000

    public static func parse(_ text: String) throws(ConfigError) -> TokenFile {
        var entries: [TokenEntry] = []
        var lineNumber = 0
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            do throws(ConfigError) {
                entries.append(try entry(line))
            } catch {
                throw ConfigError("--token-file", "line \(lineNumber): \(error.problem)")
            }
            guard entries.count <= maxEntries else { throw ConfigError("--token-file", "more than \(maxEntries) tokens") }
        }
        return TokenFile(entries: entries)
    }

    private static func entry(_ line: String) throws(ConfigError) -> TokenEntry {
        let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard let first = fields.first, first.hasPrefix("sha256:") else {
            throw ConfigError("", "expected \"sha256:HASH role=ROLE ...\"")
        }
        let hex = first.dropFirst("sha256:".count)
        guard hex.count == 64, let digest = decodeHex(hex) else { throw ConfigError("", "the hash must be 64 hex digits (SHA-256)") }
        var role: TokenRole?
        var hostnames: [HostnamePattern]?
        var name = ""
        for field in fields.dropFirst() {
            let kv = field.split(separator: "=", maxSplits: 1)
            guard kv.count == 2 else { throw ConfigError("", "expected key=value, got \"\(field)\"") }
            switch kv[0] {
            case "role":
                guard let r = TokenRole(rawValue: String(kv[1])) else { throw ConfigError("", "unknown role \"\(kv[1])\" (node, reader or admin)") }
                role = r
            case "hostnames":
                hostnames = try kv[1].split(separator: ",").map { (p: Substring) throws(ConfigError) -> HostnamePattern in try HostnamePattern(String(p)) }
            case "name":
                guard kv[1].count <= 64, kv[1].allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.@".contains($0)) }) else {
                    throw ConfigError("", "a name is 1 to 64 letters, digits, '-', '_', '.' or '@'")
                }
                name = String(kv[1])
            default:
                throw ConfigError("", "unknown key \"\(kv[0])\" (role, hostnames or name)")
            }
        }
        guard let role else { throw ConfigError("", "role= is required") }
        switch (role, hostnames) {
        case (.node, nil), (.node, .some([])): throw ConfigError("", "a node token needs hostnames=PATTERN[,PATTERN...]")
        case (.node, _): break
        case (_, .some): throw ConfigError("", "only node tokens take hostnames=")
        case (_, nil): break
        }
        return TokenEntry(digest: digest, role: role, hostnames: hostnames ?? [], name: name)
    }

    static func decodeHex(_ text: some StringProtocol) -> [UInt8]? {
        var out: [UInt8] = []
        var high: UInt8?
        for c in text.utf8 {
            let v: UInt8
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): v = c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): v = c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): v = c - UInt8(ascii: "A") + 10
            default: return nil
            }
            if let h = high {
                out.append(h << 4 | v)
                high = nil
            } else {
                high = v
            }
        }
        return high == nil ? out : nil
    }

    /// The entry whose hash is the token's, or nil. The token's hash is compared with every
    /// entry's, each in constant time and all of them whatever matched, so the time taken
    /// says nothing about how close a guess came, nor which entry it matched.
    public func authenticate(_ token: String) -> TokenEntry? {
        let presented = SHA256.hash(Array(token.utf8))
        var found = -1
        for (i, e) in entries.enumerated() {
            var difference: UInt8 = 0
            for j in 0..<32 { difference |= presented[j] ^ e.digest[j] }
            // No branch on the secret-dependent comparison: all bits set when equal (0 - 1),
            // none when not (1...255 - 1, shifted out).
            let equal = (Int(difference) - 1) >> 8
            found = (equal & i) | (~equal & found)
        }
        return found >= 0 ? entries[found] : nil
    }

    /// A new random token (256 bits from the system's generator, base64url), prefixed so
    /// that secret scanners and people recognise it.
    public static func newToken() -> String {
        var rng = SystemRandomNumberGenerator()
        let bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let encoded = Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        return "nlt_" + encoded
    }
}

/// The token file a replica was started with, reloaded on SIGHUP (`reload`). Thread-safe.
public final class Authenticator: Sendable {
    public let path: String
    private let tokens: NIOLockedValueBox<TokenFile>
    /// The key of the holder digest: secret from API clients (derived from the token file,
    /// which only the replicas read), the same on every replica with the same file.
    private let digestKey: NIOLockedValueBox<[UInt8]>

    /// Loads `path`; throws if it cannot be read or has a bad line.
    public init(path: String) throws(ConfigError) {
        self.path = path
        let (file, key) = try Self.load(path)
        self.tokens = NIOLockedValueBox(file)
        self.digestKey = NIOLockedValueBox(key)
    }

    /// For tests: a fixed set of tokens.
    public init(tokens: TokenFile) {
        self.path = ""
        self.tokens = NIOLockedValueBox(tokens)
        self.digestKey = NIOLockedValueBox(Self.key(Array(tokens.entries.map(\.line).joined(separator: "\n").utf8)))
    }

    static func load(_ path: String) throws(ConfigError) -> (TokenFile, [UInt8]) {
        guard let data = FileManager.default.contents(atPath: path) else { throw ConfigError("--token-file", "cannot read \(path)") }
        guard data.count <= 4 << 20 else { throw ConfigError("--token-file", "\(path) is over 4 MiB") }
        return (try TokenFile.parse(String(decoding: data, as: UTF8.self)), key(Array(data)))
    }

    static func key(_ file: [UInt8]) -> [UInt8] { SHA256.hash(Array("nodelease holder digest\u{0}".utf8) + file) }

    /// What the 409 `hostname_in_use` shows of the holder to a caller that is not an admin:
    /// enough to tell two machines apart, not enough to take the lease over (acquiring with
    /// the holder's id would renew its lease), nor to test guesses of it offline (keyed).
    public func holderDigest(_ holder: String) -> String {
        let key = digestKey.withLockedValue { $0 }
        return "hmac:" + String(SHA256.hexString(SHA256.hmac(key: key, message: Array(holder.utf8))).prefix(16))
    }

    /// Reads the file again; on any error the tokens in use stay (and the error is returned
    /// for the log). Answers how many tokens are now in use.
    public func reload() -> Result<Int, ConfigError> {
        do throws(ConfigError) {
            let (fresh, key) = try Self.load(path)
            tokens.withLockedValue { $0 = fresh }
            digestKey.withLockedValue { $0 = key }
            return .success(fresh.entries.count)
        } catch {
            return .failure(error)
        }
    }

    public var count: Int { tokens.withLockedValue { $0.entries.count } }

    /// This replica's own secret for console sessions, random at start: the token file holds
    /// only hashes, and whoever reads it must not be able to mint a session. A browser talks
    /// to one replica, so a session need not be valid on another (and a restart signs out).
    private let sessionKey: [UInt8] = {
        var rng = SystemRandomNumberGenerator()
        return (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
    }()

    private static func sameBytes(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for i in 0..<a.count { difference |= a[i] ^ b[i] }
        return difference == 0
    }

    /// What one replica's console presents to another's `GET /v1/status` (and nothing else),
    /// so that no user's token is sent on. Derived from the tokens in the file, in a canonical
    /// order (comments, order and spacing do not change it, so replicas agree through a
    /// rolling SIGHUP): whoever can read the token file can read the replicas' status, no more.
    public var replicaStatusToken: String {
        let canonical = tokens.withLockedValue { file in file.entries.map(\.line).sorted().joined(separator: "\n") }
        return "nlr_" + SHA256.hexString(SHA256.hmac(key: Array("nodelease replica status".utf8), message: Array(canonical.utf8)))
    }

    public func isReplicaStatusToken(authorization: String?) -> Bool {
        guard let header = authorization else { return false }
        return Self.sameBytes(Array(header.utf8), Array("Bearer \(replicaStatusToken)".utf8))
    }

    /// The longest a console session lasts.
    public static let maxSessionSeconds: UInt64 = 43_200

    /// A console session for `token` until `expires` (Unix seconds): the token's hash, the
    /// expiry and a MAC over both with this replica's secret, so the cookie is not the token,
    /// cannot be extended or forged, and ends when the token leaves the file.
    public func session(for token: String, expires: UInt64) -> String? {
        guard let entry = authenticate(authorization: "Bearer " + token) else { return nil }
        let digest = SHA256.hexString(entry.digest)
        return "v1.\(expires).\(digest).\(SHA256.hexString(SHA256.hmac(key: sessionKey, message: Array("\(expires).\(digest)".utf8))))"
    }

    /// The entry of a console session cookie that is valid at `now` (Unix seconds), or nil.
    public func entry(session: String, now: UInt64) -> TokenEntry? {
        let parts = session.split(separator: ".")
        guard parts.count == 4, parts[0] == "v1", let expires = UInt64(parts[1]), now < expires, expires <= now + Self.maxSessionSeconds,
            let digest = TokenFile.decodeHex(parts[2]), digest.count == 32, let given = TokenFile.decodeHex(parts[3])
        else { return nil }
        guard Self.sameBytes(given, SHA256.hmac(key: sessionKey, message: Array("\(expires).\(parts[2])".utf8))) else { return nil }
        return tokens.withLockedValue { file in file.entries.first { Self.sameBytes($0.digest, digest) } }
    }

    /// The entry of `Authorization: Bearer TOKEN`, or nil.
    public func authenticate(authorization: String?) -> TokenEntry? {
        guard let header = authorization else { return nil }
        let parts = header.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        let token = parts[1].trimmingCharacters(in: .whitespaces)
        guard !token.isEmpty, token.utf8.count <= 512 else { return nil }
        let file = tokens.withLockedValue { $0 }
        return file.authenticate(token)
    }
}


import NIOCore
import NIOSSL

/// Mutual TLS between replicas. Every replica has a certificate from the cluster's CA whose
/// subject alternative names include the URI `nodelease://CLUSTER/replica/ID`. Both ends of a
/// peer connection present their certificate and verify the other's chain against the CA
/// (and its validity period); then each checks the other's identity: the acceptor, that the
/// certificate names the replica id and cluster id its hello claims; the dialer, that it
/// names the replica it meant to dial. Host names are not checked: the identity is the
/// replica id, and replicas may move between addresses.
public struct PeerTLS: Sendable {
    let server: NIOSSLContext
    let client: NIOSSLContext
    /// This replica's own certificate.
    let leaf: NIOSSLCertificate

    /// PEM files: this replica's certificate (its chain, leaf first), its private key, and the
    /// cluster CA's certificate(s).
    public init(certificateFile: String, keyFile: String, caFile: String) throws {
        let chain = try NIOSSLCertificate.fromPEMFile(certificateFile)
        guard !chain.isEmpty else { throw PeerTLSError("\(certificateFile) holds no certificate") }
        let key = try NIOSSLPrivateKey(file: keyFile, format: .pem)
        let roots = try NIOSSLCertificate.fromPEMFile(caFile)
        guard !roots.isEmpty else { throw PeerTLSError("\(caFile) holds no certificate") }
        try self.init(chain: chain, key: key, roots: roots)
    }

    public init(chain: [NIOSSLCertificate], key: NIOSSLPrivateKey, roots: [NIOSSLCertificate]) throws {
        var server = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        // A server verifies client certificates only when told to: require one, chained to
        // the cluster's CA and no other.
        server.certificateVerification = .noHostnameVerification
        server.trustRoots = .certificates(roots)
        server.minimumTLSVersion = .tlsv12
        var client = TLSConfiguration.makeClientConfiguration()
        client.certificateChain = chain.map { .certificate($0) }
        client.privateKey = .privateKey(key)
        client.certificateVerification = .noHostnameVerification
        client.trustRoots = .certificates(roots)
        client.minimumTLSVersion = .tlsv12
        self.server = try NIOSSLContext(configuration: server)
        self.client = try NIOSSLContext(configuration: client)
        self.leaf = chain[0]
    }

    /// Refuses a certificate its peers would refuse (so the operator reads why at start, not
    /// in every peer's log): one that does not name this replica, has expired or is not valid
    /// yet. Answers a warning for one that expires within a week.
    public func check(cluster: String, replica: UInt64, now: Int) throws -> String? {
        let identity = Self.identity(cluster: cluster, replica: replica)
        let names = Self.uris(leaf)
        guard names.contains(identity) else {
            throw PeerTLSError("the peer certificate names \(names.isEmpty ? "no nodelease:// URI" : names.joined(separator: ", ")), not \(identity)")
        }
        let after = Int(leaf.notValidAfter)
        let before = Int(leaf.notValidBefore)
        if now > after { throw PeerTLSError("the peer certificate expired \((now - after) / 3600) hours ago") }
        if now < before { throw PeerTLSError("the peer certificate is not valid for another \((before - now) / 60) minutes") }
        if after - now < 7 * 86_400 { return "the peer certificate expires in \((after - now) / 3600) hours: renew it" }
        return nil
    }

    /// A TLS failure in words, with BoringSSL's reason kept at the end.
    static func explain(_ error: any Error) -> String {
        let raw = String(describing: error)
        let reasons: [(String, String)] = [
            ("TLSV1_ALERT_UNKNOWN_CA", "the peer does not trust this replica's certificate (not issued by the cluster's CA)"),
            ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "the peer says this replica's certificate has expired"),
            ("CERTIFICATE_VERIFY_FAILED", "the certificate presented did not verify against the cluster's CA (another CA, expired or not yet valid)"),
            ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "no certificate was presented"),
            ("CERTIFICATE_REQUIRED", "the peer requires a certificate and got none"),
            ("WRONG_VERSION_NUMBER", "the other side does not speak TLS"),
            ("HTTP_REQUEST", "the other side does not speak TLS"),
        ]
        let reason = raw.split(separator: ":").first { part in reasons.contains { part.hasPrefix($0.0) } }
        guard let reason, let words = reasons.first(where: { reason.hasPrefix($0.0) })?.1 else { return raw }
        return "\(words) [\(reason.prefix { $0 != " " })]"
    }

    /// The URI a replica's certificate must carry.
    public static func identity(cluster: String, replica: UInt64) -> String { "nodelease://\(cluster)/replica/\(replica)" }

    /// The URIs among a certificate's subject alternative names.
    static func uris(_ certificate: NIOSSLCertificate) -> [String] {
        certificate._subjectAlternativeNames().compactMap { name in
            name.nameType == .uri ? String(decoding: Array(name.contents), as: UTF8.self) : nil
        }
    }

    /// Whether the TLS peer on `channel` presented a certificate naming some replica of `cluster`.
    static func namesAReplica(_ channel: any Channel, cluster: String) -> Bool {
        guard case .presented(let names) = peerNames(channel) else { return false }
        let prefix = "nodelease://\(cluster)/replica/"
        return names.contains { $0.hasPrefix(prefix) && UInt64($0.dropFirst(prefix.count)) != nil }
    }

    /// What the TLS peer on `channel` presented: the URIs of its certificate.
    enum PeerNames {
        case noTLS, noCertificate
        case presented([String])
    }

    static func peerNames(_ channel: any Channel) -> PeerNames {
        guard let handler = try? channel.pipeline.syncOperations.handler(type: NIOSSLHandler.self) else { return .noTLS }
        guard let certificate = handler.peerCertificate else { return .noCertificate }
        return .presented(uris(certificate))
    }

    /// Why the TLS peer on `channel` is not `identity`, or nil if it is.
    static func mismatch(_ channel: any Channel, expected identity: String) -> String? {
        let names: [String]
        switch peerNames(channel) {
        case .noTLS: return "no TLS on this connection"
        case .noCertificate: return "no certificate was presented"
        case .presented(let n): names = n
        }
        if names.contains(identity) { return nil }
        return "its certificate names \(names.isEmpty ? "no nodelease:// URI" : names.joined(separator: ", ")), not \(identity)"
    }
}

public struct PeerTLSError: Error, CustomStringConvertible {
    public var description: String
    init(_ d: String) { description = d }
}

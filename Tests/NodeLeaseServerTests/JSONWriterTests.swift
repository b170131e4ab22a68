import Foundation
import LeaseRegistry
import Testing

@testable import NodeLeaseServer

struct JSONWriterTests {
    /// Strings written as JSON read back the same, through our parser and Foundation's:
    /// those that need no escape (copied whole) and those that do.
    @Test(arguments: [
        "", "mx1.example.org", "a\"b", "back\\slash", "line\nfeed", "tab\there", "cr\r", "\u{01}\u{1f}", "ünïcödé ✉️",
        "\"", "\\", "end\"", "mixed \u{7f} \u{0b} \" \\ ok",
    ])
    func stringsRoundTrip(_ s: String) throws {
        var bytes: [UInt8] = []
        JSONObject.appendString(s, to: &bytes)
        guard case .string(let parsed) = try JSONParser.parse(bytes) else {
            Issue.record("not a string: \(String(decoding: bytes, as: UTF8.self))")
            return
        }
        #expect(parsed == s)
        let foundation = try JSONSerialization.jsonObject(with: Data(bytes), options: .fragmentsAllowed) as? String
        #expect(foundation == s)
    }

    /// A render of the registry is the ClusterNode objects the JSON writer makes, joined, for
    /// every filter; its times are what Foundation writes (leap days, far years included).
    @Test func aRenderOfTheRegistryIsItsObjectsJoined() throws {
        var registry = LeaseRegistry()
        // 1970, a leap day, the end of 2025, 2100 (not a leap year), the last second of 9999.
        let times: [UInt64] = [0, 951_782_400, 1_767_225_599, 4_107_542_399, 253_402_300_799]
        for (i, t) in times.enumerated() {
            _ = registry.apply(.acquire(hostname: "mx\(i).example.org", holder: "h-\(i)", ttlSeconds: 30, idRange: 1...100), now: t, index: UInt64(i + 1))
        }
        _ = registry.apply(.release(leaseID: 2), now: 1_767_225_600, index: 6)
        _ = registry.apply(.expire(leaseID: 3, renewalIndex: 3), now: 1_767_225_600, index: 7)
        let iso = ISO8601DateFormatter()
        iso.timeZone = TimeZone(identifier: "UTC")
        for status in [nil, NodeStatus.active, .stale, .inactive] {
            let expected = jsonArray(
                registry.nodes(status: status).map { n in
                    var o = JSONObject()
                    o.field("nodeId", UInt64(n.nodeID.rawValue))
                    o.field("hostname", n.hostname)
                    o.field("lastRenewal", iso.string(from: Date(timeIntervalSince1970: TimeInterval(n.lastRenewal))))
                    o.field("status", n.status.description)
                    return o.json
                })
            let rendered = Array(HTTPAPI.nodesJSON(registry, status: status).readableBytesView)
            #expect(String(decoding: rendered, as: UTF8.self) == String(decoding: expected, as: UTF8.self), "status \(String(describing: status))")
        }
        #expect(registry.count(of: nil) == 5 && registry.count(of: .stale) == 1 && registry.count(of: .inactive) == 1)
    }
}

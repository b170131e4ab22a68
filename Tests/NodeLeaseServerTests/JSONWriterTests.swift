import Foundation
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
}

import Logging
import NIOConcurrencyHelpers

/// Collects log lines (level, message and metadata), for tests that check what an operator
/// would read.
public final class CapturedLog: Sendable {
    private let lines = NIOLockedValueBox<[String]>([])

    public init() {}

    public var all: [String] { lines.withLockedValue { $0 } }

    /// A logger that writes everything, from trace level up, here.
    public var logger: Logger {
        var l = Logger(label: "test") { _ in Handler(sink: self) }
        l.logLevel = .trace
        return l
    }

    struct Handler: LogHandler {
        let sink: CapturedLog
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            var all = metadata
            if let m = event.metadata { all.merge(m, uniquingKeysWith: { $1 }) }
            let line = "\(event.level) \(event.message)" + (all.isEmpty ? "" : " \(all)")
            sink.lines.withLockedValue { $0.append(line) }
        }
    }
}

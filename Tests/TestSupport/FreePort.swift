import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Loopback ports for the test targets' servers, one counter for the whole test process: each
/// port is handed out once (until the range wraps), counting up from a per-process start in
/// 20000-31999, below the kernel's ephemeral ports (32768-60999 on Linux), so that neither
/// another test's port nor an outgoing connection's local port can take it between this check
/// and the test's bind. A port that does not bind now is skipped. (Two test processes at once
/// could still meet; the suites run in one.)
private let nextTestPort = NIOLockedValueBox<Int>(20_000 + Int(getpid() % 100) * 119)

public func freePort() throws -> Int {
    for _ in 0..<12_000 {
        let port = nextTestPort.withLockedValue { next -> Int in
            defer { next = next >= 31_999 ? 20_000 : next + 1 }
            return next
        }
        guard let channel = try? ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: port).wait()
        else { continue }
        try channel.close().wait()
        return port
    }
    throw NoFreePort()
}

public struct NoFreePort: Error {}

import LeaseRegistry
import Raft

/// A deterministic state machine the simulator replicates. The lease registry is one; the
/// `RegisterMachine` below is the simplest.
public protocol SimStateMachine {
    init()
    /// Applies one committed command; the result goes back to the client that proposed it.
    mutating func apply(_ command: [UInt8], index: LogIndex) -> (any Sendable)?
    /// Serializes the whole state.
    func snapshot() -> [UInt8]
    /// Replaces the state with a snapshot's.
    mutating func restore(_ snapshot: [UInt8]) throws
    /// A digest of the state: replicas at the same index must have the same digest.
    var digest: UInt64 { get }
}

/// 64-bit FNV-1a, for digests.
public struct FNV1a: Sendable {
    public private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325
    public init() {}
    public mutating func add(_ bytes: some Sequence<UInt8>) {
        for b in bytes {
            value ^= UInt64(b)
            value = value &* 0x0000_0100_0000_01B3
        }
    }
    public mutating func add(_ v: UInt64) {
        withUnsafeBytes(of: v.littleEndian) { add($0) }
    }
    public static func hash(_ bytes: some Sequence<UInt8>) -> UInt64 {
        var h = FNV1a()
        h.add(bytes)
        return h.value
    }
}

/// A replicated register: commands `key=value`; the state is every key's last value plus a
/// running digest of every command applied, so two replicas that applied different commands
/// (or the same in another order) never agree.
public struct RegisterMachine: SimStateMachine {
    public private(set) var values: [String: String] = [:]
    public private(set) var applied: UInt64 = 0
    public private(set) var history = FNV1a()

    public init() {}

    @discardableResult
    public mutating func apply(_ command: [UInt8], index: LogIndex) -> (any Sendable)? {
        applied += 1
        history.add(index.rawValue)
        history.add(command)
        let text = String(decoding: command, as: UTF8.self)
        // "op:<id> <key>=<value>"
        guard let space = text.firstIndex(of: " ") else { return nil }
        let assignment = text[text.index(after: space)...]
        guard let eq = assignment.firstIndex(of: "=") else { return nil }
        values[String(assignment[..<eq])] = String(assignment[assignment.index(after: eq)...])
        return nil
    }

    public func value(_ key: String) -> String? { values[key] }

    public var digest: UInt64 {
        var h = history
        h.add(applied)
        return h.value
    }

    public func snapshot() -> [UInt8] {
        var lines = ["\(applied) \(history.value)"]
        for key in values.keys.sorted() { lines.append("\(key)=\(values[key]!)") }
        return Array(lines.joined(separator: "\n").utf8)
    }

    public mutating func restore(_ snapshot: [UInt8]) throws {
        var fresh = RegisterMachine()
        if !snapshot.isEmpty {
            let lines = String(decoding: snapshot, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
            let head = lines[0].split(separator: " ")
            guard head.count == 2, let n = UInt64(head[0]), let h = UInt64(head[1]) else {
                throw SimulationError.badSnapshot
            }
            fresh.applied = n
            fresh.history = FNV1a(restoring: h)
            for line in lines.dropFirst() {
                guard let eq = line.firstIndex(of: "=") else { throw SimulationError.badSnapshot }
                fresh.values[String(line[..<eq])] = String(line[line.index(after: eq)...])
            }
        }
        self = fresh
    }

    public static func command(op: UInt64, key: String, value: String) -> [UInt8] {
        Array("op:\(op) \(key)=\(value)".utf8)
    }
}

extension FNV1a {
    init(restoring value: UInt64) {
        self.init()
        self.value = value
    }
}

public enum SimulationError: Error {
    case badSnapshot
}

/// The lease registry as the simulator's state machine.
public struct LeaseMachine: SimStateMachine {
    public private(set) var registry = LeaseRegistry()

    public init() {}

    public mutating func apply(_ command: [UInt8], index: LogIndex) -> (any Sendable)? {
        registry.apply(entry: command, index: index.rawValue)
    }

    public func snapshot() -> [UInt8] { registry.snapshot() }

    public mutating func restore(_ snapshot: [UInt8]) throws { registry = try LeaseRegistry(snapshot: snapshot) }

    public var digest: UInt64 { FNV1a.hash(registry.snapshot()) }
}

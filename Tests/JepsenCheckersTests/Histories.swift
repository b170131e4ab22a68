import JepsenCheckers

/// Builders for hand-made histories. Times are in nanoseconds (`s` is a second); leases use a
/// 4 s TTL; an acquire's fencing token is its lease id.
func op(
    _ p: Int, _ kind: HistoryOp.Kind, _ holder: String, lease: String?, at invoke: UInt64, done: UInt64, _ outcome: HistoryOp.Outcome = .ok,
    node: UInt32? = 1, status: String? = nil, index: UInt64? = nil, error: String? = nil, host: String = "mx"
) -> HistoryOp {
    var o = HistoryOp(process: p, kind: kind, hostname: host, holder: holder, invoke: invoke, complete: done, outcome: outcome)
    o.leaseId = lease
    if outcome == .ok { o.nodeId = node }
    if kind == .acquire, outcome == .ok, let l = lease { o.fencingToken = UInt64(l) }
    o.ttlSeconds = 4
    o.status = status
    o.index = index
    o.error = error
    return o
}

/// A read of one hostname (`nil` status: absent), linearizable unless told otherwise.
func read(
    _ p: Int, at invoke: UInt64, done: UInt64, node: UInt32? = 1, _ status: String?, host: String = "mx", index: UInt64? = nil,
    linearizable: Bool = true
) -> HistoryOp {
    var o = op(p, .read, "r\(p)", lease: nil, at: invoke, done: done, node: node, status: status, index: index, host: host)
    if status == nil { o.nodeId = nil }
    o.linearizable = linearizable
    return o
}

/// A read of the whole registry.
func registryRead(_ p: Int, at invoke: UInt64, done: UInt64, _ entries: [RegistryEntry], index: UInt64, replica: Int, linearizable: Bool = false) -> HistoryOp {
    var o = HistoryOp(process: p, kind: .read, hostname: "reader", holder: "r", invoke: invoke, complete: done, outcome: .ok)
    o.registry = entries
    o.index = index
    o.replica = replica
    o.linearizable = linearizable
    return o
}

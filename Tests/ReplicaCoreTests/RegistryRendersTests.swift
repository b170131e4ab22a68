import Raft
import ReplicaCore
import Testing

/// The decisions of `RegistryRenders`: one render at a time, shared by every read of its filter
/// that arrived at or before its index, never by a read that arrived later.
@Suite struct RegistryRendersTests {
    typealias Renders = RegistryRenders<String?>

    @Test func readsArrivingTogetherShareOneRender() {
        var r = Renders()
        let first = r.request(id: 1, filter: nil, applied: 10)
        #expect(first == .init(filter: nil, index: 10, readers: [1]))
        // Woken by the same change, at the same index: they join the render in flight.
        for id in 2...100 as ClosedRange<UInt64> { #expect(r.request(id: id, filter: nil, applied: 10) == nil) }
        #expect(r.count == 100)
        let done = r.finished(applied: 10)
        #expect(done.answered == Array(1...100))
        #expect(done.next == nil && r.inFlight == nil && r.count == 0)
    }

    @Test func aReadNeverGetsARenderOlderThanItsArrival() {
        var r = Renders()
        _ = r.request(id: 1, filter: nil, applied: 10)
        // Arrived after more applied (a client that wrote through this replica, say): it waits
        // for the next render, at an index at least its own.
        #expect(r.request(id: 2, filter: nil, applied: 11) == nil)
        #expect(r.request(id: 3, filter: nil, applied: 12) == nil)
        let done = r.finished(applied: 12)
        #expect(done.answered == [1])
        #expect(done.next == .init(filter: nil, index: 12, readers: [2, 3]))
        // One arriving now, at 12, joins it; one at 13 does not.
        #expect(r.request(id: 4, filter: nil, applied: 12) == nil)
        #expect(r.request(id: 5, filter: nil, applied: 13) == nil)
        let again = r.finished(applied: 15)
        #expect(again.answered == [2, 3, 4])
        #expect(again.next == .init(filter: nil, index: 15, readers: [5]))
    }

    @Test func filtersRenderApartOldestFirst() {
        var r = Renders()
        #expect(r.request(id: 1, filter: "active", applied: 5) == .init(filter: "active", index: 5, readers: [1]))
        #expect(r.request(id: 2, filter: nil, applied: 5) == nil)
        #expect(r.request(id: 3, filter: "stale", applied: 5) == nil)
        #expect(r.request(id: 4, filter: nil, applied: 6) == nil)
        #expect(r.request(id: 5, filter: "active", applied: 6) == nil)
        // The oldest waiting read's filter goes next, with every read of that filter.
        var done = r.finished(applied: 7)
        #expect(done.answered == [1])
        #expect(done.next == .init(filter: nil, index: 7, readers: [2, 4]))
        done = r.finished(applied: 7)
        #expect(done.next == .init(filter: "stale", index: 7, readers: [3]))
        done = r.finished(applied: 8)
        #expect(done.next == .init(filter: "active", index: 8, readers: [5]))
        done = r.finished(applied: 8)
        #expect(done.answered == [5] && done.next == nil)
    }

    @Test func removeAllTakesEveryRead() {
        var r = Renders()
        _ = r.request(id: 1, filter: nil, applied: 1)
        _ = r.request(id: 2, filter: nil, applied: 2)
        _ = r.request(id: 3, filter: "active", applied: 2)
        #expect(r.removeAll().sorted() == [1, 2, 3])
        #expect(r.inFlight == nil && r.count == 0)
        // A render that was in flight ends with nothing to answer and nothing to start.
        let done = r.finished(applied: 3)
        #expect(done.answered.isEmpty && done.next == nil)
    }
}

/// A min-heap of timed events. Ties break by insertion order, so the run is deterministic.
struct EventQueue<Event> {
    private struct Item {
        var time: UInt64
        var sequence: UInt64
        var event: Event
        func before(_ o: Item) -> Bool { time != o.time ? time < o.time : sequence < o.sequence }
    }
    private var heap: [Item] = []
    private var sequence: UInt64 = 0

    var isEmpty: Bool { heap.isEmpty }
    var count: Int { heap.count }

    mutating func push(_ event: Event, at time: UInt64) {
        sequence += 1
        heap.append(Item(time: time, sequence: sequence, event: event))
        var i = heap.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard heap[i].before(heap[parent]) else { break }
            heap.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> (time: UInt64, event: Event)? {
        guard !heap.isEmpty else { return nil }
        heap.swapAt(0, heap.count - 1)
        let top = heap.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1
            let r = l + 1
            var m = i
            if l < heap.count && heap[l].before(heap[m]) { m = l }
            if r < heap.count && heap[r].before(heap[m]) { m = r }
            if m == i { break }
            heap.swapAt(i, m)
            i = m
        }
        return (top.time, top.event)
    }
}

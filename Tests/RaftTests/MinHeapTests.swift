import Raft
import Testing

struct MinHeapTests {
    /// Built at once (bottom-up) or one insert at a time, a heap gives its elements in
    /// ascending order, duplicates included.
    @Test func buildingAndInsertingBothPopInOrder() {
        var random = DeterministicGenerator(seed: 7)
        for size in [0, 1, 2, 3, 10, 100, 1000] {
            let values = (0..<size).map { _ in random.next() % 50 }
            var built = MinHeap(values)
            var inserted = MinHeap<UInt64>()
            for v in values { inserted.insert(v) }
            var fromBuilt: [UInt64] = []
            var fromInserted: [UInt64] = []
            while let m = built.min {
                fromBuilt.append(m)
                built.removeMin()
            }
            while let m = inserted.min {
                fromInserted.append(m)
                inserted.removeMin()
            }
            #expect(fromBuilt == values.sorted(), "size \(size)")
            #expect(fromInserted == values.sorted(), "size \(size)")
        }
    }

    /// Removing elements at any position of the array order keeps the heap a heap: what is
    /// left pops in order.
    @Test func removingAtAnyPositionKeepsTheOrder() {
        var random = DeterministicGenerator(seed: 11)
        for size in [1, 2, 3, 10, 100, 1000] {
            var heap = MinHeap<UInt64>()
            var left: [UInt64] = []
            for _ in 0..<size {
                let v = random.next() % 200
                heap.insert(v)
                left.append(v)
            }
            for _ in 0..<(size / 2 + 1) where heap.count > 0 {
                let i = Int(random.next() % UInt64(heap.count))
                let v = heap.element(at: i)
                heap.remove(at: i)
                left.remove(at: left.firstIndex(of: v)!)
                let w = random.next() % 200
                heap.insert(w)
                left.append(w)
            }
            var popped: [UInt64] = []
            while let m = heap.min {
                popped.append(m)
                heap.removeMin()
            }
            #expect(popped == left.sorted(), "size \(size)")
        }
    }
}

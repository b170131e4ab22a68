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
}

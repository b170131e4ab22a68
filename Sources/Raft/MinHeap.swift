/// A binary min-heap: the smallest element first (ties as `<` orders them, so the order is
/// deterministic for elements that compare all their fields).
public struct MinHeap<Element: Comparable & Sendable>: Sendable {
    private var items: [Element] = []

    public init() {}

    /// A heap of `elements`, built bottom-up in O(n). The order they come in shapes the array,
    /// but not what `min` and `removeMin` give (always the least element).
    public init(_ elements: [Element]) {
        items = elements
        var i = items.count / 2
        while i > 0 {
            i -= 1
            siftDown(from: i)
        }
    }

    public var count: Int { items.count }
    /// Every element, in the heap's array order (not sorted).
    public var elements: [Element] { items }
    public var isEmpty: Bool { items.isEmpty }
    /// The smallest element.
    public var min: Element? { items.first }

    public mutating func insert(_ e: Element) {
        items.append(e)
        var i = items.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            guard items[i] < items[p] else { break }
            items.swapAt(i, p)
            i = p
        }
    }

    /// Removes the smallest element.
    public mutating func removeMin() {
        guard !items.isEmpty else { return }
        items.swapAt(0, items.count - 1)
        items.removeLast()
        siftDown(from: 0)
    }

    private mutating func siftDown(from start: Int) {
        var i = start
        while true {
            let l = 2 * i + 1
            let r = l + 1
            var m = i
            if l < items.count && items[l] < items[m] { m = l }
            if r < items.count && items[r] < items[m] { m = r }
            if m == i { break }
            items.swapAt(i, m)
            i = m
        }
    }
}

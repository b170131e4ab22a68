/// A binary min-heap: the smallest element first (ties as `<` orders them, so the order is
/// deterministic for elements that compare all their fields).
public struct MinHeap<Element: Comparable & Sendable>: Sendable {
    @usableFromInline var items: [Element] = []

    @inlinable public init() {}

    /// A heap of `elements`, built bottom-up in O(n). The order they come in shapes the array,
    /// but not what `min` and `removeMin` give (always the least element).
    @inlinable public init(_ elements: [Element]) {
        items = elements
        var i = items.count / 2
        while i > 0 {
            i -= 1
            siftDown(from: i)
        }
    }

    @inlinable public var count: Int { items.count }
    /// Every element, in the heap's array order (not sorted).
    @inlinable public var elements: [Element] { items }
    @inlinable public var isEmpty: Bool { items.isEmpty }
    /// The smallest element.
    @inlinable public var min: Element? { items.first }

    /// The element at position `i` of the heap's array order (`0..<count`).
    @inlinable public func element(at i: Int) -> Element {
        precondition(i >= 0 && i < items.count, "MinHeap position out of range")
        return items[i]
    }

    @inlinable public mutating func insert(_ e: Element) {
        items.append(e)
        siftUp(from: items.count - 1)
    }

    /// Removes the element at position `i` of the heap's array order (`0..<count`): the last element takes
    /// its place and moves up or down to where it belongs.
    @inlinable public mutating func remove(at i: Int) {
        precondition(i >= 0 && i < items.count, "MinHeap position out of range")
        let last = items.count - 1
        guard i != last else {
            items.removeLast()
            return
        }
        items.swapAt(i, last)
        items.removeLast()
        siftDown(from: i)
        siftUp(from: i)
    }

    @inlinable mutating func siftUp(from start: Int) {
        var i = start
        while i > 0 {
            let p = (i - 1) / 2
            guard items[i] < items[p] else { break }
            items.swapAt(i, p)
            i = p
        }
    }

    /// Removes the smallest element.
    @inlinable public mutating func removeMin() {
        guard !items.isEmpty else { return }
        items.swapAt(0, items.count - 1)
        items.removeLast()
        siftDown(from: 0)
    }

    @inlinable mutating func siftDown(from start: Int) {
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

/// A sorted set kept as a list of short sorted arrays. Insert and remove move at most one
/// chunk (at most 2 × `chunkLimit` elements) and a binary search over the chunks' first elements, so their
/// cost does not grow with the set the way a single sorted array's does (a million node IDs in
/// one array made every insert below the top a 4 MB move). Iteration is in ascending order.
public struct SortedChunks<Element: Comparable & Sendable>: Sendable, Sequence, Equatable {
    static var chunkLimit: Int { 512 }

    private var chunks: [[Element]] = []
    public private(set) var count = 0

    public init() {}

    public var isEmpty: Bool { count == 0 }

    public var first: Element? { chunks.first?.first }

    /// The chunk that holds `e` or would: the last whose first element is at most `e`.
    private func chunkIndex(_ e: Element) -> Int {
        var lo = 0
        var hi = chunks.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if chunks[mid][0] <= e { lo = mid + 1 } else { hi = mid }
        }
        return Swift.max(0, lo - 1)
    }

    private static func position(_ e: Element, in chunk: [Element]) -> Int { chunk.partitionPoint { $0 < e } }

    public func contains(_ e: Element) -> Bool {
        guard !chunks.isEmpty else { return false }
        let chunk = chunks[chunkIndex(e)]
        let k = Self.position(e, in: chunk)
        return k < chunk.count && chunk[k] == e
    }

    /// Inserts `e`; false if it was there.
    @discardableResult
    public mutating func insert(_ e: Element) -> Bool {
        guard !chunks.isEmpty else {
            chunks = [[e]]
            count = 1
            return true
        }
        let c = chunkIndex(e)
        let k = Self.position(e, in: chunks[c])
        if k < chunks[c].count && chunks[c][k] == e { return false }
        chunks[c].insert(e, at: k)
        count += 1
        if chunks[c].count > 2 * Self.chunkLimit {
            let upper = Array(chunks[c][Self.chunkLimit...])
            chunks[c].removeSubrange(Self.chunkLimit...)
            chunks.insert(upper, at: c + 1)
        }
        return true
    }

    /// Removes `e`; false if it was not there.
    @discardableResult
    public mutating func remove(_ e: Element) -> Bool {
        guard !chunks.isEmpty else { return false }
        let c = chunkIndex(e)
        let k = Self.position(e, in: chunks[c])
        guard k < chunks[c].count && chunks[c][k] == e else { return false }
        chunks[c].remove(at: k)
        count -= 1
        if chunks[c].isEmpty {
            chunks.remove(at: c)
        } else if chunks[c].count < Self.chunkLimit / 4, c + 1 < chunks.count, chunks[c].count + chunks[c + 1].count <= Self.chunkLimit {
            let next = chunks.remove(at: c + 1)
            chunks[c].append(contentsOf: next)
        }
        return true
    }

    /// Appends `e`, which must be greater than every element (building from sorted input).
    public mutating func append(_ e: Element) {
        precondition(chunks.last?.last.map { $0 < e } ?? true, "SortedChunks.append out of order")
        if chunks.isEmpty || chunks[chunks.count - 1].count >= Self.chunkLimit {
            chunks.append([e])
        } else {
            chunks[chunks.count - 1].append(e)
        }
        count += 1
    }

    public struct Iterator: IteratorProtocol {
        let chunks: [[Element]]
        var c = 0
        var k = 0
        public mutating func next() -> Element? {
            while c < chunks.count {
                if k < chunks[c].count {
                    defer { k += 1 }
                    return chunks[c][k]
                }
                c += 1
                k = 0
            }
            return nil
        }
    }

    public func makeIterator() -> Iterator { Iterator(chunks: chunks) }

    public var underestimatedCount: Int { count }

    public static func == (a: SortedChunks, b: SortedChunks) -> Bool {
        a.count == b.count && a.elementsEqual(b)
    }
}

extension Array {
    /// The first index whose element is not `isBelow`, in an array where every element that is
    /// comes first (ascending order and "less than x" give the first position at or above x);
    /// a binary search.
    func partitionPoint(_ isBelow: (Element) -> Bool) -> Int {
        var lo = 0
        var hi = count
        while lo < hi {
            let mid = (lo + hi) / 2
            if isBelow(self[mid]) { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }
}

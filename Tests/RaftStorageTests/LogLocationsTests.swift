import Raft
@testable import RaftStorage
import Testing

struct LogLocationsTests {
    /// Random appends (with terms and segments that change now and then), suffix removals,
    /// prefix drops and resets, checked after each step against a plain array of locations.
    @Test func matchesAnArrayOfLocations() {
        var random = DeterministicGenerator(seed: 18)
        for _ in 0..<20 {
            var index = LogLocations()
            var model: [LogLocations.Location] = []
            var term: Term = 1
            var segment: UInt64 = 1
            var offset: UInt64 = 0
            for _ in 0..<600 {
                switch random.next() % 20 {
                case 0:
                    let n = Int(random.next() % UInt64(model.count + 1))
                    index.removeFirst(n)
                    model.removeFirst(min(n, model.count))
                case 1:
                    let i = Int(random.next() % UInt64(model.count + 1))
                    index.removeSuffix(from: i)
                    model.removeSubrange(min(i, model.count)...)
                case 2 where random.next() % 10 == 0:
                    index.removeAll()
                    model.removeAll()
                case 3:
                    term = Term(rawValue: term.rawValue + 1)
                case 4:
                    segment += 1
                    offset = 0
                default:
                    let length = Int(random.next() % 300)
                    let loc = LogLocations.Location(term: term, segment: segment, offset: offset, length: length)
                    offset += UInt64(length) + random.next() % 3 * 7
                    index.append(loc)
                    model.append(loc)
                }
                #expect(index.count == model.count)
                for (i, loc) in model.enumerated() where index[i] != loc || index.term(at: i) != loc.term {
                    Issue.record("position \(i) of \(model.count): \(index[i]), expected \(loc)")
                    return
                }
            }
        }
    }

    @Test func droppedEntriesTakeTheirRunsWithThem() {
        var index = LogLocations()
        for i in 0..<1000 {
            index.append(.init(term: Term(rawValue: UInt64(1 + i / 10)), segment: UInt64(1 + i / 100), offset: UInt64(i % 100 * 8), length: 8))
        }
        #expect(index.runCount == 100)
        index.removeFirst(995)
        #expect(index.runCount == 1)
        #expect(index[0] == .init(term: 100, segment: 10, offset: 95 * 8, length: 8))
    }

    @Test func offsetsPast4GiBDoNotFit() {
        let big = LogLocations.maxEnd
        #expect(LogLocations.fits(.init(term: 1, segment: 1, offset: big - 10, length: 10)))
        #expect(!LogLocations.fits(.init(term: 1, segment: 1, offset: big - 10, length: 11)))
        #expect(!LogLocations.fits(.init(term: 1, segment: 1, offset: big + 1, length: 0)))
    }
}

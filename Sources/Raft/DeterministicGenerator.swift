/// A small, fast, seedable random number generator (SplitMix64). The same seed always gives
/// the same sequence, on every platform, which is what simulations and election jitter in
/// tests need. Not for cryptography.
public struct DeterministicGenerator: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// True with probability `p`.
    public mutating func chance(_ p: Double) -> Bool {
        p > 0 && Double(next() >> 11) / Double(1 << 53) < p
    }

    /// A derived generator, so that one seed can feed independent streams.
    public mutating func fork() -> DeterministicGenerator { DeterministicGenerator(seed: next()) }
}

/// What a disk offers, as the backend advertises it.
public struct DiskGeometry: Sendable, Equatable {
    /// Size in 512-byte units (the `sectors` key, always 512-byte units).
    public var sectors: UInt64
    /// The disk's logical sector size (`sector-size`): 512 or 4096.
    public var logicalSectorSize: Int
    public var physicalSectorSize: Int
    public var readOnly: Bool
    public var discard: Bool
    public var secureDiscard: Bool
    /// `discard-granularity` in bytes (0: the logical sector size).
    public var discardGranularity: Int = 0
    /// `feature-max-indirect-segments` we advertise (0: no indirect).
    public var maximumIndirectSegments: Int

    public init(sectors: UInt64, logicalSectorSize: Int = 512, physicalSectorSize: Int = 512, readOnly: Bool = false,
                discard: Bool = false, secureDiscard: Bool = false, maximumIndirectSegments: Int = 256) {
        self.sectors = sectors; self.logicalSectorSize = logicalSectorSize; self.physicalSectorSize = physicalSectorSize
        self.readOnly = readOnly; self.discard = discard; self.secureDiscard = secureDiscard
        self.maximumIndirectSegments = maximumIndirectSegments
    }
}

import Synchronization

/// One counter of a worker's statistics: an enum whose cases are numbered
/// from 0 (the raw value indexes the storage).
public protocol WorkerCounter: RawRepresentable, CaseIterable, Sendable where RawValue == Int {
    /// The name operators see (Linux's sysfs name where there is one).
    var displayName: String { get }
}

/// A ring or queue worker's counters: written by the worker's thread,
/// read by anyone. A device sums its workers' snapshots. Block and network
/// workers differ only in their `Counter` enum.
public final class WorkerCounters<Counter: WorkerCounter>: @unchecked Sendable {  // the storage is atomics
    /// SAFETY: one atomic per counter, allocated and initialised here,
    /// released in deinit; only ever accessed through the atomics.
    @usableFromInline let storage: UnsafeMutablePointer<Atomic<UInt64>>
    @usableFromInline let count: Int

    public init() {
        count = Counter.allCases.count
        storage = .allocate(capacity: count)
        for i in 0..<count { (storage + i).initialize(to: Atomic(0)) }
    }

    deinit {
        storage.deinitialize(count: count)
        storage.deallocate()
    }

    /// Relaxed: counters are read for display only, ordering nothing.
    @inlinable
    public func add(_ counter: Counter, _ n: UInt64 = 1) {
        (storage + counter.rawValue).pointee.add(n, ordering: .relaxed)
    }

    @inlinable
    public subscript(_ counter: Counter) -> UInt64 {
        (storage + counter.rawValue).pointee.load(ordering: .relaxed)
    }

    /// Every counter now (each read on its own; relaxed).
    public var snapshot: Snapshot {
        Snapshot(values: (0..<count).map { (storage + $0).pointee.load(ordering: .relaxed) })
    }

    /// Counter values at one moment; device totals are sums of these.
    public struct Snapshot: Sendable, Equatable, CustomStringConvertible {
        private var values: [UInt64]

        init(values: [UInt64]) { self.values = values }

        public static var zero: Snapshot { Snapshot(values: Array(repeating: 0, count: Counter.allCases.count)) }

        public subscript(_ counter: Counter) -> UInt64 { values[counter.rawValue] }

        public static func + (a: Snapshot, b: Snapshot) -> Snapshot {
            Snapshot(values: zip(a.values, b.values).map { $0 &+ $1 })
        }

        /// "name value" pairs in the counters' order.
        public var description: String {
            Counter.allCases.map { "\($0.displayName) \(values[$0.rawValue])" }.joined(separator: " ")
        }
    }
}

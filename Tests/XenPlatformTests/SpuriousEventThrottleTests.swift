import Testing
import XenPlatform

@Suite struct SpuriousEventThrottleTests {
    /// One spurious wake is the ordinary race and costs nothing; from the
    /// second in a row the hold doubles from 1 ms to at most 1 s; a wake with
    /// work starts over.
    @Test func holdsDoubleToOneSecondAndWorkStartsOver() {
        var throttle = SpuriousEventThrottle()
        var now = 1_000_000_000
        let first = throttle.recordWake(foundWork: false, now: now)
        #expect(first, "the first spurious wake unmasks at once")
        var holds: [Int32] = []
        for _ in 0..<14 {
            let unmaskNow = throttle.recordWake(foundWork: false, now: now)
            #expect(!unmaskNow)
            let hold = throttle.millisecondsUntilUnmask(now: now) ?? -1
            holds.append(hold)
            let early = throttle.holdExpired(now: now + Int(hold) * 1_000_000 - 1)
            #expect(!early, "not before the hold ends")
            now += Int(hold) * 1_000_000
            let due = throttle.holdExpired(now: now)
            #expect(due)
            #expect(throttle.millisecondsUntilUnmask(now: now) == nil)
        }
        #expect(holds == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 1000, 1000, 1000])
        let withWork = throttle.recordWake(foundWork: true, now: now)
        #expect(withWork, "work unmasks at once")
        let afterWork = throttle.recordWake(foundWork: false, now: now)
        #expect(afterWork, "and the count starts over")
        let second = throttle.recordWake(foundWork: false, now: now)
        #expect(!second)
        #expect(throttle.millisecondsUntilUnmask(now: now) == 1)
    }

    /// The time left is rounded up to whole milliseconds (a poll timeout
    /// must not wake before the hold ends) and never negative; `release`
    /// ends a hold without counting as work.
    @Test func timeLeftRoundsUpAndReleaseEndsAHold() {
        var throttle = SpuriousEventThrottle()
        let now = 5_000_000_000
        _ = throttle.recordWake(foundWork: false, now: now)
        _ = throttle.recordWake(foundWork: false, now: now)
        _ = throttle.recordWake(foundWork: false, now: now)
        #expect(throttle.consecutive == 3)
        #expect(throttle.unmaskAt == now + 2_000_000)
        #expect(throttle.millisecondsUntilUnmask(now: now + 1) == 2, "1.999999 ms left: 2")
        #expect(throttle.millisecondsUntilUnmask(now: now + 1_000_001) == 1)
        #expect(throttle.millisecondsUntilUnmask(now: now + 9_000_000) == 0, "overdue: 0, not negative")
        throttle.release()
        #expect(throttle.unmaskAt == nil && throttle.millisecondsUntilUnmask(now: now) == nil)
        let expired = throttle.holdExpired(now: now + 9_000_000)
        #expect(!expired, "nothing held, nothing to unmask")
        let next = throttle.recordWake(foundWork: false, now: now)
        #expect(!next && throttle.millisecondsUntilUnmask(now: now) == 4, "release is not work: the count goes on")
    }
}

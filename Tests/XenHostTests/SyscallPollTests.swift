import Synchronization
import Testing
import XenSystem
#if canImport(Glibc)
import Glibc
#endif

@Suite struct SyscallPollTests {
    @Test func pollReadWriteCloseOnAPipe() throws {
        var fds: [Int32] = [-1, -1]
        #expect(pipe(&fds) == 0)
        #expect(Syscall.poll(fds[0], timeoutMilliseconds: 0) == .success(0))
        var byte: UInt8 = 7
        #expect(Syscall.write(fds[1], &byte, count: 1) == .success(1))
        #expect(Syscall.poll(fds[0], timeoutMilliseconds: 0, retryingInterrupts: false) == .success(1))
        var got: UInt8 = 0
        #expect(Syscall.read(fds[0], &got, count: 1) == .success(1))
        #expect(got == 7)
        Syscall.close(fds[1])
        // End of file: readable, and read returns 0.
        #expect(Syscall.poll(fds[0], timeoutMilliseconds: 0) == .success(1))
        #expect(Syscall.read(fds[0], &got, count: 1) == .success(0))
        Syscall.close(fds[0])
    }

    @Test func interruptedPollIsRetriedOrHandedBack() {
        let interruptOnce = { () -> SyscallMock in
            let calls = CallCount()
            return SyscallMock { record, argument in
                guard case .poll = record else { return .result(0) }
                if calls.next() == 1 { return .error(EINTR) }
                // The handler reports the descriptor readable.
                argument!.assumingMemoryBound(to: pollfd.self).pointee.revents = Int16(POLLIN)
                return .result(1)
            }
        }
        let retried = interruptOnce()
        SyscallMock.$current.withValue(retried) {
            #expect(Syscall.poll(5, timeoutMilliseconds: 100) == .success(1))
        }
        #expect(retried.records == [.poll(fds: [5], timeout: 100), .poll(fds: [5], timeout: 100)])
        let handedBack = interruptOnce()
        SyscallMock.$current.withValue(handedBack) {
            var set = [pollfd(fd: 5, events: Int16(POLLIN), revents: 0), pollfd(fd: 6, events: Int16(POLLIN), revents: 0)]
            let r = set.withUnsafeMutableBufferPointer { Syscall.poll($0, timeoutMilliseconds: -1, retryingInterrupts: false) }
            #expect(r == .failure(Errno(EINTR)))
            let again = set.withUnsafeMutableBufferPointer { Syscall.poll($0, timeoutMilliseconds: -1, retryingInterrupts: false) }
            #expect(again == .success(1) && set[0].revents == Int16(POLLIN))
        }
        #expect(handedBack.records == [.poll(fds: [5, 6], timeout: -1), .poll(fds: [5, 6], timeout: -1)])
    }
}

private final class CallCount: Sendable {
    private let count = Mutex(0)
    func next() -> Int { count.withLock { n in n += 1; return n } }
}

#if canImport(Glibc)
import Glibc
#endif
import NIOCore
import NIOPosix
import Testing
import XenProtocolTesting
@testable import XenStore
import XenStoreProtocol

/// A server on a fresh socket for one test.
func withServer(_ body: (XenStoreServer, String) async throws -> Void) async throws {
    let path = "/tmp/xenback-xs-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
    let server = XenStoreServer(socketPath: path)
    try await server.start()
    do {
        try await body(server, path)
    } catch {
        try await server.stop()
        unlink(path)
        throw error
    }
    try await server.stop()
    unlink(path)
}

@Suite struct XenStoreServerTests {
    @Test func clientOperations() async throws {
        try await withServer { _, path in
            let c = try await XenStoreClient.connect(socketPath: path)
            try await c.write("/vm/1/name", "guest")
            #expect(try await c.readString("/vm/1/name") == "guest")
            #expect(try await c.directory("/vm/1") == ["name"])
            try await c.mkdir("/vm/1/device")
            #expect(try await c.directory("/vm/1").sorted() == ["device", "name"])
            try await c.setPermissions("/vm/1", XenStorePermissions(owner: 0, others: .read))
            #expect(try await c.permissions("/vm/1").strings == ["r0"])
            try await c.rm("/vm/1")
            #expect(try await c.readIfPresent("/vm/1/name") == nil)
            await #expect(throws: XenStoreClientError.failed(.noEntry, operation: .read, path: "/vm/1/name")) {
                try await c.read("/vm/1/name")
            }
            await #expect(throws: XenStoreClientError.failed(.invalidArgument, operation: .read, path: "bad path")) {
                try await c.read("bad path")
            }
            #expect(try await c.domainPath(4) == "/local/domain/4")
            await c.close()
        }
    }

    @Test func watchEventsArriveAsAnAsyncSequence() async throws {
        try await withServer { _, path in
            let watcher = try await XenStoreClient.connect(socketPath: path)
            let writer = try await XenStoreClient.connect(socketPath: path)
            let (token, events) = try await watcher.watch("/backend/vbd")
            var iterator = events.makeAsyncIterator()
            #expect(await iterator.next() == XenStoreWatchEvent(path: "/backend/vbd", token: token), "initial event")
            try await writer.write("/backend/vbd/3/51712/state", "2")
            var seen: [String] = []
            while let e = await iterator.next() {
                seen.append(e.path)
                if e.path == "/backend/vbd/3/51712/state" { break }
            }
            #expect(seen.last == "/backend/vbd/3/51712/state")
            try await watcher.unwatch("/backend/vbd", token: token)
            #expect(await iterator.next() == nil, "the sequence ends on unwatch")
            await watcher.close(); await writer.close()
        }
    }

    @Test func transactionsRetryOnConflict() async throws {
        try await withServer { _, path in
            let a = try await XenStoreClient.connect(socketPath: path)
            let b = try await XenStoreClient.connect(socketPath: path)
            try await a.write("/counter", "0")
            // Two clients each add 1, fifty times, with read-modify-write transactions.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for client in [a, b] {
                    group.addTask {
                        for _ in 0..<50 {
                            try await client.withTransaction { tx in
                                let n = Int(try await client.readString("/counter", transaction: tx))!
                                try await client.write("/counter", String(n + 1), transaction: tx)
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            #expect(try await a.readString("/counter") == "100", "no lost update")
            await a.close(); await b.close()
        }
    }

    @Test func oversizedMessageClosesTheConnection() async throws {
        try await withServer { _, path in
            let c = try await XenStoreClient.connect(socketPath: path)
            // A header announcing 5000 bytes: xenstored cannot resync, so it hangs up.
            let channel = c.channel
            var buffer = channel.allocator.buffer(capacity: 16)
            for v: UInt32 in [2, 9, 0, 5000] { buffer.writeInteger(v, endianness: .little) }
            try await channel.writeAndFlush(buffer)
            try await channel.closeFuture.get()
            await #expect(throws: XenStoreClientError.connectionClosed) { try await c.read("/") }
        }
    }

    /// Xen's own tools (Debian's xenstore-utils over libxenstore) against our
    /// xenstored, in both directions.
    @Test func xenstoreUtilsInterop() async throws {
        try await withServer { _, path in
            let env = "XENSTORED_PATH=\(path)"
            func tool(_ command: String) -> (Int32, String) { runShell("\(env) \(command) 2>&1") }
            let c = try await XenStoreClient.connect(socketPath: path)

            #expect(tool("xenstore-write /tool/a 1 /tool/b 'two words'").0 == 0)
            #expect(try await c.readString("/tool/b") == "two words")
            try await c.write("/tool/c", "from-swift")
            #expect(tool("xenstore-read /tool/c") == (0, "from-swift\n"))
            let list = tool("xenstore-list /tool")
            #expect(list.0 == 0 && Set(list.1.split(separator: "\n")) == ["a", "b", "c"])
            let ls = tool("xenstore-ls /tool")
            #expect(ls.0 == 0 && ls.1.contains("b = \"two words\""))
            #expect(tool("xenstore-chmod /tool/a n0 r5").0 == 0)
            #expect(try await c.permissions("/tool/a").strings == ["n0", "r5"])
            #expect(tool("xenstore-rm /tool/a").0 == 0)
            #expect(try await c.readIfPresent("/tool/a") == nil)
            let missing = tool("xenstore-read /tool/nope")
            #expect(missing.0 != 0, "a failed read fails the tool")
            #expect(tool("xenstore-exists /tool/b").0 == 0)

            // xenstore-watch sees a change we make: -n 2 = the initial event and
            // one change. Its first line proves the watch is registered.
            let pipe = try #require(popen("\(env) timeout 10 xenstore-watch -n 2 /tool/w 2>&1", "r"))
            let initial = readLine(from: pipe)
            try await c.write("/tool/w", "fire")
            let change = readLine(from: pipe)
            #expect(pclose(pipe) == 0)
            #expect(initial == "/tool/w" && change == "/tool/w")
            await c.close()
        }
    }
}

/// One line from a child's output (blocking until it comes or the child exits).
func readLine(from pipe: UnsafeMutablePointer<FILE>) -> String? {
    var buffer = [CChar](repeating: 0, count: 4096)
    guard fgets(&buffer, Int32(buffer.count), pipe) != nil else { return nil }
    let line = String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return line.hasSuffix("\n") ? String(line.dropLast()) : line
}

@Suite struct XenbusDeviceTransportTests {
    /// The /dev/xen/xenbus path (a pipe-like descriptor) against our server,
    /// with a socketpair standing in for the device.
    @Test func clientOverAPipeLikeDescriptor() async throws {
        try await withServer { server, _ in
            var pair: [Int32] = [-1, -1]
            #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
            try await server.adopt(socket: pair[0], domain: 0)
            let c = try await XenStoreClient.connect(pipeDescriptor: pair[1])
            try await c.write("/via/xenbus", "yes")
            #expect(try await c.readString("/via/xenbus") == "yes")
            let (token, events) = try await c.watch("/via")
            var it = events.makeAsyncIterator()
            #expect(await it.next()?.token == token)
            await c.close()
        }
    }

    @Test func missingDeviceIsAClearError() async {
        await #expect(throws: XenStoreClientError.unavailable(path: "/nonexistent/xenbus", errno: ENOENT)) {
            try await XenStoreClient.connect(xenbusDevice: "/nonexistent/xenbus")
        }
    }
}

/// xenstored restarting under its clients (issue 8): a reconnecting client
/// carries on; a plain one reports the closed connection.
@Suite struct XenStoreReconnectionTests {
    @Test func aReconnectingClientOutlivesARestart() async throws {
        try await withServer { server, path in
            let client = try await XenStoreClient.connect(reconnecting: XenStoreReconnection(.socket(path: path)))
            let plain = try await XenStoreClient.connect(socketPath: path)
            try await client.write("/restart/before", "1")
            try await client.mkdir("/restart/watched")
            let (token, events) = try await client.watch("/restart/watched")
            var watched = events.makeAsyncIterator()
            #expect(await watched.next()?.path == "/restart/watched", "the initial event")

            // Writes in flight while xenstored restarts: each is sent again
            // if its answer was lost, none fails.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<200 {
                    group.addTask { try await client.write("/restart/n/\(i)", "\(i)") }
                }
                group.addTask { try await server.restart() }
                try await group.waitForAll()
            }
            #expect(try await client.directory("/restart/n").count == 200)
            #expect(try await client.readString("/restart/before") == "1", "the store survives the restart")
            await #expect(throws: XenStoreClientError.connectionClosed) { try await plain.read("/restart/before") }

            // The watch was registered again: its initial event, then a
            // change another connection makes.
            #expect(await watched.next()?.path == "/restart/watched", "the re-registered watch's initial event")
            let other = try await XenStoreClient.connect(socketPath: path)
            try await other.write("/restart/watched/key", "x")
            let changed = await watched.next()?.path
            #expect(changed == "/restart/watched/key")

            // A transaction cut by a restart starts over and commits once.
            try await client.write("/restart/counter", "0")
            var attempts = 0
            try await client.withTransaction { tx in
                attempts += 1
                let value = Int(try await client.readString("/restart/counter", transaction: tx))!
                if attempts == 1 { try await server.restart() }
                try await client.write("/restart/counter", "\(value + 1)", transaction: tx)
            }
            #expect(attempts == 2)
            #expect(try await client.readString("/restart/counter") == "1")

            try await client.unwatch("/restart/watched", token: token)
            await client.close()
            await #expect(throws: XenStoreClientError.connectionClosed) { try await client.read("/restart/before") }
            await other.close()
        }
    }
}

extension XenStoreReconnectionTests {
    /// xenstored gone for good: a request waits for it, and gives up when
    /// its task is cancelled (a daemon told to stop during the outage must
    /// be able to), whether the client had noticed the loss yet or not.
    @Test func aCancelledRequestGivesUpWhileXenstoredIsAway() async throws {
        let path = "/tmp/xenback-xs-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let server = XenStoreServer(socketPath: path)
        try await server.start()
        let client = try await XenStoreClient.connect(reconnecting: XenStoreReconnection(.socket(path: path)))
        try await client.write("/outage", "1")
        try await server.stop()
        unlink(path)
        let waiting = Task { try await client.read("/outage") }
        waiting.cancel()
        await #expect(throws: CancellationError.self) { try await waiting.value }
        // A task already cancelled when it asks.
        let cancelledFirst = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            try await client.write("/outage", "2")
        }
        await #expect(throws: CancellationError.self) { try await cancelledFirst.value }
        await client.close()
    }
}

/// XSA-349 on our side: a watch whose reader has stopped cannot grow
/// without bound, and overflowing it still says "re-read everything".
@Suite struct XenStoreWatchBoundTests {
    @Test func xsa349_aWatchNobodyReadsHoldsABoundedBacklog() async throws {
        try await withServer { _, path in
            let backend = try await XenStoreClient.connect(socketPath: path)
            let guest = try await XenStoreClient.connect(socketPath: path)
            try await guest.mkdir("/local/domain/9/device/vbd/768/state")
            let (token, events) = try await backend.watch("/local/domain/9/device/vbd/768/state")
            let flood = XenStoreClient.maximumBufferedWatchEvents * 3
            for i in 0..<flood { try await guest.write("/local/domain/9/device/vbd/768/state/f\(i % 64)", "\(i)") }
            // Every flood event has reached the client once this answer has (one connection, in order).
            _ = try await backend.read("/local/domain/9/device/vbd/768/state")
            try await backend.unwatch("/local/domain/9/device/vbd/768/state", token: token)
            var held: [String] = []
            for await event in events { held.append(event.path) }
            #expect(held.count <= XenStoreClient.maximumBufferedWatchEvents, "held \(held.count) of \(flood + 1) events")
            #expect(held.contains("/local/domain/9/device/vbd/768/state"), "the overflow is reported as a change of the watched node")
            #expect(held.suffix(2).contains("/local/domain/9/device/vbd/768/state/f\((flood - 1) % 64)"), "the newest event is kept")
            await backend.close(); await guest.close()
        }
    }
}

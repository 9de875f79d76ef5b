import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus

/// Serves the Prometheus registry at `GET /metrics` on a local address, for
/// a Prometheus server to scrape (the textfile is the other way out).
/// SwiftNIO's HTTP/1 server pipeline; one tiny handler, no framework.
struct MetricsEndpoint {
    let channel: Channel

    static func start(host: String, port: Int, registry: PrometheusCollectorRegistry) async throws -> MetricsEndpoint {
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(MetricsHandler(registry: registry))
                }
            }
        return MetricsEndpoint(channel: try await bootstrap.bind(host: host, port: port).get())
    }

    /// Where it listens, with the port the kernel chose for port 0.
    var url: String {
        let address = channel.localAddress
        let host = address?.ipAddress.map { $0.contains(":") ? "[\($0)]" : $0 } ?? "?"
        return "http://\(host):\(address?.port ?? 0)/metrics"
    }

    func stop() async { try? await channel.close() }
}

private final class MetricsHandler: ChannelInboundHandler, @unchecked Sendable {  // one per connection, on its event loop
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let registry: PrometheusCollectorRegistry
    var request: HTTPRequestHead?

    init(registry: PrometheusCollectorRegistry) { self.registry = registry }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): request = head
        case .body: break
        case .end:
            guard let head = request else { return }
            request = nil
            var bytes: [UInt8] = []
            let found = head.method == .GET && (head.uri == "/metrics" || head.uri.hasPrefix("/metrics?"))
            if found { registry.emit(into: &bytes) } else { bytes = Array("not found: GET /metrics\n".utf8) }
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: found ? "text/plain; version=0.0.4" : "text/plain")
            headers.add(name: "Content-Length", value: "\(bytes.count)")
            // HTTP/1.0 and "Connection: close" clients read until the connection closes.
            if !head.isKeepAlive { headers.add(name: "Connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: found ? .ok : .notFound, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: bytes)))), promise: nil)
            let written = context.writeAndFlush(wrapOutboundOut(.end(nil)))
            if !head.isKeepAlive { written.whenComplete { [channel = context.channel] _ in channel.close(promise: nil) } }
        }
    }
}

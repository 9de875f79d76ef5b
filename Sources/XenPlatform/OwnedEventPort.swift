/// A local port bound to a frontend's port for as long as this value
/// lives: unbound by `release()` or when the value is dropped.
public struct OwnedEventPort<Events: EventChannelDevice>: ~Copyable {
    public let port: EventChannelPort
    private let device: Events
    private var isBound = true

    /// Binds a new local port on `device` to `remotePort` of `remoteDomain`.
    public init(bindingTo remotePort: EventChannelPort, of remoteDomain: DomainID, on device: Events) throws(EventChannelError) {
        port = try device.bindInterdomain(remoteDomain: remoteDomain, remotePort: remotePort)
        self.device = device
    }

    /// Unbinds now; later calls do nothing.
    public mutating func release() {
        if isBound { try? device.unbind(port) }
        isBound = false
    }

    deinit {
        if isBound { try? device.unbind(port) }
    }
}

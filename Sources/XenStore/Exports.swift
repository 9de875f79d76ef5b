// The engine (no I/O) lives in XenStoreCore; users of the server and client get it too.
@_exported import XenStoreCore

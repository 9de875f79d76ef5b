// TAP, bridge, namespace and capture calls for the network backend. Kept in
// C because they are ioctls on `struct ifreq` unions and libpcap's API;
// every symbol is prefixed CXenNet_. Functions return 0 or a negative errno
// unless they say otherwise.
#ifndef CXEN_NET_H
#define CXEN_NET_H
#include <stddef.h>
#include <stdint.h>

/// Opens /dev/net/tun as a TAP (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, plus
/// IFF_MULTI_QUEUE when asked) named `name`, non-blocking and close-on-exec,
/// with a `vnet_header_size`-byte virtio-net header. Returns the fd or -errno.
int CXenNet_tap_open(const char *name, int multi_queue, int vnet_header_size);
/// TUNSETOFFLOAD: what the kernel may hand us (TUN_F_* bits).
int CXenNet_tap_set_offload(int fd, unsigned int flags);
/// TUNSETCARRIER (Linux 5.0+); -ENOTTY on older kernels.
int CXenNet_tap_set_carrier(int fd, int on);
static const unsigned int CXenNet_TUN_F_CSUM = 0x01;
static const unsigned int CXenNet_TUN_F_TSO4 = 0x02;
static const unsigned int CXenNet_TUN_F_TSO6 = 0x04;

/// The interface's index, or -errno.
int CXenNet_link_index(const char *name);
int CXenNet_link_set_mtu(const char *name, int mtu);
int CXenNet_link_set_up(const char *name, int up);
int CXenNet_link_set_mac(const char *name, const uint8_t mac[6]);
/// SIOCBRADDIF / SIOCBRDELIF: attaches `name` to (detaches from) `bridge`.
int CXenNet_bridge_add(const char *bridge, const char *name);
int CXenNet_bridge_remove(const char *bridge, const char *name);

/// Moves the calling thread into the network namespace at `path`
/// (/var/run/netns/NAME or /proc/PID/ns/net).
int CXenNet_enter_namespace(const char *path);

/// A raw packet socket bound to interface `name` (ETH_P_ALL), non-blocking.
/// Returns the fd or -errno.
int CXenNet_packet_socket(const char *name);

/// A pcap file with Ethernet link type; NULL on failure (message in `error`,
/// at least 256 bytes).
void *CXenNet_pcap_open(const char *path, int snapshot_length, char *error);
void CXenNet_pcap_write(void *dumper, const void *frame, unsigned int captured, unsigned int length);
int CXenNet_pcap_flush(void *dumper);
void CXenNet_pcap_close(void *dumper);
#endif

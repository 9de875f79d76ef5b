// TAP, bridge, namespace and capture support for the network backend; every
// symbol is prefixed CXenNet_. The TAP and interface ioctls themselves are
// made in Swift (XenNetDevice's TapDevice, through XenSystem's Syscall.ioctl,
// on Glibc's `struct ifreq`): C keeps only the request numbers and flags that
// come from <linux/if_tun.h> and <linux/sockios.h>, which Swift's Glibc module
// does not export (the request numbers are function-like _IOW macros),
// setns(2), the packet socket and libpcap's API. Functions return 0 or a
// negative errno unless they say otherwise.
#ifndef CXEN_NET_H
#define CXEN_NET_H
#include <stddef.h>
#include <stdint.h>

/// ioctl requests on a /dev/net/tun descriptor.
extern const unsigned long CXenNet_TUNSETIFF;
extern const unsigned long CXenNet_TUNSETVNETHDRSZ;
/// Takes the TUN_F_* bits as the argument itself, not a pointer.
extern const unsigned long CXenNet_TUNSETOFFLOAD;
/// Linux 5.0+; 0 when the headers this was built against lack it.
extern const unsigned long CXenNet_TUNSETCARRIER;
/// ioctl requests on a socket, naming a bridge in the ifreq.
extern const unsigned long CXenNet_SIOCBRADDIF;
extern const unsigned long CXenNet_SIOCBRDELIF;
/// TUNSETIFF's ifr_flags.
extern const short CXenNet_IFF_TAP;
extern const short CXenNet_IFF_NO_PI;
extern const short CXenNet_IFF_VNET_HDR;
extern const short CXenNet_IFF_MULTI_QUEUE;
static const unsigned int CXenNet_TUN_F_CSUM = 0x01;
static const unsigned int CXenNet_TUN_F_TSO4 = 0x02;
static const unsigned int CXenNet_TUN_F_TSO6 = 0x04;

/// Moves the calling thread into the network namespace at `path`
/// (/var/run/netns/NAME or /proc/PID/ns/net).
int CXenNet_enter_namespace(const char *path);

/// A raw packet socket bound to interface `name` (ETH_P_ALL), non-blocking.
/// Returns the fd or -errno (-ENODEV: no such interface).
int CXenNet_packet_socket(const char *name);

/// A pcap file with Ethernet link type; NULL on failure (message in `error`,
/// at least 256 bytes).
void *CXenNet_pcap_open(const char *path, int snapshot_length, char *error);
void CXenNet_pcap_write(void *dumper, const void *frame, unsigned int captured, unsigned int length);
int CXenNet_pcap_flush(void *dumper);
void CXenNet_pcap_close(void *dumper);
#endif

#include "CXenNet.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <linux/sockios.h>
#include <pcap/pcap.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <arpa/inet.h>

int CXenNet_tap_open(const char *name, int multi_queue, int vnet_header_size) {
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (multi_queue ? IFF_MULTI_QUEUE : 0);
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0 || ioctl(fd, TUNSETVNETHDRSZ, &vnet_header_size) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

int CXenNet_tap_set_offload(int fd, unsigned int flags) {
    return ioctl(fd, TUNSETOFFLOAD, (unsigned long)flags) < 0 ? -errno : 0;
}

int CXenNet_tap_set_carrier(int fd, int on) {
#ifdef TUNSETCARRIER
    return ioctl(fd, TUNSETCARRIER, &on) < 0 ? -errno : 0;
#else
    (void)fd; (void)on;
    return -ENOTTY;
#endif
}

static int with_ifreq(const char *name, unsigned long request, struct ifreq *ifr) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -errno;
    strncpy(ifr->ifr_name, name, IFNAMSIZ - 1);
    int r = ioctl(s, request, ifr) < 0 ? -errno : 0;
    close(s);
    return r;
}

int CXenNet_link_index(const char *name) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    int r = with_ifreq(name, SIOCGIFINDEX, &ifr);
    return r < 0 ? r : ifr.ifr_ifindex;
}

int CXenNet_link_set_mtu(const char *name, int mtu) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_mtu = mtu;
    return with_ifreq(name, SIOCSIFMTU, &ifr);
}

int CXenNet_link_set_up(const char *name, int up) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    int r = with_ifreq(name, SIOCGIFFLAGS, &ifr);
    if (r < 0) return r;
    if (up) ifr.ifr_flags |= IFF_UP; else ifr.ifr_flags &= ~IFF_UP;
    return with_ifreq(name, SIOCSIFFLAGS, &ifr);
}

int CXenNet_link_set_mac(const char *name, const uint8_t mac[6]) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_hwaddr.sa_family = 1; /* ARPHRD_ETHER */
    memcpy(ifr.ifr_hwaddr.sa_data, mac, 6);
    return with_ifreq(name, SIOCSIFHWADDR, &ifr);
}

static int bridge_op(const char *bridge, const char *name, unsigned long request) {
    int index = CXenNet_link_index(name);
    if (index < 0) return index;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_ifindex = index;
    return with_ifreq(bridge, request, &ifr);
}

int CXenNet_bridge_add(const char *bridge, const char *name) { return bridge_op(bridge, name, SIOCBRADDIF); }
int CXenNet_bridge_remove(const char *bridge, const char *name) { return bridge_op(bridge, name, SIOCBRDELIF); }

int CXenNet_enter_namespace(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    int r = setns(fd, CLONE_NEWNET) < 0 ? -errno : 0;
    close(fd);
    return r;
}

int CXenNet_packet_socket(const char *name) {
    int index = CXenNet_link_index(name);
    if (index < 0) return index;
    int s = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, htons(ETH_P_ALL));
    if (s < 0) return -errno;
    struct sockaddr_ll address;
    memset(&address, 0, sizeof address);
    address.sll_family = AF_PACKET;
    address.sll_protocol = htons(ETH_P_ALL);
    address.sll_ifindex = index;
    if (bind(s, (struct sockaddr *)&address, sizeof address) < 0) {
        int e = errno;
        close(s);
        return -e;
    }
    return s;
}

struct capture { pcap_t *handle; pcap_dumper_t *dumper; };

void *CXenNet_pcap_open(const char *path, int snapshot_length, char *error) {
    pcap_t *handle = pcap_open_dead(DLT_EN10MB, snapshot_length);
    if (!handle) {
        strncpy(error, "pcap_open_dead failed", 255);
        return NULL;
    }
    pcap_dumper_t *dumper = pcap_dump_open(handle, path);
    if (!dumper) {
        strncpy(error, pcap_geterr(handle), 255);
        error[255] = 0;
        pcap_close(handle);
        return NULL;
    }
    struct capture *c = malloc(sizeof *c);
    if (!c) {
        pcap_dump_close(dumper);
        pcap_close(handle);
        strncpy(error, "out of memory", 255);
        return NULL;
    }
    c->handle = handle;
    c->dumper = dumper;
    return c;
}

void CXenNet_pcap_write(void *capture, const void *frame, unsigned int captured, unsigned int length) {
    struct capture *c = capture;
    struct pcap_pkthdr header;
    gettimeofday(&header.ts, NULL);
    header.caplen = captured;
    header.len = length;
    pcap_dump((u_char *)c->dumper, &header, frame);
}

int CXenNet_pcap_flush(void *capture) { return pcap_dump_flush(((struct capture *)capture)->dumper); }

void CXenNet_pcap_close(void *capture) {
    struct capture *c = capture;
    pcap_dump_close(c->dumper);
    pcap_close(c->handle);
    free(c);
}

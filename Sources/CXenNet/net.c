#include "CXenNet.h"
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <linux/sockios.h>
#include <pcap/pcap.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h> /* _IOW, which the TUN request numbers are made with */
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <arpa/inet.h>

const unsigned long CXenNet_TUNSETIFF = TUNSETIFF;
const unsigned long CXenNet_TUNSETVNETHDRSZ = TUNSETVNETHDRSZ;
const unsigned long CXenNet_TUNSETOFFLOAD = TUNSETOFFLOAD;
#ifdef TUNSETCARRIER
const unsigned long CXenNet_TUNSETCARRIER = TUNSETCARRIER;
#else
const unsigned long CXenNet_TUNSETCARRIER = 0;
#endif
const unsigned long CXenNet_SIOCBRADDIF = SIOCBRADDIF;
const unsigned long CXenNet_SIOCBRDELIF = SIOCBRDELIF;
const short CXenNet_IFF_TAP = IFF_TAP;
const short CXenNet_IFF_NO_PI = IFF_NO_PI;
const short CXenNet_IFF_VNET_HDR = IFF_VNET_HDR;
const short CXenNet_IFF_MULTI_QUEUE = IFF_MULTI_QUEUE;

int CXenNet_enter_namespace(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    int r = setns(fd, CLONE_NEWNET) < 0 ? -errno : 0;
    close(fd);
    return r;
}

int CXenNet_packet_socket(const char *name) {
    unsigned int index = if_nametoindex(name);
    if (index == 0) return -errno;
    int s = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, htons(ETH_P_ALL));
    if (s < 0) return -errno;
    struct sockaddr_ll address;
    memset(&address, 0, sizeof address);
    address.sll_family = AF_PACKET;
    address.sll_protocol = htons(ETH_P_ALL);
    address.sll_ifindex = (int)index;
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

// Prints, as "key value" lines, every size, offset and constant of Xen's
// public I/O headers that xenback mirrors, plus byte dumps of sample
// messages ("vector.NAME hex"). The test suite compiles this against
// Debian's libxen-dev (with -m64 and -m32) and checks our Swift against it.
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <xen/xen.h>
#include <xen/grant_table.h>
#define mb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define rmb() mb()
#define wmb() mb()
#include <xen/io/ring.h>
#include <xen/io/blkif.h>
#include <xen/io/netif.h>
#include <xen/io/xenbus.h>
#include <xen/io/xs_wire.h>
#include <xen/io/protocols.h>

#define SIZE(t) printf("sizeof.%s %zu\n", #t, sizeof(struct t))
#define OFF(t, f) printf("offsetof.%s.%s %zu\n", #t, #f, offsetof(struct t, f))
#define VAL(name) printf("const.%s %lld\n", #name, (long long)(name))

static void dump(const char *name, const void *p, size_t n) {
    const unsigned char *b = p;
    printf("vector.%s ", name);
    for (size_t i = 0; i < n; i++) printf("%02x", b[i]);
    printf("\n");
}

int main(void) {
    printf("abi.pointer_bits %zu\n", sizeof(void *) * 8);

    // ring.h
    OFF(blkif_sring, req_prod); OFF(blkif_sring, req_event);
    OFF(blkif_sring, rsp_prod); OFF(blkif_sring, rsp_event);
    OFF(blkif_sring, pvt); OFF(blkif_sring, __pad); OFF(blkif_sring, ring);
    printf("sizeof.blkif_sring_entry %zu\n", sizeof(union blkif_sring_entry));
    printf("sizeof.netif_tx_sring_entry %zu\n", sizeof(union netif_tx_sring_entry));
    printf("sizeof.netif_rx_sring_entry %zu\n", sizeof(union netif_rx_sring_entry));
    printf("sizeof.xen_netif_ctrl_sring_entry %zu\n", sizeof(union xen_netif_ctrl_sring_entry));
    for (int pages = 1; pages <= 16; pages++) {
        size_t bytes = (size_t)pages * 4096;
        printf("ringsize.blkif.%d %u\n", pages, (unsigned)__CONST_RING_SIZE(blkif, bytes));
        printf("ringsize.netif_tx.%d %u\n", pages, (unsigned)__CONST_RING_SIZE(netif_tx, bytes));
        printf("ringsize.netif_rx.%d %u\n", pages, (unsigned)__CONST_RING_SIZE(netif_rx, bytes));
        printf("ringsize.xen_netif_ctrl.%d %u\n", pages, (unsigned)__CONST_RING_SIZE(xen_netif_ctrl, bytes));
    }

    // blkif.h
    SIZE(blkif_request_segment); OFF(blkif_request_segment, gref);
    OFF(blkif_request_segment, first_sect); OFF(blkif_request_segment, last_sect);
    SIZE(blkif_request); OFF(blkif_request, operation); OFF(blkif_request, nr_segments);
    OFF(blkif_request, handle); OFF(blkif_request, id); OFF(blkif_request, sector_number); OFF(blkif_request, seg);
    SIZE(blkif_request_discard); OFF(blkif_request_discard, operation); OFF(blkif_request_discard, flag);
    OFF(blkif_request_discard, handle); OFF(blkif_request_discard, id);
    OFF(blkif_request_discard, sector_number); OFF(blkif_request_discard, nr_sectors);
    SIZE(blkif_request_indirect); OFF(blkif_request_indirect, operation); OFF(blkif_request_indirect, indirect_op);
    OFF(blkif_request_indirect, nr_segments); OFF(blkif_request_indirect, id);
    OFF(blkif_request_indirect, sector_number); OFF(blkif_request_indirect, handle);
    OFF(blkif_request_indirect, indirect_grefs);
    SIZE(blkif_response); OFF(blkif_response, id); OFF(blkif_response, operation); OFF(blkif_response, status);
    VAL(BLKIF_OP_READ); VAL(BLKIF_OP_WRITE); VAL(BLKIF_OP_WRITE_BARRIER); VAL(BLKIF_OP_FLUSH_DISKCACHE);
    VAL(BLKIF_OP_RESERVED_1); VAL(BLKIF_OP_DISCARD); VAL(BLKIF_OP_INDIRECT);
    VAL(BLKIF_MAX_SEGMENTS_PER_REQUEST); VAL(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
    VAL(BLKIF_RSP_EOPNOTSUPP); VAL(BLKIF_RSP_ERROR); VAL(BLKIF_RSP_OKAY);
    VAL(VDISK_CDROM); VAL(VDISK_REMOVABLE); VAL(VDISK_READONLY); VAL(BLKIF_DISCARD_SECURE);
    printf("string.XEN_IO_PROTO_ABI_X86_32 %s\n", XEN_IO_PROTO_ABI_X86_32);
    printf("string.XEN_IO_PROTO_ABI_X86_64 %s\n", XEN_IO_PROTO_ABI_X86_64);
    printf("string.XEN_IO_PROTO_ABI_NATIVE %s\n", XEN_IO_PROTO_ABI_NATIVE);

    // Golden encodings (zero-filled, then fields set, so padding is zero).
    {
        struct blkif_request r; memset(&r, 0, sizeof r);
        r.operation = BLKIF_OP_WRITE; r.nr_segments = 3; r.handle = 0x0102; r.id = 0x1122334455667788ULL;
        r.sector_number = 0x0000000A0B0C0D0EULL;
        for (int i = 0; i < 3; i++) { r.seg[i].gref = 0x100 + i; r.seg[i].first_sect = i; r.seg[i].last_sect = 7 - i; }
        dump("blkif_request_write3", &r, sizeof r);
    }
    {
        struct blkif_request_discard r; memset(&r, 0, sizeof r);
        r.operation = BLKIF_OP_DISCARD; r.flag = BLKIF_DISCARD_SECURE; r.handle = 7; r.id = 42;
        r.sector_number = 2048; r.nr_sectors = 0x123456789ULL;
        dump("blkif_request_discard_secure", &r, sizeof r);
    }
    {
        struct blkif_request_indirect r; memset(&r, 0, sizeof r);
        r.operation = BLKIF_OP_INDIRECT; r.indirect_op = BLKIF_OP_READ; r.nr_segments = 600; r.id = 0xdeadbeefcafef00dULL;
        r.sector_number = 123456; r.handle = 0x51;
        for (int i = 0; i < 8; i++) r.indirect_grefs[i] = 0x7000 + i;
        dump("blkif_request_indirect_read600", &r, sizeof r);
    }
    {
        struct blkif_response r; memset(&r, 0, sizeof r);
        r.id = 0x0102030405060708ULL; r.operation = BLKIF_OP_FLUSH_DISKCACHE; r.status = BLKIF_RSP_EOPNOTSUPP;
        dump("blkif_response_flush_eopnotsupp", &r, sizeof r);
    }

    // netif.h
    SIZE(netif_tx_request); OFF(netif_tx_request, gref); OFF(netif_tx_request, offset);
    OFF(netif_tx_request, flags); OFF(netif_tx_request, id); OFF(netif_tx_request, size);
    SIZE(netif_tx_response); OFF(netif_tx_response, id); OFF(netif_tx_response, status);
    SIZE(netif_rx_request); OFF(netif_rx_request, id); OFF(netif_rx_request, gref);
    SIZE(netif_rx_response); OFF(netif_rx_response, id); OFF(netif_rx_response, offset);
    OFF(netif_rx_response, flags); OFF(netif_rx_response, status);
    SIZE(netif_extra_info); OFF(netif_extra_info, type); OFF(netif_extra_info, flags); OFF(netif_extra_info, u);
    OFF(netif_extra_info, u.gso.size); OFF(netif_extra_info, u.gso.type); OFF(netif_extra_info, u.gso.features);
    OFF(netif_extra_info, u.mcast.addr); OFF(netif_extra_info, u.hash.type); OFF(netif_extra_info, u.hash.algorithm);
    OFF(netif_extra_info, u.hash.value);
    SIZE(xen_netif_ctrl_request); OFF(xen_netif_ctrl_request, id); OFF(xen_netif_ctrl_request, type);
    OFF(xen_netif_ctrl_request, data);
    SIZE(xen_netif_ctrl_response); OFF(xen_netif_ctrl_response, id); OFF(xen_netif_ctrl_response, type);
    OFF(xen_netif_ctrl_response, status); OFF(xen_netif_ctrl_response, data);
    VAL(NETTXF_csum_blank); VAL(NETTXF_data_validated); VAL(NETTXF_more_data); VAL(NETTXF_extra_info);
    VAL(NETRXF_data_validated); VAL(NETRXF_csum_blank); VAL(NETRXF_more_data); VAL(NETRXF_extra_info);
    VAL(NETRXF_gso_prefix); VAL(XEN_NETIF_MAX_TX_SIZE); VAL(XEN_NETIF_NR_SLOTS_MIN);
    VAL(XEN_NETIF_EXTRA_TYPE_NONE); VAL(XEN_NETIF_EXTRA_TYPE_GSO); VAL(XEN_NETIF_EXTRA_TYPE_MCAST_ADD);
    VAL(XEN_NETIF_EXTRA_TYPE_MCAST_DEL); VAL(XEN_NETIF_EXTRA_TYPE_HASH); VAL(XEN_NETIF_EXTRA_TYPE_MAX);
    VAL(XEN_NETIF_EXTRA_FLAG_MORE); VAL(XEN_NETIF_GSO_TYPE_NONE); VAL(XEN_NETIF_GSO_TYPE_TCPV4);
    VAL(XEN_NETIF_GSO_TYPE_TCPV6); VAL(NETIF_RSP_DROPPED); VAL(NETIF_RSP_ERROR); VAL(NETIF_RSP_OKAY); VAL(NETIF_RSP_NULL);
    VAL(XEN_NETIF_CTRL_TYPE_INVALID); VAL(XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS); VAL(XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS);
    VAL(XEN_NETIF_CTRL_TYPE_SET_HASH_KEY); VAL(XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE);
    VAL(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE); VAL(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING);
    VAL(XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM); VAL(XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE);
    VAL(XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING); VAL(XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING);
    VAL(XEN_NETIF_CTRL_STATUS_SUCCESS); VAL(XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED);
    VAL(XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER); VAL(XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW);
    VAL(XEN_NETIF_CTRL_HASH_TYPE_IPV4); VAL(XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP); VAL(XEN_NETIF_CTRL_HASH_TYPE_IPV6);
    VAL(XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP); VAL(XEN_NETIF_CTRL_HASH_ALGORITHM_NONE); VAL(XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ);
    {
        struct netif_tx_request r; memset(&r, 0, sizeof r);
        r.gref = 0xabcd; r.offset = 0x0e; r.flags = NETTXF_csum_blank | NETTXF_more_data | NETTXF_extra_info; r.id = 77; r.size = 1514;
        dump("netif_tx_request_first", &r, sizeof r);
        struct netif_extra_info x; memset(&x, 0, sizeof x);
        x.type = XEN_NETIF_EXTRA_TYPE_GSO; x.flags = XEN_NETIF_EXTRA_FLAG_MORE; x.u.gso.size = 1448;
        x.u.gso.type = XEN_NETIF_GSO_TYPE_TCPV4; x.u.gso.features = 0;
        dump("netif_extra_gso_tcpv4", &x, sizeof x);
        memset(&x, 0, sizeof x);
        x.type = XEN_NETIF_EXTRA_TYPE_MCAST_ADD;
        unsigned char mac[6] = {0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb};
        memcpy(x.u.mcast.addr, mac, 6);
        dump("netif_extra_mcast_add", &x, sizeof x);
        memset(&x, 0, sizeof x);
        x.type = XEN_NETIF_EXTRA_TYPE_HASH; x.u.hash.type = _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP;
        x.u.hash.algorithm = XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ;
        uint32_t h = 0x51ccc178; memcpy(x.u.hash.value, &h, 4);
        dump("netif_extra_hash", &x, sizeof x);
        struct netif_rx_response rr; memset(&rr, 0, sizeof rr);
        rr.id = 5; rr.offset = 0; rr.flags = NETRXF_csum_blank | NETRXF_data_validated | NETRXF_more_data; rr.status = 4096;
        dump("netif_rx_response_more", &rr, sizeof rr);
        struct netif_tx_response tr = { .id = 9, .status = NETIF_RSP_NULL };
        dump("netif_tx_response_null", &tr, sizeof tr);
        struct netif_rx_request rq = { .id = 255, .gref = 0x1234 };
        dump("netif_rx_request", &rq, sizeof rq);
        struct xen_netif_ctrl_request cq; memset(&cq, 0, sizeof cq);
        cq.id = 3; cq.type = XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING; cq.data[0] = 0x99; cq.data[1] = 16; cq.data[2] = 4;
        dump("ctrl_request_set_mapping", &cq, sizeof cq);
        struct xen_netif_ctrl_response cr; memset(&cr, 0, sizeof cr);
        cr.id = 3; cr.type = XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING; cr.status = XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER; cr.data = 0;
        dump("ctrl_response_invalid", &cr, sizeof cr);
    }

    // xenbus.h
    VAL(XenbusStateUnknown); VAL(XenbusStateInitialising); VAL(XenbusStateInitWait); VAL(XenbusStateInitialised);
    VAL(XenbusStateConnected); VAL(XenbusStateClosing); VAL(XenbusStateClosed); VAL(XenbusStateReconfiguring);
    VAL(XenbusStateReconfigured);

    // xs_wire.h
    SIZE(xsd_sockmsg); OFF(xsd_sockmsg, type); OFF(xsd_sockmsg, req_id); OFF(xsd_sockmsg, tx_id); OFF(xsd_sockmsg, len);
    VAL(XS_CONTROL); VAL(XS_DIRECTORY); VAL(XS_READ); VAL(XS_GET_PERMS); VAL(XS_WATCH); VAL(XS_UNWATCH);
    VAL(XS_TRANSACTION_START); VAL(XS_TRANSACTION_END); VAL(XS_INTRODUCE); VAL(XS_RELEASE); VAL(XS_GET_DOMAIN_PATH);
    VAL(XS_WRITE); VAL(XS_MKDIR); VAL(XS_RM); VAL(XS_SET_PERMS); VAL(XS_WATCH_EVENT); VAL(XS_ERROR);
    VAL(XS_IS_DOMAIN_INTRODUCED); VAL(XS_RESUME); VAL(XS_SET_TARGET); VAL(XS_RESET_WATCHES); VAL(XS_DIRECTORY_PART);
    VAL(XS_TYPE_COUNT); VAL(XS_INVALID); VAL(XENSTORE_PAYLOAD_MAX); VAL(XENSTORE_ABS_PATH_MAX); VAL(XENSTORE_REL_PATH_MAX);
    VAL(XENSTORE_RING_SIZE);
    for (size_t i = 0; i < sizeof xsd_errors / sizeof xsd_errors[0]; i++)
        printf("xsd_error.%s %d\n", xsd_errors[i].errstring, xsd_errors[i].errnum);
    {
        struct xsd_sockmsg m = { .type = XS_WATCH, .req_id = 0x01020304, .tx_id = 7, .len = 12 };
        dump("xsd_sockmsg_watch", &m, sizeof m);
    }
    return 0;
}

// The kernel's Xen device interfaces (linux-libc-dev: xen/gntdev.h,
// xen/evtchn.h). The ioctl numbers are function-like macros Swift cannot
// import, so they are re-exported as constants; struct layouts are checked
// in uapi.c. Only XenHost imports this.
#ifndef CXEN_UAPI_H
#define CXEN_UAPI_H
#include <stddef.h>
#include <stdint.h>
#include <linux/types.h>
#include <linux/ioctl.h>
// gntdev.h uses these libxen typedefs without defining them.
typedef uint32_t grant_ref_t;
typedef uint16_t domid_t;
#include <xen/gntdev.h>
#include <xen/evtchn.h>

static const unsigned long CXenUAPI_IOCTL_GNTDEV_MAP_GRANT_REF = IOCTL_GNTDEV_MAP_GRANT_REF;
static const unsigned long CXenUAPI_IOCTL_GNTDEV_UNMAP_GRANT_REF = IOCTL_GNTDEV_UNMAP_GRANT_REF;
static const unsigned long CXenUAPI_IOCTL_GNTDEV_SET_UNMAP_NOTIFY = IOCTL_GNTDEV_SET_UNMAP_NOTIFY;
static const unsigned long CXenUAPI_IOCTL_GNTDEV_GRANT_COPY = IOCTL_GNTDEV_GRANT_COPY;
static const unsigned long CXenUAPI_IOCTL_EVTCHN_BIND_INTERDOMAIN = IOCTL_EVTCHN_BIND_INTERDOMAIN;
static const unsigned long CXenUAPI_IOCTL_EVTCHN_UNBIND = IOCTL_EVTCHN_UNBIND;
static const unsigned long CXenUAPI_IOCTL_EVTCHN_NOTIFY = IOCTL_EVTCHN_NOTIFY;
static const unsigned long CXenUAPI_IOCTL_EVTCHN_RESET = IOCTL_EVTCHN_RESET;

static const unsigned int CXenUAPI_UNMAP_NOTIFY_CLEAR_BYTE = UNMAP_NOTIFY_CLEAR_BYTE;
static const unsigned int CXenUAPI_UNMAP_NOTIFY_SEND_EVENT = UNMAP_NOTIFY_SEND_EVENT;
/// GNTCOPY_source_gref / GNTCOPY_dest_gref (grant_table.h).
static const uint16_t CXenUAPI_GNTCOPY_SOURCE_GREF = 1;
static const uint16_t CXenUAPI_GNTCOPY_DEST_GREF = 2;

size_t CXenUAPI_sizeof_map_grant_ref_header(void);
size_t CXenUAPI_sizeof_grant_copy_segment(void);
#endif

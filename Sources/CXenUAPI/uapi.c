#include <stddef.h>
#include <sys/ioctl.h>
#include "CXenUAPI.h"

// The byte layouts XenHost writes by hand, pinned to the kernel's structs.
_Static_assert(sizeof(struct ioctl_gntdev_grant_ref) == 8, "grant_ref: domid u32, ref u32");
_Static_assert(offsetof(struct ioctl_gntdev_map_grant_ref, index) == 8, "map: count, pad, index");
_Static_assert(offsetof(struct ioctl_gntdev_map_grant_ref, refs) == 16, "map: refs follow the index");
_Static_assert(sizeof(struct ioctl_gntdev_unmap_grant_ref) == 16, "unmap: index u64, count u32, pad");
_Static_assert(sizeof(struct ioctl_gntdev_unmap_notify) == 16, "notify: index u64, action, port");
_Static_assert(sizeof(struct gntdev_grant_copy_segment) == 24, "copy segment is 24 bytes");
_Static_assert(offsetof(struct gntdev_grant_copy_segment, dest) == 8, "dest at 8");
_Static_assert(offsetof(struct gntdev_grant_copy_segment, len) == 16, "len at 16");
_Static_assert(offsetof(struct gntdev_grant_copy_segment, flags) == 18, "flags at 18");
_Static_assert(offsetof(struct gntdev_grant_copy_segment, status) == 20, "status at 20");
_Static_assert(offsetof(struct gntdev_grant_copy_segment, source.foreign.offset) == 4, "foreign offset at 4");
_Static_assert(offsetof(struct gntdev_grant_copy_segment, source.foreign.domid) == 6, "foreign domid at 6");
_Static_assert(sizeof(struct ioctl_gntdev_grant_copy) == 16, "copy: count, pointer");
_Static_assert(sizeof(struct ioctl_evtchn_bind_interdomain) == 8, "bind: remote domain, remote port");

size_t CXenUAPI_sizeof_map_grant_ref_header(void) { return offsetof(struct ioctl_gntdev_map_grant_ref, refs); }
size_t CXenUAPI_sizeof_grant_copy_segment(void) { return sizeof(struct gntdev_grant_copy_segment); }


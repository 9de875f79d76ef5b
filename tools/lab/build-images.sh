#!/usr/bin/env bash
# Builds the lab's images from Debian's packages, cached in $LAB_WORK (default
# tools/lab/cache, git-ignored):
#   rootfs/              the dom0 tree: Xen 4.17, xl, xenstored, Linux 6.1, qemu-system-xen,
#                        fio, iperf3, and the shared libraries xenbackd links (libaio, liburing, libpcap)
#   boot/                Xen (uncompressed multiboot ELF), the dom0/domU kernel, the dom0 initrd
#   domu-initrd.gz       the guest: busybox, fio, iperf3, e2fsprogs, blkfront and netfront modules
# The rootfs is built once (debootstrap, ~2-3 min); everything else takes seconds.
# Needs root, the host packages below, and deb.debian.org.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${LAB_WORK:-$here/cache}
root=$work/rootfs
mirror=${MIRROR:-http://deb.debian.org/debian}
mkdir -p "$work"

host_packages=(qemu-system-x86 debootstrap e2fsprogs cpio gzip zstd xz-utils python3 kmod bc binutils)
missing=()
for p in "${host_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# dom0: what Xen's toolstack needs, the guests' workloads, and xenbackd's runtime libraries.
# dmsetup and lvm2: the fault scenario (dm-error) and a logical volume as a disk.
dom0_packages=linux-image-amd64,xen-utils-4.17,xenstore-utils,qemu-system-xen,fio,iperf3,iproute2,bridge-utils,busybox-static,kmod,procps,e2fsprogs,util-linux,libaio1,liburing2,libpcap0.8,iptables,python3-minimal,dmsetup,lvm2
# The tree is rebuilt when the package list changes.
if [ ! -e "$root/.lab-rootfs-done" ] || [ "$(cat "$root/.lab-rootfs-done")" != "$dom0_packages" ]; then
  rm -rf "$root"
  debootstrap --variant=minbase --include="$dom0_packages" bookworm "$root" "$mirror"
  # The security and updates suites, so dom0 runs what `apt-get install` gives today.
  cat > "$root/etc/apt/sources.list" <<S
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
S
  mount -t proc proc "$root/proc"
  trap 'umount "$root/proc" 2>/dev/null || true' EXIT
  chroot "$root" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get -y -qq --no-install-recommends dist-upgrade >/dev/null
  DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get -y -qq --no-install-recommends install xen-hypervisor-4.17-amd64 linux-image-amd64 >/dev/null
  # One kernel: the newest.
  for k in $(ls "$root/lib/modules" | sort -V | head -n -1); do chroot "$root" dpkg --purge "linux-image-$k" >/dev/null || true; done
  chroot "$root" apt-get clean
  umount "$root/proc"; trap - EXIT
  echo "/dev/vda / ext4 rw 0 1" > "$root/etc/fstab"
  echo "$dom0_packages" > "$root/.lab-rootfs-done"
fi
kver=$(ls "$root/lib/modules" | sort -V | tail -1)

mkdir -p "$work/boot"
if [ ! -e "$work/boot/xen" ] || [ "$root/.lab-rootfs-done" -nt "$work/boot/xen" ]; then
  zcat "$root"/boot/xen-4.17-amd64.gz > "$work/boot/xen"   # a 32-bit multiboot ELF: QEMU's -kernel boots it
  cp "$root/boot/vmlinuz-$kver" "$work/boot/vmlinuz"
  cp "$root/boot/initrd.img-$kver" "$work/boot/initrd.img"
fi

# The guest: a busybox initramfs with the workloads and Linux's own frontends.
if [ ! -e "$work/domu-initrd.gz" ] || [ "$here/domu/init.sh" -nt "$work/domu-initrd.gz" ] || [ "$here/build-images.sh" -nt "$work/domu-initrd.gz" ] || [ "$root/.lab-rootfs-done" -nt "$work/domu-initrd.gz" ]; then
  w=$work/domu-initrd; rm -rf "$w"; mkdir -p "$w"/{bin,sbin,proc,sys,dev,tmp,mnt,lib/modules,etc,usr/bin,lib64}
  cp "$root/bin/busybox" "$w/bin/busybox"
  tools="/usr/bin/fio /usr/bin/iperf3 /sbin/mke2fs /sbin/e2fsck /sbin/fstrim /usr/bin/md5sum"
  for t in $tools; do cp "$root$t" "$w/usr/bin/"; done
  ln -s mke2fs "$w/usr/bin/mkfs.ext4"
  mount -t proc proc "$root/proc"; trap 'umount "$root/proc" 2>/dev/null || true' EXIT
  for lib in $(chroot "$root" ldd $tools 2>/dev/null | awk '$3 ~ /^\// {print $3} $1 ~ /^\/lib64/ {print $1}' | sort -u); do
    mkdir -p "$w/$(dirname "$lib")"; cp -L "$root/$lib" "$w/$lib"
  done
  umount "$root/proc"; trap - EXIT
  # Linux's frontends, and ext4 with what it needs, in load order.
  modules="xen-blkfront xen-netfront crc16 mbcache jbd2 crc32c_generic ext4"
  for m in $modules; do
    f=$(find "$root/lib/modules/$kver" -name "$m.ko*"); cp "$f" "$w/lib/modules/"
  done
  echo "$modules" > "$w/lib/modules/order"
  (cd "$w/lib/modules" && for f in *.xz; do [ -e "$f" ] && xz -d "$f"; done; for f in *.zst; do [ -e "$f" ] && zstd -q -d --rm "$f"; done; true)
  cp "$here/domu/init.sh" "$w/init"; chmod +x "$w/init"
  (cd "$w" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/domu-initrd.gz"
fi
echo "lab images in $work (kernel $kver)"

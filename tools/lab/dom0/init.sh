#!/bin/sh
# dom0's PID 1 (init=/lab/init): Xen's dom0 services without systemd, the
# scenarios, then power off (Xen enters S5 and QEMU exits).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/xen-4.17/bin
t() { echo "LAB-T $(cut -d' ' -f1 /proc/uptime) $*"; }
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null
t dom0-init-start
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -o remount,rw /
mount -t tmpfs tmpfs /run; mkdir -p /run/xen /run/xenstored /run/lock /var/log/xen/console /var/lib/xen
mount -t tmpfs -o size=1100m tmpfs /tmp
hostname dom0; ip link set lo up
# The kernel's blkback and netback are loaded only by the scenarios that use them.
for m in xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd bridge loop tun; do modprobe $m || echo "LAB-WARN modprobe $m failed"; done
mount -t xenfs xenfs /proc/xen
xenstored --pid-file /run/xenstored.pid
xen-init-dom0 >/dev/null
xenconsoled --pid-file=/run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console
ip link add br0 type bridge; ip addr add 10.0.0.1/24 dev br0; ip link set br0 up
t dom0-ready
/lab/scenarios.sh
t dom0-done
if grep -q lab_shell /proc/cmdline; then exec /bin/sh; fi
sync; echo o > /proc/sysrq-trigger; sleep 5; poweroff -f

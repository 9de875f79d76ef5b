#!/bin/busybox sh
# The guest's /init (busybox initramfs): Linux's own xen-blkfront and
# xen-netfront against whichever backend dom0 gives it, then the scenario the
# kernel command line names (lab_mode=smoke|full, lab_be=NAME, lab_rt=SECONDS,
# lab_net=0|1). Results are LAB-* lines on the console, which dom0's
# xenconsoled logs and dom0 relays; dom0 acts on the LAB-T markers.
/bin/busybox --install -s /bin; export PATH=/bin:/usr/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmpfs /tmp
args=$(cat /proc/cmdline)
arg() { echo "$args" | sed -n "s/.*$1=\([a-z0-9]*\).*/\1/p"; }
MODE=$(arg lab_mode); MODE=${MODE:-smoke}; BE=$(arg lab_be); RT=$(arg lab_rt); RT=${RT:-5}; NET=$(arg lab_net)
t() { echo "LAB-T $(cut -d' ' -f1 /proc/uptime) $*"; }
check() { echo "LAB-CHECK $BE $1 $2 ${3:-}"; }   # name ok|FAIL detail
info() { echo "LAB-INFO $BE $*"; }
t domU-init-start
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m.ko; done

wait_for() {  # seconds condition...
  n=$(( $1 * 10 )); shift
  while [ $n -gt 0 ]; do eval "$@" && return 0; sleep 0.1; n=$((n-1)); done; return 1
}
echos_in() { awk '/^Icmp:/ && !h {h=1; for(i=1;i<=NF;i++) c[i]=$i; next} /^Icmp:/ {for(i=1;i<=NF;i++) if (c[i]=="InEchos") print $i}' /proc/net/snmp; }
net_up() {  # interface
  ip link set lo up; ip addr add 10.0.0.2/24 dev $1; ip link set $1 up
  tries=0; while ! ping -c1 -W1 10.0.0.1 >/dev/null 2>&1 && [ $tries -lt 30 ]; do tries=$((tries+1)); done
  if ping -c 3 -W 2 10.0.0.1 >/dev/null 2>&1; then check "ping-dom0$2" ok "after $tries tries"; else check "ping-dom0$2" FAIL "no answer from 10.0.0.1"; fi
}
# A region near the end of the disk that dom0 reads back from the backing after the guest is gone.
PATTERN_MB=16
write_pattern() {
  sectors=$(cat /sys/block/xvdb/size); seek=$(( sectors / 2048 - PATTERN_MB - 1 ))   # the last MiB holds the reboot marker
  dd if=/dev/urandom of=/tmp/pattern bs=1M count=$PATTERN_MB 2>/dev/null
  dd if=/tmp/pattern of=/dev/xvdb bs=1M seek=$seek oflag=direct conv=fsync 2>/dev/null
  echo 3 > /proc/sys/vm/drop_caches
  dd if=/dev/xvdb of=/tmp/back bs=1M skip=$seek count=$PATTERN_MB iflag=direct 2>/dev/null
  want=$(md5sum < /tmp/pattern | cut -d' ' -f1); got=$(md5sum < /tmp/back | cut -d' ' -f1)
  echo "LAB-PATTERN $BE offset_mb=$seek size_mb=$PATTERN_MB md5=$want"
  if [ "$want" = "$got" ]; then check pattern-readback ok "$PATTERN_MB MiB at $seek MiB"; else check pattern-readback FAIL "wrote $want read $got"; fi
}
fio_job() {  # name rw bs depth
  t job-start-$1   # dom0 samples its CPU use between these two marks
  out=$(fio --name=$1 --filename=/dev/xvdb --ioengine=libaio --direct=1 --rw=$2 --bs=$3 --iodepth=$4 \
        --runtime=$RT --time_based --minimal 2>&1 | tail -1)
  # terse v3: field 7/8 read KiB/s and IOPS, 48/49 the same for writes
  t job-end-$1
  echo "$out" | awk -F';' -v be=$BE -v job=$1 'NF > 50 {printf "LAB-FIO %s %s iops=%d kibps=%d\n", be, job, $8 + $49, $7 + $48; ok=1} END {if (!ok) print "LAB-CHECK " be " fio-" job " FAIL no result"}'
}

if wait_for 30 '[ -b /dev/xvdb ]'; then check disk-present ok; else check disk-present FAIL "no /dev/xvdb after 30 s"; fi

# After a reboot (full mode): the marker the first boot left in the disk's last MiB names
# the pattern's md5; read the pattern back through the new devices, then power off.
marker_mb=$(( $(cat /sys/block/xvdb/size 2>/dev/null || echo 2048) / 2048 - 1 ))
marker=$(dd if=/dev/xvdb bs=1M skip=$marker_mb count=1 iflag=direct 2>/dev/null | head -c 64 | tr -d '\0')
case "$marker" in LABREBOOT*)
  want=$(echo "$marker" | cut -d' ' -f2); off=$(echo "$marker" | cut -d' ' -f3)
  got=$(dd if=/dev/xvdb bs=1M skip=$off count=$PATTERN_MB iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
  if [ "$got" = "$want" ]; then check reboot-reconnect ok "after a guest reboot the disk reconnected and the pattern read back"; else check reboot-reconnect FAIL "read $got, wrote $want before the reboot"; fi
  dd if=/dev/zero of=/dev/xvdb bs=1M seek=$marker_mb count=1 oflag=direct conv=fsync 2>/dev/null
  if [ "$NET" = 1 ]; then
    if wait_for 30 'ip link show eth0 >/dev/null 2>&1'; then net_up eth0 -after-reboot; else check ping-dom0-after-reboot FAIL "no eth0"; fi
  fi
  t LAB-DOMU-DONE
  sync; poweroff -f;;
esac

if [ $MODE = restart ]; then
  # dom0 kills xenbackd (SIGKILL) three times and stops it once (SIGTERM) under this I/O,
  # starting it again each time; blkfront never reconnects by itself, so I/O goes on only
  # if each new daemon takes the rings over. fio runs, each 16 MiB of random 16 KiB writes
  # over the first 64 MiB and then all of it read back and verified (crc32c), go on until
  # dom0 writes its done marker into the disk's last MiB. A run's longest write or read
  # latency is the pause the guest saw.
  last_mb=$(( $(cat /sys/block/xvdb/size) / 2048 - 1 ))
  dmesg_lines=$(dmesg | wc -l)
  runs=0; failed=0; wmax=0; rmax=0; start=$(cut -d. -f1 /proc/uptime); done_seen=no
  t restart-io-start
  while [ $(( $(cut -d. -f1 /proc/uptime) - start )) -lt 780 ]; do
    runs=$((runs + 1))
    fio --name=run$runs --filename=/dev/xvdb --ioengine=libaio --direct=1 --rw=randwrite --bs=16k --iodepth=16 \
      --size=64m --io_size=16m --randseed=$runs --verify=crc32c --verify_fatal=1 --do_verify=1 --minimal >/tmp/fio.out 2>/tmp/fio.err
    rc=$?; out=$(tail -1 /tmp/fio.out)
    t fio-run-end run=$runs
    # terse v3: 5 error, 6 KiB read, 39 read latency max (us), 47 KiB written, 80 write latency max (us)
    line=$(echo "$out" | awk -F';' -v be=$BE -v run=$runs -v rc=$rc 'NF > 80 {printf "LAB-RESTART-FIO %s run=%d rc=%d error=%s written_kib=%d read_kib=%d write_lat_max_ms=%d read_lat_max_ms=%d", be, run, rc, $5, $47, $6, $80/1000, $39/1000; ok=1} END {if (!ok) printf "LAB-RESTART-FIO %s run=%d rc=%d no-result", be, run, rc}')
    echo "$line"
    if ! echo "$line" | grep -q -E ' rc=0 error=0 written_kib=16384 read_kib=(1638[4-9]|16[4-9][0-9]{2}|1[7-9][0-9]{3}|[2-9][0-9]{4}) '; then
      failed=$((failed + 1)); cat /tmp/fio.err /tmp/fio.out | grep -v '^[0-9];' | head -5 | sed "s/^/LAB-INFO $BE fio: /"
    fi
    w=$(echo "$line" | sed -n 's/.*write_lat_max_ms=\([0-9]*\).*/\1/p'); r=$(echo "$line" | sed -n 's/.*read_lat_max_ms=\([0-9]*\).*/\1/p')
    [ "${w:-0}" -gt $wmax ] && wmax=$w; [ "${r:-0}" -gt $rmax ] && rmax=$r
    if [ "$(dd if=/dev/xvdb bs=1M skip=$last_mb count=1 iflag=direct 2>/dev/null | head -c 15)" = LABRESTART-DONE ]; then done_seen=yes; break; fi
  done
  t restart-io-end
  echo "LAB-RESTART $BE guest runs=$runs failed=$failed write_lat_max_ms=$wmax read_lat_max_ms=$rmax"
  if [ $failed = 0 ] && [ $done_seen = yes ] && [ $runs -ge 2 ]; then
    check restart-fio ok "$runs fio runs, each 16 MiB written and verified, none failed; longest write $wmax ms, read $rmax ms"
  else
    check restart-fio FAIL "$failed of $runs fio runs failed; dom0's done marker seen: $done_seen"
  fi
  dmesg | tail -n +$((dmesg_lines + 1)) > /tmp/dmesg.new
  sed "s/^/LAB-DMESG $BE /" /tmp/dmesg.new
  bad=$(grep -E 'blkfront|I/O error|blk_update_request|Buffer I/O|blocked for more than' /tmp/dmesg.new)
  if [ -z "$bad" ]; then
    check restart-dmesg ok "$(wc -l < /tmp/dmesg.new) new kernel messages, none from blkfront, no I/O error or hung task"
  else
    check restart-dmesg FAIL "$(echo "$bad" | head -3 | tr '\n' ' ')"
  fi
  t LAB-DOMU-DONE
  sync; poweroff -f
fi
if [ $MODE = faults ]; then
  # xvdc: a logical volume in dom0. xvdb: a device-mapper device dom0 switches to the
  # error target and back while we use it.
  if wait_for 30 '[ -b /dev/xvdc ]' && fio --name=lv --filename=/dev/xvdc --ioengine=libaio --direct=1 --rw=randwrite \
       --bs=64k --iodepth=8 --size=32m --verify=crc32c --verify_fatal=1 --do_verify=1 >/tmp/lv.log 2>&1; then
    check lvm-volume ok "32 MiB verified on a logical volume"
  else
    check lvm-volume FAIL "$(grep -i -m1 -E 'verify|error' /tmp/lv.log)"
  fi
  dd if=/dev/urandom of=/tmp/pattern bs=1M count=8 2>/dev/null
  want=$(md5sum < /tmp/pattern | cut -d' ' -f1)
  readback() { dd if=/dev/xvdb bs=1M count=8 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1; }
  dd if=/tmp/pattern of=/dev/xvdb bs=1M oflag=direct conv=fsync 2>/dev/null
  if [ "$(readback)" = "$want" ]; then check dm-before-fault ok; else check dm-before-fault FAIL "read back differs"; fi
  t fault-now   # dom0 loads the error target
  if wait_for 60 '! dd if=/dev/xvdb of=/dev/null bs=1M count=1 iflag=direct 2>/dev/null'; then
    check fault-read-error ok "reads fail ($(dd if=/dev/xvdb of=/dev/null bs=4k count=1 iflag=direct 2>&1 | head -1))"
  else
    check fault-read-error FAIL "reads still succeed 60 s after the fault"
  fi
  if dd if=/tmp/pattern of=/dev/xvdb bs=1M count=1 seek=16 oflag=direct conv=fsync 2>/dev/null; then
    check fault-write-error FAIL "a write succeeded on the error target"
  else
    check fault-write-error ok "writes fail"
  fi
  t heal-now    # dom0 loads the linear target again
  if wait_for 60 'dd if=/dev/xvdb of=/dev/null bs=1M count=1 iflag=direct 2>/dev/null' && [ "$(readback)" = "$want" ] &&
     dd if=/tmp/pattern of=/dev/xvdb bs=1M seek=16 oflag=direct conv=fsync 2>/dev/null; then
    check fault-recovered ok "the data written before the fault reads back and new writes succeed"
  else
    check fault-recovered FAIL "the device did not recover"
  fi
  # dm-flakey: the device fails every other second. Each 4 KiB write (its own
  # pattern, its own place, fsync'd) either succeeds or fails with an error,
  # none hangs, and every write that succeeded reads back after the heal.
  t flakey-now
  wait_for 30 '! dd if=/dev/xvdb of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null' || true
  ok_writes=""; failed_writes=0; hung=0
  for n in $(seq 1 48); do
    printf 'flakey block %04d ' $n | dd of=/tmp/blk bs=4096 conv=sync 2>/dev/null
    timeout 60 dd if=/tmp/blk of=/dev/xvdb bs=4096 seek=$((8192 + n)) oflag=direct conv=fsync 2>/dev/null; rc=$?
    if [ $rc = 0 ]; then ok_writes="$ok_writes $n"; elif [ $rc = 124 ]; then hung=$((hung + 1)); else failed_writes=$((failed_writes + 1)); fi
    busybox usleep 150000
  done
  t flakey-heal
  # We cannot see when dom0 has loaded linear again (reads work in the up
  # seconds too), so a read that fails is retried; only a read that succeeds
  # with other bytes than were acknowledged counts as lost.
  readblk() { dd if=/dev/xvdb of=/tmp/rb bs=4096 skip=$((8192 + $1)) count=1 iflag=direct 2>/dev/null && [ "$(wc -c < /tmp/rb)" = 4096 ]; }
  wrong=0; unreadable=0; nok=0
  for n in $ok_writes; do
    nok=$((nok + 1)); tries=0
    while ! readblk $n; do tries=$((tries + 1)); [ $tries -ge 120 ] && break; busybox usleep 500000; done
    printf 'flakey block %04d ' $n | dd of=/tmp/blk bs=4096 conv=sync 2>/dev/null
    if [ $tries -ge 120 ]; then unreadable=$((unreadable + 1))
    elif [ "$(md5sum < /tmp/rb)" != "$(md5sum < /tmp/blk)" ]; then wrong=$((wrong + 1)); fi
  done
  if [ $hung = 0 ] && [ $nok -gt 0 ] && [ $failed_writes -gt 0 ] && [ $wrong = 0 ] && [ $unreadable = 0 ]; then
    check flakey ok "$nok writes succeeded and read back, $failed_writes failed with an error, none hung"
  else
    check flakey FAIL "succeeded $nok (wrong after heal: $wrong, unreadable: $unreadable), failed $failed_writes, hung $hung"
  fi
  t LAB-DOMU-DONE
  sync; poweroff -f
fi
if [ "$NET" = 1 ]; then
  if wait_for 30 'ip link show eth0 >/dev/null 2>&1'; then net_up eth0; else check nic-present FAIL "no eth0 after 30 s"; fi
  t net-up   # dom0 pings us now
fi

if [ -b /dev/xvdb ]; then
  info "queues=$(ls /sys/block/xvdb/mq 2>/dev/null | wc -l) max_segments=$(cat /sys/block/xvdb/queue/max_segments) max_hw_sectors_kb=$(cat /sys/block/xvdb/queue/max_hw_sectors_kb) discard_max_bytes=$(cat /sys/block/xvdb/queue/discard_max_bytes) sectors=$(cat /sys/block/xvdb/size)"
  if fio --name=verify --filename=/dev/xvdb --ioengine=libaio --direct=1 --rw=randwrite --bs=16k --iodepth=16 \
         --size=32m --verify=crc32c --verify_fatal=1 --do_verify=1 >/tmp/verify.log 2>&1; then
    check fio-verify ok "32 MiB random 16 KiB writes read back and verified"
  else
    check fio-verify FAIL "$(grep -i -m1 -E 'verify|error' /tmp/verify.log)"
  fi
  if [ $MODE = full ]; then
    t fio-start
    fio_job randread4k randread 4k 32
    fio_job randwrite4k randwrite 4k 32
    fio_job read1m read 1M 8
    fio_job write1m write 1M 8
    t fio-done
    # A file system: made, written, read back after a remount, trimmed, checked.
    mkfs.ext4 -F -q /dev/xvdb && mount /dev/xvdb /mnt &&
      dd if=/dev/urandom of=/mnt/data bs=1M count=32 2>/dev/null && sync && md5=$(md5sum < /mnt/data) &&
      umount /mnt && mount /dev/xvdb /mnt && [ "$(md5sum < /mnt/data)" = "$md5" ] &&
      dd if=/dev/urandom of=/mnt/scratch bs=1M count=64 2>/dev/null && sync && rm /mnt/scratch &&
      trimmed=$(fstrim -v /mnt) && umount /mnt && e2fsck -fn /dev/xvdb >/tmp/fsck.log 2>&1
    rc=$?
    if [ $rc = 0 ]; then check filesystem ok "mkfs, 32 MiB file read back after remount, $trimmed, fsck clean"; else check filesystem FAIL "step failed (rc $rc): $(tail -2 /tmp/fsck.log 2>/dev/null | tr '\n' ' ')"; fi
  fi
fi
if [ "$NET" = 1 ] && [ $MODE = full ]; then
  t iperf-start
  for dir in tx rx; do
    flag=""; [ $dir = rx ] && flag=-R
    t job-start-iperf_$dir
    mbps=$(iperf3 -c 10.0.0.1 -t $RT -f m $flag 2>&1 | awk '/receiver/ {print $(NF-2)}')
    t job-end-iperf_$dir
    if [ -n "$mbps" ]; then echo "LAB-IPERF $BE $dir mbps=$mbps"; else check iperf-$dir FAIL "no result"; fi
  done
  info "net_queues=$(ls -d /sys/class/net/eth0/queues/rx-* | wc -l)"
  t iperf-done
fi
if [ -b /dev/xvdb ]; then write_pattern; fi
if [ "$NET" = 1 ]; then
  # Stay until dom0's three pings have arrived.
  if wait_for 60 '[ "$(echos_in)" -ge 3 ]'; then check pinged-by-dom0 ok "$(echos_in) echo requests answered"; else check pinged-by-dom0 FAIL "$(echos_in) echo requests in 60 s"; fi
fi
if [ $MODE = full ]; then
  # Live detach and attach of both devices (dom0 runs xl block-detach/network-detach, then attach).
  mount /dev/xvdb /mnt && md5=$(md5sum < /mnt/data) && umount /mnt
  t wait-detach
  wait_for 120 '[ ! -b /dev/xvdb ]' && gone=yes || gone=no
  wait_for 120 '[ -b /dev/xvdb ]' && back=yes || back=no
  if [ $gone = yes ] && [ $back = yes ] && mount /dev/xvdb /mnt && [ "$(md5sum < /mnt/data)" = "$md5" ] && umount /mnt; then
    check disk-detach-attach ok "the file system read back after xl block-detach and block-attach"
  else
    check disk-detach-attach FAIL "gone=$gone back=$back"
  fi
  if [ "$NET" = 1 ]; then
    wait_for 120 '! ip link show eth0 >/dev/null 2>&1' && gone=yes || gone=no
    wait_for 120 'ip link show eth0 >/dev/null 2>&1' && back=yes || back=no
    if [ $gone = yes ] && [ $back = yes ]; then net_up eth0 -after-reattach; else check nic-detach-attach FAIL "gone=$gone back=$back"; fi
  fi
fi
if [ $MODE = full ] && [ -b /dev/xvdb ]; then
  # Leave the marker (the pattern's md5 and place) and reboot: xl makes the domain anew.
  printf 'LABREBOOT %s %s ' "$(md5sum < /tmp/pattern | cut -d' ' -f1)" "$seek" | dd of=/dev/xvdb bs=1M seek=$marker_mb oflag=direct conv=sync,fsync 2>/dev/null
  t rebooting
  sync; reboot -f
fi
t LAB-DOMU-DONE
sync; poweroff -f

#!/bin/sh
# Runs in dom0: one guest per backend, each created with stock `xl create`
# as a user would, then checks from dom0's side. Backends (lab_backends=,
# joined with +): kernel (xen-blkback, xen-netback), qdisk (QEMU's userspace
# disk backend; the NIC is left out), xenbackd (ours, with the kernel's
# backend modules unloaded, serving backend/vbd and backend/vif as libxl lays
# them out, hotplug scripts included), restart (xenbackd serving the disk is
# killed and started again under the guest's I/O: the take-over). Every xl
# and xenstore call runs under `timeout` (TCG occasionally wedges a dom0 process).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/xen-4.17/bin
t() { echo "LAB-T $(cut -d' ' -f1 /proc/uptime) $*"; }
arg() { sed -n "s/.*$1=\([a-z0-9+]*\).*/\1/p" /proc/cmdline; }
RT=$(arg lab_rt); RT=${RT:-5}
MODE=$(arg lab_mode); MODE=${MODE:-smoke}
BACKENDS=$(arg lab_backends); BACKENDS=${BACKENDS:-xenbackd}
KVER=$(ls /lib/modules | sort -V | tail -1)
# No udev in this dom0: device-mapper and LVM make their device nodes themselves.
export DM_DISABLE_UDEV=1
check() { echo "LAB-CHECK $be $1 $2 ${3:-}"; }
xs() { timeout 10 xenstore-read "$@" 2>/dev/null; }
# Where the time goes: dom0's busy and total CPU ticks, and the daemon's (if any).
cpu_sample() {
  echo "$(awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat) $( [ -n "$daemon" ] && awk '{print $14, $15}' /proc/$daemon/stat || echo 0 0)"
}
cpu_report() {  # job: dom0 CPUs busy during it, and how many of them were xenbackd
  [ -f /tmp/cpu-$1 ] || return
  set -- $1 $(cat /tmp/cpu-$1) $(cpu_sample)
  # start: busy total user system; end: the same
  echo "$2 $3 $4 $5 $6 $7 $8 $9" | awk -v be=$be -v job=$1 -v n=$(nproc) '{dt=$6-$2; if (dt>0) printf "LAB-CPU %s %s dom0_cpus=%.2f backend_process_cpus=%.2f user=%.2f system=%.2f\n", be, job, n*($5-$1)/dt, n*($7-$3+$8-$4)/dt, n*($7-$3)/dt, n*($8-$4)/dt}'
}
start_daemon() {
  # The kernel's backends must not serve backend/vbd and backend/vif: unloaded.
  modprobe -r xen-netback xen-blkback 2>/dev/null
  if lsmod | grep -q -E '^xen_(blk|net)back'; then check kernel-backends-unloaded FAIL "$(lsmod | grep back)"; fi
  : > /run/xenbackd.log
  if launch_daemon "$@"; then check daemon-ready ok "$(cat /run/xenbackd.out)"; else check daemon-ready FAIL "$(tail -3 /run/xenbackd.log)"; fi
}
launch_daemon() {  # extra flags; the log is appended to (restart keeps one log across daemons)
  xenbackd --platform host --log-level info --metrics-file /run/xenbackd.prom "$@" > /run/xenbackd.out 2>> /run/xenbackd.log &
  daemon=$!
  i=0; while ! grep -q '^ready' /run/xenbackd.out 2>/dev/null && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
  grep -q '^ready' /run/xenbackd.out
}
now() { date +%s.%N; }
ms() { echo "$1 $2" | awk '{printf "%d", ($2 - $1) * 1000}'; }
# restart: xenbackd is stopped under the guest's I/O and started again with the same flags
# and state directory; Linux's blkfront never reconnects by itself, so the new daemon must
# take the rings over from their records. Before each stop the guest must have finished
# one more fio run than at the last one (its I/O went on), then a random 2.0-6.9 s.
restart_round() {  # kill-N (SIGKILL) or term (SIGTERM)
  rname=$1; sig=KILL; [ $rname = term ] && sig=TERM
  bpath=/local/domain/0/backend/vbd/$domid/51728; fpath=/local/domain/$domid/device/vbd/51728
  n=0; while [ "$(grep -c 'LAB-T .* fio-run-end' $console 2>/dev/null)" -le "$runs_at_restart" ] && [ $n -lt 1800 ]; do sleep 0.1; n=$((n+1)); done
  runs_at_restart=$(grep -c 'LAB-T .* fio-run-end' $console 2>/dev/null)
  sleep "$(shuf -i 20-69 -n1 | sed 's/\(.\)$/.\1/')"
  records=$(ls /run/xenback 2>/dev/null | tr '\n' ' ')
  states="before:$(xs $bpath/state)/$(xs $fpath/state)"
  resumed0=$(grep -c 'resumed the connection' /run/xenbackd.log)
  t "restart-$rname-stop"
  t0=$(now); kill -$sig $daemon; wait $daemon; rc=$?; t1=$(now)
  states="$states down:$(xs $bpath/state)/$(xs $fpath/state)"
  echo "---- lab: xenbackd stopped by SIG$sig (exit $rc) $(ms $t0 $t1) ms after the signal; starting it again" >> /run/xenbackd.log
  if launch_daemon --state-dir /run/xenback; then ready=yes; else ready=no; fi; t2=$(now)
  n=0; while [ "$(grep -c 'resumed the connection' /run/xenbackd.log)" -le $resumed0 ] && [ $n -lt 1200 ]; do
    sleep 0.05; n=$((n+1))
    [ $((n % 20)) = 0 ] && states="$states waiting:$(xs $bpath/state)/$(xs $fpath/state)"
  done; t3=$(now)
  t "restart-$rname-resumed"
  resumed=$(grep -c 'resumed the connection' /run/xenbackd.log); [ $resumed -gt $resumed0 ] && resumed=yes || resumed=no
  states="$states after:$(xs $bpath/state)/$(xs $fpath/state)"
  echo "LAB-RESTART $be $rname signal=$sig exit=$rc pause_ms=$(ms $t0 $t3) stopped_ms=$(ms $t0 $t1) ready_ms=$(ms $t0 $t2) resumed=$resumed records=[$records] states=[$states]"
  bad_states=$(echo "$states" | tr ' ' '\n' | grep -v ':4/4$')
  if [ $ready = yes ] && [ $resumed = yes ] && [ -z "$bad_states" ] && { [ $sig = KILL ] || [ $rc = 0 ]; }; then
    check restart-$rname ok "SIG$sig (exit $rc), resumed $(ms $t0 $t3) ms after the signal, backend/frontend stayed Connected (4/4)"
  else
    check restart-$rname FAIL "SIG$sig exit $rc, ready $ready, resumed $resumed, states not 4/4: $(echo $bad_states)"
    grep -E 'warning|error|critical' /run/xenbackd.log | tail -5 | cut -c1-300 | sed "s/^/LAB-INFO $be daemon: /"
  fi
}

dd if=/dev/urandom of=/tmp/disk.img bs=1M count=512 status=none
t disk-image-ready
iperf3 -s -D -B 10.0.0.1

daemon=""
for be in $(echo $BACKENDS | tr '+' ' '); do
  name=guest-$be; net=1; vcpus=1; [ $MODE = full ] && vcpus=2
  loop=""
  case $be in
    kernel)
      modprobe xen-blkback; modprobe xen-netback
      loop=$(losetup -f --show /tmp/disk.img); disk="'phy:$loop,xvdb,w'";;
    qdisk)
      disk="'format=raw, vdev=xvdb, access=rw, backendtype=qdisk, target=/tmp/disk.img'"; net=0;;
    xenbackd)
      start_daemon
      loop=$(losetup -f --show /tmp/disk.img); disk="'phy:$loop,xvdb,w'";;
    restart)
      # The same flags and state directory (the default, named) for every daemon.
      rm -rf /run/xenback; start_daemon --state-dir /run/xenback; runs_at_restart=0
      loop=$(losetup -f --show /tmp/disk.img); disk="'phy:$loop,xvdb,w'"; net=0;;
    faults)
      start_daemon
      # A device-mapper device over a loop (its table is switched to error and back
      # while the guest uses it) and a logical volume in a volume group on another loop.
      truncate -s 64M /tmp/fault.img; floop=$(losetup -f --show /tmp/fault.img); fsectors=$(blockdev --getsz $floop)
      dmsetup create labfault --table "0 $fsectors linear $floop 0"
      truncate -s 96M /tmp/pv.img; pvloop=$(losetup -f --show /tmp/pv.img)
      { pvcreate -q $pvloop && vgcreate -q labvg $pvloop && lvcreate -q -y -n disk -L 64M labvg; } >/tmp/lvm.log 2>&1 ||
        check lvm-setup FAIL "$(tail -2 /tmp/lvm.log | tr '\n' ' ')"
      disk="'phy:/dev/mapper/labfault,xvdb,w', 'phy:/dev/labvg/disk,xvdc,w'"; net=0;;
  esac
  guest_mode=$MODE; [ $be = faults ] && guest_mode=faults; [ $be = restart ] && guest_mode=restart
  vif=""; [ $net = 1 ] && vif="vif = [ 'mac=00:16:3e:00:00:02,bridge=br0' ]"
  cat > /tmp/$name.cfg <<C
name = "$name"
type = "pv"
kernel = "/boot/vmlinuz-$KVER"
ramdisk = "/lab/domu-initrd.gz"
extra = "console=hvc0 lab_mode=$guest_mode lab_rt=$RT lab_be=$be lab_net=$net"
memory = 512
vcpus = $vcpus
disk = [ $disk ]
$vif
on_poweroff = "destroy"
on_crash = "destroy"
C
  t "xl-create-$be"
  if ! timeout 120 xl create /tmp/$name.cfg > /tmp/$name.create.log 2>&1; then
    check xl-create FAIL "$(tail -3 /tmp/$name.create.log | tr '\n' ' ')"
  else
    check xl-create ok
  fi
  domid=$(timeout 10 xl domid $name 2>/dev/null)
  t "xl-create-$be-returned domid=$domid"
  console=/var/log/xen/console/guest-$name.log
  pinged=0; restarted=0; detached=0; faulted=0; healed=0; flaked=0; unflaked=0; miss=0; i=0; shown=0; dshown=0
  deadline=300; [ $MODE = full ] && deadline=1200; [ $be = restart ] && deadline=900
  # Until the guest is gone (its xenstore name vanishes, 3 misses in a row), act on its
  # markers and relay its console and the daemon's log as they grow.
  while [ -n "$domid" ] && [ $i -lt $deadline ]; do
    n=$(wc -l < $console 2>/dev/null || echo 0)
    if [ "$n" -gt $shown ]; then
      sed -n "$((shown+1)),${n}p" $console > /tmp/new-lines; shown=$n
      sed "s/^/LAB-GUEST $be /" /tmp/new-lines
      for job in $(sed -n 's/.*LAB-T [0-9.]* job-start-\([a-z0-9_]*\).*/\1/p' /tmp/new-lines); do cpu_sample > /tmp/cpu-$job; done
      for job in $(sed -n 's/.*LAB-T [0-9.]* job-end-\([a-z0-9_]*\).*/\1/p' /tmp/new-lines); do cpu_report $job; done
    fi
    if [ -n "$daemon" ]; then
      n=$(wc -l < /run/xenbackd.log)
      [ "$n" -gt $dshown ] && sed -n "$((dshown+1)),${n}p" /run/xenbackd.log | cut -c1-300 | sed "s/^/LAB-DAEMON /" && dshown=$n
    fi
    if xs /local/domain/$domid/name >/dev/null; then miss=0; else miss=$((miss+1))
      if [ $miss -ge 3 ]; then
        # A guest that rebooted is the same name under a new domid: follow it.
        newid=$(timeout 10 xl domid $name 2>/dev/null)
        if [ -n "$newid" ] && [ "$newid" != "$domid" ] && grep -q 'LAB-T .* rebooting' $console 2>/dev/null; then
          t "guest-$be-rebooted domid=$newid"; domid=$newid; miss=0
        else
          break
        fi
      fi
    fi
    if [ $pinged = 0 ] && grep -q 'LAB-T .* net-up' $console 2>/dev/null; then
      pinged=1
      if timeout 30 busybox ping -c 3 -W 3 10.0.0.2 >/dev/null 2>&1; then check ping-guest ok; else check ping-guest FAIL "10.0.0.2 did not answer"; fi
      # What the frontends and the backend agreed on, read where the toolstack would.
      for d in /local/domain/$domid/device/vbd/51728 /local/domain/$domid/device/vif/0; do
        be_path=$(xs $d/backend)
        echo "LAB-NEGOTIATED $be $(basename $(dirname $d)) frontend: queues=$(xs $d/multi-queue-num-queues) ring-page-order=$(xs $d/ring-page-order) persistent=$(xs $d/feature-persistent) gso-tcpv4=$(xs $d/feature-gso-tcpv4) sg=$(xs $d/feature-sg) rx-copy=$(xs $d/request-rx-copy) split=$( [ -n "$(xs $d/event-channel-tx)$(xs $d/queue-0/event-channel-tx)" ] && echo 1 || echo 0) backend: max-queues=$(xs $be_path/multi-queue-max-queues) indirect=$(xs $be_path/feature-max-indirect-segments) persistent=$(xs $be_path/feature-persistent) discard=$(xs $be_path/feature-discard) state=$(xs $be_path/state)"
      done
    fi
    if [ $be = faults ] && [ $faulted = 0 ] && grep -q 'LAB-T .* fault-now' $console 2>/dev/null; then
      faulted=1; dmsetup suspend labfault && dmsetup load labfault --table "0 $fsectors error" && dmsetup resume labfault ||
        check dm-error-loaded FAIL "dmsetup could not load the error target"
    fi
    if [ $be = faults ] && [ $healed = 0 ] && grep -q 'LAB-T .* heal-now' $console 2>/dev/null; then
      healed=1; dmsetup suspend labfault && dmsetup load labfault --table "0 $fsectors linear $floop 0" && dmsetup resume labfault ||
        check dm-linear-loaded FAIL "dmsetup could not load the linear target again"
    fi
    # dm-flakey: up 1 s, down 1 s (every I/O fails while down), then linear again.
    if [ $be = faults ] && [ $flaked = 0 ] && grep -q 'LAB-T .* flakey-now' $console 2>/dev/null; then
      flaked=1; { modprobe dm-flakey && dmsetup suspend labfault && dmsetup load labfault --table "0 $fsectors flakey $floop 0 1 1" &&
        dmsetup resume labfault; } || check dm-flakey-loaded FAIL "dmsetup could not load the flakey target"
    fi
    if [ $be = faults ] && [ $unflaked = 0 ] && grep -q 'LAB-T .* flakey-heal' $console 2>/dev/null; then
      unflaked=1; dmsetup suspend labfault && dmsetup load labfault --table "0 $fsectors linear $floop 0" && dmsetup resume labfault ||
        check dm-linear-after-flakey FAIL "dmsetup could not load the linear target again"
    fi
    if [ $be = restart ] && [ $restarted = 0 ] && grep -q 'LAB-T .* restart-io-start' $console 2>/dev/null; then
      restarted=1
      for r in kill-1 kill-2 kill-3 term; do restart_round $r; done
      # The guest stops after its current fio run once it finds this in the disk's last MiB
      # (the loop device reads the file through the page cache this write goes to).
      printf 'LABRESTART-DONE' | dd of=/tmp/disk.img bs=1M seek=$(( $(stat -c %s /tmp/disk.img) / 1048576 - 1 )) conv=notrunc status=none
      t restart-done
    fi
    if [ $detached = 0 ] && grep -q 'LAB-T .* wait-detach' $console 2>/dev/null; then
      detached=1
      timeout 60 xl block-detach $name xvdb || check xl-block-detach FAIL "rc $?"
      sleep 2
      timeout 60 xl block-attach $name "$(echo $disk | tr -d "'")" || check xl-block-attach FAIL "rc $?"
      if [ $net = 1 ]; then
        sleep 2
        timeout 60 xl network-detach $name 0 || check xl-network-detach FAIL "rc $?"
        sleep 2
        timeout 60 xl network-attach $name mac=00:16:3e:00:00:02 bridge=br0 || check xl-network-attach FAIL "rc $?"
      fi
    fi
    sleep 1; i=$((i+1))
  done
  rm -f /tmp/cpu-*
  t "guest-$be-gone after ${i}s"
  [ $i -ge $deadline ] && check guest-deadline FAIL "the guest still ran after $deadline s"
  n=$(wc -l < $console 2>/dev/null || echo 0)
  [ "$n" -gt $shown ] && sed -n "$((shown+1)),${n}p" $console | sed "s/^/LAB-GUEST $be /"
  grep -q 'LAB-DOMU-DONE' $console || { check guest-finished FAIL "no LAB-DOMU-DONE; console tail:"; tail -5 $console | sed 's/^/LAB-CONSOLE /'; }
  [ -n "$domid" ] && timeout 30 xl destroy $domid >/dev/null 2>&1
  # The guest's pattern, read from the backing file in dom0: the other path.
  p=$(grep -m1 '^LAB-PATTERN' $console)
  if [ -n "$p" ]; then
    off=$(echo "$p" | sed 's/.*offset_mb=\([0-9]*\).*/\1/'); size=$(echo "$p" | sed 's/.*size_mb=\([0-9]*\).*/\1/'); want=$(echo "$p" | sed 's/.*md5=\([0-9a-f]*\).*/\1/')
    got=$(dd if=/tmp/disk.img bs=1M skip=$off count=$size status=none | md5sum | cut -d' ' -f1)
    if [ "$got" = "$want" ]; then check backing-readback ok "the guest's $size MiB read from dom0's backing file"; else check backing-readback FAIL "backing has $got, guest wrote $want"; fi
  fi
  if [ $MODE = full ] && [ $be != faults ] && [ $be != restart ]; then
    # mkfs and fstrim discard; on a loop device over tmpfs that punches holes in the file.
    alloc=$(du -m /tmp/disk.img | cut -f1)
    if [ $alloc -lt 300 ]; then check discard-reaches-backing ok "$alloc MiB of 512 allocated after mkfs and fstrim"; else check discard-reaches-backing FAIL "$alloc MiB of 512 still allocated"; fi
    dd if=/dev/urandom of=/tmp/disk.img bs=1M count=512 conv=notrunc status=none
  fi
  [ -n "$loop" ] && losetup -d $loop
  if [ $be = faults ]; then
    lvremove -q -y labvg >/dev/null 2>&1; vgremove -q -y labvg >/dev/null 2>&1
    dmsetup remove labfault; losetup -d $floop $pvloop
  fi
  if [ -n "$daemon" ]; then
    # Every device was closed and removed; SIGTERM ends the daemon with status 0.
    sed 's/^/LAB-METRIC xenbackd /' /run/xenbackd.prom 2>/dev/null | grep -E 'requests_total|packets_total' | grep -v '^LAB-METRIC xenbackd #'
    kill -TERM $daemon; i=0; while kill -0 $daemon 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
    wait $daemon; rc=$?
    if [ $rc = 0 ]; then check daemon-stopped ok "SIGTERM, exit 0"; else check daemon-stopped FAIL "exit $rc"; fi
    sed -n "$((dshown+1)),\$p" /run/xenbackd.log | cut -c1-300 | sed "s/^/LAB-DAEMON /"
    daemon=""
  fi
done
dmesg | grep -E 'segfault|BUG|Oops|general protection' | sed 's/^/LAB-WARN /'

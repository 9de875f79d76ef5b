#!/usr/bin/env bash
# Scale check for xenbackd (issue: 64 devices in one daemon): 64 guests, one idle
# connected disk each, each frontend its own process; prints the daemon's RSS
# per disk, its threads and its CPU use over 10 idle seconds. Needs a release build.
# 64 idle connected disks in one xenbackd: its CPU over 10 s and RSS.
set -e
B="$(cd "$(dirname "$0")/.." && pwd)/.build/release"
D=$(mktemp -d)
$B/xenback sim serve --socket $D/sim.sock --xenstore-socket $D/xs.sock --log-level warning > $D/sim.out 2>$D/sim.log &
SIM=$!
sleep 1
$B/xenbackd --platform sim --sim-socket $D/sim.sock --log-level warning > $D/d.out 2>$D/d.log &
DAEMON=$!
sleep 1
RSS0=$(awk '/VmRSS/{print $2}' /proc/$DAEMON/status)
PIDS=""
for i in $(seq 1 64); do
  truncate -s 64M $D/disk$i.img
  $B/xenback guest create --sim $D/sim.sock --name g$i --disk $D/disk$i.img --no-frontends > /dev/null
  $B/xenback front blk --sim $D/sim.sock --domain $i --soak 600 --idle --first-frame 0 --frame-count 1024 > $D/f$i.out 2>&1 &
  PIDS="$PIDS $!"
done
for i in $(seq 1 64); do while ! grep -q connected $D/f$i.out 2>/dev/null; do sleep 0.1; done; done
sleep 2
T0=$(awk '{print $14+$15}' /proc/$DAEMON/stat)
RSS1=$(awk '/VmRSS/{print $2}' /proc/$DAEMON/status)
THREADS=$(ls /proc/$DAEMON/task | wc -l)
sleep 10
T1=$(awk '{print $14+$15}' /proc/$DAEMON/stat)
TCK=$(getconf CLK_TCK)
echo "xenbackd: 64 connected idle disks; RSS before $RSS0 KiB, with 64 disks $RSS1 KiB => $(( (RSS1-RSS0)/64 )) KiB per disk; threads $THREADS; CPU over 10 s: $(( (T1-T0) )) ticks of 1/$TCK s"
kill -TERM $PIDS; wait $PIDS 2>/dev/null || true
kill -TERM $DAEMON; wait $DAEMON; echo "xenbackd exit $?"
kill -TERM $SIM; wait $SIM || true
rm -rf $D

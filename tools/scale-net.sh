#!/usr/bin/env bash
# Scale check for xenbackd's network side (issue: 64 NICs in one daemon): 64
# guests, one connected idle NIC each (its netfront its own process, answering
# pings), every VIF on one bridge in a private namespace; prints the daemon's
# RSS per NIC, its threads and its CPU use over 10 idle seconds, and pings one
# guest to show the VIFs work. Needs root and a release build.
set -e
B="$(cd "$(dirname "$0")/.." && pwd)/.build/release"
D=$(mktemp -d)
NS=xscale-$$
ip netns add $NS
ip -n $NS link set lo up
ip -n $NS link add xbr0 type bridge
ip -n $NS link set xbr0 type bridge forward_delay 0 stp_state 0
ip -n $NS addr add 10.81.0.1/16 dev xbr0
ip -n $NS link set xbr0 up
cleanup() { ip netns del $NS 2>/dev/null || true; rm -rf $D; }
trap cleanup EXIT
echo "{\"net\": {\"namespace\": \"/var/run/netns/$NS\", \"maxQueues\": 1}}" > $D/xenbackd.json
$B/xenback sim serve --socket $D/sim.sock --xenstore-socket $D/xs.sock --log-level warning > $D/sim.out 2>$D/sim.log &
SIM=$!
sleep 1
$B/xenbackd --platform sim --sim-socket $D/sim.sock --config $D/xenbackd.json --log-level warning > $D/d.out 2>$D/d.log &
DAEMON=$!
sleep 1
RSS0=$(awk '/VmRSS/{print $2}' /proc/$DAEMON/status)
for i in $(seq 1 64); do
  $B/xenback guest create --sim $D/sim.sock --name g$i --nic bridge=xbr0,ip=10.81.1.$i > $D/g$i.out
done
# Connected means the VIF joined the bridge.
for t in $(seq 1 300); do
  n=$(ip -n $NS link show master xbr0 | grep -c '^[0-9]*: vif' || true)
  [ "$n" -ge 64 ] && break
  sleep 0.1
done
echo "VIFs on the bridge: $n"
sleep 2
T0=$(awk '{print $14+$15}' /proc/$DAEMON/stat)
RSS1=$(awk '/VmRSS/{print $2}' /proc/$DAEMON/status)
THREADS=$(ls /proc/$DAEMON/task | wc -l)
sleep 10
T1=$(awk '{print $14+$15}' /proc/$DAEMON/stat)
TCK=$(getconf CLK_TCK)
echo "xenbackd: 64 connected idle NICs; RSS before $RSS0 KiB, with 64 NICs $RSS1 KiB => $(( (RSS1-RSS0)/64 )) KiB per NIC; threads $THREADS; CPU over 10 s: $(( (T1-T0) )) ticks of 1/$TCK s"
ip netns exec $NS ping -c 2 -W 5 10.81.1.42 | tail -2
for i in $(seq 1 64); do $B/xenback guest destroy --sim $D/sim.sock --name g$i > /dev/null; done
kill -TERM $DAEMON; wait $DAEMON; echo "xenbackd exit $?"
kill -TERM $SIM; wait $SIM || true

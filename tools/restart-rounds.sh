#!/usr/bin/env bash
# xenbackd killed (SIGKILL) at random moments under a guest whose frontend
# behaves like Linux's blkfront: it never sets up new rings on its own, so a
# restarted daemon must take over the old ones from its ring records.
# usage: tools/restart-rounds.sh [ROUNDS [KILL|TERM]] (default 20 KILL); BUILD=debug|release
# (default debug). With TERM the daemon is stopped as systemd stops it and must
# leave the device Connected (exit 0) for the next one.
# The sim, xenbackd and the guest (`xenback front blk --soak --never-reconnect`)
# run as processes. Each round waits a random 0-2.9 s of the guest's I/O, kills
# the daemon and starts a new one, then waits for the guest's next progress
# line and takes its pause (the longest the guest waited for an answer in that
# pass). At the end the guest stops and reports its verification. Prints a line
# per round and, last, JSON; exit 0 only if the guest saw no error, no
# mismatch and never set up new rings.
set -euo pipefail
rounds=${1:-20}
signal=${2:-KILL}
case $signal in KILL|TERM) ;; *) echo "signal must be KILL or TERM, got $signal" >&2; exit 2 ;; esac
DAEMON_ARGS="--log-level info"
. "$(dirname "$0")/sim-soak-rig.sh"
$B/xenback front blk --sim $D/sim.sock --domain 1 --soak 100000 --iodepth 8 --never-reconnect > $D/guest.out 2>&1 &
GUEST=$!
waitfor $D/guest.out '^progress' 60
pauses=()
for r in $(seq 1 $rounds); do
  sleep "$(( RANDOM % 24 / 10 )).$(( RANDOM % 10 ))"   # the random moment: 0.0-2.9 s into the guest's I/O
  kill -$signal $DAEMON
  if wait $DAEMON; then rc=0; else rc=$?; fi
  if [ $signal = TERM ] && [ $rc != 0 ]; then echo "round $r: SIGTERM ended xenbackd with exit $rc"; tail -5 $D/d.log; exit 1; fi
  before=$(grep -c '^progress' $D/guest.out || true)
  start_daemon
  n=600; while [ "$(grep -c '^progress' $D/guest.out || true)" -le "$before" ]; do
    n=$((n-1)); if [ $n = 0 ] || ! kill -0 $GUEST 2>/dev/null; then echo "round $r: the guest made no progress after the restart"; tail -3 $D/guest.out; tail -5 $D/d.log; exit 1; fi; sleep 0.1
  done
  line=$(grep '^progress' $D/guest.out | tail -1)
  pause=$(echo "$line" | sed -n 's/.*pause_ms=\([0-9]*\).*/\1/p')
  pauses+=("${pause:-0}")
  echo "round $r: pause ${pause:-?} ms; $line"
done
kill -TERM $GUEST; wait $GUEST && guest_rc=0 || guest_rc=$?
verdict=$(grep '^verified:' $D/guest.out | tail -1)
echo "$verdict"
kill -TERM $DAEMON; wait $DAEMON && daemon_rc=0 || daemon_rc=$?
last=$(grep '^progress' $D/guest.out | tail -1)
errors=$(echo "$last" | sed -n 's/.*errors=\([0-9]*\).*/\1/p')
mismatches=$(echo "$verdict" | sed -n 's/.*mismatches=\([0-9]*\).*/\1/p')
restarts=$(echo "$verdict" | sed -n 's/.*recoveries=\([0-9]*\).*/\1/p')
sorted=$(printf '%s\n' "${pauses[@]}" | sort -n)
p50=$(echo "$sorted" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
pmax=$(echo "$sorted" | tail -1)
resumed=$(grep -c 'resumed the connection' $D/d.log || true)
ok=false
[ "$guest_rc" = 0 ] && [ "${errors:-1}" = 0 ] && [ "${mismatches:-1}" = 0 ] && [ "${restarts:-1}" = 0 ] && echo "$verdict" | grep -q "verified: ok" && ok=true
echo "{\"soak\":\"restart\",\"signal\":\"$signal\",\"rounds\":$rounds,\"resumed\":$resumed,\"io_errors\":${errors:-null},\"mismatches\":${mismatches:-null},\"frontend_restarts\":${restarts:-null},\"pause_ms_p50\":${p50:-null},\"pause_ms_max\":${pmax:-null},\"guest_exit\":$guest_rc,\"ok\":$ok}"
$ok

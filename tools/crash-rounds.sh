#!/usr/bin/env bash
# kill -9 of xenbackd at random moments under a write + flush + verify soak, many rounds.
# usage: tools/crash-rounds.sh [ROUNDS] (default 20); BUILD=debug|release (default debug).
# The sim, xenbackd and a guest blkfront (`xenback front blk --soak`) run as processes.
# Each round waits a random 0.2-2.5 s of the guest's I/O, kills the daemon with SIGKILL
# and starts a new one; the guest notices the silent backend, sets up new rings, redoes
# what was in flight and reads back every region whose writes and flush were acknowledged
# ("reconnected: N committed regions checked, M blocks lost"); the daemon keeps no ring
# records (--state-dir none), so this is the path of a backend that cannot resume. At the end the guest reads
# back everything once more. Prints a line per round and, last, JSON; exit 0 only if no
# acknowledged, flushed block was lost and every check passed.
set -euo pipefail
rounds=${1:-20}
DAEMON_ARGS="--state-dir none --log-level warning"
. "$(dirname "$0")/sim-soak-rig.sh"
$B/xenback front blk --sim $D/sim.sock --domain 1 --soak 100000 --iodepth 8 > $D/guest.out 2>&1 &
GUEST=$!
waitfor $D/guest.out '^progress' 60
lost_total=0; failed=0
for r in $(seq 1 $rounds); do
  : > $D/d.out
  before=$(grep -c '^reconnected' $D/guest.out || true)
  sleep "$(( RANDOM % 24 / 10 )).$(( RANDOM % 10 ))"   # the random moment: 0.0-2.9 s into the guest's I/O
  kill -9 $DAEMON; wait $DAEMON 2>/dev/null || true
  start_daemon
  n=300; while [ "$(grep -c '^reconnected' $D/guest.out || true)" -le "$before" ]; do
    n=$((n-1)); if [ $n = 0 ] || ! kill -0 $GUEST 2>/dev/null; then echo "round $r: the guest did not reconnect"; tail -3 $D/guest.out; exit 1; fi; sleep 0.1
  done
  line=$(grep '^reconnected' $D/guest.out | tail -1)
  lost=$(echo "$line" | sed -n 's/.*, \([0-9]*\) blocks lost/\1/p')
  lost_total=$(( lost_total + ${lost:-1} ))
  echo "round $r: $line"
done
kill -TERM $GUEST; wait $GUEST && guest_rc=0 || guest_rc=$?
verdict=$(grep '^verified:' $D/guest.out | tail -1)
echo "$verdict"
kill -TERM $DAEMON; wait $DAEMON && daemon_rc=0 || daemon_rc=$?
ok=false
[ "$lost_total" = 0 ] && [ "$guest_rc" = 0 ] && [ "$daemon_rc" = 0 ] && echo "$verdict" | grep -q "verified: ok .* lost=0" && ok=true
recoveries=$(echo "$verdict" | sed -n 's/.*recoveries=\([0-9]*\).*/\1/p')
echo "{\"bench\":\"crash-rounds\",\"rounds\":$rounds,\"recoveries\":${recoveries:-0},\"blocks_lost\":$lost_total,\"guest_exit\":$guest_rc,\"daemon_exit\":$daemon_rc,\"ok\":$ok}"
$ok

# Sourced by tools/crash-rounds.sh and tools/restart-rounds.sh: the sim, a
# xenbackd (started with start_daemon, given DAEMON_ARGS) and a 256 MiB disk
# attached to guest domain 1, all in a temporary folder $D removed on exit.
# BUILD=debug|release picks the binaries. Defines waitfor and start_daemon.
top=$(cd "$(dirname "$0")/.." && pwd)
B=$top/.build/${BUILD:-debug}
D=$(mktemp -d)
cleanup() { kill -9 ${GUEST:-} ${DAEMON:-} 2>/dev/null || true; kill -TERM ${SIM:-} 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
waitfor() {  # file pattern seconds: waits for a line (no fixed sleeps: a line is the signal)
  local n=$(( $3 * 10 )); while ! grep -q "$2" "$1" 2>/dev/null; do n=$((n-1)); [ $n -gt 0 ] || return 1; sleep 0.1; done
}
$B/xenback sim serve --socket $D/sim.sock --xenstore-socket $D/xs.sock --log-level warning > $D/sim.out 2> $D/sim.log &
SIM=$!; waitfor $D/sim.out '^ready' 20
start_daemon() { $B/xenbackd --platform sim --sim-socket $D/sim.sock $DAEMON_ARGS > $D/d.out 2>> $D/d.log & DAEMON=$!; waitfor $D/d.out '^ready' 20; }
start_daemon
truncate -s 256M $D/disk.img
$B/xenback guest create --sim $D/sim.sock --name soak --disk $D/disk.img --no-frontends > /dev/null

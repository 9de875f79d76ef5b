#!/usr/bin/env bash
# Fails on an import that points the wrong way or a raw system call outside
# the funnel. docs/architecture.md explains each rule. Run by tools/test.sh
# (and so by .ci/run); no build needed.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
fail() { echo "layering: $*" >&2; status=1; }

# Directory of a module's sources.
dir_of() { for d in Sources/"$1" Sources/Dev/"$1" Tests/Support/"$1"; do [ -d "$d" ] && { echo "$d"; return; }; done; }
# Modules a module imports (Swift files).
imports_of() { grep -rhoE '^(@testable |@_exported |public |internal |package )?import [A-Za-z_]+' "$(dir_of "$1")" --include='*.swift' | awk '{print $NF}' | sort -u; }
# Fails for each import of $1 in the extended regex $2.
forbid() {
  local module=$1 pattern=$2 why=$3
  [ -n "$(dir_of "$module")" ] || { fail "no module $module (update tools/check-layering.sh)"; return; }
  for m in $(imports_of "$module"); do
    [[ "$m" =~ ^($pattern)$ ]] && fail "$module imports $m: $why"
  done
  return 0
}
# Fails for each import of $1 not in the extended regex $2.
allow_only() {
  local module=$1 pattern=$2 why=$3
  [ -n "$(dir_of "$module")" ] || { fail "no module $module (update tools/check-layering.sh)"; return; }
  for m in $(imports_of "$module"); do
    [[ "$m" =~ ^($pattern)$ ]] || fail "$module imports $m: $why"
  done
  return 0
}

protocols='XenRing|XenBlockProtocol|XenNetProtocol|XenStoreProtocol|XenBus|XenNetChecksum'
rings='XenRing|XenBlockProtocol|XenNetProtocol'
backends='XenBusDriver|XenBlockBackend|XenNetBackend|XenBackendDaemon'
testing='XenBlockTestbed|XenNetTestbed|XenRingBenchmark|CXenRingReference|XenProtocolTesting|XenFuzzing|MallocInterposerSwift|MallocInterposerC|Testing|XCTest'

# 1. Wire protocols do no I/O: they import only each other and Synchronization.
for m in XenRing XenBlockProtocol XenNetProtocol XenStoreProtocol XenBus XenNetChecksum; do
  allow_only "$m" "$protocols|Synchronization" "a wire-protocol module does no I/O"
done
# 2. The funnel sits on C shims only.
allow_only XenSystem 'CXenShims|Glibc|Synchronization' "the syscall funnel depends on nothing above it"
# 3. Platform interfaces know no implementation, device, backend or frontend.
allow_only XenPlatform "XenSystem|CXenShims|Glibc|Synchronization" "platform interfaces sit on the funnel only"
allow_only XenBusClient "XenBus|XenStore" "the xenbus client helpers need only xenbus states and a xenstore client"
# 4. The two implementations of the platform never import each other.
forbid XenSim 'XenHost' "the software hypervisor and real Xen are independent"
forbid XenHost 'XenSim|XenStore|NIO.*' "real Xen's platform needs no sim and no xenstore"
# 5. Device I/O knows no rings and no xenbus.
for m in XenDisk XenNetDevice; do
  forbid "$m" "$rings|XenBus|XenBusClient|XenStore|XenSim|XenHost|$backends" "device I/O knows no rings, xenbus or hypervisor"
done
# 6. Frontends run in any guest: no backend, no sim, no real-Xen backend side, no toolstack.
for m in XenBlockFrontend XenNetFrontend; do
  forbid "$m" "$backends|XenSim|XenHost|XenToolstack|XenDisk|XenNetDevice|CXen.*" "a frontend uses the guest platform interface only"
done
# 7. Backends use the platform interface, never an implementation; the daemon too.
for m in XenBusDriver XenBlockBackend XenNetBackend XenBackendDaemon; do
  forbid "$m" "XenSim|XenHost|XenBlockFrontend|XenNetFrontend|XenToolstack|$testing" "backends are generic over the platform and link no test code"
done
# 8. Nothing shipped links test, benchmark or fuzz code; only xenback's dev commands link the Dev rigs.
for d in Sources/*/; do
  m=$(basename "$d"); [ "$m" = Dev ] && continue
  [ "$m" = xenback ] && continue
  forbid "$m" "$testing" "test support, benchmarks and fuzz harnesses are not product code"
done
forbid xenbackd "$testing|XenToolstack" "xenbackd links no test, bench or sim-toolstack code"

# 9. One way to the kernel for memory and device control: ioctl, mmap, munmap
# and epoll only in XenSystem (CXenShims holds the ioctl forwarder it calls).
found=$(grep -rnE '(^|[^.A-Za-z_])(ioctl|mmap|munmap|epoll_create1|epoll_ctl|epoll_wait)\(' Sources --include='*.swift' --include='*.c' \
          | grep -vE '^Sources/(XenSystem|CXenShims)/' | grep -vE '^[^:]+:[0-9]+:[[:space:]]*(//|\*|/\*)' || true)
if [ -n "$found" ]; then
  fail "raw ioctl/mmap/munmap/epoll outside XenSystem (use its Syscall funnel, MappedMemory or Epoll):"
  echo "$found" >&2
fi
# ... and poll, read, write and close on descriptors the project owns: the
# funnel retries EINTR and stops on EBADF/EFAULT (our own bug). Checked in the
# modules below: every Swift module but XenSystem itself. A call qualified
# `Glibc.` counts too; a line ending in `// raw: why` is a deliberate
# exception (a descriptor a library owns, a signal handler).
# Declarations (`func read(`, `case write(`), calls with a labelled first
# argument and `close()` are the project's own methods, not the kernel's.
funnelled='XenPlatform XenHost XenSim XenDisk XenNetDevice XenProcess XenStore XenStoreCore XenStoreProtocol
  XenBus XenBusClient XenBusDriver XenBlockBackend XenNetBackend XenBackendDaemon XenBlockFrontend XenNetFrontend
  XenToolstack XenRing XenBlockProtocol XenNetProtocol XenNetChecksum xenbackd xenback
  XenBlockTestbed XenNetTestbed XenRingBenchmark'
for m in $funnelled; do
  [ -n "$(dir_of "$m")" ] || { fail "no module $m (update tools/check-layering.sh)"; continue; }
  found=$(grep -rnP '((?<![.\w"])(?<!func )(?<!case )(poll|read|write|close)\((?!\)|\w+:)|Glibc\.(poll|read|write|close)\()' \
            "$(dir_of "$m")" --include='*.swift' \
            | grep -vE '^[^:]+:[0-9]+:[[:space:]]*(//|\*|/\*)' | grep -vE '// raw: [^ ]' || true)
  if [ -n "$found" ]; then
    fail "raw poll/read/write/close in $m (use XenSystem's Syscall funnel):"
    echo "$found" >&2
  fi
done

((status == 0)) && echo "layering: ok"
exit $status

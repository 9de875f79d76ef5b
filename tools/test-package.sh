#!/usr/bin/env bash
# Installs xenback's Debian package into a fresh minimal Debian 12 and takes it
# out again. The last line of output is JSON:
#   {"package":"xenback_..._amd64.deb","installed":true,"version":"...","purged_clean":true,"seconds":N}
#
#   tools/test-package.sh [PATH.deb]    # without a path: tools/package-deb.sh builds one
#
# 1. debootstrap --variant=minbase bookworm plus systemd (a dom0 has it, and
#    the unit is checked against it), kept under /var/cache/xenback-test and
#    copied for each run (the copy is thrown away);
# 2. apt-get install ./the.deb inside the chroot, so Depends resolve from Debian;
# 3. there: xenbackd --version and xenback --version name the package's version,
#    --help works for both, the three man pages are installed, the packaged
#    configuration loads, xenback's private libraries load (a short ring
#    benchmark), and the installed unit passes systemd-analyze verify and
#    scores at most 2.0 in systemd-analyze security; the unit is enabled
#    offline (systemctl --root), as postinst does on a running systemd;
# 4. apt-get purge, then no path from dpkg -L (taken before) remains that was
#    not there before the install, and after autoremove the tree holds no
#    file that was not there before (apt's and dpkg's own state aside).
# Any failure exits non-zero, naming what failed (and the JSON says false).
# Root only (chroot, mount).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
suite=bookworm
mirror=http://deb.debian.org/debian
cache=/var/cache/xenback-test
base=$cache/$suite-minbase-systemd

deb="" installed=false version="" purged_clean=false tree=""
json() {
  printf '{"package":"%s","installed":%s,"version":"%s","purged_clean":%s,"seconds":%d%s}\n' \
    "$(basename "${deb:-none}")" "$installed" "$version" "$purged_clean" "$(($(date +%s) - started))" "${1:-}"
}
fail() {
  echo "test-package: FAILED: $*" >&2
  json ",\"failed\":\"$(printf '%s' "$*" | tr '"\\' "'/" | head -c 300)\""
  exit 1
}
say() { echo "test-package: $*" >&2; }
in_root() { chroot "$tree" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }
cleanup() {
  [ -n "$tree" ] || return 0
  if mountpoint -q "$tree/proc"; then umount "$tree/proc" || umount -l "$tree/proc"; fi
  # --one-file-system: never follow into anything still mounted.
  mountpoint -q "$tree/proc" || rm -rf --one-file-system "$tree"
  rm -f "$tree".*
}
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || fail "needs root (debootstrap, chroot, mount)"

# The package.
if (($#)); then
  deb=$(readlink -f "$1")
else
  say "building the package (tools/package-deb.sh)"
  deb=$(bash tools/package-deb.sh | tail -n 1) || fail "tools/package-deb.sh"
fi
[ -f "$deb" ] || fail "no package at '$deb'"
package=$(dpkg-deb -f "$deb" Package)
deb_version=$(dpkg-deb -f "$deb" Version)

# The fresh Debian 12.
for pair in debootstrap:debootstrap systemd-analyze:systemd; do
  command -v "${pair%%:*}" >/dev/null && continue
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pair#*:}" >&2
done
mkdir -p "$cache"
if [ ! -x "$base/usr/bin/apt-get" ]; then
  say "debootstrap --variant=minbase $suite (cached in $base for later runs)"
  rm -rf --one-file-system "$base.new"
  debootstrap --variant=minbase "$suite" "$base.new" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -n 20 "$cache/debootstrap.log" >&2; fail "debootstrap $suite (log: $cache/debootstrap.log)"; }
  chroot "$base.new" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends systemd >>"$cache/debootstrap.log" 2>&1 \
    || { tail -n 20 "$cache/debootstrap.log" >&2; fail "installing systemd in the $suite tree"; }
  chroot "$base.new" apt-get clean
  rm -rf --one-file-system "$base"
  mv "$base.new" "$base"
fi
tree=$(mktemp -d /var/tmp/xenback-test.XXXXXX)
cp -a "$base/." "$tree/"
mount -t proc proc "$tree/proc"
cp /etc/resolv.conf "$tree/etc/resolv.conf" 2>/dev/null || true
snapshot() {  # every path in the tree but apt's and dpkg's state, logs and caches
  (cd "$tree" && find . -xdev \( -path ./proc -o -path ./var/lib/apt -o -path ./var/lib/dpkg -o -path ./var/cache \
    -o -path ./var/log -o -path ./tmp -o -path ./run \) -prune -o -print | sed 's/^\.//' | sort)
}
snapshot >"$tree.before"

# Install.
say "apt-get install $(basename "$deb") in a fresh $suite"
in_root apt-get update -qq >"$tree.apt.log" 2>&1 || { cat "$tree.apt.log" >&2; fail "apt-get update in the chroot"; }
cp "$deb" "$tree/tmp/$(basename "$deb")"
in_root apt-get install -y -q --no-install-recommends "/tmp/$(basename "$deb")" >>"$tree.apt.log" 2>&1 \
  || { tail -n 30 "$tree.apt.log" >&2; fail "apt-get install of the package"; }
in_root dpkg-query -W -f='${Status}' "$package" | grep -q 'install ok installed' || fail "dpkg does not list $package as installed"
installed=true
in_root dpkg -L "$package" | sort >"$tree.files"

# Inside the fresh system.
reported=$(in_root xenbackd --version) || fail "xenbackd --version"
[[ "$reported" == "$deb_version (commit "*")" ]] || fail "xenbackd --version says '$reported', the package is $deb_version"
[ "$(in_root xenback --version)" = "$reported" ] || fail "xenback --version differs from xenbackd's ($reported)"
version=$deb_version
in_root xenbackd --help >/dev/null || fail "xenbackd --help"
in_root xenback --help >/dev/null || fail "xenback --help"
for page in /usr/share/man/man8/xenbackd.8.gz /usr/share/man/man1/xenback.1.gz /usr/share/man/man5/xenbackd.json.5.gz; do
  [ -s "$tree$page" ] || fail "man page $page missing"
done
if [ -x "$tree/usr/bin/man" ]; then in_root man -w xenbackd >/dev/null || fail "man -w xenbackd"; fi
# The packaged configuration (read by default) loads: exit 1 is the missing
# sim socket; 64 would be a bad file.
set +e
in_root xenbackd --platform sim --sim-socket /nonexistent/sim.sock >/dev/null 2>"$tree.config.log"
rc=$?
set -e
[ "$rc" -eq 1 ] || { cat "$tree.config.log" >&2; fail "xenbackd with /etc/xenback/xenbackd.json exited $rc (expected 1: no sim)"; }
# xenback's private libraries (malloc-interposer's and the Swift runtime's).
in_root xenback bench ring --requests 20000 --rounds 1 >"$tree.bench.log" 2>&1 \
  || { tail -n 5 "$tree.bench.log" >&2; fail "xenback bench ring (private libraries)"; }
tail -n 1 "$tree.bench.log" | grep -q '"ok":true' || fail "xenback bench ring did not report ok"
# The unit as installed. xenstored.service comes from Xen's packages, absent
# here: a stub stands in for it (not the package's, and gone before the check).
unit=$tree/lib/systemd/system/xenbackd.service
[ -f "$unit" ] || fail "the unit is not installed"
printf '[Unit]\nDescription=stub for the test\n[Service]\nExecStart=/bin/true\n' >"$tree/etc/systemd/system/xenstored.service"
systemd-analyze verify --root="$tree" --man=no /lib/systemd/system/xenbackd.service >"$tree.verify.log" 2>&1 \
  || { cat "$tree.verify.log" >&2; fail "systemd-analyze verify of the installed unit"; }
rm -f "$tree/etc/systemd/system/xenstored.service"
systemctl --root="$tree" enable xenbackd.service >/dev/null 2>&1 || fail "systemctl --root enable xenbackd.service"
[ -L "$tree/etc/systemd/system/multi-user.target.wants/xenbackd.service" ] || fail "enabling made no link"
score=$(systemd-analyze security --offline=true "$unit" 2>&1 | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
[ -n "$score" ] || fail "systemd-analyze security gave no score"
awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "the unit's exposure is $score, above 2.0"
say "installed; --version: $reported; unit exposure $score"

# Purge.
in_root apt-get purge -y -q "$package" >>"$tree.apt.log" 2>&1 || { tail -n 30 "$tree.apt.log" >&2; fail "apt-get purge"; }
if in_root dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -qv 'not-installed'; then
  fail "dpkg still knows $package after purge"
fi
# A path that is there now and was not in the untouched base tree is left
# over. (-e follows links: /lib is /usr/lib in bookworm.)
left=()
while IFS= read -r path; do
  [ -e "$tree$path" ] || [ -L "$tree$path" ] || continue
  [ -e "$base$path" ] || [ -L "$base$path" ] || left+=("$path")
done <"$tree.files"
((${#left[@]} == 0)) || fail "left after purge: ${left[*]}"
# What the maintainer scripts or the service made is in no dpkg -L list:
# compare the whole tree once the dependencies are gone too.
in_root apt-get autoremove --purge -y -q >>"$tree.apt.log" 2>&1 || fail "apt-get autoremove --purge"
extra=$(comm -13 "$tree.before" <(snapshot))
[ -z "$extra" ] || fail "new paths after purge and autoremove: $(echo "$extra" | head -n 10 | tr '\n' ' ')"
purged_clean=true
json

#!/usr/bin/env bash
# Builds xenback's Debian package and prints its path as the last line of
# standard output (everything else goes to standard error).
#
#   tools/package-deb.sh [-o DIR]      # DIR: where the .deb goes (default .build-pkg)
#
# What goes in it and why: docs/install.md. In short: xenbackd and xenback
# built release with --static-swift-stdlib, the systemd unit
# (tools/systemd/xenbackd.service), the default configuration
# (tools/package/xenbackd.json, a conffile), man pages (xenbackd(8) and
# xenback(1) made by swift-argument-parser's generate-manual from the
# command-line definitions, with a hand-written tail; xenbackd.json(5) by hand),
# shell completions (--generate-completion-script), and the docs.
#
# The build runs in a copy of the work tree (.build-pkg/src: the files git
# tracks or would track, kept in step with rsync so rebuilds are incremental)
# in which Sources/xenbackd/BuildVersion.swift and
# Sources/xenback/BuildVersion.swift carry the package version and the git
# commit: the work tree's own files keep saying "dev". The version is
# BASE+gitYYYYMMDD.HHMMSS.SHORTHASH from the commit's date (UTC), with
# ".dirty" appended when the work tree has uncommitted changes.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
base_version=0.2.0
work=$root/.build-pkg
out=$work
while (($#)); do
  case $1 in
    -o) out=$(mkdir -p "$2" && cd "$2" && pwd); shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "package-deb: unknown argument $1" >&2; exit 64 ;;
  esac
done
say() { echo "package-deb: $*" >&2; }
die() { echo "package-deb: FAILED: $*" >&2; exit 1; }

# Tools: the build's Debian packages (tools/setup.sh) and the packaging ones.
tools/setup.sh >&2
need=()
for pair in rsync:rsync patchelf:patchelf dpkg-shlibdeps:dpkg-dev strip:binutils gzip:gzip; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if ((${#need[@]})); then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  say "installing ${need[*]}"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

# Version and commit.
if git rev-parse --verify -q HEAD >/dev/null 2>&1; then
  commit=$(git rev-parse HEAD)
  short=$(git rev-parse --short=7 HEAD)
  stamp=$(TZ=UTC git show -s --format=%cd --date=format-local:%Y%m%d.%H%M%S HEAD)
  day=$(TZ=UTC git show -s --format=%cd --date=format-local:%Y-%m-%d HEAD)
  version=$base_version+git$stamp.$short
  if [ -n "$(git status --porcelain --untracked-files=normal)" ]; then
    version=$version.dirty
    commit=$commit-dirty
  fi
else
  version=$base_version commit=unknown day=$(date -u +%Y-%m-%d)
fi
version_text="$version (commit $commit)"
arch=$(dpkg --print-architecture)
say "version $version_text"

# The build copy, with the version baked in.
src=$work/src
mkdir -p "$src"
rsync -a --delete --exclude=/.git \
  --exclude=/Sources/xenbackd/BuildVersion.swift --exclude=/Sources/xenback/BuildVersion.swift \
  --filter=':- .gitignore' "$root/" "$src/"
for target in xenbackd xenback; do
  generated=$(mktemp)
  cat >"$generated" <<EOF
// Written by tools/package-deb.sh for the package build; the work tree's
// copy of this file says "dev".
enum BuildVersion {
    static let version = "$version"
    static let commit = "$commit"

    static var text: String { commit == version ? version : "\(version) (commit \(commit))" }
}
EOF
  # Rewritten only when it changes, so a rebuild recompiles nothing else.
  if cmp -s "$generated" "$src/Sources/$target/BuildVersion.swift"; then rm "$generated"
  else mv "$generated" "$src/Sources/$target/BuildVersion.swift"; chmod 644 "$src/Sources/$target/BuildVersion.swift"; fi
done

say "building release with --static-swift-stdlib (about 5 minutes from scratch)"
swift build -c release --static-swift-stdlib --package-path "$src" >&2
swift build -c release --static-swift-stdlib --package-path "$src" --product generate-manual >&2
bin=$(swift build -c release --static-swift-stdlib --package-path "$src" --show-bin-path)
for b in xenbackd xenback; do
  got=$("$bin/$b" --version)
  [ "$got" = "$version_text" ] || die "$b --version says '$got', expected '$version_text'"
done
# The default configuration must load: with it, xenbackd gets past its
# validation (64 would be a bad file) and fails only on the missing sim socket.
set +e
"$bin/xenbackd" --config tools/package/xenbackd.json --platform sim --sim-socket /nonexistent/xenback-sim.sock >/dev/null 2>"$work/config-check.log"
rc=$?
set -e
[ "$rc" -eq 1 ] || { cat "$work/config-check.log" >&2; die "tools/package/xenbackd.json: xenbackd exited $rc, expected 1 (sim socket missing)"; }

# The package tree.
pkg=$work/root
rm -rf "$pkg"
umask 022
mkdir -p "$pkg"/{DEBIAN,usr/sbin,usr/bin,usr/lib/xenback,lib/systemd/system,etc/xenback} \
  "$pkg"/usr/share/{man/man1,man/man5,man/man8,bash-completion/completions,zsh/vendor-completions,fish/vendor_completions.d} \
  "$pkg"/usr/share/doc/xenback/{docs,licenses}
install -m 755 "$bin/xenbackd" "$pkg/usr/sbin/xenbackd"
install -m 755 "$bin/xenback" "$pkg/usr/bin/xenback"
strip "$pkg/usr/sbin/xenbackd" "$pkg/usr/bin/xenback"

# xenback links malloc-interposer's libMallocInterposerSwift.so (the ring
# benchmark counts allocations with it), a dynamic library that itself needs
# the Swift runtime's shared libraries. They go, from the toolchain used for
# the build, in /usr/lib/xenback, which xenback's RUNPATH names; xenbackd
# needs none of them.
runtime=$(dirname "$(readlink -f "$(command -v swift)")")/../lib/swift/linux
private_needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
copy_private() {
  local name=$1 from
  [ -e "$pkg/usr/lib/xenback/$name" ] && return 0
  if [ -e "$bin/$name" ]; then from=$bin/$name
  elif [ -e "$runtime/$name" ]; then from=$runtime/$name
  else return 0; fi  # a system library: a Depends, below
  install -m 644 "$from" "$pkg/usr/lib/xenback/$name"
  for n in $(private_needed "$from"); do copy_private "$n"; done
}
for n in $(private_needed "$pkg/usr/bin/xenback"); do copy_private "$n"; done
for n in $(private_needed "$pkg/usr/sbin/xenbackd"); do
  [ ! -e "$bin/$n" ] && [ ! -e "$runtime/$n" ] || die "xenbackd needs $n, which is not a system library"
done
for lib in "$pkg"/usr/lib/xenback/*.so; do
  strip --strip-unneeded "$lib"
  patchelf --set-rpath '$ORIGIN' "$lib"
done
if compgen -G "$pkg/usr/lib/xenback/*.so" >/dev/null; then
  patchelf --set-rpath /usr/lib/xenback "$pkg/usr/bin/xenback"
else
  rmdir "$pkg/usr/lib/xenback"
  patchelf --remove-rpath "$pkg/usr/bin/xenback"
fi
patchelf --remove-rpath "$pkg/usr/sbin/xenbackd"

install -m 644 tools/systemd/xenbackd.service "$pkg/lib/systemd/system/xenbackd.service"
install -m 644 tools/package/xenbackd.json "$pkg/etc/xenback/xenbackd.json"
echo /etc/xenback/xenbackd.json >"$pkg/DEBIAN/conffiles"
for script in postinst prerm postrm; do install -m 755 "tools/package/$script" "$pkg/DEBIAN/$script"; done

# Shell completions.
for b in xenbackd xenback; do
  "$bin/$b" --generate-completion-script bash >"$pkg/usr/share/bash-completion/completions/$b"
  "$bin/$b" --generate-completion-script zsh >"$pkg/usr/share/zsh/vendor-completions/_$b"
  "$bin/$b" --generate-completion-script fish >"$pkg/usr/share/fish/vendor_completions.d/$b.fish"
done

# Man pages. generate-manual runs each binary with --experimental-dump-help
# and writes mdoc. xenbackd has no subcommands, but the page still gets the
# "subcommand" placeholder and the implicit help subcommand: both go, and
# the generic EXIT STATUS is replaced by the real one in the tail.
man=$work/man
rm -rf "$man" && mkdir -p "$man"
"$bin/generate-manual" "$bin/xenbackd" --section 8 --date "$day" -o "$man" >&2
"$bin/generate-manual" "$bin/xenback" --section 1 --date "$day" -o "$man" >&2
[ -s "$man/xenbackd.8" ] && [ -s "$man/xenback.1" ] || die "generate-manual wrote no page"
awk '
  /^\.Ar subcommand$/ && !synopsis_done { synopsis_done = 1; next }
  /^\.It Em help$/ { skipping = 1; removed_help = 1; next }
  skipping { if ($0 == ".El") skipping = 0; next }
  /^\.Sh "EXIT STATUS"$/ || /^\.Ex -std/ { next }
  /^\.Os$/ { print ".Os xenback " base; next }
  { print }
  END { if (!synopsis_done || !removed_help) exit 1 }
' base="$base_version" "$man/xenbackd.8" >"$man/xenbackd.8.new" || die "xenbackd.8 from generate-manual no longer looks as expected; update tools/package-deb.sh"
cat tools/package/xenbackd.8.tail >>"$man/xenbackd.8.new"
mv "$man/xenbackd.8.new" "$man/xenbackd.8"
{ sed "s/^\.Os\$/.Os xenback $base_version/" "$man/xenback.1"; echo; cat tools/package/xenback.1.tail; } >"$man/xenback.1.new"
mv "$man/xenback.1.new" "$man/xenback.1"
sed -e "s/@VERSION@/$base_version/" -e "s/@DATE@/$day/" tools/package/xenbackd.json.5 >"$man/xenbackd.json.5"
for page in xenbackd.8 xenback.1 xenbackd.json.5; do
  warnings=$(groff -man -mdoc -ww -z -Tutf8 "$man/$page" 2>&1 || true)
  [ -z "$warnings" ] || say "groff warnings on $page: $warnings"
  gzip -9n <"$man/$page" >"$pkg/usr/share/man/man${page##*.}/$page.gz"
done

# Documentation and the licences of what is linked in.
install -m 644 README.md "$pkg/usr/share/doc/xenback/README.md"
install -m 644 docs/*.md "$pkg/usr/share/doc/xenback/docs/"
for dir in "$src"/.build/checkouts/*/; do
  name=$(basename "$dir")
  for f in "$dir"LICENSE* "$dir"NOTICE*; do
    [ -f "$f" ] || continue
    mkdir -p "$pkg/usr/share/doc/xenback/licenses/$name"
    install -m 644 "$f" "$pkg/usr/share/doc/xenback/licenses/$name/"
  done
done
if [ -f "$runtime/../../../share/swift/LICENSE.txt" ]; then
  mkdir -p "$pkg/usr/share/doc/xenback/licenses/swift"
  install -m 644 "$runtime/../../../share/swift/LICENSE.txt" "$pkg/usr/share/doc/xenback/licenses/swift/"
fi
cat >"$pkg/usr/share/doc/xenback/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: xenback
Comment: Built from commit $commit. The xenback repository states no licence
 of its own. The binaries link, statically, the Swift runtime and standard
 library and these Swift packages; xenback's private library directory
 /usr/lib/xenback holds malloc-interposer's library and the Swift runtime's
 shared libraries it needs. Their licence texts are in
 /usr/share/doc/xenback/licenses/: $(ls "$pkg/usr/share/doc/xenback/licenses" | tr '\n' ' ' | sed 's/ $//').

Files: *
Copyright: the xenback authors
License: none-stated
 The repository this package was built from states no licence.
EOF

# Depends: what the binaries and private libraries link from the system,
# as dpkg-shlibdeps finds it (libc6, libaio1, liburing2, libpcap0.8, ...),
# and procps for the unit's ExecReload=/bin/kill.
shl=$work/shlibdeps
rm -rf "$shl" && mkdir -p "$shl/debian"
printf 'Source: xenback\n\nPackage: xenback\nArchitecture: any\n' >"$shl/debian/control"
elves=("$pkg/usr/sbin/xenbackd" "$pkg/usr/bin/xenback")
compgen -G "$pkg/usr/lib/xenback/*.so" >/dev/null && elves+=("$pkg"/usr/lib/xenback/*.so)
depends=$(cd "$shl" && dpkg-shlibdeps -O -l"$pkg/usr/lib/xenback" -S"$pkg" "${elves[@]}" 2>"$shl/warnings" | sed -n 's/^shlibs:Depends=//p')
# Its warnings about the private libraries (no version in their names, links
# they could do without) are about the Swift toolchain's files: not shown.
grep -vE "/usr/lib/xenback/|from library name 'lib(swift|dispatch|BlocksRuntime|MallocInterposer)" "$shl/warnings" >&2 || true
[ -n "$depends" ] || die "dpkg-shlibdeps found no dependencies"
maintainer=$(git log -1 --format='%cn <%ce>' 2>/dev/null || echo "xenback maintainers <root@localhost>")
installed_size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat >"$pkg/DEBIAN/control" <<EOF
Package: xenback
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: $depends, procps
Suggests: prometheus-node-exporter, xen-utils
Section: admin
Priority: optional
Description: Xen PV block and network backends in userspace
 xenbackd is a dom0 (or driver-domain) service that serves the block
 devices and network interfaces the Xen toolstack lays out in xenstore:
 shared rings, grant mapping and copy, event channels; disks through
 libaio, io_uring or synchronous I/O, VIFs as TAP interfaces on a bridge.
 .
 xenback is its operator and developer tool: device status, a software
 hypervisor, test frontends and benchmarks.
 .
 Built from commit $commit.
EOF
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$pkg/DEBIAN/md5sums"
chmod 644 "$pkg/DEBIAN/md5sums" "$pkg/DEBIAN/control" "$pkg/DEBIAN/conffiles"

deb=$out/xenback_${version}_${arch}.deb
[ "$out" != "$work" ] || rm -f "$work"/xenback_*.deb  # the previous build's
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >&2
say "$(du -h "$deb" | cut -f1) $(basename "$deb"); Depends: $(dpkg-deb -f "$deb" Depends)"
echo "$deb"

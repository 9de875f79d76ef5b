#!/usr/bin/env bash
# Installs the Debian packages xenback builds and tests against. Idempotent;
# needs root (or sudo). The Swift toolchain itself is assumed present.
set -euo pipefail
packages=(
  libxen-dev      # Xen's public headers: io/ring.h, blkif.h, netif.h, xs_wire.h (reference peer, ABI probe)
  gcc             # builds the ABI probe and the C ring.h peer
  gcc-multilib    # -m32 for the x86_32 blkif ABI probe
  linux-libc-dev  # kernel uapi headers (xen/gntdev.h, xen/evtchn.h)
  xenstore-utils  # Xen's own xenstore-* tools and libxenstore: interop tests for our xenstored
  libaio-dev      # the block backend's libaio engine
  liburing-dev    # the block backend's io_uring engine
  fio             # the block benchmark's baseline
  lvm2            # the LVM logical volume test (a volume group on a loop device)
  iproute2        # network tests: namespaces, bridges, veth pairs
  ethtool         # network tests: offloads off on the peer's veth, so segmentation happens in software
  libpcap-dev     # the network backend's pcap capture
  tcpdump         # network tests read the pcap files back
  iputils-ping    # network tests ping the frontend from a peer namespace
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

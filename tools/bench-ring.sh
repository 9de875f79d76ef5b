#!/usr/bin/env bash
# The ring benchmark in both modes (the README's first command until the daemon exists).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
swift build -c release --product xenback
for mode in eventfd poll; do
  .build/release/xenback bench ring --mode "$mode" "$@"
done

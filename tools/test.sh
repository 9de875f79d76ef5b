#!/usr/bin/env bash
# The whole test suite: set-up, the layering check, every Swift Testing target
# of the main package, and the fuzz package's replay of every committed seed
# and regression (tools/fuzz owns its harnesses).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
tools/check-layering.sh
swift build --build-tests
swift test --skip-build "$@"
if (($# == 0)); then
  swift build --build-tests --package-path tools/fuzz
  swift test --skip-build --package-path tools/fuzz
fi

#!/usr/bin/env bash
# The whole test suite: set-up, then every Swift Testing target.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
swift build --build-tests
swift test --skip-build "$@"

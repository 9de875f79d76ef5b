#!/usr/bin/env bash
# The README's first command: set-up, a release build, then `xenback demo`
# (sim, xenbackd and a guest doing verified disk I/O, each its own process).
# Arguments go to `xenback demo` (--seconds N, --keep, --directory DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
swift build -c release --product xenback
swift build -c release --product xenbackd
exec .build/release/xenback demo "$@"

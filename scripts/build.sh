#!/usr/bin/env bash
# Configures and builds Tempo (Release, warnings on) into ${BUILD_DIR:-build}.
# Extra arguments go to CMake, e.g. -DTEMPO_SANITIZE=ON.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} "$@" >/dev/null
cmake --build "$build" -j"$jobs"

#!/usr/bin/env bash
# The main job: installs what is missing, builds, and trains the small `cnn`
# on Fashion-MNIST in tempo mode (obfuscated, verified products) through two
# workers, then prints the test accuracy. Extra arguments go to `tempo train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
exec ./build/tempo train --model cnn --data fashion-mnist --mode tempo --workers local:2 --epochs 1 "$@"

#!/usr/bin/env bash
# Installs every Debian package that the build, the tests, the demo and the
# reports (scripts/privacy-report.sh plots with matplotlib) need.
# Idempotent and non-interactive; run as root (or with sudo available).
set -euo pipefail

packages=(
  g++ cmake make pkg-config clang libclang-rt-14-dev
  libeigen3-dev libopenblas-dev libopenblas-openmp-dev libdnnl-dev libsodium-dev zlib1g-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libgtest-dev libgmock-dev libbenchmark-dev libcli11-dev nlohmann-json3-dev
  openmpi-bin libopenmpi-dev libonnx-dev
  openssl python3 python3-numpy python3-torch python3-torchvision python3-onnx python3-matplotlib dataset-fashion-mnist
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup: done"

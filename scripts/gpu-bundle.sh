#!/usr/bin/env bash
# Builds tempo with the CUDA worker backend for a GPU machine and gathers it
# into gpu-bundle/ (ignored by git, at most 64 MiB): one compressed archive
# with `tempo`, the GPU tests, the PyTorch step script, and every shared
# library such a machine may lack (all but CUDA's, glibc and the loader),
# plus gpu-check.sh to run there:
#     bash gpu-bundle/gpu-check.sh [OUT_DIR]
# `tempo` is built twice: for x86-64-v3 (AVX2, any recent x86 host) and,
# as bin/tempo-v4, for x86-64-v4 (AVX-512, where the trusted side's im2col,
# col2im and mixing kernels have their wide paths); gpu-check.sh runs the
# second where the host's CPU has AVX-512. TEMPO_MARCH_WIDE= (empty) skips it.
# TEMPO_CUDA=OFF builds without CUDA (to test the scripts here, with the CPU
# backend standing in: GPU_CHECK_BACKEND=cpu bash gpu-bundle/gpu-check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
root=$(pwd)
build=${BUILD_DIR:-build-gpu}
out=${BUNDLE_DIR:-$root/gpu-bundle}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DTEMPO_MARCH="${TEMPO_MARCH:-x86-64-v3}" \
  -DTEMPO_CUDA="${TEMPO_CUDA:-ON}" -DTEMPO_BUILD_TESTS=ON >/dev/null
cmake --build "$build" -j"$(nproc)" --target tempo tempo_gpu_tests
wide=${TEMPO_MARCH_WIDE-x86-64-v4}
if [ -n "$wide" ]; then
  cmake -S . -B "$build-wide" -DCMAKE_BUILD_TYPE=Release -DTEMPO_MARCH="$wide" \
    -DTEMPO_CUDA="${TEMPO_CUDA:-ON}" -DTEMPO_BUILD_TESTS=OFF >/dev/null
  cmake --build "$build-wide" -j"$(nproc)" --target tempo
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
t="$stage/tempo-gpu"
mkdir -p "$t/bin" "$t/lib/fallback" "$t/bench" "$t/tests/py"
cp "$build/tempo" "$build/tests/tempo_gpu_tests" "$t/bin/"
[ -z "$wide" ] || cp "$build-wide/tempo" "$t/bin/tempo-v4"
strip "$t/bin/"*
cp bench/torch_step.py "$t/bench/"
cp tests/py/tempo_models.py tests/py/onnx_models.py tests/py/safetensors_io.py "$t/tests/py/"
# Shared libraries: the GPU machine has CUDA and a C library of its own.
ldd "$build/tempo" "$build/tests/tempo_gpu_tests" | awk '/=> \// {print $3}' | sort -u | while read -r lib; do
  name=$(basename "$lib")
  case "$name" in
    libcuda.so*|libcudart.so*|libcublas*|libnvidia*) ;;                      # CUDA: the machine's own
    libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*) ;;       # glibc: the machine's own
    libstdc++.so*|libgcc_s.so*) cp -L "$lib" "$t/lib/fallback/" ;;           # used only if the machine's are older
    *) cp -L "$lib" "$t/lib/" ;;
  esac
done
rm -rf "$out"
mkdir -p "$out"
tar -C "$stage" -cJf "$out/tempo-gpu.tar.xz" tempo-gpu
cp scripts/gpu-check.sh "$out/"
size=$(du -sm "$out" | cut -f1)
echo "gpu-bundle: $out ($size MiB): $(ls "$out" | tr '\n' ' ')"
[ "$size" -le 64 ] || { echo "gpu-bundle: larger than 64 MiB" >&2; exit 1; }

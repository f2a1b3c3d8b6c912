#!/usr/bin/env bash
# Runs on a GPU machine from the folder scripts/gpu-bundle.sh made (which
# needs CUDA 13 with cuBLAS there, and python3 with PyTorch for the
# reference; nothing else). In one run, within a few minutes:
#   (a) the worker tests against the CUDA backend (tempo_gpu_tests);
#   (b) the same tests compare CUDA products and convolutions with the CPU
#       backend on random operands, and training through a CUDA worker with
#       training through a CPU worker;
#   (c) the table: tempo with a CUDA worker (im2col and channel mode) against
#       tee-only on one core and on all cores, offload, PyTorch's own GPU
#       step and its CPU step on all cores, for resnet18 batch 128 and cnn
#       batch 256, with the floors and the master's share (master ms: the step
#       minus the worker's compute and the transfers); and P9's two targets (default tempo ≥ 3×
#       faster than PyTorch's CPU step on all cores; the hardenings ≤ 1.2×
#       the unhardened step);
#   (d) writes everything to OUT_DIR (default $OUT, else ./gpu-check-out);
#   (e) with GPU_CHECK_DATA=DIR (Fashion-MNIST's four .gz files): the main
#       job, tempo-mode training of `cnn` through a remote CUDA worker;
#   (f) with GPU_CHECK_TRANSFER=1: loopback transfer throughput;
#   (g) the hardening suite (each of the mask, row and column mixing alone and
#       together) with the worker on the GPU, and the blinding's parts per
#       step: where the master's time goes (GPU_CHECK_HARDENING=0 skips it).
# GPU_CHECK_BACKEND=cpu lets the CPU stand in (to test this script without a GPU).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-${OUT:-$PWD/gpu-check-out}}
backend=${GPU_CHECK_BACKEND:-cuda}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -C "$work" -xJf "$here/tempo-gpu.tar.xz"
t="$work/tempo-gpu"
libs="$t/lib"
py=${PYTHON:-python3}
# The machine's libstdc++ if it is new enough (GCC 12's symbols), else ours.
sys_cxx=$(ldconfig -p 2>/dev/null | awk '/libstdc\+\+\.so\.6 / {print $NF; exit}')
if [ -z "$sys_cxx" ] || ! grep -qa GLIBCXX_3.4.30 "$sys_cxx"; then libs="$libs:$t/lib/fallback"; fi
# cuBLAS and the CUDA runtime: the machine's own, wherever its toolkit or its PyTorch keeps them.
if [ "$backend" = cuda ]; then
  for lib in libcublas.so.13 libcublasLt.so.13 libcudart.so.13; do
    ldconfig -p 2>/dev/null | grep -q "$lib " && continue
    found=$(find /usr/local/cuda* /usr/lib /opt -name "$lib" 2>/dev/null | head -1)
    [ -n "$found" ] && libs="$libs:$(dirname "$found")"
  done
fi
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The AVX-512 build where the host has AVX-512 (x86-64-v4), else the AVX2 one.
tempo="$t/bin/tempo"
if [ -x "$t/bin/tempo-v4" ] && grep -qw avx512f /proc/cpuinfo && grep -qw avx512bw /proc/cpuinfo \
  && grep -qw avx512dq /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo; then tempo="$t/bin/tempo-v4"; fi
export TEMPO_BINARY_PATH="$tempo" TEMPO_TEST_BACKEND="$backend"
log="$out/gpu-check.log"
: > "$log"
say() { echo "$@" | tee -a "$log"; }
say "gpu-check: $(date -u +%FT%TZ), backend $backend, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$log"
say "gpu-check: $(basename "$tempo")"
"$tempo" --version | tee -a "$log" || { say "gpu-check: tempo does not start (missing library?)"; ldd "$tempo" | grep "not found" | tee -a "$log"; exit 1; }

status=0
say "== (a, b) worker tests against the $backend backend"
(cd "$work" && timeout "${GPU_CHECK_TEST_TIMEOUT:-300}" "$t/bin/tempo_gpu_tests" 2>&1) | tee -a "$log" | grep -E "^\[|backend under test|x .* x|conv n|tf32|mode, 20 steps" ; [ "${PIPESTATUS[0]}" -eq 0 ] || status=1

say "== (c) step times"
timeout "${GPU_CHECK_BENCH_TIMEOUT:-420}" "$tempo" bench --suite gpu --backend "$backend" --models "${GPU_CHECK_MODELS:-resnet18:128,cnn:256}" --steps "${GPU_CHECK_STEPS:-3}" \
  --python "$py" --source-dir "$t" --table "$out/gpu-table.md" 2>>"$log" | tee -a "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
# (g) Where the hardenings' cost goes on this master (GPU_CHECK_HARDENING=0 skips it): the hardening suite
# with its workers on the GPU, on all cores, with the blinding's parts per step under the table.
if [ "${GPU_CHECK_HARDENING:-1}" != 0 ]; then
  say "== (g) tempo bench --suite hardening, workers on $backend, $(nproc) threads"
  timeout "${GPU_CHECK_HARDENING_TIMEOUT:-240}" "$tempo" bench --suite hardening --backend "$backend" \
    --models "${GPU_CHECK_HARDENING_MODELS:-resnet18:128}" --threads "$(nproc)" --steps 3 --no-torch 2>&1 | tee -a "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
# (e) The main job on a GPU: tempo-mode training of `cnn` through a `tempo worker --backend cuda` process on
# loopback (gRPC), with the default flags; needs Fashion-MNIST (GPU_CHECK_DATA=DIR of the four .gz files).
if [ -n "${GPU_CHECK_DATA:-}" ]; then
  say "== (e) tempo train --model cnn --epochs ${GPU_CHECK_EPOCHS:-3} through a remote $backend worker"
  head -c 32 /dev/urandom | base64 > "$work/token"
  "$tempo" worker --listen 127.0.0.1:0 --port-file "$work/port" --token-file "$work/token" \
    --backend "$backend" 2>"$out/worker.log" &
  wpid=$!
  for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
  start=$SECONDS
  timeout "${GPU_CHECK_TRAIN_TIMEOUT:-240}" "$tempo" train --model cnn --data "fashion-mnist:$GPU_CHECK_DATA" \
    --mode tempo --workers "127.0.0.1:$(cat "$work/port")" --token-file "$work/token" \
    --epochs "${GPU_CHECK_EPOCHS:-3}" ${GPU_CHECK_TRAIN_STEPS:+--steps "$GPU_CHECK_TRAIN_STEPS"} --metrics "$out/train-metrics.jsonl" 2>&1 | tee -a "$log" | tail -n 4
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  say "gpu-check: training took $((SECONDS - start)) s"
  kill "$wpid" 2>/dev/null; wait "$wpid" 2>/dev/null
fi

# (f) With GPU_CHECK_TRANSFER=1: loopback transfer throughput to a worker process (CPU backend), on this
# machine's cores.
if [ -n "${GPU_CHECK_TRANSFER:-}" ]; then
  say "== (f) tempo bench --suite transfer"
  timeout 120 "$tempo" bench --suite transfer --threads "$(nproc)" 2>&1 | tee -a "$log"
fi

say "gpu-check: table in $out/gpu-table.md, log in $log, status $status"
exit $status

#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/) with clang++ and runs each for
# ${FUZZ_SECONDS:-20} seconds. Exits non-zero if any finds a crash, sanitizer
# report, leak, timeout or out-of-memory.
#   scripts/fuzz.sh [BUILD_DIR]        (default build-fuzz)
# Findings are saved as BUILD_DIR/artifacts/<target>-crash-*; reproduce with
#   BUILD_DIR/fuzz_<target> BUILD_DIR/artifacts/<file>
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build-fuzz}
seconds=${FUZZ_SECONDS:-20}
targets=(safetensors idx cifar worker_request container onnx)

cmake -S "$root/fuzz" -B "$build" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" --target "${targets[@]/#/fuzz_}"

python=/usr/bin/python3
[ -x "$python" ] || python=python3
"$python" "$root/fuzz/make_seeds.py" "$build/seeds"

mkdir -p "$build/artifacts"
status=0
for t in "${targets[@]}"; do
  corpus="$build/corpus/$t"
  mkdir -p "$corpus"
  args=(-max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
        -artifact_prefix="$build/artifacts/$t-")
  [ "$t" = cifar ] && args+=(-max_len=16384)
  [ -f "$root/fuzz/$t.dict" ] && args+=(-dict="$root/fuzz/$t.dict")
  log="$build/fuzz_$t.log"
  echo "fuzz_$t: ${seconds}s (log: $log)"
  if "$build/fuzz_$t" "${args[@]}" "$corpus" "$build/seeds/$t" >"$log" 2>&1; then
    grep -E "^stat::number_of_executed_runs|^#[0-9]+.*DONE" "$log" | tail -2 || true
  else
    echo "fuzz_$t: FAILED; last lines of $log:"
    tail -40 "$log"
    status=1
  fi
done
[ $status -eq 0 ] && echo "fuzz: no findings" || echo "fuzz: findings in $build/artifacts"
exit $status

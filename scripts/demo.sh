#!/usr/bin/env bash
# The main job: installs what is missing, builds, starts two `tempo worker`
# processes on loopback (with a fresh access token), and trains the small
# `cnn` on Fashion-MNIST in tempo mode (obfuscated, verified products)
# through them; prints the test accuracy, then stops the workers (also on
# Ctrl-C, which ends training after the current step). Extra arguments go to
# `tempo train`, e.g. --epochs 3 or --conv-mode channel.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh

run=$(mktemp -d "${TMPDIR:-/tmp}/tempo-demo.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' TERM

umask 077
head -c 32 /dev/urandom | base64 > "$run/token"
workers=""
for i in 1 2; do
  # Own session: a Ctrl-C in this terminal reaches the master only, which
  # finishes its step; the workers are stopped on the way out.
  setsid ./build/tempo worker --listen 127.0.0.1:0 --port-file "$run/port$i" --token-file "$run/token" \
    --threads 1 2>"$run/worker$i.log" &
  pids+=($!)
done
for i in 1 2; do
  for _ in $(seq 100); do [ -s "$run/port$i" ] && break; sleep 0.1; done
  [ -s "$run/port$i" ] || { echo "demo: worker $i did not start:"; cat "$run/worker$i.log"; exit 1; }
  workers+="${workers:+,}127.0.0.1:$(cat "$run/port$i")"
done
echo "demo: workers on $workers"

status=0
./build/tempo train --model cnn --data fashion-mnist --mode tempo --workers "$workers" \
  --token-file "$run/token" --epochs 1 "$@" || status=$?
exit $status

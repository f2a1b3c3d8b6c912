#!/usr/bin/env bash
# The main job, confidential from end to end (docs/CONFIDENTIAL.md):
#   owner:  makes keys, encrypts Fashion-MNIST into one authenticated file;
#   master: writes an attestation report (SIMULATED: no SGX here) and waits;
#   owner:  checks the report's measurement, releases the data key to it;
#   master: trains the small `cnn` in tempo mode (obfuscated, verified
#           products) through two `tempo worker` processes on loopback,
#           decrypting the data in memory only, and saves the model encrypted
#           to the owner's key;
#   owner:  decrypts the model and evaluates it on the test set.
# Installs what is missing and builds first. Ctrl-C ends training after the
# current step; the workers are stopped on every exit. Extra arguments go to
# `tempo train`, e.g. --epochs 3 or --conv-mode channel. TEMPO_DEMO_KEEP=DIR
# keeps the keys, the encrypted files and the decrypted model in DIR.
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

tempo=./build/tempo
owner="$run/owner" master="$run/master"
mkdir -p "$master/attest"
echo "demo: [owner] keys and encrypted data"
$tempo owner keygen --dir "$owner"
$tempo owner encrypt-data --data fashion-mnist --data-key "$owner/data.key" -o "$master/data.tenc"

flags=(--model cnn --data "encrypted:$master/data.tenc" --mode tempo --workers "$workers"
       --token-file "$run/token" --owner-key "$owner/owner.pub" --attest-dir "$master/attest" --epochs 1 "$@")
# What the owner expects the master to run (same binary, same flags).
$tempo train "${flags[@]}" --print-config > "$owner/expected.json"
# The owner answers the master's report as soon as it appears.
(
  for _ in $(seq 600); do [ -s "$master/attest/report.json" ] && break; sleep 0.1; done
  echo "demo: [owner] checking the master's attestation report"
  $tempo owner release --report "$master/attest/report.json" --owner-key "$owner/owner.key" \
    --data-key "$owner/data.key" --expect-config "$owner/expected.json" --allow-simulated \
    -o "$master/attest/data-key.wrapped"
) &
pids+=($!)

echo "demo: [master] training through the workers"
status=0
$tempo train "${flags[@]}" --save "$master/model.tenc" || status=$?
if [ "$status" -eq 0 ] || [ -s "$master/model.tenc" ]; then
  echo "demo: [owner] decrypting and evaluating the model"
  $tempo owner decrypt-model --owner-key "$owner/owner.key" --report "$master/attest/report.json" --allow-simulated \
    --in "$master/model.tenc" -o "$owner/model.safetensors"
  $tempo eval --model cnn --data fashion-mnist --mode tee-only --init "$owner/model.safetensors"
fi
if [ -n "${TEMPO_DEMO_KEEP:-}" ]; then
  mkdir -p "$TEMPO_DEMO_KEEP" && cp -r "$owner" "$master" "$TEMPO_DEMO_KEEP/" && echo "demo: kept in $TEMPO_DEMO_KEEP"
fi
exit $status

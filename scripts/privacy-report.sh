#!/usr/bin/env bash
# Regenerates the measured sections of docs/SECURITY.md: runs every
# `tempo privacy` suite and puts each table between its markers
# (<!-- NAME:begin --> ... <!-- NAME:end -->). Takes a few minutes.
#   scripts/privacy-report.sh [--quick]     (--quick: fewer products, samples and query budgets)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/tempo ] || bash scripts/build.sh
products=100000 trials=200 pair_trials=3000 samples=4000 budgets=100,300,1000,3000,10000
if [ "${1:-}" = "--quick" ]; then products=3000 trials=20 pair_trials=500 samples=1000 budgets=100,1000; fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
./build/tempo privacy --suite integrity --products "$products" --trials "$trials" --pair-trials "$pair_trials" \
  --table "$out/integrity.md"
./build/tempo privacy --suite replay --table "$out/replay.md"
# The first table keeps the blinding without column mixing (the defaults
# until 2026-12-03) for comparison; the second is today's default.
./build/tempo privacy --suite mi --col-mix 0 --samples "$samples" --table "$out/mi.md"
./build/tempo privacy --suite mi --col-mix 8 --samples "$samples" --table "$out/mi_colmix_full.md"
# Only the operand table of that run (the estimator check is the same as above).
sed -n '/^| layer /,$p' "$out/mi_colmix_full.md" | sed 's/| default, /| default + --col-mix 8, /g' > "$out/mi_colmix.md"
./build/tempo privacy --suite mi --at-steps 5,300,600,900 --samples "$samples" --table "$out/mi_epoch.md"
./build/tempo privacy --suite mi --model resnet18 --data synthetic:640 --samples $((samples / 2)) \
  --table "$out/mi_resnet18.md"
./build/tempo privacy --suite labels --table "$out/labels.md"
./build/tempo privacy --suite stealing --budgets "$budgets" --table "$out/stealing.md"
./build/tempo privacy --suite inputs --table "$out/inputs.md"
./build/tempo privacy --suite weights --table "$out/weights.md"
./build/tempo privacy --suite weights --model resnet18 --data synthetic:640 --steps 6 --window 3 \
  --table "$out/weights_resnet18.md"
sed -i '1s/.*/#### `resnet18`, per layer/' "$out/weights_resnet18.md"
./build/tempo privacy --suite ica --table "$out/ica.md"
./build/tempo privacy --suite keyshift --table "$out/keyshift.md"
{
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); $(date -u +%F)."
} > "$out/machine.md"
/usr/bin/python3 - "$out" docs/SECURITY.md <<'PY'
import os, re, sys
out, path = sys.argv[1], sys.argv[2]
text = open(path).read()
for name in ("machine", "integrity", "replay", "mi", "mi_colmix", "mi_epoch", "mi_resnet18", "labels", "stealing", "inputs",
             "weights", "weights_resnet18", "ica", "keyshift"):
    body = open(os.path.join(out, name + ".md")).read().strip()
    pat = re.compile(r"<!-- %s:begin -->\n.*?<!-- %s:end -->" % (name, name), re.S)
    if not pat.search(text):
        sys.exit("docs/SECURITY.md has no markers for " + name)
    text = pat.sub(lambda m: "<!-- %s:begin -->\n%s\n<!-- %s:end -->" % (name, body, name), text)
tmp = path + ".tmp"
open(tmp, "w").write(text)
os.replace(tmp, path)
print("updated", path)
PY
/usr/bin/python3 scripts/plots.py docs/SECURITY.md docs/img

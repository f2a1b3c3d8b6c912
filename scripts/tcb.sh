#!/usr/bin/env bash
# The master-only build's trusted computing base: lines of project code in
# what tempo-master is built from, and the shared libraries it loads.
# Prints a markdown table; with --update, writes it into docs/CONFIDENTIAL.md
# between its tcb markers.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BUILD_DIR:-build}/tempo-master
[ -x "$bin" ] || { echo "tcb: $bin not built (bash scripts/build.sh)" >&2; exit 1; }
count() { cat "$@" | wc -l; }
mapfile -t trusted < <(find src/trusted -name '*.h' -o -name '*.cc' | sort)
mapfile -t wire < <(find src/wire -name '*.h' -o -name '*.cc' -o -name '*.proto' | sort)
mapfile -t common < <(find src/common -name '*.h' -o -name '*.cc' | sort)
cli=(src/cli/main.cc src/cli/train_cmd.cc src/cli/owner_cmd.cc src/cli/commands.h)
total=$(count "${trusted[@]}" "${wire[@]}" "${common[@]}" "${cli[@]}")
libs=$(ldd "$bin" | awk '/=>/ {print $1}' | sed 's/\.so.*//' | sort -u | tr '\n' ' ')
nlibs=$(ldd "$bin" | grep -c '=>')
table=$(cat <<MD
| part | files | lines |
|---|---:|---:|
| src/trusted | ${#trusted[@]} | $(count "${trusted[@]}") |
| src/wire (incl. the .proto) | ${#wire[@]} | $(count "${wire[@]}") |
| src/common | ${#common[@]} | $(count "${common[@]}") |
| src/cli (main, train, owner) | ${#cli[@]} | $(count "${cli[@]}") |
| **project code in tempo-master** | | **$total** |

Shared libraries loaded ($nlibs, \`ldd build/tempo-master\`): $libs

For comparison, the whole of src/ is $(find src -name '*.h' -o -name '*.cc' -o -name '*.cu' -o -name '*.proto' | xargs cat | wc -l) lines; the full \`tempo\` binary loads $(ldd "${BUILD_DIR:-build}/tempo" | grep -c '=>') shared libraries. Generated protobuf code and the libraries' own code are not counted.
MD
)
echo "$table"
if [ "${1:-}" = "--update" ]; then
  /usr/bin/python3 - docs/CONFIDENTIAL.md "$table" <<'PY'
import os, re, sys
path, body = sys.argv[1], sys.argv[2]
text = open(path).read()
pat = re.compile(r"<!-- tcb:begin -->\n.*?<!-- tcb:end -->", re.S)
if not pat.search(text):
    sys.exit("docs/CONFIDENTIAL.md has no tcb markers")
text = pat.sub(lambda m: "<!-- tcb:begin -->\n%s\n<!-- tcb:end -->" % body.strip(), text)
open(path + ".tmp", "w").write(text)
os.replace(path + ".tmp", path)
PY
fi

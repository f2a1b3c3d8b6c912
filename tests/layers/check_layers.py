#!/usr/bin/env python3
"""The trust domains' layering, checked on the source tree and the build.

    check_layers.py SRC_DIR [LINKS_FILE [MASTER_BINARY]]

Includes: each folder under SRC_DIR may include only its own layer and the
layers below it (common -> wire -> {worker, trusted} -> eval -> cli); no
file under trusted/ names a CUDA or Eigen header.
Links (LINKS_FILE, written by CMake: "target: dep;dep;..."): the master's
libraries (tempo_trusted, tempo-master) link no worker, CUDA or evaluation
target; worker, wire and common link nothing of trusted/.
Binary (MASTER_BINARY): the master-only executable loads no CUDA library.
Prints every violation and exits 1 if there is one."""
import os
import re
import subprocess
import sys

ALLOWED = {
    "common": {"common"},
    "wire": {"common", "wire"},
    "worker": {"common", "wire", "worker"},
    "trusted": {"common", "wire", "trusted"},
    "eval": {"common", "wire", "worker", "trusted", "eval"},
    "cli": {"common", "wire", "worker", "trusted", "eval", "cli"},
}
# Third-party headers a layer must not name (the master's TCB stays small).
FORBIDDEN_SYSTEM = {
    "trusted": re.compile(r"^(cuda|cublas|cuda_runtime|Eigen/|eigen3/|grpcpp/server|CLI/)"),
    "common": re.compile(r"^(cuda|cublas|Eigen/|grpcpp/)"),
}
INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)

# Targets the master must not link, and what the untrusted side must not.
MASTER_TARGETS = ("tempo_trusted", "tempo-master")
NOT_IN_MASTER = re.compile(r"^(tempo_worker|tempo_cuda|tempo_eval|CUDA::.*|Eigen3::Eigen|GTest::.*)$")
UNTRUSTED_TARGETS = ("tempo_common", "tempo_wire", "tempo_worker")
NOT_IN_UNTRUSTED = re.compile(r"^(tempo_trusted.*|tempo_eval|tempo-master)$")


def check_includes(src):
    bad = []
    for layer, allowed in ALLOWED.items():
        root = os.path.join(src, layer)
        for dirpath, _, files in os.walk(root):
            for f in files:
                if not f.endswith((".h", ".cc", ".cu")):
                    continue
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, src)
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
                for kind, name in INCLUDE.findall(text):
                    top = name.split("/", 1)[0]
                    if kind == '"' and top in ALLOWED and top not in allowed:
                        bad.append(f"{rel}: includes {name} ({layer}/ may include {', '.join(sorted(allowed))})")
                    pattern = FORBIDDEN_SYSTEM.get(layer)
                    if pattern and pattern.match(name):
                        bad.append(f"{rel}: includes <{name}>, which {layer}/ must not depend on")
    return bad


def check_links(path):
    bad = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if ":" not in line:
                continue
            target, deps = line.split(":", 1)
            deps = [d.strip() for d in deps.strip().split(";") if d.strip()]
            if target in MASTER_TARGETS:
                bad += [f"{target} links {d}" for d in deps if NOT_IN_MASTER.match(d)]
            if target in UNTRUSTED_TARGETS:
                bad += [f"{target} links {d}" for d in deps if NOT_IN_UNTRUSTED.match(d)]
    return bad


def check_binary(path):
    out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    return [f"{os.path.basename(path)} loads {l.split()[0]}" for l in out.splitlines()
            if re.search(r"libcuda|libcublas|libcudart", l)]


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    bad = check_includes(argv[1])
    if len(argv) > 2:
        bad += check_links(argv[2])
    if len(argv) > 3:
        bad += check_binary(argv[3])
    for b in bad:
        print("layering violation:", b)
    if not bad:
        print("layers: ok")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

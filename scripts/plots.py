#!/usr/bin/python3
"""Draws the plots of docs/SECURITY.md from the tables between its markers
(which scripts/privacy-report.sh fills): docs/img/detection.png,
docs/img/mutual_info.png, docs/img/stealing.png. A plot whose table is
missing is skipped with a note. Needs python3-matplotlib (scripts/setup.sh).

    /usr/bin/python3 scripts/plots.py [docs/SECURITY.md] [docs/img]
"""
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def section(text, name):
    m = re.search(r"<!-- %s:begin -->\n(.*?)<!-- %s:end -->" % (name, name), text, re.S)
    return m.group(1) if m else None


def tables(block):
    """Every markdown table of a block: a list of (header, rows of cells)."""
    out, cur = [], None
    for line in block.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            if cur is None:
                cur = (cells, [])
            elif not all(set(c) <= set("-:") for c in cells):
                cur[1].append(cells)
        elif cur is not None:
            out.append(cur)
            cur = None
    if cur is not None:
        out.append(cur)
    return out


def column(table, name):
    """The index of the first column whose header starts with name."""
    return next(i for i, h in enumerate(table[0]) if h.startswith(name))


def detection(block, path):
    t = tables(block)[0]
    lie, size, rounds, rate = (column(t, c) for c in ("lie", "size", "rounds", "rate"))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for kind in sorted({r[lie] for r in t[1]}):
        for rd in ("1", "2"):
            pts = sorted((float(r[size]), float(r[rate])) for r in t[1] if r[lie] == kind and r[rounds] == rd)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    linestyle="-" if rd == "1" else "--", label=f"{kind}, {rd} round{'s' if rd == '2' else ''}")
    ax.set_xscale("log")
    ax.set_xlabel("size of the lie (× max |row| of the product)")
    ax.set_ylabel("detection rate")
    ax.axvline(1e-2, color="grey", linewidth=0.8)
    ax.set_title("Freivalds' check: lies caught (τ = 16)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def mutual_info(block, path):
    t = tables(block)[-1]
    layer, op = column(t, "layer"), column(t, "operand")
    cols = ["default, position-aligned", "keys only, key-aligned", "default, key-aligned", "offload (no keys)"]
    idx = [column(t, c) for c in cols]
    labels = [f"layer {r[layer]} {r[op]}" for r in t[1]]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    w = 0.2
    for k, (c, i) in enumerate(zip(cols, idx)):
        ax.bar([x + (k - 1.5) * w for x in range(len(labels))], [float(r[i]) for r in t[1]], w, label=c)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=20, fontsize=8)
    ax.set_ylabel("mutual information (nats)")
    ax.set_title("What one ciphertext value says about its plaintext")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def stealing(block, path):
    t = tables(block)[0]
    q, ans, acc, agree, victim, chance = (column(t, c) for c in (
        "queries", "answers", "substitute accuracy", "agreement with victim", "victim accuracy", "chance"))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for kind in sorted({r[ans] for r in t[1]}):
        pts = sorted((int(r[q]), float(r[acc]), float(r[agree])) for r in t[1] if r[ans] == kind)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"substitute accuracy ({kind})")
        ax.plot([p[0] for p in pts], [p[2] for p in pts], marker="s", linestyle="--",
                label=f"agreement with victim ({kind})")
    ax.axhline(float(t[1][0][victim]), color="black", linewidth=0.8, label="victim accuracy")
    ax.axhline(float(t[1][0][chance]), color="grey", linewidth=0.8, linestyle=":", label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("queries to the prediction API")
    ax.set_ylim(0, 1)
    ax.set_title("Model stealing through tempo predict")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    doc = sys.argv[1] if len(sys.argv) > 1 else "docs/SECURITY.md"
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(doc), "img")
    os.makedirs(out, exist_ok=True)
    text = open(doc).read()
    for name, draw, file in (("integrity", detection, "detection.png"), ("mi", mutual_info, "mutual_info.png"),
                             ("stealing", stealing, "stealing.png")):
        block = section(text, name)
        if not block or not tables(block):
            print(f"plots: no {name} table in {doc}; skipped {file}")
            continue
        target = os.path.join(out, file)
        tmp = target + ".tmp.png"
        draw(block, tmp)
        plt.close("all")
        os.replace(tmp, target)
        print("plots: wrote", target)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Cost model for several masters (P12): predicted training throughput of N
masters x M GPU workers per master, from measured per-phase figures.

Inputs (all per training step, measured on one master at a per-master batch
of --batch samples; docs/BENCHMARKS.md, "Several masters", gives the
commands):
  --master-ms     the master's own share (bench --suite modes, "master ms")
  --worker-ms     the workers' compute with one worker ("worker")
  --transfer-ms   the master's wait for transfers ("transfer")
  --reduce-ms     the all-reduce's local work on one master: encode + pads +
                  decode (the "gradient all-reduce" line of `mpirun ... tempo
                  train`), which grows with the parameters, not with N
  --params        gradient words exchanged per step
  --gbps, --latency-us   the masters' network (default 10 Gbit/s, 30 us)

Model (strong scaling: the global batch B is fixed, each master takes B/N):
  step(N, M) = (master + transfer) * b/b0 + worker * b/b0 / M + allreduce(N)
  allreduce(N) = reduce_ms + 2 (N-1)/N * 8 * params / bandwidth
                 + 2 ceil(log2 N) * latency            (0 for N = 1)
  throughput = B / step
The master, the transfers and the workers run one after the other today
(no overlap), so a worker only ever shortens its own term. A knee is where
doubling M or N gains less than 10%.
"""
import argparse
import math
import sys


def model(a, n, m):
    b = a.global_batch / n
    scale = b / a.batch
    t = (a.master_ms + a.transfer_ms) * scale + a.worker_ms * scale / m
    if n > 1:
        t += a.reduce_ms + 2 * (n - 1) / n * 8 * a.params / (a.gbps * 1e9 / 8) * 1e3 \
             + 2 * math.ceil(math.log2(n)) * a.latency_us * 1e-3
    return t, a.global_batch / t * 1e3


def knee(values, gain=1.10):
    """First x (of a doubling sequence) beyond which doubling gains < 10%."""
    for (x0, y0), (_, y1) in zip(values, values[1:]):
        if y1 < y0 * gain:
            return x0
    return values[-1][0]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--master-ms", type=float, required=True)
    p.add_argument("--worker-ms", type=float, required=True)
    p.add_argument("--transfer-ms", type=float, default=0.0)
    p.add_argument("--reduce-ms", type=float, required=True)
    p.add_argument("--params", type=float, required=True)
    p.add_argument("--batch", type=float, default=64, help="per-master batch of the measurements (b0)")
    p.add_argument("--global-batch", type=float, default=1024)
    p.add_argument("--gbps", type=float, default=10.0)
    p.add_argument("--latency-us", type=float, default=30.0)
    p.add_argument("--max-masters", type=int, default=32)
    p.add_argument("--plot", help="write the plot (PNG) here")
    p.add_argument("--title", default="")
    a = p.parse_args()
    for k in ("master_ms", "worker_ms", "reduce_ms", "params", "batch", "global_batch", "gbps"):
        if getattr(a, k) <= 0 and k not in ("worker_ms",):
            sys.exit(f"masters_model: --{k.replace('_', '-')} must be positive")
    ns = [2 ** i for i in range(int(math.log2(a.max_masters)) + 1) if a.global_batch / 2 ** i >= 1]
    ms = [1, 2, 4, 8]
    print(f"| masters N | " + " | ".join(f"M = {m}: step ms / samples/s" for m in ms) + " |")
    print("|---:|" + "---:|" * len(ms))
    curves = {m: [] for m in ms}
    for n in ns:
        cells = []
        for m in ms:
            t, thr = model(a, n, m)
            curves[m].append((n, thr))
            cells.append(f"{t:.1f} / {thr:.0f}")
        print(f"| {n} | " + " | ".join(cells) + " |")
    for m in ms:
        print(f"knee in masters with M = {m}: N = {knee(curves[m])}")
    wk = [(m, model(a, 1, m)[1]) for m in [1, 2, 4, 8, 16, 32]]
    print(f"knee in workers with one master: M = {knee(wk)}")
    if a.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for m in ms:
            xs, ys = zip(*curves[m])
            ax.plot(xs, ys, marker="o", label=f"M = {m} workers per master")
            k = knee(curves[m])
            ax.axvline(k, color=ax.lines[-1].get_color(), ls=":", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("masters N (global batch %d, split evenly)" % a.global_batch)
        ax.set_ylabel("predicted samples / s")
        ax.set_title(a.title or "Tempo, several masters: predicted throughput")
        ax.grid(True, which="both", lw=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(a.plot, dpi=110)
        print(f"wrote {a.plot}")


if __name__ == "__main__":
    main()

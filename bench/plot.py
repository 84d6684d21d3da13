#!/usr/bin/python3
"""Draws the kernel benchmarks as PNG (Debian's python3-matplotlib, Agg backend).

    /usr/bin/python3 bench/plot.py build-peers/peers.json [--outdir DIR]
    build/bench/bench_kernels --benchmark_format=json --benchmark_out=k.json ... && /usr/bin/python3 bench/plot.py k.json

Input: the JSON of bench/peers/peers.py (qforge and its peers) or plain Google Benchmark JSON of
bench_kernels (medians when it ran with repetitions). Output, in DIR (default: beside the input):
  gemv_<mode>.png      GB/s of weight bytes per kernel, one panel per shape and thread count,
                       with the read bandwidth membw/read/t<n> of the same run as a line
  gemm_M<m>_<mode>.png GFLOP/s per kernel for GEMM with M rows
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import results  # noqa: E402

COLORS = {"qforge": "#1f77b4", "ggml": "#ff7f0e", "onnxruntime": "#2ca02c"}


def load_records(path):
    doc = json.loads(Path(path).read_text())
    if "records" in doc:
        records = doc["records"]
    elif "benchmarks" in doc:
        records = results.records_from_gbench(doc)
    else:
        sys.exit(f"plot: {path} is neither peers.py output nor Google Benchmark JSON")
    return results.attach_membw(records)


def membw_by_threads(records):
    per = {}
    for r in records:
        if r["source"] == "membw" and r.get("bytes_per_second"):
            per.setdefault(r["threads"], []).append(r["bytes_per_second"] / 1e9)
    return {t: (results.median(v), min(v), max(v)) for t, v in per.items()}


def draw(plt, records, op, m, mode, metric, out, membw=None):
    cases = [r for r in records if r["source"] != "membw" and r["op"] == op and r["M"] == m and r["mode"] == mode
             and r.get(metric)]
    if not cases:
        return None
    shapes = sorted({(r["K"], r["N"]) for r in cases})
    threads = sorted({r["threads"] for r in cases})
    kernels = {r["kernel"] for r in cases}
    fig, axes = plt.subplots(len(shapes), len(threads), squeeze=False, sharex="col",
                             figsize=(6.5 * len(threads), 0.32 * len(kernels) * len(shapes) + 1.6 * len(shapes)))
    scale = 1e9 if metric == "bytes_per_second" else 1.0
    unit = "GB/s of weight bytes" if metric == "bytes_per_second" else "GFLOP/s"
    for i, (k, n) in enumerate(shapes):
        for j, t in enumerate(threads):
            ax = axes[i][j]
            panel = sorted((r for r in cases if (r["K"], r["N"]) == (k, n) and r["threads"] == t),
                           key=lambda r: r[metric])
            values = [r[metric] / scale for r in panel]
            ax.barh(range(len(panel)), values, color=[COLORS.get(r["source"], "grey") for r in panel])
            ax.set_yticks(range(len(panel)))
            ax.set_yticklabels([r["kernel"] for r in panel], fontsize=8)
            for y, v in enumerate(values):
                ax.text(v, y, f" {v:.1f}", va="center", fontsize=7)
            if membw and t in membw:
                med, lo, hi = membw[t]
                ax.axvline(med, color="red", linestyle="--", linewidth=1.2, label=f"membw/read/t{t} {med:.1f} GB/s")
                if hi > lo:
                    ax.axvspan(lo, hi, color="red", alpha=0.08)
                ax.legend(loc="lower right", fontsize=7)
            ax.set_title(f"{op} K{k}xN{n} M{m}, {t} thread{'s' if t > 1 else ''}, {mode}", fontsize=9)
            ax.set_xlabel(unit, fontsize=8)
            ax.grid(axis="x", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLORS.values()]
    fig.legend(handles, list(COLORS), loc="upper center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description="Draw GB/s (GEMV) and GFLOP/s (GEMM) per kernel as PNG.")
    p.add_argument("json", help="peers.py output or Google Benchmark JSON")
    p.add_argument("--outdir", default=None, help="where the PNGs go (default: beside the input)")
    args = p.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = load_records(args.json)
    outdir = Path(args.outdir) if args.outdir else Path(args.json).resolve().parent
    outdir.mkdir(parents=True, exist_ok=True)
    membw = membw_by_threads(records)
    written = []
    modes = sorted({r["mode"] for r in records if r["source"] != "membw"})
    for mode in modes:
        written.append(draw(plt, records, "gemv", 1, mode, "bytes_per_second", outdir / f"gemv_{mode}.png", membw))
        for m in sorted({r["M"] for r in records if r["op"] == "gemm"}):
            written.append(draw(plt, records, "gemm", m, mode, "GFLOPS", outdir / f"gemm_M{m}_{mode}.png"))
    written = [w for w in written if w]
    if not written:
        sys.exit(f"plot: no GEMV or GEMM results in {args.json}")
    for w in written:
        print(w)


if __name__ == "__main__":
    main()

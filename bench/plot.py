#!/usr/bin/python3
"""Draws the kernel benchmarks as PNG (Debian's python3-matplotlib, Agg backend).

    /usr/bin/python3 bench/plot.py build-peers/peers.json [--outdir DIR]
    build/bench/bench_kernels --benchmark_format=json --benchmark_out=k.json ... && /usr/bin/python3 bench/plot.py k.json

Input: the JSON of bench/peers/peers.py (qforge and its peers) or plain Google Benchmark JSON of
bench_kernels (medians when it ran with repetitions). Output, in DIR (default: beside the input):
  gemv_<mode>.png      GB/s of weight bytes per kernel, one panel per shape and thread count,
                       with the read bandwidth membw/read/t<n> of the same run as a line
  gemm_M<m>_<mode>.png GFLOP/s per kernel for GEMM with M rows
  time_vs_M_K<k>xN<n>_t<threads>_<mode>.png
                       time per call against M (log-log), one panel per weight format (int4,
                       NF4, MXFP4, ...: qforge's kernels and the peers of that format), with the
                       roofline of each qforge compute path: max(weight bytes / membw/read,
                       2 M N K / peak/<vnni|fma|bf16>), both measured in the same run
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import results  # noqa: E402

COLORS = {"qforge": "#1f77b4", "ggml": "#ff7f0e", "onnxruntime": "#2ca02c"}
QFORGE_LINES = ["#1f77b4", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#7f7f7f"]
PEER_MARKERS = ["s", "^", "v", "D", "x"]


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


# The weight format a kernel or peer computes on: the panels of the time-against-M plot.
def family(kernel):
    if kernel.startswith(("int4", "ggml_q4", "ort_int4")):
        return "int4"
    if kernel.startswith(("e2m1", "ggml_mxfp4")):
        return "MXFP4"
    return kernel.split("_")[0].upper() if kernel.startswith("nf4") else kernel.split("_")[0]


def compute_path(kernel):  # the qforge compute path, as bench_kernels picks its peak
    return {"i8": "vnni", "bf16": "bf16"}.get(kernel.rsplit("_", 1)[-1], "fma")


def seconds(r):
    return 2.0 * r["M"] * r["N"] * r["K"] / (r["GFLOPS"] * 1e9)


def draw_time_vs_m(plt, records, k, n, threads, mode, out):
    cases = [r for r in records if r["source"] not in ("membw", "peak") and r["op"] in ("gemv", "gemm")
             and (r["K"], r["N"], r["threads"], r["mode"]) == (k, n, threads, mode) and r.get("GFLOPS")]
    if len({r["M"] for r in cases}) < 2:
        return None
    bw = [r["bytes_per_second"] for r in records if r["source"] == "membw" and r["threads"] == threads
          and r.get("bytes_per_second")]
    peaks = {}
    for r in records:
        if r["source"] == "peak" and r["threads"] == threads:
            peaks.setdefault(r["kernel"], []).append(r["ops_per_second"])
    families = sorted({family(r["kernel"]) for r in cases})
    fig, axes = plt.subplots(1, len(families), squeeze=False, figsize=(5.5 * len(families), 4.6))
    for ax, fam in zip(axes[0], families):
        mine = [r for r in cases if family(r["kernel"]) == fam]
        # qforge's kernels solid in their own colours; each peer dotted in its source's colour
        ours, theirs = iter(QFORGE_LINES), iter(PEER_MARKERS * 4)
        for kernel in sorted({r["kernel"] for r in mine}):
            pts = sorted((r["M"], seconds(r) * 1e3) for r in mine if r["kernel"] == kernel)
            source = next(r["source"] for r in mine if r["kernel"] == kernel)
            style = dict(color=next(ours, "grey"), marker="o") if source == "qforge" else \
                dict(color=COLORS.get(source, "grey"), marker=next(theirs), linestyle=":")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], markersize=3, linewidth=1.2, label=kernel, **style)
        # one roofline per qforge compute path present: the weight bytes of its kernel at M = 1
        if bw:
            membw = results.median(bw)
            for kernel in sorted({r["kernel"] for r in mine if r["source"] == "qforge"}):
                path = compute_path(kernel)
                if path not in peaks:
                    continue
                peak = results.median(peaks[path])
                weight_bytes = next(r["bytes_per_second"] * seconds(r) for r in mine if r["kernel"] == kernel)
                ms = sorted({r["M"] for r in mine})
                ax.plot(ms, [1e3 * max(weight_bytes / membw, 2.0 * m * n * k / peak) for m in ms], color="black",
                        linestyle="--", linewidth=0.8, alpha=0.6)
                ax.text(ms[-1], 1e3 * max(weight_bytes / membw, 2.0 * ms[-1] * n * k / peak), f" roofline {path}",
                        fontsize=6, va="center")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("M (rows of X)", fontsize=8)
        ax.set_ylabel("ms per call", fontsize=8)
        ax.set_title(f"{fam}: K{k}xN{n}, {threads} thread{'s' if threads > 1 else ''}, {mode}", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
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
    kernel_records = [r for r in records if r["source"] not in ("membw", "peak")]
    modes = sorted({r["mode"] for r in kernel_records})
    for mode in modes:
        written.append(draw(plt, records, "gemv", 1, mode, "bytes_per_second", outdir / f"gemv_{mode}.png", membw))
        for m in sorted({r["M"] for r in kernel_records if r["op"] == "gemm"}):
            written.append(draw(plt, records, "gemm", m, mode, "GFLOPS", outdir / f"gemm_M{m}_{mode}.png"))
        for k, n, t in sorted({(r["K"], r["N"], r["threads"]) for r in kernel_records}):
            written.append(draw_time_vs_m(plt, records, k, n, t, mode, outdir / f"time_vs_M_K{k}xN{n}_t{t}_{mode}.png"))
    written = [w for w in written if w]
    if not written:
        sys.exit(f"plot: no GEMV or GEMM results in {args.json}")
    for w in written:
        print(w)


if __name__ == "__main__":
    main()

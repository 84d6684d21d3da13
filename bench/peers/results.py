"""Result records shared by peers.py and plot.py (Python 3 stdlib).

A record is a dict with: source ("qforge", "ggml", "onnxruntime", "membw", or "peak": the
arithmetic peak peak/<vnni|fma|bf16>/t<n> in ops_per_second), kernel (qforge's
canonical name or a peer name such as "ggml_q4_0_repack"), op ("gemv", "gemm", "membw"), K, N, M,
threads, mode ("cold"/"hot"), bytes_per_second (weight bytes: codes + scales + zeros), GFLOPS
(2 M N K / time) and, once merged, membw_bytes_per_second and frac_membw. Its name follows
bench_kernels: <op>/<kernel>/K<k>xN<n>/M<m>/t<threads>/<mode>.
"""
import re

NAME = re.compile(r"^(gemv|gemm)/([^/]+)/K(\d+)xN(\d+)/M(\d+)/t(\d+)/(cold|hot)$")
MEMBW = re.compile(r"^membw/read/t(\d+)$")
PEAK = re.compile(r"^peak/(vnni|fma|bf16)/t(\d+)$")

# Weight bytes per block of weights, for the peers' formats (the GB/s denominators):
# ggml q4_0: f16 scale + 32 4-bit codes; q4_K: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins and
# 256 4-bit codes; mxfp4: E8M0 scale + 32 4-bit codes.
GGML_BLOCK = {"q4_0": (32, 18), "q4_K": (256, 144), "mxfp4": (32, 17)}


def ggml_weight_bytes(type_name, k, n):
    weights, nbytes = GGML_BLOCK[type_name]
    if k % weights:
        raise ValueError(f"ggml {type_name}: K={k} is not a multiple of {weights}")
    return n * (k // weights) * nbytes


def matmulnbits_weight_bytes(k, n, block):
    """onnxruntime MatMulNBits int4: K/2 bytes of codes per row plus an f32 scale per block (no zero points)."""
    return n * k // 2 + n * (k // block) * 4


def case_name(op, kernel, k, n, m, threads, mode):
    return f"{op}/{kernel}/K{k}xN{n}/M{m}/t{threads}/{mode}"


def make_record(source, kernel, op, k, n, m, threads, mode, bytes_per_second, gflops, **extra):
    rec = dict(source=source, kernel=kernel, op=op, K=k, N=n, M=m, threads=threads, mode=mode,
               name=case_name(op, kernel, k, n, m, threads, mode),
               bytes_per_second=bytes_per_second, GFLOPS=gflops)
    rec.update(extra)
    return rec


def records_from_gbench(doc, group=None):
    """Records from Google Benchmark JSON (bench_kernels --benchmark_format=json): the median
    aggregate of each benchmark when repetitions ran, else its single run; best_bytes_per_second and
    best_GFLOPS from the fastest repetition when the repetitions are in the file. membw/read/t<n>
    gives records with source "membw", peak/<path>/t<n> records with source "peak"; a kernel case's
    roofline counter is kept."""
    entries = doc.get("benchmarks", [])
    has_median = {e.get("run_name") for e in entries if e.get("aggregate_name") == "median"}
    best = {}
    for e in entries:
        if e.get("run_type", "iteration") == "iteration" and e.get("bytes_per_second") and not e.get("error_occurred"):
            name = e.get("run_name", e.get("name"))
            if e["bytes_per_second"] > best.get(name, {}).get("bytes_per_second", 0.0):
                best[name] = e
    records = []
    for e in entries:
        run_name = e.get("run_name", e.get("name"))
        if run_name in has_median:
            if e.get("aggregate_name") != "median":
                continue
        elif e.get("run_type", "iteration") != "iteration":
            continue
        if "error_occurred" in e and e["error_occurred"]:
            continue
        m = NAME.match(run_name)
        extra = {"group": group} if group is not None else {}
        if run_name in best:
            extra.update(best_bytes_per_second=best[run_name]["bytes_per_second"])
            if best[run_name].get("GFLOPS"):
                extra.update(best_GFLOPS=best[run_name]["GFLOPS"])
        if m:
            op, kernel, k, n, mm, t, mode = m.groups()
            if e.get("roofline"):
                extra.update(roofline=e["roofline"])
            records.append(make_record("qforge", kernel, op, int(k), int(n), int(mm), int(t), mode,
                                       e.get("bytes_per_second"), e.get("GFLOPS"), label=e.get("label"), **extra))
        elif MEMBW.match(run_name):
            t = int(MEMBW.match(run_name).group(1))
            records.append(dict(source="membw", kernel="membw", op="membw", threads=t, name=run_name,
                                bytes_per_second=e.get("bytes_per_second"), **extra))
        elif PEAK.match(run_name) and (e.get("GOPS") or e.get("GFLOPS")):
            path, t = PEAK.match(run_name).groups()  # vnni counts int8 operations, fma and bf16 flops
            records.append(dict(source="peak", kernel=path, op="peak", threads=int(t), name=run_name,
                                ops_per_second=1e9 * (e.get("GOPS") or e.get("GFLOPS")), **extra))
    return records


def attach_membw(records):
    """Sets membw_bytes_per_second / frac_membw on every kernel record: the read bandwidth measured
    in the same group (same bench_kernels process) when there is one, else the median over the run
    for that thread count."""
    by_group, by_threads = {}, {}
    for r in records:
        if r["source"] == "membw" and r.get("bytes_per_second"):
            by_group[(r.get("group"), r["threads"])] = r["bytes_per_second"]
            by_threads.setdefault(r["threads"], []).append(r["bytes_per_second"])
    for r in records:
        if r["source"] == "membw" or not r.get("bytes_per_second"):
            continue
        bw = by_group.get((r.get("group"), r["threads"]))
        if bw is None and by_threads.get(r["threads"]):
            bw = median(by_threads[r["threads"]])
        if bw:
            r["membw_bytes_per_second"] = bw
            r["frac_membw"] = r["bytes_per_second"] / bw
    return records


def merge_rounds(records):
    """One record per case when the driver ran several rounds (the same case at several times, so a
    load spike hits every case alike): medians over the rounds' medians (GB/s, GFLOP/s, fraction of
    membw), the best of all repetitions, and the per-round GB/s in rounds_bytes_per_second.
    Call after attach_membw, so each round is measured against its own membw."""
    merged, order = {}, []
    for r in records:
        if r["source"] in ("membw", "peak"):
            order.append(r)
            continue
        key = (r["source"], r["name"])
        if key not in merged:
            merged[key] = []
            order.append(key)
        merged[key].append(r)
    out = []
    for item in order:
        if isinstance(item, dict):
            out.append(item)
            continue
        runs = merged[item]
        if len(runs) == 1:
            out.append(runs[0])
            continue
        rec = dict(runs[0])
        for field in ("bytes_per_second", "GFLOPS", "frac_membw", "membw_bytes_per_second", "median_seconds"):
            values = [x[field] for x in runs if x.get(field) is not None]
            if values:
                rec[field] = median(values)
        for field in ("best_bytes_per_second", "best_GFLOPS"):
            values = [x[field] for x in runs if x.get(field) is not None]
            if values:
                rec[field] = max(values)
        rec["rounds_bytes_per_second"] = [x["bytes_per_second"] for x in runs]
        rec.pop("group", None)
        out.append(rec)
    return out


def median(values):
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else 0.5 * (v[mid - 1] + v[mid])


def case_key(r):
    return (r["op"], r["K"], r["N"], r["M"], r["threads"], r["mode"])


def table(records):
    """Rows (case name, median GB/s, fraction of membw, median GFLOP/s, ratio to the best peer of
    the same shape, M, threads and mode, GB/s of the fastest repetition). The ratio is taken on time
    per pass (GFLOP/s), not GB/s: the formats store different bytes per weight (4.25 to 5 bits)."""
    kernels = [r for r in records if r["source"] != "membw" and r.get("bytes_per_second")]
    best_peer = {}
    for r in kernels:
        if r["source"] != "qforge" and r.get("GFLOPS"):
            best_peer[case_key(r)] = max(best_peer.get(case_key(r), 0.0), r["GFLOPS"])
    rows = []
    for r in sorted(kernels, key=lambda r: (r["op"], r["K"], r["N"], r["M"], r["threads"], r["mode"],
                                            r["source"] != "qforge", -r["bytes_per_second"])):
        best = best_peer.get(case_key(r))
        best_bw = r.get("best_bytes_per_second")
        rows.append((r["name"], r["bytes_per_second"] / 1e9, r.get("frac_membw"), r.get("GFLOPS"),
                     r["GFLOPS"] / best if best and r.get("GFLOPS") else None, best_bw / 1e9 if best_bw else None))
    return rows


def format_table(records):
    def num(v, fmt):
        return format(v, fmt) if v is not None else "-".rjust(int(re.match(r"\d+", fmt).group()))
    rows = table(records)
    width = max([len("case")] + [len(r[0]) for r in rows])
    lines = [f"{'case (medians)':<{width}}  {'GB/s':>7}  {'membw':>6}  {'GFLOP/s':>8}  {'vs best peer':>12}  {'best GB/s':>9}"]
    previous = None
    for name, gbs, frac, gflops, ratio, best_gbs in rows:
        group = NAME.match(name).groups()[2:] if NAME.match(name) else None
        if previous is not None and group != previous:
            lines.append("")
        previous = group
        lines.append(f"{name:<{width}}  {gbs:7.2f}  {num(frac, '6.0%')}  {num(gflops, '8.1f')}  {num(ratio, '12.2f')}  {num(best_gbs, '9.2f')}")
    bws = sorted({(r["threads"], r["bytes_per_second"]) for r in records if r["source"] == "membw"})
    for t in sorted({t for t, _ in bws}):
        vals = [b / 1e9 for tt, b in bws if tt == t]
        lines.append(f"membw/read/t{t}: median {median(vals):.2f} GB/s over {len(vals)} measurement(s), "
                     f"range {min(vals):.2f}-{max(vals):.2f}")
    return "\n".join(lines)

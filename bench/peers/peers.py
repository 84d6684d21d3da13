#!/usr/bin/python3
"""qforge against its peers (docs/performance.md) on the same shapes, in the same run.

    /usr/bin/python3 bench/peers/peers.py --quick          # GEMV M=1 K4096xN11008, cold, 1 and 2 threads
    /usr/bin/python3 bench/peers/peers.py --m 1 --modes cold,hot
    /usr/bin/python3 bench/plot.py build-peers/peers.json   # PNGs next to the JSON

Installs what is missing (Debian packages with apt-get, the npm packages and the llama.cpp source
for ggml's headers into the scratch folder, default build-peers/), builds bench/peers/ggml_bench.c
against the npm package's ggml, then for each shape, M and thread count runs, one after the other:
qforge's bench_kernels (the matching kernels plus membw/read/t<threads>, Google Benchmark JSON),
ggml (q4_0 plain and repacked, q4_K and mxfp4 repacked: ggml_bench) and onnxruntime (MatMulNBits
int4 block 32 and 128, accuracy_level 4 and 0: ort_bench.js). Interleaving per case keeps the
comparison fair on a shared, noisy machine. Writes one JSON of all records and prints a table.

Cold everywhere means weights totalling more than 256 MiB, streamed from DRAM: bench_kernels
rotates over copies of W; ggml_bench computes a graph of that many mul_mat nodes on distinct
weight tensors, ort_bench.js runs a model of that many MatMulNBits nodes with distinct initializers
(time per pass = run time / nodes). Hot: bench_kernels and ggml reuse one W; onnxruntime runs a
one-node model (its time includes one session.run's overhead).
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import install  # noqa: E402
import results  # noqa: E402

COLD_BYTES = 256 * 1024 * 1024  # as bench_kernels (cold_bytes)
ALL_SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]
QFORGE_KERNELS = ["nf4_b64_bnb_f32", "nf4_b64_bnb_i8", "nf4_b64_dq_bnb_i8", "int4sym_g32_qf_i8", "int4sym_g128_qf_f32",
                  "int4sym_g128_qf_i8", "e2m1_g32_mx_f32", "e2m1_g32_mx_i8"]
GGML_PEERS = [("q4_0", "plain"), ("q4_0", "repack"), ("q4_K", "repack"), ("mxfp4", "repack")]
ORT_PEERS = [(32, 4), (32, 0), (128, 4), (128, 0)]  # (block_size, accuracy_level)


def ggml_kernel_name(type_name, layout):
    return f"ggml_{type_name}" + ("_repack" if layout == "repack" else "")


def ort_kernel_name(block, level):
    return f"ort_int4_b{block}_acc{level}"


def parse_list(text, convert=int):
    return [convert(x) for x in text.split(",") if x]


def parse_shapes(text):
    shapes = []
    for item in text.split(","):
        k, n = item.lower().split("x")
        shapes.append((int(k), int(n)))
    return shapes


def load_average():
    return os.getloadavg()


# ---- qforge --------------------------------------------------------------------------------

def bench_kernels_path(build_dir):
    exe = build_dir / "bench" / "bench_kernels"
    if (build_dir / "build.ninja").exists():  # bring it up to date (a no-op when it is)
        install.run(["meson", "compile", "-C", build_dir, "-j", "2", "bench/bench_kernels"])
    if not exe.exists():
        sys.exit(f"peers: {exe} not found: run `meson setup {build_dir} && meson compile -C {build_dir} bench/bench_kernels`")
    return exe


def available_qforge_kernels(exe, wanted):
    names = subprocess.run([str(exe), "--benchmark_list_tests"], check=True, capture_output=True, text=True).stdout
    present = {results.NAME.match(l).group(2) for l in names.split() if results.NAME.match(l)}
    missing = [k for k in wanted if k not in present]
    if missing:
        install.log(f"bench_kernels lacks {', '.join(missing)} (built with -Dkernels?): skipped")
    return [k for k in wanted if k in present]


def run_qforge(exe, kernels, k, n, m, threads, modes, args, group):
    op = "gemv" if m == 1 else "gemm"
    # the peaks too, for the rooflines of plot.py (measured with every group: the clock may move)
    regex = (f"^(membw/read/t{threads}|peak/(vnni|fma|bf16)/t{threads}|"
             f"{op}/({'|'.join(kernels)})/K{k}xN{n}/M{m}/t{threads}/({'|'.join(modes)}))$")
    cmd = [str(exe), f"--benchmark_filter={regex}", f"--benchmark_repetitions={args.reps}",
           f"--benchmark_min_time={args.min_time}",  # every repetition is in the JSON, then the aggregates
           # repetitions of all cases (and membw) in random order, so a load spike hits them alike
           "--benchmark_enable_random_interleaving=true",
           "--benchmark_format=json"]
    install.log("$ " + " ".join(cmd))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return results.records_from_gbench(json.loads(out), group=group)


# ---- ggml ----------------------------------------------------------------------------------

def build_ggml_bench(scratch):
    src = HERE / "ggml_bench.c"
    exe = scratch.bin / "ggml_bench"
    if exe.exists() and exe.stat().st_mtime >= src.stat().st_mtime:
        return exe
    scratch.bin.mkdir(parents=True, exist_ok=True)
    lib = scratch.ggml_lib_dir
    libggml = sorted(lib.glob("libggml.*so"))
    if not libggml:
        sys.exit(f"peers: no libggml*.so in {lib}")
    install.run(["gcc", "-O2", "-std=c11", "-Wall", "-Wextra", f"-I{scratch.ggml_include_dir}", src, "-o", exe,
                 f"-L{lib}", f"-l:{libggml[0].name}", "-l:libggml-base.so", f"-Wl,-rpath,{lib}", "-lm"])
    return exe


def run_ggml(exe, scratch, type_name, layout, k, n, m, threads, modes, args, group):
    cmd = [str(exe), str(scratch.ggml_lib_dir), type_name, layout, str(k), str(n), str(m), str(threads),
           ",".join(modes), str(COLD_BYTES), str(args.reps), str(args.min_time)]
    install.log("$ " + " ".join(cmd[:1] + cmd[2:]))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        install.log(f"ggml {type_name} {layout} failed: {proc.stderr.strip().splitlines()[-1:]}")
        return []
    # ggml logs which CPU variant it loaded and how it repacked: keep that with the numbers.
    notes = [l for l in proc.stderr.splitlines() if l.startswith("load_backend") or l.startswith("repack:")]
    records = []
    for line in proc.stdout.splitlines():
        raw = json.loads(line)
        expected = results.ggml_weight_bytes(type_name, k, n)
        if raw["weight_bytes"] != expected:
            raise RuntimeError(f"ggml {type_name}: {raw['weight_bytes']} weight bytes, expected {expected}")
        records.append(results.make_record(
            "ggml", ggml_kernel_name(type_name, layout), "gemv" if m == 1 else "gemm", k, n, m, threads, raw["mode"],
            raw["bytes_per_second"], raw["GFLOPS"], median_seconds=raw["median_seconds"], weight_bytes=expected,
            **best_rates(raw.get("best_seconds"), expected, m, n, k),
            copies=raw["copies"], weight_buffer=raw["weight_buffer"], group=group,
            ggml_notes=sorted({l.split(" with ")[-1] if l.startswith("repack:") else Path(l.split()[-1]).name
                               for l in notes})))
    return records


def best_rates(best_seconds, weight_bytes, m, n, k):
    if not best_seconds:
        return {}
    return dict(best_seconds=best_seconds, best_bytes_per_second=weight_bytes / best_seconds,
                best_GFLOPS=2e-9 * m * n * k / best_seconds)


# ---- onnxruntime ---------------------------------------------------------------------------

def ort_models(scratch, k, n, modes):
    """Writes the models of one shape (every M and thread count uses them): per block size, a cold
    model (distinct weights > 256 MiB) and a hot one (one node), each at accuracy levels 4 and 0."""
    import onnx_model  # needs python3-onnx, installed by now
    models = {}
    scratch.models.mkdir(parents=True, exist_ok=True)
    for block in sorted({b for b, _ in ORT_PEERS}):
        levels = sorted({lvl for b, lvl in ORT_PEERS if b == block})
        nbytes = results.matmulnbits_weight_bytes(k, n, block)
        for mode in modes:
            nodes = COLD_BYTES // nbytes + 2 if mode == "cold" else 1
            paths = {lvl: scratch.models / f"matmulnbits_K{k}xN{n}_b{block}_acc{lvl}_{mode}.onnx" for lvl in levels}
            started = time.time()
            onnx_model.build(paths, k, n, block, nodes)
            install.log(f"wrote {len(paths)} model(s) K{k}xN{n} block {block} {mode} ({nodes} nodes) "
                        f"in {time.time() - started:.1f} s")
            for lvl, path in paths.items():
                models[(block, lvl, mode)] = (path, nodes)
    return models


def remove_models(models):
    for path, _ in models.values():
        path.unlink(missing_ok=True)


def run_ort(scratch, models, block, level, k, n, m, threads, mode, args, group):
    path, nodes = models[(block, level, mode)]
    cmd = ["node", str(HERE / "ort_bench.js"), str(scratch.ort_package), str(path), str(nodes), str(k), str(n), str(m),
           str(threads), str(args.reps), str(args.min_time)]
    install.log("$ node ort_bench.js " + " ".join(cmd[4:]))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        install.log(f"onnxruntime block {block} level {level} failed: {proc.stderr.strip().splitlines()[-1:]}")
        return []
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    nbytes = results.matmulnbits_weight_bytes(k, n, block)
    seconds = raw["median_seconds"]
    return [results.make_record(
        "onnxruntime", ort_kernel_name(block, level), "gemv" if m == 1 else "gemm", k, n, m, threads, mode,
        nbytes / seconds, 2e-9 * m * n * k / seconds, median_seconds=seconds, weight_bytes=nbytes,
        **best_rates(raw.get("best_seconds"), nbytes, m, n, k),
        copies=nodes, ort_version=raw.get("ort_version"), group=group)]


# ---- driver --------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in ALL_SHAPES), help="KxN list (default: %(default)s)")
    p.add_argument("--m", default="1,2,4,8,16,32,128", help="batch rows M (1 = GEMV; default: %(default)s)")
    p.add_argument("--threads", default="1,2", help="thread counts (default: %(default)s)")
    p.add_argument("--modes", default="cold,hot", help="cold and/or hot (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="the headline case only: GEMV M=1 K4096xN11008 cold, 1 and 2 threads")
    p.add_argument("--peers", default="qforge,ggml,onnxruntime", help="what to run (default: %(default)s)")
    p.add_argument("--kernels", default=",".join(QFORGE_KERNELS), help="qforge kernels (default: %(default)s)")
    p.add_argument("--reps", type=int, default=5, help="repetitions; medians are reported (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run each shape/M/threads group this many times in turn; medians over the rounds (default: %(default)s)")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds per repetition (default: %(default)s)")
    p.add_argument("--build-dir", default=str(REPO / "build"), help="qforge's meson build dir (default: %(default)s)")
    p.add_argument("--scratch", default=str(REPO / "build-peers"), help="scratch folder for the peers (default: %(default)s)")
    p.add_argument("--out", default=None, help="JSON of all results (default: SCRATCH/peers.json)")
    p.add_argument("--no-install", action="store_true", help="do not install anything (fail if missing)")
    args = p.parse_args(argv)
    if args.quick:
        args.shapes, args.m, args.modes = "4096x11008", "1", "cold"
    args.shape_list = parse_shapes(args.shapes)
    args.m_list = parse_list(args.m)
    args.thread_list = parse_list(args.threads)
    args.mode_list = parse_list(args.modes, str)
    args.peer_set = set(parse_list(args.peers, str))
    if not set(args.mode_list) <= {"cold", "hot"} or not args.peer_set <= {"qforge", "ggml", "onnxruntime"}:
        p.error("--modes takes cold,hot and --peers qforge,ggml,onnxruntime")
    return args


def main(argv=None):
    args = parse_args(argv)
    scratch = install.Scratch(args.scratch)
    out = Path(args.out) if args.out else scratch.root / "peers.json"
    if not args.no_install:
        install.install_all(scratch)
    exe = bench_kernels_path(Path(args.build_dir).resolve()) if "qforge" in args.peer_set else None
    kernels = available_qforge_kernels(exe, parse_list(args.kernels, str)) if exe else []
    ggml_exe = build_ggml_bench(scratch) if "ggml" in args.peer_set else None

    started = time.time()
    meta = dict(command=" ".join([sys.executable] + sys.argv), started=datetime.datetime.utcnow().isoformat() + "Z",
                load_average_before=load_average(), machine=platform.node(), cpu=cpu_model(),
                cold_bytes=COLD_BYTES, reps=args.reps, rounds=args.rounds, min_time=args.min_time, groups=[])
    records = []
    for k, n in args.shape_list:
        models = ort_models(scratch, k, n, args.mode_list) if "onnxruntime" in args.peer_set else {}
        try:
            for threads in args.thread_list:
                for m, rnd in ((m, rnd) for m in args.m_list for rnd in range(args.rounds)):
                    group = f"K{k}xN{n}/M{m}/t{threads}" + (f"/round{rnd + 1}" if args.rounds > 1 else "")
                    install.log(f"== {group} (load {load_average()[0]:.1f})")
                    meta["groups"].append(dict(group=group, started=time.strftime("%H:%M:%S"), load_average=load_average()))
                    if kernels:
                        records += run_qforge(exe, kernels, k, n, m, threads, args.mode_list, args, group)
                    if ggml_exe:
                        for type_name, layout in GGML_PEERS:
                            records += run_ggml(ggml_exe, scratch, type_name, layout, k, n, m, threads, args.mode_list, args, group)
                    for block, level in ORT_PEERS if models else []:
                        for mode in args.mode_list:
                            records += run_ort(scratch, models, block, level, k, n, m, threads, mode, args, group)
                    write_results(out, meta, records)  # after every group: a crash keeps what ran
        finally:
            remove_models(models)  # hundreds of MiB per shape
    meta.update(load_average_after=load_average(), seconds=round(time.time() - started, 1))
    records = write_results(out, meta, records)
    print(results.format_table(records))
    print(f"load average before {fmt_load(meta['load_average_before'])}, after {fmt_load(meta['load_average_after'])}; "
          f"{meta['seconds']} s; written {out}")


def write_results(out, meta, records):
    merged = results.merge_rounds(results.attach_membw([dict(r) for r in records]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(meta=meta, records=merged), indent=1) + "\n")
    return merged


def fmt_load(avg):
    return "/".join(f"{x:.2f}" for x in avg)


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""`qforge quantize` / `dequantize` against `cp` of the same file, in the same run.

usage: bench/checkpoint_io.py [--qforge build/qforge] [--dir build-io] [--threads 2] [--rounds 5]

Writes (once) a 360 MB bf16 checkpoint of four 11008 x 4096 weights (LLM-like values: Gaussian,
sigma 0.02) and the same tensors as a sharded model (two shards and an index). Each round times, in
turn: `cp` of the file, `qforge quantize` to NF4 with double quantization, to GPTQ int4 g128 and to
AWQ int4 g128 (round to nearest), `qforge dequantize` of the NF4 result and `qforge convert` of the
AWQ result to GPTQ; then prints the medians and their ratios to `cp`. Every command writes a file
that does not exist yet, as a first run would: the previous round's output is removed, untimed,
before each (replacing a file keeps the old one's pages until the rename, which on this VM made
the new pages several times as expensive to fill as the reused ones `cp -f` gets). The peak resident memory of quantize (`/usr/bin/time -v`, when installed) is
measured once on the file and once on the sharded model. Python 3 standard library only; the
page cache is warm for every command alike (the input was just written or read).
"""

import argparse
import json
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import time

N, K, WEIGHTS = 11008, 4096, 4


def bf16_block(rng, count):
    """`count` bf16 values (bytes) of N(0, 0.02), truncated from f32."""
    floats = struct.pack("<%df" % count, *(rng.gauss(0.0, 0.02) for _ in range(count)))
    return b"".join(floats[i + 2:i + 4] for i in range(0, len(floats), 4))


def save(path, tensors):
    """tensors: [(name, shape, bf16 bytes)] as one safetensors file."""
    header, offset = {}, 0
    for name, shape, data in tensors:
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for _, _, data in tensors:
            f.write(data)


def make_models(directory):
    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "sharded", "model.safetensors.index.json")
    if os.path.exists(single) and os.path.exists(index):
        return single, index
    os.makedirs(os.path.join(directory, "sharded"), exist_ok=True)
    rng = random.Random(0)
    pattern = bf16_block(rng, 1 << 20)  # 1 Mi values, repeated with a per-tensor rotation
    names = ["model.layers.%d.mlp.%s.weight" % (i // 2, ["up_proj", "gate_proj"][i % 2]) for i in range(WEIGHTS)]
    tensors = []
    for i, name in enumerate(names):
        shift = 2 * 4099 * (i + 1)
        rotated = pattern[shift:] + pattern[:shift]
        data = (rotated * (N * K * 2 // len(rotated) + 1))[:N * K * 2]
        tensors.append((name, [N, K], data))
    save(single, tensors)
    weight_map = {}
    for s, part in enumerate([tensors[:2], tensors[2:]]):
        shard = "model-%05d-of-00002.safetensors" % (s + 1)
        save(os.path.join(directory, "sharded", shard), part)
        weight_map.update({name: shard for name, _, _ in part})
    with open(index, "w") as f:
        json.dump({"metadata": {"total_size": N * K * 2 * WEIGHTS}, "weight_map": weight_map}, f)
    return single, index


def timed(cmd):
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def peak_rss_mb(cmd):
    if not os.path.exists("/usr/bin/time"):
        return None
    out = subprocess.run(["/usr/bin/time", "-v"] + cmd, check=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True).stderr
    for line in out.splitlines():
        if "Maximum resident set size" in line:
            return int(line.split(":")[1]) / 1024.0
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qforge", default="build/qforge")
    ap.add_argument("--dir", default="build-io")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    single, index = make_models(args.dir)
    d = lambda name: os.path.join(args.dir, name)
    with open(d("nf4.json"), "w") as f:
        json.dump({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                   "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "bfloat16"}, f)
    with open(d("gptq.json"), "w") as f:
        json.dump({"quant_method": "gptq", "bits": 4, "group_size": 128}, f)
    with open(d("awq.json"), "w") as f:
        json.dump({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}, f)
    q = [args.qforge]
    t = ["--threads", str(args.threads)]
    cases = {
        "cp": ["cp", single, d("copy.safetensors")],
        "quantize nf4-dq": q + ["quantize", "--config", d("nf4.json"), single, d("nf4.safetensors")] + t,
        "quantize gptq int4 g128": q + ["quantize", "--config", d("gptq.json"), single, d("gptq.safetensors")] + t,
        "quantize awq int4 g128": q + ["quantize", "--config", d("awq.json"), single, d("awq.safetensors")] + t,
        "dequantize nf4-dq": q + ["dequantize", "--config", d("nf4.json"), d("nf4.safetensors"), d("back.safetensors")] + t,
        "convert awq -> gptq": q + ["convert", "--to", "gptq", "--config", d("awq.json"), d("awq.safetensors"),
                                    d("converted.safetensors")] + t,
    }
    size_mb = os.path.getsize(single) / 1e6
    times = {name: [] for name in cases}
    for inputs in ["quantize nf4-dq", "quantize awq int4 g128"]:
        timed(cases[inputs])  # the dequantize and convert inputs, and a warm page cache
    input_mb = {name: size_mb for name in cases}
    input_mb["dequantize nf4-dq"] = os.path.getsize(d("nf4.safetensors")) / 1e6
    input_mb["convert awq -> gptq"] = os.path.getsize(d("awq.safetensors")) / 1e6
    for _ in range(args.rounds):
        for name, cmd in cases.items():
            output = cmd[-3] if cmd[-2] == "--threads" else cmd[-1]
            if os.path.exists(output):
                os.remove(output)
            times[name].append(timed(cmd))
    cp = statistics.median(times["cp"])
    print("%.0f MB bf16 checkpoint (%d x [%d, %d]), %d threads, medians of %d rounds (min .. max)"
          % (size_mb, WEIGHTS, N, K, args.threads, args.rounds))
    for name, ts in times.items():
        med = statistics.median(ts)
        print("  %-26s %6.3f s  (%.3f .. %.3f)  %6.0f MB/s of input  %5.2fx cp"
              % (name, med, min(ts), max(ts), input_mb[name] / med, med / cp))
    for what, src in [("file", single), ("sharded", index)]:
        out = d("rss-nf4.safetensors") if what == "file" else d("rss-sharded")
        if what == "sharded":
            shutil.rmtree(out, ignore_errors=True)
        mb = peak_rss_mb(q + ["quantize", "--config", d("nf4.json"), src, out] + t)
        if mb is not None:
            print("  peak resident memory of quantize nf4-dq on the %s: %.0f MB" % (what, mb))
    return 0


if __name__ == "__main__":
    sys.exit(main())

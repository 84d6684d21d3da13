#!/usr/bin/env python3
"""Writes a small GPTQ checkpoint (Python stdlib only) for the C API examples and the consumer
builds: DIR/model.safetensors with one 4-bit symmetric GPTQ v1 weight, group 128, and
DIR/config.json with its quantization_config.

    make_checkpoint.py DIR [--rows N] [--cols K]

Module: model.layers.0.mlp.up_proj (qweight, qzeros, scales, g_idx), codes and scales from a
fixed seed."""
import argparse
import json
import os
import random
import struct

MODULE = "model.layers.0.mlp.up_proj"
GROUP = 128


def write_safetensors(path, tensors):
    header, data, offset = {}, b"", 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--cols", type=int, default=512)
    a = p.parse_args()
    n, k = a.rows, a.cols
    assert n % 32 == 0 and k % GROUP == 0
    rng = random.Random(17)
    codes = [[rng.randrange(16) for _ in range(k)] for _ in range(n)]  # codes[n][k]
    groups = k // GROUP
    qweight = [0] * (k // 8 * n)  # [K/8, N], 8 codes along K per int32
    for c in range(n):
        for j in range(k):
            qweight[(j // 8) * n + c] |= codes[c][j] << (4 * (j % 8))
    qzeros = [0] * (groups * n // 8)  # [G, N/8]: v1 stores zero - 1 = 7 (symmetric: zero 8)
    for g in range(groups):
        for c in range(n):
            qzeros[g * (n // 8) + c // 8] |= 7 << (4 * (c % 8))
    scales = [rng.uniform(0.001, 0.01) for _ in range(groups * n)]  # [G, N]
    i32 = lambda v: struct.pack(f"<{len(v)}I", *v)
    tensors = [
        (MODULE + ".qweight", "I32", [k // 8, n], i32(qweight)),
        (MODULE + ".qzeros", "I32", [groups, n // 8], i32(qzeros)),
        (MODULE + ".scales", "F16", [groups, n], struct.pack(f"<{len(scales)}e", *scales)),
        (MODULE + ".g_idx", "I32", [k], struct.pack(f"<{k}i", *[j // GROUP for j in range(k)])),
    ]
    os.makedirs(a.dir, exist_ok=True)
    write_safetensors(os.path.join(a.dir, "model.safetensors"), tensors)
    config = {"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": GROUP, "sym": True,
                                      "desc_act": False, "checkpoint_format": "gptq"}}
    with open(os.path.join(a.dir, "config.json"), "w") as f:
        json.dump(config, f)


if __name__ == "__main__":
    main()

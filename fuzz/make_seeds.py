#!/usr/bin/env python3
"""Writes the seed corpora of fuzz/corpus/ (committed; rerun only to change them).

usage: make_seeds.py PATH/TO/qforge PATH/TO/packed_seeds   (both from a -Dfuzz=true build)

Small valid inputs of every kind each target reads: plain and quantized safetensors files (every
checkpoint method, made by `qforge quantize`), quantization_configs, an index over the shards
fuzz_index.cpp writes, calibration files, packed weight files (written by the library itself:
fuzz/packed_seeds.cpp).
"""

import json
import os
import random
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def safetensors(tensors, metadata=None):
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def put(target, name, blob):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(blob if isinstance(blob, bytes) else blob.encode())


def main():
    qforge, packed_seeds = (os.path.abspath(a) for a in sys.argv[1:3])
    subprocess.run([packed_seeds, os.path.join(HERE, "corpus", "packed")], check=True)
    rng = random.Random(0)
    n, k = 32, 128
    w = struct.pack("<%de" % (n * k), *[rng.gauss(0, 0.02) for _ in range(n * k)])
    model = safetensors([("model.layers.0.mlp.down_proj.weight", "F16", [n, k], w),
                         ("model.layers.0.mlp.down_proj.bias", "F16", [n], bytes(2 * n)),
                         ("lm_head.weight", "F16", [4, 8], bytes(64))], {"format": "pt"})
    put("safetensors", "plain.safetensors", model)
    put("safetensors", "empty.safetensors", safetensors([]))
    put("safetensors", "dtypes.safetensors", safetensors(
        [("a", "BF16", [2, 2], bytes(8)), ("b", "U8", [0], b""), ("c", "I64", [], bytes(8)),
         ("d", "F8_E4M3", [3], b"\x01\x02\x03"), ("e", "F64", [1, 1, 1], bytes(8))]))
    configs = {
        "nf4_dq": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                   "bnb_4bit_compute_dtype": "bfloat16"},
        "fp4": {"quant_method": "bitsandbytes", "load_in_4bit": True},
        "int8": {"load_in_8bit": True, "llm_int8_skip_modules": ["lm_head"]},
        "gptq4": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False},
        "gptq3": {"quant_method": "gptq", "bits": 3, "group_size": 32, "sym": False, "checkpoint_format": "gptq_v2"},
        "gptq8": {"quant_method": "gptq", "bits": 8, "group_size": -1},
        "awq": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm",
                "modules_to_not_convert": ["lm_head", "model\\.layers\\.\\d+\\.self_attn"]},
        "fp8": {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]},
        "mxfp4": {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn", "lm_head"]},
    }
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "model.safetensors")
        with open(src, "wb") as f:
            f.write(model)
        for name, cfg in configs.items():
            put("config", name + ".json", json.dumps(cfg))
            path = os.path.join(tmp, name + ".json")
            with open(path, "w") as f:
                json.dump(cfg, f)
            out = os.path.join(tmp, name + ".safetensors")
            subprocess.run([qforge, "quantize", "--config", path, src, out], check=True, capture_output=True)
            with open(out, "rb") as f:
                put("checkpoint", name + ".safetensors", f.read())
    # the hostile inputs of issue 20, kept as regression seeds
    put("config", "multiple_repeat.json", json.dumps({"quant_method": "awq", "modules_to_not_convert": [".**x", "(.*)*x"]}))
    put("config", "nested.json", json.dumps({"load_in_8bit": True, "llm_int8_skip_modules": ["(" * 2000, "\\8888888888"]}))
    put("config", "damp.json", '{"quant_method": "gptq", "bits": 4, "damp_percent": 1e400}')
    overflow = b'{"a":{"dtype":"F32","shape":[1e400],"data_offsets":[0,0]}}'
    put("safetensors", "number_overflow.safetensors", struct.pack("<Q", len(overflow)) + overflow)
    put("checkpoint", "mx_zero_dim.safetensors", safetensors(
        [("w_blocks", "U8", [2, 1 << 62, 0, 16], b""), ("w_scales", "U8", [2, 1 << 62, 0], b"")]))
    put("checkpoint", "awq_zero_dim.safetensors", safetensors(
        [("m.qweight", "I32", [0, 1 << 61], b""), ("m.qzeros", "I32", [1, 1], bytes(4)), ("m.scales", "F16", [1, 8], bytes(16))]))
    put("config", "config.json", json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
                                              "quantization_config": configs["nf4_dq"]}))
    index = {"metadata": {"total_size": 576},
             "weight_map": {"model.layers.0.mlp.down_proj.weight": "model-00001-of-00002.safetensors",
                            "lm_head.weight": "model-00002-of-00002.safetensors",
                            "model.norm.weight": "model-00002-of-00002.safetensors"}}
    put("index", "index.json", json.dumps(index, indent=2))
    put("index", "missing_shard.json", json.dumps({"weight_map": {"lm_head.weight": "other.safetensors"}}))
    x = struct.pack("<64f", *[rng.gauss(0, 1) for _ in range(64)])
    put("calibration", "inputs.safetensors", safetensors([("m.inputs", "F32", [4, 16], x)]))
    h = [0.0] * 64
    for i in range(8):
        h[i * 8 + i] = 1.0 + i
    put("calibration", "hessian.safetensors", safetensors(
        [("m.hessian", "F32", [8, 8], struct.pack("<64f", *h)), ("m.nsamples", "I64", [], struct.pack("<q", 16)),
         ("m.inputs", "BF16", [2, 2, 8], bytes(64))]))


if __name__ == "__main__":
    main()

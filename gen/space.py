"""The design space: the product of the axes, and the one predicate that prunes it to the configs
that get kernels. Adding a value to an axis (or relaxing the predicate) adds kernels, their
tests and their benchmarks; nothing else needs to change.

Which axes are compile time: all of them, for the configs below (the compiled tier: the group
loop unrolled, the code table and the compute path fixed). Two axes are also run-time values
(include/qforge/kernels/kernels.hpp, kernel_config_of), so that every config that validates runs on
one of these kernels without compiling its own:
  - the group (the regrouped tier): a stored group that is a multiple of a compiled one runs on
    the compiled kernel with its scales repeated at pack time (bnb double-quant absmax decoded);
  - the width of 2- and 3-bit integers (the widened tier): where no 2- or 3-bit kernel fits
    (groups below 128: their code windows span 64 elements; the bf16 and f16 paths) the codes are
    stored as 4-bit codes of the same value and run on the int4 kernels.
So this space compiles, per format, the smallest group its layout needs (bnb block 32, integer
group 32, FP8 tile 128, MX block 32) on every compute path the format has (f32, bf16, f16; i8 where
its levels allow), plus the common ones worth their own code (bnb block 64 with and without double
quant: transformers' default; int4 / int8 g128, 2- and 3-bit g128: fewer scale or code bytes;
8-bit per channel), and no group is compiled twice for speed alone. The test "the whole
vocabulary" (tests/test_kernels.cpp) proves that every valid config finds a kernel.
"""

import itertools

from vocabulary import PER_CHANNEL, Config

AXES = {
    "type": ["nf4", "fp4", "int_sym", "fp8_e4m3", "e2m1", "int8_row", "int_asym", "fp8_e5m2"],
    "bits": [4, 8, 2, 3],
    "group": [32, 64, 128, PER_CHANNEL],
    "double_quant": [False, True],
    "storage": ["bnb4", "qforge", "fp8_block", "mx", "bnb8"],
    "act": ["f32", "bf16", "i8", "f16"],
}


def has_kernel(c: Config) -> bool:
    """The pruning predicate: what kernels/impl/ implements and is worth compiling.

    - compute paths f32 and i8 where listed below; bf16 (bitsandbytes' compute dtype, e.g. QLoRA;
      the dtype of FP8 and MXFP4 models) and f16 (bnb_4bit_compute_dtype float16, the f16 models
      of GPTQ / AWQ) for every format at its smallest group, so that every group and width has
      them through the run-time tiers; f16 also for int4 g128 (GPTQ / AWQ's common f16 models);
    - bitsandbytes NF4 / FP4 in their checkpoint layout, blocksize 64 (transformers' default)
      with and without double quantization, and blocksize 32 (the smallest; its double-quant
      checkpoints run regrouped, the absmax decoded). Blocksize 64 double-quant on the f16 path
      also runs regrouped: decoding the nested absmax in the loop cost it 12% against the same
      kernel on decoded absmax (900 against 795 us, 4096 x 4096, 1 thread; docs/performance.md),
      more than the 9% of bytes (4.5 against 4.13 bits per weight) the decoded absmax adds;
    - symmetric int4 in qforge's repacked layout (GPTQ is repacked into it), groups 32 (the
      smallest K granularity: every path, so every group and width has one) and 128 (the common one);
    - asymmetric int4 (GPTQ sym=False, AWQ; zero point per (row, group)) in the same qforge layout,
      the same groups and paths;
    - 8-bit GPTQ integers, sym and asym, one byte per weight in the qforge layout, group 32 (every
      path), group 128 and per channel (GPTQ group_size -1), f32 and i8 paths;
    - 2- and 3-bit GPTQ integers, sym and asym, group 128, f32 and i8 paths: 2-bit codes four per
      byte, 3-bit ones as 2-bit codes plus a plane of third bits (kernels/weights.hpp);
    - FineGrainedFP8 E4M3 with 128x128 tiles (DeepSeek / transformers), and E5M2 in the same tiles,
      f32, bf16 and f16 paths;
    - OCP MXFP4 (E2M1, E8M0 scale per 32), f32, bf16, f16 and i8 paths (E2M1 levels times 2 are exact);
    - LLM.int8() (bitsandbytes load_in_8bit): int8 rows with one absmax each, the outlier-threshold
      matmul with int8 activations (kernels/impl/llm_int8.hpp).
    """
    if c.type in ("nf4", "fp4"):
        return (c.storage == "bnb4" and c.bits == 4 and c.act in ("f32", "bf16", "i8", "f16")
                and not (c.double_quant and (c.group == 32 or c.act == "f16")) and c.group in (32, 64))
    if c.type in ("int_sym", "int_asym"):
        groups = {4: (32, 128), 8: (32, 128, PER_CHANNEL), 2: (128,), 3: (128,)}[c.bits]
        acts = {(4, 128): ("f32", "i8", "f16"), (4, 32): ("f32", "i8", "bf16", "f16"),
                (8, 32): ("f32", "i8", "bf16", "f16")}.get((c.bits, c.group), ("f32", "i8"))
        return (c.storage == "qforge" and not c.double_quant and c.group in groups and c.act in acts)
    if c.type in ("fp8_e4m3", "fp8_e5m2"):
        return (c.storage == "fp8_block" and c.bits == 8 and c.group == 128 and not c.double_quant
                and c.act in ("f32", "bf16", "f16"))
    if c.type == "e2m1":
        return (c.storage == "mx" and c.bits == 4 and c.group == 32 and not c.double_quant
                and c.act in ("f32", "i8", "bf16", "f16"))
    if c.type == "int8_row":
        return c.storage == "bnb8" and c.bits == 8 and c.group == PER_CHANNEL and not c.double_quant and c.act == "i8"
    return False


def compiled_for(c: Config, isa: str) -> bool:
    """Whether the kernels of c are compiled for an ISA (kernels::compiled_for in C++ says the same):
    avx512_vnni adds only the int8 compute path (vpdpbusd) and avx512_bf16 only the bf16 one
    (vdpbf16ps); any other path would be the avx512 (or avx512_vnni) code again, which is what
    runs for it on those CPUs."""
    if isa == "avx512_vnni":
        return c.act == "i8"
    if isa == "avx512_bf16":
        return c.act == "bf16"
    return True


def kernel_configs() -> list[Config]:
    """Every config with kernels, in a stable order (the product's order)."""
    product = itertools.product(*AXES.values())
    return [c for c in (Config(*values) for values in product) if has_kernel(c)]

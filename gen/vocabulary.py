"""The config vocabulary of include/qforge/config/vocabulary.hpp, for the generator.

Each enum value maps to its short token (used in canonical names) and is spelled in C++ as
::qforge::<enum>::<value>. canonical_name() builds the same string as qforge::canonical_name in
src/config.cpp; the registry refuses a generated kernel whose name differs (tests cover it).
"""

from dataclasses import dataclass

# enum value -> token, in the order of vocabulary.hpp
DTYPE_TOKENS = {
    "int_sym": "sym",
    "int_asym": "asym",
    "nf4": "nf4",
    "fp4": "fp4",
    "fp8_e4m3": "e4m3",
    "fp8_e5m2": "e5m2",
    "e2m1": "e2m1",
    "int8_row": "int8row",
}
LAYOUT_TOKENS = {
    "bnb4": "bnb",
    "bnb8": "bnb8",
    "gptq_v1": "gptq",
    "gptq_v2": "gptq2",
    "awq_gemm": "awq",
    "fp8_block": "fp8blk",
    "mx": "mx",
    "qforge": "qf",
}
COMPUTE_TOKENS = {"f32": "f32", "bf16": "bf16", "f16": "f16", "i8": "i8"}

PER_CHANNEL = -1
PER_TENSOR = 0

# grouping_of(layout): the prefix of the group token
GROUP_PREFIX = {"bnb4": "b", "fp8_block": "t"}  # every other layout: "g"

# qforge::isa -> compiler flags of its generated translation units (x86-64, GCC and Clang)
ISA_FLAGS = {
    "sse4_2": ["-msse4.2"],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "avx512": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512cd"],
    "avx512_vnni": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl",
                    "-mavx512cd", "-mavx512vnni"],
    "avx512_bf16": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl",
                    "-mavx512cd", "-mavx512vnni", "-mavx512bf16"],
}
ISAS = list(ISA_FLAGS)


@dataclass(frozen=True)
class Config:
    type: str
    bits: int
    group: int
    double_quant: bool
    storage: str
    act: str


def type_token(c: Config) -> str:
    if c.type in ("int_sym", "int_asym"):
        return f"int{c.bits}{DTYPE_TOKENS[c.type]}"
    return DTYPE_TOKENS[c.type]


def group_token(c: Config) -> str:
    if c.group == PER_CHANNEL:
        return "pc"
    if c.group == PER_TENSOR:
        return "pt"
    return GROUP_PREFIX.get(c.storage, "g") + str(c.group)


def canonical_name(c: Config) -> str:
    """<type>_<group>[_dq]_<storage>_<act>, as qforge::canonical_name."""
    parts = [type_token(c), group_token(c)]
    if c.double_quant:
        parts.append("dq")
    parts += [LAYOUT_TOKENS[c.storage], COMPUTE_TOKENS[c.act]]
    return "_".join(parts)


def family(c: Config) -> str:
    """The format family: one generated translation unit per family and ISA."""
    return f"{type_token(c)}_{LAYOUT_TOKENS[c.storage]}"


def list_args(c: Config) -> str:
    """The arguments of QFORGE_KERNEL(...) in the kernel list (see kernels/kernels.hpp)."""
    dq = "true" if c.double_quant else "false"
    return f"{canonical_name(c)}, {family(c)}, {c.type}, {c.bits}, {c.group}, {dq}, {c.storage}, {c.act}"

#!/usr/bin/env python3
"""Checks the rule "nothing arch-specific is shared across ISAs" on a built kernel library.

usage: check_symbols.py NM ISA LIBRARY

A per-ISA kernel library is compiled with that ISA's flags. Any global or weak (COMDAT) code
symbol it defines could be picked by the linker for callers compiled for another ISA, so each
must be a template instantiated on this ISA's xsimd arch tag (the tag is in its name), or one of
the generated registration functions. A plain inline helper or a std:: template used inside a
kernel shows up here instead of as a crash on an older CPU. Helpers of the kernel headers that
are not templates on the arch are [[gnu::always_inline]]: a sanitizer build (UBSan keeps calls
that would be inlined) must not leave copies of them either.
"""

import subprocess
import sys

ARCH_TAG = {
    "sse4_2": "xsimd::sse4_2",
    "avx2": "xsimd::fma3<xsimd::avx2>",
    "avx512": "xsimd::avx512bw",
    "avx512_vnni": "qforge::avx512vnni",
    "avx512_bf16": "qforge::avx512bf16",
}


def main() -> int:
    nm, isa, library = sys.argv[1:4]
    out = subprocess.run([nm, "-C", "--defined-only", library], capture_output=True, text=True, check=True).stdout
    bad = []
    checked = 0
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) != 3 or parts[1] not in ("T", "W"):  # global / weak code only
            continue
        name = parts[2]
        checked += 1
        if ARCH_TAG[isa] in name:
            continue
        if name.startswith("qforge::kernels::generated::register_") and f"_{isa}(" in name:
            continue
        bad.append(name)
    if bad:
        print(f"{library}: {len(bad)} code symbols not specific to {isa} (they may be shared with other ISAs):")
        for name in bad:
            print("  " + name)
        return 1
    print(f"{library}: {checked} code symbols, all specific to {isa}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Selects generated kernels by glob on their canonical names (the Meson option `kernels`).

usage: select_kernels.py --list qforge_kernel_list.inc --glob 'nf4_*,*_i8' --out qforge_selected_kernels.h
Globs are fnmatch patterns separated by commas; a kernel is selected when any pattern matches.
Writes `#define QFORGE_SELECTED_<name> 1` (selected) or `0` for every listed kernel, usable in
#if and in C++ expressions; fails when nothing matches.
"""

import argparse
import fnmatch
import re
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--list", required=True)
    parser.add_argument("--glob", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.list, encoding="utf-8") as f:
        names = re.findall(r"^QFORGE_KERNEL\((\w+),", f.read(), flags=re.MULTILINE)
    patterns = [p.strip() for p in args.glob.split(",") if p.strip()]
    selected = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not selected:
        print(f"-Dkernels='{args.glob}' matches no kernel; available: {' '.join(names)}", file=sys.stderr)
        return 1
    lines = ["// written by gen/select_kernels.py for -Dkernels='" + args.glob + "'", "#pragma once"]
    lines += [f"#define QFORGE_SELECTED_{n} {1 if n in selected else 0}" for n in names]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Writes generated/ from the design space (gen/space.py).

usage: generate.py [--check] [--out DIR]
  (default)  rewrite DIR (default: <repo>/generated) and remove stale generated files
  --check    generate into a temporary directory and compare with DIR; exit 1 on any difference
"""

import argparse
import difflib
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from emit import BANNER, all_files  # noqa: E402
from space import kernel_configs  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent


def write(out: pathlib.Path, files: dict[str, str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        if stale.is_file() and stale.name not in files and BANNER in stale.read_text(encoding="utf-8"):
            stale.unlink()
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")


def differences(expected_dir: pathlib.Path, actual_dir: pathlib.Path) -> list[str]:
    problems = []
    expected = {p.name for p in expected_dir.iterdir() if p.is_file()}
    actual = {p.name for p in actual_dir.iterdir() if p.is_file()} if actual_dir.is_dir() else set()
    for name in sorted(expected | actual):
        if name not in actual:
            problems.append(f"missing: {actual_dir / name}")
        elif name not in expected:
            if BANNER in (actual_dir / name).read_text(encoding="utf-8"):
                problems.append(f"stale (no longer generated): {actual_dir / name}")
        else:
            want = (expected_dir / name).read_text(encoding="utf-8").splitlines(keepends=True)
            have = (actual_dir / name).read_text(encoding="utf-8").splitlines(keepends=True)
            if want != have:
                problems.append("".join(difflib.unified_diff(have, want, f"{actual_dir / name} (committed)",
                                                             f"{name} (generated)")))
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "generated")
    args = parser.parse_args()
    files = all_files(kernel_configs())
    if not args.check:
        write(args.out, files)
        print(f"wrote {len(files)} files to {args.out}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        write(pathlib.Path(tmp), files)
        problems = differences(pathlib.Path(tmp), args.out)
    for p in problems:
        print(p)
    if problems:
        print("generated/ is stale: run gen/generate.py and commit the result", file=sys.stderr)
        return 1
    print(f"generated/ is up to date ({len(files)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Checks that a config rejected at compile time is rejected for the stated reason.

usage: compile_fail.py COMPILER... -I<include>... FILE
FILE holds a line `// expect: <config_rule>`. It must compile with -DQFORGE_CONTROL (a valid
config in the same code) and fail without it, naming that rule in the compiler's message.
"""
import re
import subprocess
import sys

args, source = sys.argv[1:-1], sys.argv[-1]
compiler = [a for a in args if not a.startswith("-I")]
includes = [a for a in args if a.startswith("-I")]
expect = re.search(r"//\s*expect:\s*(\w+)", open(source, encoding="utf-8").read()).group(1)
base = compiler + ["-std=c++20", "-fsyntax-only", *includes, source]

control = subprocess.run(base + ["-DQFORGE_CONTROL"], capture_output=True, text=True)
if control.returncode != 0:
    sys.exit(f"FAIL: the control config of {source} does not compile:\n{control.stderr}")
bad = subprocess.run(base, capture_output=True, text=True)
if bad.returncode == 0:
    sys.exit(f"FAIL: {source} compiled, but its config breaks rule {expect}")
if expect not in bad.stderr:
    sys.exit(f"FAIL: {source} failed without naming {expect}:\n{bad.stderr}")
print(f"ok: rejected with {expect}")

#!/usr/bin/env python3
"""Runs a fuzz target for a while on a copy of its corpus (the committed corpus is not written).

usage: run.py TARGET SECONDS CORPUS [libFuzzer options...]
New inputs go to a temporary directory, removed afterwards unless the run failed (then kept for
the crash report; libFuzzer writes the crashing input to crash-* in the working directory).
"""

import subprocess
import sys
import tempfile


def main() -> int:
    target, seconds, corpus = sys.argv[1:4]
    with tempfile.TemporaryDirectory(prefix="qforge-fuzz-corpus-") as scratch:
        cmd = [target, f"-max_total_time={seconds}", "-max_len=16384", "-timeout=10", "-rss_limit_mb=2048",
               "-print_final_stats=1", *sys.argv[4:], scratch, corpus]
        return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main())

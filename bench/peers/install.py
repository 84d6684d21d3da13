"""Installs the peers of docs/performance.md into a scratch folder (Python 3 stdlib).

Debian packages come from apt-get only when dpkg says they are missing; the npm packages and the
llama.cpp source (for ggml's headers only) go into the scratch folder, never into the repo.
"""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DEBIAN_PACKAGES = ["python3-onnx", "python3-numpy", "python3-matplotlib", "gcc", "git"]
# node and npm count as present when their commands are: some machines have a nodejs build that
# bundles npm and conflicts with Debian's npm package.
DEBIAN_COMMANDS = {"node": "nodejs", "npm": "npm"}
ORT_PACKAGE = "onnxruntime-node@1.30.0"
GGML_LIBS_PACKAGE = "@node-llama-cpp/linux-x64@3.22.1"
GGML_SOURCE_PACKAGE = "node-llama-cpp@3.22.1"  # ships llama/gitRelease.bundle, the llama.cpp source of that release


def log(msg):
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd, cwd=None, env=None):
    log("$ " + " ".join(str(c) for c in cmd))
    # Their output goes to stderr: stdout carries only the results table.
    subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, check=True, stdout=sys.stderr)


def missing_debian_packages(packages=DEBIAN_PACKAGES):
    missing = [pkg for cmd, pkg in DEBIAN_COMMANDS.items() if shutil.which(cmd) is None]
    for p in packages:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True)
        if r.returncode != 0 or "install ok installed" not in r.stdout:
            missing.append(p)
    return missing


def install_debian_packages():
    missing = missing_debian_packages()
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(sudo + ["apt-get", "update", "-qq"], env=env)
    run(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing, env=env)


class Scratch:
    """The scratch folder layout: npm/ (node_modules), llama.cpp/ (the source, for headers), bin/, models/."""

    def __init__(self, root):
        self.root = Path(root).resolve()
        self.npm = self.root / "npm"
        self.modules = self.npm / "node_modules"
        self.llama_src = self.root / "llama.cpp"
        self.bin = self.root / "bin"
        self.models = self.root / "models"

    @property
    def ort_package(self):
        return self.modules / "onnxruntime-node"

    @property
    def ggml_lib_dir(self):
        return self.modules / "@node-llama-cpp" / "linux-x64" / "bins" / "linux-x64"

    @property
    def ggml_include_dir(self):
        return self.llama_src / "ggml" / "include"


def install_npm_packages(scratch):
    scratch.npm.mkdir(parents=True, exist_ok=True)
    if not (scratch.npm / "package.json").exists():
        (scratch.npm / "package.json").write_text('{"name": "qforge-peers", "private": true}\n')
    wanted = {
        ORT_PACKAGE: scratch.ort_package / "package.json",
        GGML_LIBS_PACKAGE: scratch.modules / "@node-llama-cpp" / "linux-x64" / "package.json",
        GGML_SOURCE_PACKAGE: scratch.modules / "node-llama-cpp" / "llama" / "gitRelease.bundle",
    }
    missing = [p for p, marker in wanted.items() if not marker.exists()]
    if missing:
        # --ignore-scripts: onnxruntime-node's install script would download CUDA binaries (no network
        # for that here); the CPU library is inside the package. node-llama-cpp's scripts would build.
        run(["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund"] + missing, cwd=scratch.npm)


def install_llama_source(scratch):
    if (scratch.ggml_include_dir / "ggml-backend.h").exists():
        return
    bundle = scratch.modules / "node-llama-cpp" / "llama" / "gitRelease.bundle"
    if scratch.llama_src.exists():
        shutil.rmtree(scratch.llama_src)
    run(["git", "clone", "--quiet", str(bundle), str(scratch.llama_src)])


def install_all(scratch):
    install_debian_packages()
    install_npm_packages(scratch)
    install_llama_source(scratch)

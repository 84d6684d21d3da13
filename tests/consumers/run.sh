#!/usr/bin/env bash
# qforge as outside projects take it in, each running a GEMV checked against the reference:
#   install    meson install of a reduced kernel set (-Dkernels) into WORK/prefix
#   pkgconfig  a C++ program built with pkg-config --cflags --libs qforge
#   c_api      a C11 program (examples/c_api_gemv.c) built with pkg-config, on a GPTQ checkpoint
#   ctypes     Python ctypes on the installed libqforge.so (examples/ctypes_gemv.py)
#   cmake      a CMake project with find_package(qforge CONFIG) -> qforge::qforge
#   subproject a Meson parent project of the default (debug) build type with subprojects/qforge
# Usage: run.sh WORK   (from the repository root). Writes "<name> OK|FAIL" lines to
# WORK/results.txt; exits non-zero when one failed.
set -uo pipefail
root="$(pwd)"
work="$(realpath -m "$1")"
rm -rf "$work"
mkdir -p "$work"
results="$work/results.txt"
: > "$results"
kernels='int4sym_g128_qf_f32'  # the one kernel the consumers run (GPTQ int4 g128, f32 compute)
failed=0
step() {  # step NAME COMMAND...: runs the command, logs to WORK/NAME.log, records the result
    local name="$1"
    shift
    if "$@" > "$work/$name.log" 2>&1; then
        echo "$name OK" >> "$results"
        echo "consumer $name: OK"
    else
        echo "$name FAIL" >> "$results"
        echo "consumer $name: FAIL (log: $work/$name.log)"
        tail -20 "$work/$name.log"
        failed=1
    fi
}

prefix="$work/prefix"
install() {
    meson setup "$work/build" --prefix="$prefix" --libdir=lib --werror -Dkernels="$kernels" \
        -Dtool=false -Dtests=false -Dbenchmarks=false -Dexamples=false &&
        meson compile -C "$work/build" && meson install -C "$work/build"
}
step install install
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
export LD_LIBRARY_PATH="$prefix/lib"

step pkgconfig bash -c "c++ -std=c++20 -O2 tests/consumers/gemv_check.cpp \$(pkg-config --cflags --libs qforge) \
    -o '$work/gemv_check_pc' && '$work/gemv_check_pc'"
python3 tests/consumers/make_checkpoint.py "$work/checkpoint"
module=model.layers.0.mlp.up_proj
step c_api bash -c "cc -std=c11 -Wall -Wextra -Werror examples/c_api_gemv.c \$(pkg-config --cflags --libs qforge) -lm \
    -o '$work/c_api_gemv' && '$work/c_api_gemv' '$work/checkpoint/model.safetensors' '$work/checkpoint/config.json' $module"
step ctypes python3 examples/ctypes_gemv.py "$prefix/lib/libqforge.so" "$work/checkpoint/model.safetensors" \
    "$work/checkpoint/config.json" "$module"
step cmake bash -c "cmake -S tests/consumers/cmake -B '$work/cmake' -DCMAKE_PREFIX_PATH='$prefix' &&
    cmake --build '$work/cmake' && '$work/cmake/gemv_check'"

# The parent project sees qforge's sources as subprojects/qforge (a copy of the tracked files).
parent="$work/parent"
subproject() {
    mkdir -p "$parent/subprojects/qforge" &&
        cp tests/consumers/subproject/meson.build "$parent/" && cp tests/consumers/gemv_check.cpp "$work/" &&
        git -C "$root" ls-files -z | (cd "$root" && xargs -0 cp --parents -t "$parent/subprojects/qforge") &&
        env -u PKG_CONFIG_PATH -u LD_LIBRARY_PATH meson setup "$parent/build" "$parent" --force-fallback-for=qforge &&
        meson compile -C "$parent/build" && "$parent/build/gemv_check"
}
step subproject subproject
exit $failed

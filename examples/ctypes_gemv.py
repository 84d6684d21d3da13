#!/usr/bin/env python3
"""qforge from Python through ctypes (the C API, qforge/qforge.h): load one weight of a
checkpoint, prepare x once, run one call over the weight given twice (as Q/K/V share x), and
check the result against the dequantized weights times x.

    ctypes_gemv.py LIBQFORGE.so MODEL.safetensors CONFIG.json MODULE
"""
import ctypes
import math
import sys

F32, COMPUTE_F32 = 0, 0


class GemvTarget(ctypes.Structure):
    _fields_ = [("matrix", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("y", ctypes.c_void_p),
                ("y_type", ctypes.c_int), ("beta", ctypes.c_float)]


def main():
    lib_path, model, config_path, module = sys.argv[1:5]
    lib = ctypes.CDLL(lib_path)
    lib.qforge_last_error.restype = ctypes.c_char_p
    lib.qforge_matrix_kernel_name.restype = ctypes.c_char_p
    lib.qforge_gemv_many.argtypes = [ctypes.POINTER(GemvTarget), ctypes.c_size_t, ctypes.c_void_p,
                                     ctypes.c_int64, ctypes.c_int64]

    def check(status):
        if status != 0:
            raise RuntimeError(f"qforge status {status}: {lib.qforge_last_error().decode()}")

    config, checkpoint, w = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
    check(lib.qforge_config_load(config_path.encode(), ctypes.byref(config)))
    check(lib.qforge_checkpoint_open(model.encode(), ctypes.byref(checkpoint)))
    check(lib.qforge_matrix_load(checkpoint, module.encode(), config, COMPUTE_F32, ctypes.byref(w)))
    lib.qforge_checkpoint_close(checkpoint)
    rows, cols = ctypes.c_int64(), ctypes.c_int64()
    check(lib.qforge_matrix_shape(w, ctypes.byref(rows), ctypes.byref(cols)))
    n, k = rows.value, cols.value

    x = (ctypes.c_float * k)(*[math.sin(0.1 * i) for i in range(k)])
    prepared = ctypes.c_void_p()
    check(lib.qforge_prepare(w, x, F32, ctypes.byref(prepared)))
    y1, y2 = (ctypes.c_float * n)(), (ctypes.c_float * n)()
    targets = (GemvTarget * 2)(GemvTarget(w.value, None, ctypes.addressof(y1), F32, 0.0),
                               GemvTarget(w.value, None, ctypes.addressof(y2), F32, 0.0))
    check(lib.qforge_gemv_many(targets, 2, prepared, ctypes.c_int64(0), ctypes.c_int64(2 * n)))

    wd = (ctypes.c_float * (n * k))()
    check(lib.qforge_dequantize(w, ctypes.c_int64(0), ctypes.c_int64(n), wd, F32))
    bad = 0
    for r in range(n):
        products = [wd[r * k + j] * x[j] for j in range(k)]
        exact, magnitude = math.fsum(products), math.fsum(abs(p) for p in products)
        bound = (k + 3) * 2.0 ** -24 * magnitude
        bad += abs(y1[r] - exact) > bound or y2[r] != y1[r]
    print(f"{lib.qforge_matrix_kernel_name(w).decode()} [{n}, {k}]: {bad} of {n} outputs outside the bound")
    lib.qforge_prepared_free(prepared)
    lib.qforge_matrix_free(w)
    lib.qforge_config_free(config)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

// An outside engine's use of qforge (built against an installed prefix with pkg-config or CMake,
// or as a Meson subproject): quantize a weight to GPTQ 4-bit g128, pick the kernel config for it
// (kernel_config_for), pack it, run the GEMV on two row ranges and compare with the scalar
// reference. With --time, also prints the mean time of a 11008 x 4096 GEMV (the 1.2x check of a
// debug-type parent against a release build).
#include <qforge/config/name.hpp>
#include <qforge/engine.hpp>
#include <qforge/kernels/pack.hpp>
#include <qforge/reference/reference.hpp>
#include <qforge/synthetic.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

int main(int argc, char** argv) {
    const bool time = argc > 1 && std::strcmp(argv[1], "--time") == 0;
    const qforge::config stored{qforge::dtype::int_sym, 4, 128, false, qforge::layout::gptq_v1, qforge::compute::f32};
    const std::int64_t n = time ? 11008 : 256, k = 4096;
    qforge::synthetic_spec spec;
    spec.rows = n;
    spec.cols = k;
    const std::vector<float> w = qforge::synthetic_weights(spec);
    const qforge::ref::quantized q = qforge::ref::quantize(stored, std::span<const float>(w), n, k);
    const qforge::matrix m(qforge::pack_weights(qforge::kernel_config_for(stored, qforge::compute::f32), q));

    std::vector<float> x(k), y(n);
    for (std::int64_t i = 0; i < k; ++i) x[i] = std::sin(0.1f * static_cast<float>(i));
    m.gemv(qforge::activations{x.data()}, nullptr, {y.data()}, 0, n / 2);
    m.gemv(qforge::activations{x.data()}, nullptr, {y.data()}, n / 2, n);

    const std::vector<float> wd = qforge::ref::dequantize(q);
    const std::vector<double> ref = qforge::ref::gemv(q, x);
    int bad = 0;
    for (std::int64_t r = 0; r < n; ++r) {
        double magnitude = 0.0;
        for (std::int64_t j = 0; j < k; ++j) magnitude += std::fabs(static_cast<double>(wd[r * k + j]) * x[j]);
        if (std::fabs(y[r] - ref[r]) > (k + 3) * std::ldexp(1.0, -24) * magnitude) ++bad;
    }
    std::printf("%s [%lld, %lld]: %d outputs outside the bound\n", m.gemv_kernel().full_name().c_str(),
                static_cast<long long>(n), static_cast<long long>(k), bad);
    if (time) {
        const int reps = 200;
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < reps; ++i) m.gemv(qforge::activations{x.data()}, nullptr, {y.data()}, 0, n);
        const std::chrono::duration<double, std::micro> dt = std::chrono::steady_clock::now() - t0;
        std::printf("gemv %lld x %lld: %.1f us\n", static_cast<long long>(n), static_cast<long long>(k), dt.count() / reps);
    }
    return bad == 0 ? 0 : 1;
}

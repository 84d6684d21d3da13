// The compile-time route: the config is a type, the call goes straight to the kernel instantiated
// for it (no registry, no lookup); only the ISA is picked at run time (QFORGE_ISA to force one).
//
//   qforge::gemv<qforge::qlora_nf4>(weights, x, y);
//
// qlora_nf4 is QLoRA's BitsAndBytesConfig: NF4, blocksize 64, double quantization, bf16 compute
// (canonical name nf4_b64_dq_bnb_bf16). The weights here come from the scalar reference
// quantizer; a real program reads them from a checkpoint (see load_checkpoint.cpp).
#include <qforge/config/aliases.hpp>
#include <qforge/config/name.hpp>
#include <qforge/kernels/kernels.hpp>
#include <qforge/kernels/pack.hpp>
#include <qforge/synthetic.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
    constexpr std::int64_t n = 1024, k = 4096;  // out_features, in_features
    qforge::synthetic_spec spec;
    spec.rows = n;
    spec.cols = k;
    const std::vector<float> w = qforge::synthetic_weights(spec);

    using P = qforge::qlora_nf4;
    const qforge::ref::quantized q = qforge::ref::quantize(P::cfg, std::span<const float>(w), n, k);
    const qforge::packed_weights weights = qforge::pack_weights<P>(q);  // bnb bytes as stored

    std::vector<float> x(k), y(n);
    for (std::int64_t i = 0; i < k; ++i) x[static_cast<std::size_t>(i)] = std::sin(0.01f * static_cast<float>(i));
    qforge::gemv<P>(weights.view(), x.data(), y.data());  // y = W x

    const std::vector<double> reference = qforge::ref::gemv(q, x);  // exact dequantization, f64 sums
    double max_diff = 0.0, max_ref = 0.0;
    for (std::int64_t i = 0; i < n; ++i) {
        max_diff = std::fmax(max_diff, std::fabs(y[static_cast<std::size_t>(i)] - reference[static_cast<std::size_t>(i)]));
        max_ref = std::fmax(max_ref, std::fabs(reference[static_cast<std::size_t>(i)]));
    }
    std::printf("%s on %s: y[0] = %.6f, max |y - reference| = %.3g (max |y| %.3g; bf16 operands)\n",
                qforge::canonical_name(P::cfg).c_str(), std::string(qforge::to_string(qforge::active_isa())).c_str(),
                y[0], max_diff, max_ref);
    return 0;
}

// The run-time route: a quantization_config read at run time (here an HF JSON string) becomes a
// config value, the registry finds the kernel for it on the best ISA of this CPU, and a small
// thread pool splits the output rows.
//
//   const qforge::kernel& k = qforge::registry::global().find(cfg, qforge::op::gemv);
//   const qforge::packed_weights weights = qforge::pack_weights(k.cfg, quantized);
//   k.gemv(weights.view(), x, bias, y, n0, n1);
//
// A GPTQ checkpoint is repacked once into the layout of the kernel the registry returns; a config
// that does not validate gets an error that names the field.
#include <qforge/config/hf.hpp>
#include <qforge/config/name.hpp>
#include <qforge/kernels/pack.hpp>
#include <qforge/parallel.hpp>
#include <qforge/registry.hpp>
#include <qforge/synthetic.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
    const auto hf = nlohmann::json::parse(R"({"quant_method": "gptq", "bits": 4, "group_size": 128,
                                              "sym": true, "desc_act": false, "checkpoint_format": "gptq"})");
    const qforge::config checkpoint_cfg = qforge::to_config(qforge::parse_hf_quant_config(hf));

    // The registry takes the checkpoint's config as it is (here with int8 activations) and returns
    // the kernel that runs it; k.cfg is the layout that kernel computes on (GPTQ's packing
    // repacked into qforge's), so the weights are packed for k.cfg once.
    qforge::config cfg = checkpoint_cfg;
    cfg.act = qforge::compute::i8;
    const qforge::kernel& k = qforge::registry::global().find(cfg, qforge::op::gemv);

    // A config that does not validate gets an error naming the offending field.
    try {
        qforge::config bad = cfg;
        bad.group = 100;
        (void)qforge::registry::global().find(bad, qforge::op::gemv);
    } catch (const qforge::unsupported_config& e) {
        std::printf("%s\n", e.what());
    }

    constexpr std::int64_t n = 2048, k_in = 4096;
    qforge::synthetic_spec spec;
    spec.rows = n;
    spec.cols = k_in;
    const std::vector<float> w = qforge::synthetic_weights(spec);
    const qforge::ref::quantized q = qforge::ref::quantize(checkpoint_cfg, std::span<const float>(w), n, k_in);
    const qforge::packed_weights weights = qforge::pack_weights(k.cfg, q, "model.layers.0.mlp.up_proj");

    std::vector<float> x(k_in), y(n);
    for (std::int64_t i = 0; i < k_in; ++i) x[static_cast<std::size_t>(i)] = std::cos(0.02f * static_cast<float>(i));
    qforge::thread_pool pool(2);
    pool.parallel_for(0, n, 16, [&](std::int64_t n0, std::int64_t n1) {
        k.gemv(weights.view(), x.data(), nullptr, y.data(), n0, n1);
    });

    const std::vector<double> reference = qforge::ref::gemv(q, x);
    double max_diff = 0.0;
    for (std::int64_t i = 0; i < n; ++i)
        max_diff = std::fmax(max_diff, std::fabs(y[static_cast<std::size_t>(i)] - reference[static_cast<std::size_t>(i)]));
    std::printf("%s (checkpoint %s): y[0] = %.6f, max |y - reference| = %.3g (int8 activations)\n",
                k.full_name().c_str(), qforge::canonical_name(checkpoint_cfg).c_str(), y[0], max_diff);
    return 0;
}

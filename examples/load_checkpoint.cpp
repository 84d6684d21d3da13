// Loads a quantized checkpoint (any method qforge reads) and runs each of its linear layers on an
// input vector: through the kernel registry (registry::global().find(config)) when it has a
// kernel for the weight's layout, else through the scalar reference. Prints, per layer, the path
// taken and the difference to the reference (f32 kernels dequantize exactly and differ only in
// the order of the sums; bf16 kernels also round the operands to bf16).
//
//   load_checkpoint MODEL.safetensors [CONFIG.json]
//
// CONFIG.json is the checkpoint's quantization_config (object or config.json); it tells GPTQ v1
// from v2. The input is x[k] = sin(0.1 k) (and the layer's bias when the file has one).
#include <qforge/config/name.hpp>
#include <qforge/io/checkpoint.hpp>
#include <qforge/kernels/pack.hpp>
#include <qforge/registry.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <fstream>
#include <string>
#include <variant>
#include <vector>

namespace {

namespace ck = qforge::checkpoint;

// The kernel configs to try for a stored layout: its own compute path first, then f32
// (kernel_config_for maps GPTQ / AWQ to qforge's layout and refuses paths with no kernel).
std::vector<qforge::config> kernel_configs(const qforge::config& stored, std::int64_t cols) {
    std::vector<qforge::config> out;
    for (const qforge::compute act : {stored.act, qforge::compute::f32}) {
        try {
            const qforge::config k = qforge::kernel_config_for(stored, act, cols);
            if (out.empty() || out.back() != k) out.push_back(k);
        } catch (const qforge::unsupported_config&) {  // e.g. LLM.int8 has only the i8 path
        }
    }
    return out;
}

std::vector<float> bias_of(const qforge::safetensors::reader& r, const std::string& weight_name, std::int64_t rows) {
    const std::string name = weight_name.substr(0, weight_name.size() - std::string(".weight").size()) + ".bias";
    const qforge::safetensors::tensor_view* v = r.find(name);
    if (!v || v->shape.size() != 1 || v->shape[0] != rows) return {};
    std::vector<float> bias(static_cast<std::size_t>(rows));
    if (v->type == qforge::safetensors::dtype::F32) bias = v->to_vector<float>();
    if (v->type == qforge::safetensors::dtype::F16)
        std::ranges::transform(v->to_vector<qforge::f16>(), bias.begin(), [](qforge::f16 h) { return qforge::to_float(h); });
    if (v->type == qforge::safetensors::dtype::BF16)
        std::ranges::transform(v->to_vector<qforge::bf16>(), bias.begin(), [](qforge::bf16 h) { return qforge::to_float(h); });
    return bias;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2 || argc > 3) {
        std::fprintf(stderr, "usage: %s MODEL.safetensors [CONFIG.json]\n", argv[0]);
        return 2;
    }
    try {
        ck::import_options options;
        float outlier_threshold = 6.0f;  // LLM.int8: transformers' default llm_int8_threshold
        if (argc == 3) {
            std::ifstream in(argv[2]);
            if (!in) throw std::runtime_error(std::string("cannot open ") + argv[2]);
            const qforge::hf_quant_config hf = qforge::parse_hf_quant_config(nlohmann::json::parse(in));
            options.expected = qforge::to_config(hf);
            if (const auto* bnb = std::get_if<qforge::hf_bnb>(&hf.fields))
                outlier_threshold = static_cast<float>(bnb->llm_int8_threshold);
        }
        const qforge::safetensors::reader file(argv[1]);
        const ck::tensor_set tensors(file);
        const ck::detection found = ck::detect(tensors);
        for (const std::string& problem : found.orphans) std::fprintf(stderr, "warning: %s\n", problem.c_str());
        std::printf("%zu quantized linear layers, CPU kernels up to %s\n", found.weights.size(),
                    std::string(qforge::to_string(qforge::active_isa())).c_str());

        for (const ck::detected_weight& d : found.weights) {
            const ck::quantized_weight q = ck::import_weight(tensors, d, options);
            const std::int64_t rows = q.rows(), cols = q.cols();
            std::vector<float> x(static_cast<std::size_t>(cols));
            for (std::size_t k = 0; k < x.size(); ++k) x[k] = std::sin(0.1f * static_cast<float>(k));
            const std::vector<float> bias = bias_of(file, q.name, rows);

            const std::vector<double> reference = qforge::ref::gemv(q.data, x, bias);
            std::vector<float> y(static_cast<std::size_t>(rows));
            std::string path = "scalar reference (no kernel for this layout in this build)";
            for (const qforge::config& kcfg : kernel_configs(q.cfg, cols)) {
                try {
                    const qforge::kernel& k = qforge::registry::global().find(kcfg, qforge::op::gemv);
                    qforge::packed_weights packed = qforge::pack_weights(kcfg, q.data, q.name);  // repacked once
                    packed.outlier_threshold = outlier_threshold;
                    k.gemv(packed.view(), x.data(), bias.empty() ? nullptr : bias.data(), y.data(), 0, rows);
                    path = "kernel " + k.full_name();
                    break;
                } catch (const std::invalid_argument& e) {  // unsupported config, or a tensor the layout refuses
                    path = std::string("scalar reference (") + e.what() + ")";
                }
            }
            if (path.starts_with("scalar"))
                std::ranges::transform(reference, y.begin(), [](double v) { return static_cast<float>(v); });

            double norm = 0.0, max_diff = 0.0;
            for (std::size_t n = 0; n < y.size(); ++n) {
                norm += static_cast<double>(y[n]) * y[n];
                max_diff = std::max(max_diff, std::fabs(y[n] - reference[n]));
            }
            std::printf("%s [%lld, %lld] %s\n  %s: |y| = %.6g, max |y - reference| = %.3g\n", q.name.c_str(),
                        static_cast<long long>(rows), static_cast<long long>(cols),
                        qforge::canonical_name(q.cfg).c_str(), path.c_str(), std::sqrt(norm), max_diff);
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}

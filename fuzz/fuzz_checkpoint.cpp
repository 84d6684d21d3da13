// Checkpoint import, dequantize, export and convert on any safetensors bytes. Every step ends in
// a result or an io_error; an imported weight exports to tensors that import again to the same
// dequantized values.
#include "fuzz_input.hpp"

#include <qforge/io/checkpoint.hpp>

#include <cstring>

namespace ck = qforge::checkpoint;
namespace st = qforge::safetensors;

namespace {

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

void check_weight(const ck::tensor_set& s, const ck::detected_weight& d) {
    using qforge::fuzz::require;
    ck::quantized_weight q;
    try {
        q = ck::import_weight(s, d);
    } catch (const qforge::io_error&) {
        return;
    }
    std::vector<float> values;
    try {
        (void)ck::dequantize_weight(q, st::dtype::BF16);
        values = qforge::ref::dequantize(q.data);
    } catch (const qforge::io_error&) {
    }
    // export -> import gives the same weight
    st::writer w;
    ck::export_weight(w, q);
    const auto again = qforge::fuzz::input_file(nullptr, 0, "export.safetensors");
    w.write(again);
    const st::reader r(again);
    const ck::tensor_set s2(r);
    const ck::detection d2 = ck::detect(s2);
    require(d2.weights.size() == 1 && d2.orphans.empty(), "an exported weight is detected as one weight");
    const ck::quantized_weight q2 = ck::import_weight(s2, d2.weights[0]);
    require(q2.shape == q.shape && q2.cfg == q.cfg, "an exported weight imports to the same shape and layout");
    if (!values.empty()) require(same_bits(qforge::ref::dequantize(q2.data), values), "same dequantized values");
    if (qforge::is_gptq(q.cfg.storage) || q.cfg.storage == qforge::layout::awq_gemm) {
        try {
            const ck::quantized_weight v2 = ck::convert(q, qforge::layout::gptq_v2);
            if (!values.empty()) require(same_bits(qforge::ref::dequantize(v2.data), values), "convert is lossless");
        } catch (const qforge::io_error&) {
        }
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto path = qforge::fuzz::input_file(data, size, "in.safetensors");
    try {
        const st::reader r(path);
        const ck::tensor_set s(r);
        const ck::detection d = ck::detect(s);
        for (const ck::detected_weight& w : d.weights) check_weight(s, w);
    } catch (const qforge::io_error&) {
    }
    return 0;
}

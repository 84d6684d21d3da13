// Generic entry points of the scalar reference: dispatch on the storage layout.
#include <qforge/reference/layouts.hpp>

#include "checks.hpp"

#include <cmath>
#include <stdexcept>
#include <string>

namespace qforge::ref {

namespace {

template <class... F>
struct overloaded : F... {
    using F::operator()...;
};
template <class... F>
overloaded(F...) -> overloaded<F...>;  // clang 14 does not deduce aggregates' template arguments

template <class T>
std::vector<float> widen(std::span<const T> w) {
    std::vector<float> out(w.size());
    for (std::size_t i = 0; i < w.size(); ++i) out[i] = to_float(w[i]);
    return out;
}

template <class T>
std::vector<T> narrow(const std::vector<float>& v) {
    std::vector<T> out(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) out[i] = from_float<T>(v[i]);
    return out;
}

std::int64_t rows_of(const quantized& q) {
    return std::visit([](const auto& t) { return t.rows; }, q);
}
std::int64_t cols_of(const quantized& q) {
    return std::visit([](const auto& t) { return t.cols; }, q);
}

}  // namespace

void check_finite(std::span<const float> w, const std::string& tensor_name) {
    for (std::size_t i = 0; i < w.size(); ++i)
        if (!std::isfinite(w[i]))
            throw std::invalid_argument("tensor '" + tensor_name + "': " + (std::isnan(w[i]) ? "NaN" : "Inf") +
                                        " at flat index " + std::to_string(i));
}

quantized quantize(const config& cfg, std::span<const float> w, std::int64_t rows, std::int64_t cols,
                   const quantize_options& opt) {
    validate(cfg);
    if (rows <= 0 || cols <= 0 || static_cast<std::uint64_t>(rows) * static_cast<std::uint64_t>(cols) != w.size())
        detail::fail("tensor '" + opt.tensor_name + "': shape " + detail::shape_text(rows, cols) +
                     " does not match " + std::to_string(w.size()) + " elements");
    check_finite(w, opt.tensor_name);
    try {
        switch (cfg.storage) {
            case layout::bnb4: return quantize_bnb4(cfg, w, rows, cols);
            case layout::bnb8: return quantize_int8row(w, rows, cols);
            case layout::gptq_v1:
            case layout::gptq_v2: return quantize_gptq(cfg, w, rows, cols);
            case layout::awq_gemm: return quantize_awq(cfg, w, rows, cols);
            case layout::fp8_block: return quantize_fp8(cfg, w, rows, cols);
            case layout::mx: return quantize_mx(w, rows, cols, opt.mx_rule);
            case layout::qforge: break;
        }
    } catch (const std::invalid_argument& e) {
        throw std::invalid_argument("tensor '" + opt.tensor_name + "': " + e.what());
    }
    throw std::invalid_argument("the qforge kernel layout is produced by repacking, not by the reference quantizer");
}

quantized quantize(const config& cfg, std::span<const bf16> w, std::int64_t rows, std::int64_t cols,
                   const quantize_options& opt) {
    const auto wide = widen(w);
    return quantize(cfg, std::span<const float>(wide), rows, cols, opt);
}

quantized quantize(const config& cfg, std::span<const f16> w, std::int64_t rows, std::int64_t cols,
                   const quantize_options& opt) {
    const auto wide = widen(w);
    return quantize(cfg, std::span<const float>(wide), rows, cols, opt);
}

std::vector<float> dequantize(const quantized& q) {
    return std::visit(overloaded{
                          [](const bnb4_tensor& t) { return dequantize_bnb4(t); },
                          [](const int8row_tensor& t) { return dequantize_int8row(t); },
                          [](const gptq_tensor& t) { return dequantize_gptq(t); },
                          [](const awq_tensor& t) { return dequantize_awq(t); },
                          [](const fp8_tensor& t) { return dequantize_fp8(t); },
                          [](const mx_tensor& t) { return dequantize_mx(t); },
                      },
                      q);
}

std::vector<bf16> dequantize_bf16(const quantized& q) { return narrow<bf16>(dequantize(q)); }
std::vector<f16> dequantize_f16(const quantized& q) { return narrow<f16>(dequantize(q)); }

double bits_per_weight(const config& cfg, std::int64_t rows, std::int64_t cols) {
    validate(cfg);
    const double n = static_cast<double>(rows), k = static_cast<double>(cols);
    const double gs = cfg.group == per_channel ? k : static_cast<double>(cfg.group);
    switch (cfg.storage) {
        case layout::bnb4:
            // absmax f32 per block, or a uint8 code per block plus an f32 nested absmax per 256 blocks
            return 4.0 + (cfg.double_quant ? 8.0 / gs + 32.0 / (gs * nested_blocksize) : 32.0 / gs);
        case layout::bnb8: return 8.0 + 32.0 / k;  // SCB f32 per row
        case layout::gptq_v1:
        case layout::gptq_v2:
        case layout::qforge: return cfg.bits + (16.0 + cfg.bits) / gs;  // fp16 scale + packed zero
        case layout::awq_gemm: return cfg.bits + (16.0 + cfg.bits) / gs;
        case layout::fp8_block:
            return 8.0 + (cfg.group == per_tensor ? 32.0 / (n * k) : 32.0 / (gs * gs));  // f32 scale_inv
        case layout::mx: return 4.0 + 8.0 / gs;  // E8M0 per 32
    }
    return 0.0;
}

std::vector<double> gemm(const quantized& q, std::span<const float> x, std::int64_t m, std::span<const float> bias) {
    const std::int64_t n = rows_of(q), k = cols_of(q);
    if (static_cast<std::int64_t>(x.size()) != m * k)
        throw std::invalid_argument("gemm: X has " + std::to_string(x.size()) + " elements, expected M*K = " +
                                    std::to_string(m * k));
    if (!bias.empty() && static_cast<std::int64_t>(bias.size()) != n)
        throw std::invalid_argument("gemm: bias has " + std::to_string(bias.size()) + " elements, expected N = " +
                                    std::to_string(n));
    return gemm(dequantize(q), n, x, m, bias);
}

std::vector<double> gemm(std::span<const float> w, std::int64_t n, std::span<const float> x, std::int64_t m,
                         std::span<const float> bias) {
    const std::int64_t k = n > 0 ? static_cast<std::int64_t>(w.size()) / n : 0;
    std::vector<double> y(static_cast<std::size_t>(m * n));
    for (std::int64_t i = 0; i < m; ++i)
        for (std::int64_t r = 0; r < n; ++r) {
            double acc = bias.empty() ? 0.0 : bias[static_cast<std::size_t>(r)];
            for (std::int64_t c = 0; c < k; ++c)
                acc += static_cast<double>(w[static_cast<std::size_t>(r * k + c)]) * x[static_cast<std::size_t>(i * k + c)];
            y[static_cast<std::size_t>(i * n + r)] = acc;
        }
    return y;
}

std::vector<double> gemv(const quantized& q, std::span<const float> x, std::span<const float> bias) {
    return gemm(q, x, 1, bias);
}

}  // namespace qforge::ref

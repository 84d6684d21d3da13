// Scalar reference of the integer layouts: GPTQ v1/v2 round-to-nearest (formats.md §3) and
// AWQ gemm (§4). Scales, zeros and codes are computed in f32 from the f32 scale; the stored scale
// is fp16(scale); dequantization multiplies the integer difference (q - z) by the stored scale.
#include <qforge/format/packing.hpp>
#include <qforge/reference/layouts.hpp>

#include "checks.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace qforge::ref {

namespace {

using namespace detail;

using std::size_t;

// The stored scale; a scale beyond fp16's range would dequantize to Inf/NaN, so it is refused.
f16 store_scale(float scale, const char* method, size_t row, size_t group) {
    const f16 stored = to_f16(scale);
    if (!std::isfinite(to_float(stored)))
        fail(std::string(method) + ": scale " + std::to_string(scale) + " of row " + std::to_string(row) +
             ", group " + std::to_string(group) + " overflows fp16");
    return stored;
}

// RNE(x / scale) + zero, clamped to [0, maxq], all in f32 as the producers compute it in torch.
std::uint8_t quantize_code(float x, float scale, float zero, float maxq) {
    return static_cast<std::uint8_t>(std::clamp(std::nearbyint(x / scale) + zero, 0.0f, maxq));
}

// ---- GPTQ --------------------------------------------------------------------------------------

struct gptq_params {
    float scale;
    int zero;
};

// GPTQ's find_params for one row of one group.
gptq_params find_params(std::span<const float> x, int bits, bool sym) {
    const auto [lo, hi] = std::minmax_element(x.begin(), x.end());
    float xmin = std::min(*lo, 0.0f), xmax = std::max(*hi, 0.0f);
    if (sym) {
        xmax = std::max(std::fabs(xmin), xmax);
        if (xmin < 0.0f) xmin = -xmax;
    }
    if (xmin == 0.0f && xmax == 0.0f) xmin = -1.0f, xmax = 1.0f;
    const float scale = (xmax - xmin) / static_cast<float>(low_mask(bits));
    const int zero = sym ? 1 << (bits - 1) : static_cast<int>(std::nearbyint(-xmin / scale));
    return {scale, zero};
}

void check_gptq_shape(int bits, std::int64_t rows, std::int64_t cols, std::int64_t group) {
    if (!gptq_bits_supported(bits)) fail("GPTQ: bits " + std::to_string(bits) + " is not 2, 3, 4 or 8");
    if (rows % 32 != 0 || cols % 32 != 0)
        fail("GPTQ: shape " + shape_text(rows, cols) + " needs N and K to be multiples of 32");
    if (group <= 0) fail("GPTQ: group size " + std::to_string(group) + " is not positive");
}

// ---- AWQ ---------------------------------------------------------------------------------------

void check_awq_shape(std::int64_t rows, std::int64_t cols, std::int64_t group) {
    if (group <= 0) fail("AWQ: group size " + std::to_string(group) + " is not positive");
    if (rows % awq_pack_codes != 0 || cols % group != 0)
        fail("AWQ: shape " + shape_text(rows, cols) + " needs N to be a multiple of 8 and K of the group size " +
             std::to_string(group));
}

}  // namespace

gptq_tensor quantize_gptq(const config& cfg, std::span<const float> w, std::int64_t rows, std::int64_t cols) {
    const std::int64_t gs = cfg.group == per_channel ? cols : cfg.group;
    check_gptq_shape(cfg.bits, rows, cols, gs);
    if (cols % gs != 0)
        fail("GPTQ: shape " + shape_text(rows, cols) + " has K not divisible by the group size " + std::to_string(gs));
    if (cfg.type != dtype::int_sym && cfg.type != dtype::int_asym)
        fail("GPTQ: type " + std::string(to_string(cfg.type)) + " is not an integer type");
    expect_size("GPTQ", "weight", w.size(), static_cast<size_t>(rows * cols));

    gptq_tensor q;
    q.rows = rows;
    q.cols = cols;
    q.bits = cfg.bits;
    q.group = static_cast<std::int32_t>(gs);
    q.v2 = cfg.storage == layout::gptq_v2;
    q.sym = cfg.type == dtype::int_sym;

    const int bits = cfg.bits;
    const size_t n_rows = static_cast<size_t>(rows), k_cols = static_cast<size_t>(cols), g_size = static_cast<size_t>(gs);
    const size_t groups = k_cols / g_size, b = static_cast<size_t>(bits);
    const float maxq = static_cast<float>(low_mask(bits));

    std::vector<std::uint8_t> codes(n_rows * k_cols);        // [N, K]
    std::vector<std::uint8_t> zero_fields(groups * n_rows);  // [G, N]
    q.scales.resize(groups * n_rows);
    for (size_t n = 0; n < n_rows; ++n)
        for (size_t g = 0; g < groups; ++g) {
            const auto x = w.subspan(n * k_cols + g * g_size, g_size);
            const gptq_params p = find_params(x, bits, q.sym);
            q.scales[g * n_rows + n] = store_scale(p.scale, "GPTQ", n, g);
            zero_fields[g * n_rows + n] = static_cast<std::uint8_t>(gptq_zero_field(bits, p.zero, q.v2));
            for (size_t i = 0; i < g_size; ++i)
                codes[n * k_cols + g * g_size + i] = quantize_code(x[i], p.scale, static_cast<float>(p.zero), maxq);
        }

    q.qweight.assign(k_cols * b / 32 * n_rows, 0);
    for (size_t n = 0; n < n_rows; ++n)
        pack_gptq_line(bits, std::span(codes).subspan(n * k_cols, k_cols), q.qweight, n, n_rows);
    const size_t zero_words = n_rows * b / 32;
    q.qzeros.assign(groups * zero_words, 0);
    for (size_t g = 0; g < groups; ++g)
        pack_gptq_line(bits, std::span(zero_fields).subspan(g * n_rows, n_rows), q.qzeros, g * zero_words, 1);
    q.g_idx.resize(k_cols);
    for (size_t k = 0; k < k_cols; ++k) q.g_idx[k] = static_cast<std::int32_t>(k / g_size);
    return q;
}

std::vector<float> dequantize_gptq(const gptq_tensor& q) {
    check_gptq_shape(q.bits, q.rows, q.cols, q.group);
    const int bits = q.bits;
    const size_t n_rows = static_cast<size_t>(q.rows), k_cols = static_cast<size_t>(q.cols), b = static_cast<size_t>(bits);
    const size_t groups = (k_cols + static_cast<size_t>(q.group) - 1) / static_cast<size_t>(q.group);
    const size_t zero_words = n_rows * b / 32;
    expect_size("GPTQ", "qweight", q.qweight.size(), k_cols * b / 32 * n_rows);
    expect_size("GPTQ", "qzeros", q.qzeros.size(), groups * zero_words);
    expect_size("GPTQ", "scales", q.scales.size(), groups * n_rows);
    expect_size("GPTQ", "g_idx", q.g_idx.size(), k_cols);
    for (size_t k = 0; k < k_cols; ++k)
        if (q.g_idx[k] < 0 || static_cast<size_t>(q.g_idx[k]) >= groups)
            fail("GPTQ g_idx[" + std::to_string(k) + "] = " + std::to_string(q.g_idx[k]) + " is outside [0, " +
                 std::to_string(groups) + ")");

    std::vector<int> zeros(groups * n_rows);  // [G, N], decoded z
    std::vector<std::uint8_t> fields(n_rows);
    for (size_t g = 0; g < groups; ++g) {
        unpack_gptq_line(bits, q.qzeros, g * zero_words, 1, fields);
        for (size_t n = 0; n < n_rows; ++n) zeros[g * n_rows + n] = gptq_zero_from_field(bits, fields[n], q.v2);
    }
    std::vector<float> out(n_rows * k_cols);
    std::vector<std::uint8_t> column(k_cols);
    for (size_t n = 0; n < n_rows; ++n) {
        unpack_gptq_line(bits, q.qweight, n, n_rows, column);
        for (size_t k = 0; k < k_cols; ++k) {
            const size_t gn = static_cast<size_t>(q.g_idx[k]) * n_rows + n;
            out[n * k_cols + k] = to_float(q.scales[gn]) * static_cast<float>(int{column[k]} - zeros[gn]);
        }
    }
    return out;
}

awq_tensor quantize_awq(const config& cfg, std::span<const float> w, std::int64_t rows, std::int64_t cols) {
    if (cfg.bits != 4 || cfg.type != dtype::int_asym)
        fail("AWQ: gemm stores 4-bit asymmetric codes, not " + std::to_string(cfg.bits) + "-bit " +
             std::string(to_string(cfg.type)));
    const std::int64_t gs = cfg.group == per_channel ? cols : cfg.group;
    check_awq_shape(rows, cols, gs);
    expect_size("AWQ", "weight", w.size(), static_cast<size_t>(rows * cols));

    awq_tensor q;
    q.rows = rows;
    q.cols = cols;
    q.group = static_cast<std::int32_t>(gs);
    const size_t n_rows = static_cast<size_t>(rows), k_cols = static_cast<size_t>(cols), g_size = static_cast<size_t>(gs);
    const size_t groups = k_cols / g_size, words_per_row = n_rows / awq_pack_codes;
    constexpr float maxq = 15.0f;

    std::vector<std::uint8_t> codes(k_cols * n_rows);   // [K, N], the packed orientation
    std::vector<std::uint8_t> zeros(groups * n_rows);  // [G, N]
    q.scales.resize(groups * n_rows);
    for (size_t n = 0; n < n_rows; ++n)
        for (size_t g = 0; g < groups; ++g) {
            const auto x = w.subspan(n * k_cols + g * g_size, g_size);
            const auto [lo, hi] = std::minmax_element(x.begin(), x.end());
            const float scale = std::max(*hi - *lo, 1e-5f) / maxq;
            const float zero = std::clamp(-std::nearbyint(*lo / scale), 0.0f, maxq);
            q.scales[g * n_rows + n] = store_scale(scale, "AWQ", n, g);
            zeros[g * n_rows + n] = static_cast<std::uint8_t>(zero);
            for (size_t i = 0; i < g_size; ++i)
                codes[(g * g_size + i) * n_rows + n] = quantize_code(x[i], scale, zero, maxq);
        }

    const auto pack_rows = [&](const std::vector<std::uint8_t>& src, size_t count) {
        std::vector<std::int32_t> words(count * words_per_row);
        for (size_t j = 0; j < words.size(); ++j)
            words[j] = static_cast<std::int32_t>(
                pack_awq_word(std::span(src).subspan(j * awq_pack_codes).first<awq_pack_codes>()));
        return words;
    };
    q.qweight = pack_rows(codes, k_cols);
    q.qzeros = pack_rows(zeros, groups);
    return q;
}

std::vector<float> dequantize_awq(const awq_tensor& q) {
    check_awq_shape(q.rows, q.cols, q.group);
    const size_t n_rows = static_cast<size_t>(q.rows), k_cols = static_cast<size_t>(q.cols),
                 g_size = static_cast<size_t>(q.group);
    const size_t groups = k_cols / g_size, words_per_row = n_rows / awq_pack_codes;
    expect_size("AWQ", "qweight", q.qweight.size(), k_cols * words_per_row);
    expect_size("AWQ", "qzeros", q.qzeros.size(), groups * words_per_row);
    expect_size("AWQ", "scales", q.scales.size(), groups * n_rows);

    // Column n of a packed row is nibble awq_nibble_of[n % 8] of word n / 8.
    const auto code_at = [&](const std::vector<std::int32_t>& words, size_t row, size_t n) {
        return static_cast<int>(awq_code(static_cast<std::uint32_t>(words[row * words_per_row + n / awq_pack_codes]),
                                         static_cast<int>(n % awq_pack_codes)));
    };
    std::vector<float> out(n_rows * k_cols);
    for (size_t n = 0; n < n_rows; ++n)
        for (size_t k = 0; k < k_cols; ++k) {
            const size_t g = k / g_size;
            out[n * k_cols + k] =
                static_cast<float>(code_at(q.qweight, k, n) - code_at(q.qzeros, g, n)) * to_float(q.scales[g * n_rows + n]);
        }
    return out;
}

}  // namespace qforge::ref

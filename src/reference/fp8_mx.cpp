// Scalar reference of the floating-point block layouts: FineGrainedFP8 (formats.md §5) and
// OCP MXFP4 (§6).
#include <qforge/format/tables.hpp>
#include <qforge/reference/layouts.hpp>

#include "checks.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace qforge::ref {

namespace {

using namespace detail;

using std::size_t;


// ---- FP8 ---------------------------------------------------------------------------------------

struct fp8_codec {
    float max;
    std::uint8_t (*encode)(float);
    float (*decode)(std::uint8_t);
};

fp8_codec codec_of(dtype t) {
    if (t == dtype::fp8_e4m3) return {e4m3_max, to_e4m3, e4m3_to_float};
    if (t == dtype::fp8_e5m2) return {e5m2_max, to_e5m2, e5m2_to_float};
    fail("FP8: type " + std::string(to_string(t)) + " is not fp8_e4m3 or fp8_e5m2");
}

void check_fp8_shape(std::int64_t rows, std::int64_t cols, std::int64_t tile_rows, std::int64_t tile_cols) {
    if (rows <= 0 || cols <= 0 || tile_rows <= 0 || tile_cols <= 0)
        fail("FP8: shape " + shape_text(rows, cols) + " with tile " + shape_text(tile_rows, tile_cols) +
             " is not positive");
}

// ---- MXFP4 -------------------------------------------------------------------------------------

constexpr size_t mx_block = 32;
constexpr int e8m0_bias = 127;
constexpr int mx_min_exponent = -127, mx_max_exponent = 127;

// |x| of E2M1 codes 1..7 and the midpoints between neighbours.
constexpr std::array<float, 7> e2m1_midpoints = midpoints(std::array<float, 8>{0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f});

// RNE to E2M1, saturating at 6. A tie at a midpoint goes to the code with an even mantissa bit,
// which in this table is the even code (0.25 -> 0, 0.75 -> 1.0, 5 -> 4). The sign bit is kept for
// magnitude zero (-0.0 and small negatives give code 8).
std::uint8_t to_e2m1(float x) {
    const float a = std::fabs(x);
    std::uint8_t code = 0;
    while (code < e2m1_midpoints.size() && e2m1_midpoints[code] < a) ++code;
    if (code < e2m1_midpoints.size() && a == e2m1_midpoints[code] && code % 2 == 1) ++code;
    return static_cast<std::uint8_t>(code | (std::signbit(x) ? 8u : 0u));
}

// The shared exponent of a non-zero block (before the clamp).
int mx_exponent(float amax, mx_scale_rule rule) {
    if (rule == mx_scale_rule::ocp) return std::ilogb(amax) - 2;  // floor(log2(amax)) - emax(E2M1)
    // round_up: amax / 6 (f32), rounded up to a power of two.
    const float r = amax / 6.0f;
    if (r <= std::ldexp(1.0f, mx_min_exponent)) return mx_min_exponent;  // also r == 0 (ilogb undefined)
    const int e = std::ilogb(r);
    return std::ldexp(1.0f, e) == r ? e : e + 1;
}

}  // namespace

fp8_tensor quantize_fp8(const config& cfg, std::span<const float> w, std::int64_t rows, std::int64_t cols) {
    const fp8_codec codec = codec_of(cfg.type);
    if (cfg.group != per_tensor && cfg.group <= 0)
        fail("FP8: tile size " + std::to_string(cfg.group) + " is not positive or per_tensor");
    fp8_tensor q;
    q.type = cfg.type;
    q.rows = rows;
    q.cols = cols;
    q.tile_rows = cfg.group == per_tensor ? rows : cfg.group;
    q.tile_cols = cfg.group == per_tensor ? cols : cfg.group;
    check_fp8_shape(rows, cols, q.tile_rows, q.tile_cols);
    const size_t n_rows = static_cast<size_t>(rows), k_cols = static_cast<size_t>(cols);
    const size_t tr = static_cast<size_t>(q.tile_rows), tc = static_cast<size_t>(q.tile_cols);
    const size_t tiles_n = ceil_div(n_rows, tr), tiles_k = ceil_div(k_cols, tc);
    expect_size("FP8", "weight", w.size(), n_rows * k_cols);

    q.codes.resize(n_rows * k_cols);
    q.scale_inv.resize(tiles_n * tiles_k);
    for (size_t ti = 0; ti < tiles_n; ++ti)
        for (size_t tj = 0; tj < tiles_k; ++tj) {
            // Edge tiles are partial.
            const size_t n0 = ti * tr, n1 = std::min(n0 + tr, n_rows);
            const size_t k0 = tj * tc, k1 = std::min(k0 + tc, k_cols);
            float amax = 0.0f;
            for (size_t n = n0; n < n1; ++n)
                for (size_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(w[n * k_cols + k]));
            // qforge rule: an all-zero tile stores scale_inv 1 and plain (signed) zero codes. A
            // subnormal amax would make max / amax overflow to Inf (and 0 * Inf = NaN): the scale
            // is capped at the largest float, which only such tiles reach.
            const float scale = amax == 0.0f ? 1.0f : std::min(codec.max / amax, std::numeric_limits<float>::max());
            q.scale_inv[ti * tiles_k + tj] = 1.0f / scale;
            for (size_t n = n0; n < n1; ++n)
                for (size_t k = k0; k < k1; ++k)
                    q.codes[n * k_cols + k] = codec.encode(std::clamp(w[n * k_cols + k] * scale, -codec.max, codec.max));
        }
    return q;
}

std::vector<float> dequantize_fp8(const fp8_tensor& q) {
    const fp8_codec codec = codec_of(q.type);
    check_fp8_shape(q.rows, q.cols, q.tile_rows, q.tile_cols);
    const size_t n_rows = static_cast<size_t>(q.rows), k_cols = static_cast<size_t>(q.cols);
    const size_t tr = static_cast<size_t>(q.tile_rows), tc = static_cast<size_t>(q.tile_cols);
    const size_t tiles_k = ceil_div(k_cols, tc);
    expect_size("FP8", "weight", q.codes.size(), n_rows * k_cols);
    expect_size("FP8", "weight_scale_inv", q.scale_inv.size(), ceil_div(n_rows, tr) * tiles_k);
    std::vector<float> out(n_rows * k_cols);
    for (size_t n = 0; n < n_rows; ++n)
        for (size_t k = 0; k < k_cols; ++k)
            out[n * k_cols + k] = codec.decode(q.codes[n * k_cols + k]) * q.scale_inv[(n / tr) * tiles_k + k / tc];
    return out;
}

mx_tensor quantize_mx(std::span<const float> w, std::int64_t rows, std::int64_t cols, mx_scale_rule rule) {
    if (rows <= 0 || cols <= 0 || cols % static_cast<std::int64_t>(mx_block) != 0)
        fail("MXFP4: shape " + shape_text(rows, cols) + " needs K to be a positive multiple of 32");
    const size_t n_rows = static_cast<size_t>(rows), k_cols = static_cast<size_t>(cols);
    const size_t blocks_per_row = k_cols / mx_block, block_bytes = mx_block / 2;
    expect_size("MXFP4", "weight", w.size(), n_rows * k_cols);

    mx_tensor q;
    q.rows = rows;
    q.cols = cols;
    q.blocks.assign(n_rows * blocks_per_row * block_bytes, 0);
    q.scales.assign(n_rows * blocks_per_row, 0);
    for (size_t b = 0; b < n_rows * blocks_per_row; ++b) {
        // Blocks run along K and never cross a row, so block b is flat elements [32b, 32b + 32).
        const auto x = w.subspan(b * mx_block, mx_block);
        float amax = 0.0f;
        for (const float v : x) amax = std::max(amax, std::fabs(v));
        if (amax == 0.0f) continue;  // scale byte 0 and all codes 0, even for -0.0
        const int exponent = std::clamp(mx_exponent(amax, rule), mx_min_exponent, mx_max_exponent);
        q.scales[b] = static_cast<std::uint8_t>(exponent + e8m0_bias);
        for (size_t i = 0; i < mx_block; ++i) {
            // Division by a power of two: exact unless the quotient is far below E2M1's range.
            const std::uint8_t code = to_e2m1(std::ldexp(x[i], -exponent));
            q.blocks[b * block_bytes + i / 2] |= static_cast<std::uint8_t>(i % 2 == 0 ? code : code << 4);
        }
    }
    return q;
}

std::vector<float> dequantize_mx(const mx_tensor& q) {
    if (q.rows <= 0 || q.cols <= 0 || q.cols % static_cast<std::int64_t>(mx_block) != 0)
        fail("MXFP4: shape " + shape_text(q.rows, q.cols) + " needs K to be a positive multiple of 32");
    const size_t n_rows = static_cast<size_t>(q.rows), k_cols = static_cast<size_t>(q.cols);
    const size_t blocks = n_rows * (k_cols / mx_block);
    expect_size("MXFP4", "blocks", q.blocks.size(), blocks * (mx_block / 2));
    expect_size("MXFP4", "scales", q.scales.size(), blocks);
    std::vector<float> out(n_rows * k_cols);
    for (size_t i = 0; i < out.size(); ++i) {
        const std::uint8_t byte = q.blocks[i / 2];
        const std::uint8_t code = i % 2 == 0 ? byte & 0xF : byte >> 4;
        out[i] = e2m1_table[code] * e8m0_to_float(q.scales[i / mx_block]);
    }
    return out;
}

}  // namespace qforge::ref

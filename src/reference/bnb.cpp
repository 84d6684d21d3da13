// bitsandbytes formats of the scalar reference (formats.md §1, §2): NF4 / FP4 with optional double
// quantization, blockwise 8-bit with the dynamic map, LLM.int8() weights and the LLM.int8() matmul.
//
// f32 operation order (the SIMD kernels reproduce these bit for bit; every product and sum is
// rounded to f32 on its own, never fused into an FMA; this TU is built without FMA targeting):
//   blockwise quantize (4-bit and 8-bit): inv = 1.0f / absmax; y = x * inv; the code comes from y.
//   blockwise dequantize:                 map[code] * absmax[block].
//   double-quant absmax:                  (nested_map[q] * nested_absmax[j / 256]) + offset.
//   LLM.int8 codes (weights, activations): s = 127.0f / absmax; code = RNE(x * s).
//   LLM.int8 dequantize:                  (f32(code) * SCB) * f32(1/127).
//   int8_matmul, output [m, n]:
//     int_part = f32(C) * ((SCA[m] * SCB[n]) / 16129.0f)            (f32(C): RNE of the int32)
//     outliers = 0.0f, then for each outlier column k ascending: outliers += X[m,k] * Wdq[n,k]
//     out      = (int_part + outliers) + bias[n]                    (bias 0.0f when absent)
//   outlier columns: k with |X[m,k]| >= t for some row m; t = 0 disables; t < 0, NaN, Inf refused.
//   double-quant offset: the f32 nearest to the exact mean of absmax (exact integer sum).
//
// One case formats.md leaves open: when 1/absmax (or 127/absmax) overflows f32, which needs an
// absmax below about 2.9e-39 (3.7e-37 for LLM.int8), the reciprocal multiply gives inf or 0*inf =
// NaN. There the quotient is used instead: y = x / absmax (4-bit, 8-bit), RNE((x / absmax) * 127)
// (LLM.int8). Producers write garbage for such blocks; this keeps the round-trip bound.
#include <qforge/format/tables.hpp>
#include <qforge/reference/layouts.hpp>

#include "checks.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace qforge::ref {

namespace {

using namespace detail;

constexpr auto nf4_thresholds = midpoints(nf4_table);
constexpr auto dynamic_thresholds = midpoints(dynamic_map);
constexpr float one_over_127 = 1.0f / 127.0f;  // f32(1/127), bnb's dequantization constant

std::size_t checked_size(const char* where, std::size_t size, std::int64_t rows, std::int64_t cols) {
    if (rows <= 0 || cols <= 0 || static_cast<std::uint64_t>(rows) * static_cast<std::uint64_t>(cols) != size)
        fail(where, "shape " + shape_text(rows, cols) + " does not match " +
                        std::to_string(size) + " elements");
    return size;
}

template <std::size_t N>
std::size_t count_below(const std::array<float, N>& thresholds, float y) {
    return static_cast<std::size_t>(std::ranges::count_if(thresholds, [y](float t) { return t < y; }));
}

float max_abs(std::span<const float> x) {
    float m = 0.0f;
    for (float v : x) m = std::max(m, std::fabs(v));
    return m;
}

// x / absmax as the CUDA kernels compute it: a reciprocal multiply (see the file comment for the
// overflow case).
float scaled(float x, float absmax, float inv) { return std::isinf(inv) ? x / absmax : x * inv; }

std::uint8_t nf4_code(float y) { return static_cast<std::uint8_t>(count_below(nf4_thresholds, y)); }

std::uint8_t fp4_code(float y) {
    const std::uint8_t sign = y < 0.0f ? 0b1000 : 0;  // not signbit: -0.0 gets sign 0
    return sign | fp4_rank_code[count_below(fp4_thresholds, std::fabs(y))];
}

// An exact tie at a threshold goes to the even index, as the CUDA kernel does. The thresholds are
// sorted, so the count below y is a binary search (255 of them: double quantization of a large
// tensor spent most of its time counting).
static_assert(std::ranges::is_sorted(dynamic_thresholds));
std::uint8_t dynamic_code(float y) {
    std::size_t code = static_cast<std::size_t>(std::ranges::lower_bound(dynamic_thresholds, y) - dynamic_thresholds.begin());
    if (code < dynamic_thresholds.size() && y == dynamic_thresholds[code] && code % 2 == 1) ++code;
    return static_cast<std::uint8_t>(code);
}

// Cuts x into consecutive blocks (the last may be partial) and returns each block's absmax;
// codes[i] = code_of(x[i] / absmax), or zero_code for every element of an all-zero block.
template <class CodeOf>
std::vector<float> quantize_blocks(std::span<const float> x, std::size_t blocksize, std::uint8_t zero_code,
                                   CodeOf code_of, std::span<std::uint8_t> codes) {
    std::vector<float> absmax(ceil_div(x.size(), blocksize));
    for (std::size_t b = 0; b < absmax.size(); ++b) {
        const std::size_t begin = b * blocksize, end = std::min(x.size(), begin + blocksize);
        const float a = max_abs(x.subspan(begin, end - begin));
        absmax[b] = a;
        if (a == 0.0f) {
            std::fill(codes.begin() + static_cast<std::ptrdiff_t>(begin),
                      codes.begin() + static_cast<std::ptrdiff_t>(end), zero_code);
            continue;
        }
        const float inv = 1.0f / a;
        for (std::size_t i = begin; i < end; ++i) codes[i] = code_of(scaled(x[i], a, inv));
    }
    return absmax;
}

std::vector<float> dequantize_blocks(std::span<const std::uint8_t> codes, std::size_t blocksize,
                                     std::span<const float> absmax, std::span<const float> map) {
    std::vector<float> out(codes.size());
    for (std::size_t i = 0; i < codes.size(); ++i) out[i] = map[codes[i]] * absmax[i / blocksize];
    return out;
}

// Two codes per byte, element 2i in the high nibble; an odd tail is padded with zero_code.
std::vector<std::uint8_t> pack_high_first(std::span<const std::uint8_t> codes, std::uint8_t zero_code) {
    std::vector<std::uint8_t> packed((codes.size() + 1) / 2);
    for (std::size_t j = 0; j < packed.size(); ++j) {
        const std::uint8_t low = 2 * j + 1 < codes.size() ? codes[2 * j + 1] : zero_code;
        packed[j] = static_cast<std::uint8_t>(codes[2 * j] << 4 | low);
    }
    return packed;
}

std::vector<std::uint8_t> unpack_high_first(std::span<const std::uint8_t> packed, std::size_t n) {
    std::vector<std::uint8_t> codes(n);
    for (std::size_t i = 0; i < n; ++i) codes[i] = i % 2 == 0 ? packed[i / 2] >> 4 : packed[i / 2] & 0x0F;
    return codes;
}

// LLM.int8 row quantization, shared by the weights (CB, SCB) and the activations (XA, SCA):
// code = RNE(x * (127 / absmax)); a zero row gets codes 0.
void quantize_int8_row(std::span<const float> x, float absmax, std::span<std::int8_t> codes) {
    if (absmax == 0.0f) {
        std::ranges::fill(codes, std::int8_t{0});
        return;
    }
    const float s = 127.0f / absmax;
    for (std::size_t i = 0; i < x.size(); ++i) {
        const float y = std::isinf(s) ? (x[i] / absmax) * 127.0f : x[i] * s;
        codes[i] = static_cast<std::int8_t>(std::nearbyint(y));  // default rounding mode: ties to even
    }
}

void check_int8row(const char* where, const int8row_tensor& w) {
    checked_size(where, w.codes.size(), w.rows, w.cols);
    expect_size(where, "SCB", w.scb.size(), static_cast<std::size_t>(w.rows));
}

}  // namespace

// The f32 nearest (ties to even) to the exact mean of non-negative finite f32 values. The sum is
// kept exactly as an integer count of 2^-149 (the smallest subnormal) in 32-bit limbs: one value
// is below 2^277 units, so 10 limbs hold the sum of up to 2^32 values.
float exact_mean(std::span<const float> v) {
    constexpr std::size_t limbs = 10;
    constexpr std::uint64_t limb_mask = 0xFFFFFFFFu;
    if (v.empty() || v.size() > limb_mask)
        fail("double quantization", "cannot average " + std::to_string(v.size()) + " absmax values");
    // First the significands summed per exponent field (below 2^24 * 2^32 each: no overflow), in
    // four interleaved tables: neighbours share a field, and one table would make each add wait
    // for the previous one's store.
    std::array<std::array<std::uint64_t, 256>, 4> tables{};
    for (std::size_t i = 0; i < v.size(); ++i) {
        const std::uint32_t bits = std::bit_cast<std::uint32_t>(v[i]);
        const std::uint32_t field = bits >> 23 & 0xFFu, fraction = bits & 0x7FFFFFu;
        tables[i % 4][field] += field == 0 ? fraction : fraction | 0x800000u;
    }
    std::array<std::uint64_t, 256> by_field{};
    for (const auto& t : tables)
        for (std::size_t f = 0; f < by_field.size(); ++f) by_field[f] += t[f];
    std::array<std::uint64_t, limbs> sum{};
    const auto add = [&](std::size_t i, std::uint64_t carry) {  // carry < 2^63, at limb i
        for (; carry != 0; ++i) {
            const std::uint64_t s = sum[i] + (carry & limb_mask);
            sum[i] = s & limb_mask;
            carry = (carry >> 32) + (s >> 32);
        }
    };
    for (std::uint32_t field = 0; field < by_field.size(); ++field) {
        // the values of this field: by_field * 2^(shift - 149), added in two halves of 32 bits
        const std::uint32_t shift = field == 0 ? 0 : field - 1;
        add(shift / 32, (by_field[field] & limb_mask) << (shift % 32));
        add(shift / 32 + 1, (by_field[field] >> 32) << (shift % 32));
    }
    // Long division by the count: quotient in place, remainder r.
    const std::uint64_t n = v.size();
    std::uint64_t r = 0;
    for (std::size_t i = limbs; i-- > 0;) {
        const std::uint64_t cur = r << 32 | sum[i];
        sum[i] = cur / n;
        r = cur % n;
    }
    auto bit = [&](std::size_t k) { return (sum[k / 32] >> (k % 32)) & 1u; };
    std::size_t top = 0;  // highest set bit of the quotient (0 when it is 0 or 1)
    for (std::size_t k = limbs * 32; k-- > 0;)
        if (bit(k)) {
            top = k;
            break;
        }
    // 24 significant bits, never finer than one unit (the subnormal quantum).
    const std::size_t drop = top > 23 ? top - 23 : 0;
    std::uint64_t kept = 0;
    for (std::size_t k = top + 1; k-- > drop;) kept = kept << 1 | bit(k);
    bool round_up;
    if (drop == 0) {
        round_up = 2 * r > n || (2 * r == n && kept % 2 == 1);
    } else {
        bool sticky = r != 0;
        for (std::size_t k = 0; k + 1 < drop && !sticky; ++k) sticky = bit(k) != 0;
        round_up = bit(drop - 1) && (sticky || kept % 2 == 1);
    }
    kept += round_up ? 1 : 0;
    return std::ldexp(static_cast<float>(kept), static_cast<int>(drop) - 149);
}

// ---- §2 blockwise 8-bit --------------------------------------------------------------------

blockwise8 quantize_blockwise8(std::span<const float> x, std::int32_t blocksize) {
    if (blocksize <= 0) fail("quantize_blockwise8", "blocksize " + std::to_string(blocksize) + " is not positive");
    blockwise8 q;
    q.blocksize = blocksize;
    q.codes.resize(x.size());
    q.absmax = quantize_blocks(x, static_cast<std::size_t>(blocksize), dynamic_map_zero_code, dynamic_code, q.codes);
    return q;
}

std::vector<float> dequantize_blockwise8(const blockwise8& q, std::span<const float, 256> map) {
    const char* where = "dequantize_blockwise8";
    if (q.blocksize <= 0) fail(where, "blocksize " + std::to_string(q.blocksize) + " is not positive");
    const auto bs = static_cast<std::size_t>(q.blocksize);
    expect_size(where, "absmax", q.absmax.size(), ceil_div(q.codes.size(), bs));
    return dequantize_blocks(q.codes, bs, q.absmax, map);
}

// ---- §1 bitsandbytes 4-bit -----------------------------------------------------------------

bnb4_tensor quantize_bnb4(const config& cfg, std::span<const float> w, std::int64_t rows, std::int64_t cols) {
    const char* where = "quantize_bnb4";
    const std::size_t n = checked_size(where, w.size(), rows, cols);
    if (cfg.type != dtype::nf4 && cfg.type != dtype::fp4)
        fail(where, "type " + std::string(to_string(cfg.type)) + " is not nf4 or fp4");
    if (!is_power_of_two_group(cfg.group))
        fail(where, "blocksize " + std::to_string(cfg.group) + " is not a power of two from 32 to 4096");
    const bool nf4 = cfg.type == dtype::nf4;
    const std::uint8_t zero_code = nf4 ? nf4_zero_code : fp4_zero_code;

    bnb4_tensor q;
    q.type = cfg.type;
    q.rows = rows;
    q.cols = cols;
    q.blocksize = cfg.group;
    q.quant_map = nf4 ? nf4_table : fp4_table;
    std::vector<std::uint8_t> codes(n);
    std::vector<float> absmax =
        quantize_blocks(w, static_cast<std::size_t>(cfg.group), zero_code, nf4 ? nf4_code : fp4_code, codes);
    q.packed = pack_high_first(codes, zero_code);
    if (!cfg.double_quant) {
        q.absmax = std::move(absmax);
        return q;
    }
    double_quantize(q, std::move(absmax));
    return q;
}

void double_quantize(bnb4_tensor& q, std::vector<float> absmax) {
    // Double quantization: absmax - mean(absmax), blockwise 8-bit in nested blocks of 256.
    q.nested = true;
    q.nested_offset = exact_mean(absmax);
    for (float& a : absmax) a -= q.nested_offset;
    blockwise8 nested = quantize_blockwise8(absmax, nested_blocksize);
    q.absmax_codes = std::move(nested.codes);
    q.nested_absmax = std::move(nested.absmax);
    q.nested_quant_map = dynamic_map;
    q.absmax.clear();
}

std::vector<float> dequantize_bnb4(const bnb4_tensor& q) {
    const char* where = "dequantize_bnb4";
    if (q.rows <= 0 || q.cols <= 0)
        fail(where, "shape " + shape_text(q.rows, q.cols) + " is empty or negative");
    if (q.blocksize <= 0) fail(where, "blocksize " + std::to_string(q.blocksize) + " is not positive");
    const std::size_t n = static_cast<std::size_t>(q.rows) * static_cast<std::size_t>(q.cols);
    const auto bs = static_cast<std::size_t>(q.blocksize);
    expect_size(where, "packed", q.packed.size(), (n + 1) / 2);
    return dequantize_blocks(unpack_high_first(q.packed, n), bs, bnb4_absmax(q), q.quant_map);
}

std::vector<float> bnb4_absmax(const bnb4_tensor& q) {
    const char* where = "bnb4_absmax";
    const std::size_t n = static_cast<std::size_t>(q.rows) * static_cast<std::size_t>(q.cols);
    const std::size_t blocks = ceil_div(n, static_cast<std::size_t>(q.blocksize));
    if (!q.nested) {
        expect_size(where, "absmax", q.absmax.size(), blocks);
        return q.absmax;
    }
    expect_size(where, "absmax_codes", q.absmax_codes.size(), blocks);
    expect_size(where, "nested_absmax", q.nested_absmax.size(), ceil_div(blocks, nested_blocksize));
    std::vector<float> absmax = dequantize_blocks(q.absmax_codes, nested_blocksize, q.nested_absmax, q.nested_quant_map);
    for (float& a : absmax) a += q.nested_offset;  // a second rounding, after the product's
    return absmax;
}

// ---- §2 LLM.int8() ---------------------------------------------------------------------------

int8row_tensor quantize_int8row(std::span<const float> w, std::int64_t rows, std::int64_t cols) {
    checked_size("quantize_int8row", w.size(), rows, cols);
    int8row_tensor q;
    q.rows = rows;
    q.cols = cols;
    q.codes.resize(w.size());
    q.scb.resize(static_cast<std::size_t>(rows));
    const auto k = static_cast<std::size_t>(cols);
    for (std::size_t r = 0; r < q.scb.size(); ++r) {
        const auto row = w.subspan(r * k, k);
        q.scb[r] = max_abs(row);
        quantize_int8_row(row, q.scb[r], std::span(q.codes).subspan(r * k, k));
    }
    return q;
}

std::vector<float> dequantize_int8row(const int8row_tensor& q) {
    check_int8row("dequantize_int8row", q);
    const auto k = static_cast<std::size_t>(q.cols);
    std::vector<float> out(q.codes.size());
    for (std::size_t i = 0; i < out.size(); ++i)
        out[i] = (static_cast<float>(q.codes[i]) * q.scb[i / k]) * one_over_127;
    return out;
}

std::vector<float> int8_matmul(const int8row_tensor& w, std::span<const float> x, std::int64_t m, float threshold,
                               std::span<const float> bias) {
    const char* where = "int8_matmul";
    check_int8row(where, w);
    const auto n_out = static_cast<std::size_t>(w.rows), k = static_cast<std::size_t>(w.cols);
    if (m < 0 || static_cast<std::uint64_t>(m) * k != x.size())
        fail(where, "X has " + std::to_string(x.size()) + " elements, expected M*K = " + std::to_string(m) + "*" +
                        std::to_string(k));
    if (!bias.empty()) expect_size(where, "bias", bias.size(), n_out);
    if (!(threshold >= 0.0f) || std::isinf(threshold))
        fail(where, "outlier threshold " + std::to_string(threshold) + " is not finite and >= 0");
    // |XA * CB| <= 128 * 128, so K up to this bound keeps the int32 accumulation exact.
    constexpr std::size_t max_k = std::numeric_limits<std::int32_t>::max() / (128 * 128);
    if (k > max_k)
        fail(where, "K = " + std::to_string(k) + " could overflow the int32 accumulation (max " +
                        std::to_string(max_k) + ")");
    check_finite(x, "X");

    const std::size_t rows = static_cast<std::size_t>(m);
    std::vector<std::size_t> outlier_cols;
    if (threshold > 0.0f)
        for (std::size_t c = 0; c < k; ++c)
            for (std::size_t r = 0; r < rows; ++r)
                if (std::fabs(x[r * k + c]) >= threshold) {
                    outlier_cols.push_back(c);
                    break;
                }
    const std::vector<float> w_dequant = outlier_cols.empty() ? std::vector<float>{} : dequantize_int8row(w);

    std::vector<float> out(rows * n_out);
    std::vector<float> inliers(k);
    std::vector<std::int8_t> xa(k);
    for (std::size_t r = 0; r < rows; ++r) {
        std::copy_n(x.begin() + static_cast<std::ptrdiff_t>(r * k), k, inliers.begin());
        for (std::size_t c : outlier_cols) inliers[c] = 0.0f;
        const float sca = max_abs(inliers);
        quantize_int8_row(inliers, sca, xa);
        for (std::size_t n = 0; n < n_out; ++n) {
            const std::int8_t* cb = w.codes.data() + n * k;
            std::int32_t acc = 0;
            for (std::size_t c = 0; c < k; ++c) acc += std::int32_t{xa[c]} * std::int32_t{cb[c]};
            const float int_part = static_cast<float>(acc) * ((sca * w.scb[n]) / 16129.0f);
            float outliers = 0.0f;
            for (std::size_t c : outlier_cols) outliers += x[r * k + c] * w_dequant[n * k + c];
            out[r * n_out + n] = (int_part + outliers) + (bias.empty() ? 0.0f : bias[n]);
        }
    }
    return out;
}

}  // namespace qforge::ref

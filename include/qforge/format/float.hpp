// Small floating-point formats: f16, bf16, FP8 E4M3FN / E5M2, E8M0 (formats.md §5, §6).
// All conversions from f32 round to nearest, ties to even, exactly as PyTorch's casts do
// (no saturation: callers that must not produce NaN clamp first, see saturate_e4m3).
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

namespace qforge {

struct bf16 {
    std::uint16_t bits;
    friend constexpr bool operator==(bf16, bf16) = default;
};
struct f16 {
    std::uint16_t bits;
    friend constexpr bool operator==(f16, f16) = default;
};

// A binary floating-point format with 1 sign bit. `finite_nan`: E4M3FN style (no infinities,
// the all-ones pattern is NaN, overflow becomes NaN); otherwise IEEE style (all-ones exponent is
// Inf/NaN, overflow becomes Inf).
struct float_format {
    int exp_bits;
    int man_bits;
    int bias;
    bool finite_nan;

    constexpr int total_bits() const { return 1 + exp_bits + man_bits; }
    constexpr int min_exp() const { return 1 - bias; }  // exponent of the smallest normal
};

inline constexpr float_format f16_format{5, 10, 15, false};
inline constexpr float_format bf16_format{8, 7, 127, false};
inline constexpr float_format e4m3_format{4, 3, 7, true};
inline constexpr float_format e5m2_format{5, 2, 15, false};

// RNE of x to format f; returns the bit pattern in the low f.total_bits() bits.
inline std::uint32_t encode_float(const float_format& f, float x) {
    const std::uint32_t sign = std::signbit(x) ? 1u << (f.total_bits() - 1) : 0u;
    const std::uint32_t exp_all_ones = (1u << f.exp_bits) - 1;
    const std::uint32_t nan_code = f.finite_nan ? (exp_all_ones << f.man_bits) | ((1u << f.man_bits) - 1)
                                                : (exp_all_ones << f.man_bits) | (1u << (f.man_bits - 1));
    const std::uint32_t inf_code = f.finite_nan ? nan_code : exp_all_ones << f.man_bits;
    if (std::isnan(x)) return sign | nan_code;
    if (std::isinf(x)) return sign | inf_code;
    const float a = std::fabs(x);
    if (a == 0.0f) return sign;
    // Quantum of the binade of a (or of the subnormal range): dividing by it is exact.
    const int e = std::max(std::ilogb(a), f.min_exp());
    const float quantum = std::ldexp(1.0f, e - f.man_bits);
    const float r = std::nearbyint(a / quantum) * quantum;  // default rounding mode: ties to even
    if (r == 0.0f) return sign;
    if (std::isinf(r)) return sign | inf_code;  // rounded past FLT_MAX (e.g. FLT_MAX to bf16)
    const int re = std::ilogb(r);
    std::uint32_t field, man;
    if (re < f.min_exp()) {
        field = 0;
        man = static_cast<std::uint32_t>(std::ldexp(r, f.man_bits - f.min_exp()));
    } else {
        field = static_cast<std::uint32_t>(re + f.bias);
        man = static_cast<std::uint32_t>(std::ldexp(r, f.man_bits - re)) - (1u << f.man_bits);
    }
    const std::uint32_t code = (field << f.man_bits) | man;
    if (f.finite_nan ? code >= nan_code : field >= exp_all_ones) return sign | inf_code;
    return sign | code;
}

inline float decode_float(const float_format& f, std::uint32_t code) {
    const bool neg = (code >> (f.total_bits() - 1)) & 1u;
    const std::uint32_t field = (code >> f.man_bits) & ((1u << f.exp_bits) - 1);
    const std::uint32_t man = code & ((1u << f.man_bits) - 1);
    const std::uint32_t exp_all_ones = (1u << f.exp_bits) - 1;
    float v;
    if (f.finite_nan && field == exp_all_ones && man == (1u << f.man_bits) - 1)
        v = std::numeric_limits<float>::quiet_NaN();
    else if (!f.finite_nan && field == exp_all_ones)
        v = man ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
    else if (field == 0)
        v = std::ldexp(static_cast<float>(man), f.min_exp() - f.man_bits);
    else
        v = std::ldexp(static_cast<float>(man + (1u << f.man_bits)), static_cast<int>(field) - f.bias - f.man_bits);
    return neg ? -v : v;
}

inline bf16 to_bf16(float x) { return {static_cast<std::uint16_t>(encode_float(bf16_format, x))}; }
inline f16 to_f16(float x) { return {static_cast<std::uint16_t>(encode_float(f16_format, x))}; }
inline float to_float(bf16 x) { return std::bit_cast<float>(static_cast<std::uint32_t>(x.bits) << 16); }
inline float to_float(f16 x) { return decode_float(f16_format, x.bits); }
inline float to_float(float x) { return x; }

inline std::uint8_t to_e4m3(float x) { return static_cast<std::uint8_t>(encode_float(e4m3_format, x)); }
inline std::uint8_t to_e5m2(float x) { return static_cast<std::uint8_t>(encode_float(e5m2_format, x)); }
inline float e4m3_to_float(std::uint8_t c) { return decode_float(e4m3_format, c); }
inline float e5m2_to_float(std::uint8_t c) { return decode_float(e5m2_format, c); }

inline constexpr float e4m3_max = 448.0f;
inline constexpr float e5m2_max = 57344.0f;

// Converting f32 to T with RNE, for generic code over output dtypes.
template <class T>
T from_float(float x);
template <>
inline float from_float<float>(float x) { return x; }
template <>
inline bf16 from_float<bf16>(float x) { return to_bf16(x); }
template <>
inline f16 from_float<f16>(float x) { return to_f16(x); }

// E8M0 (MX scales): 2^(s - 127); 0xFF is NaN.
inline float e8m0_to_float(std::uint8_t s) {
    return s == 0xFF ? std::numeric_limits<float>::quiet_NaN() : std::ldexp(1.0f, static_cast<int>(s) - 127);
}

}  // namespace qforge

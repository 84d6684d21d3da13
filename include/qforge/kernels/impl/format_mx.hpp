// OCP MXFP4 (formats.md §6) in the 4-bit kernel framework: E2M1 codes with an E8M0 scale per
// block of 32 along K. Only traits: dequantize, GEMV and GEMM (f32 and i8) are the generic ones.
#pragma once

#include <qforge/format/tables.hpp>
#include <qforge/kernels/impl/format.hpp>

#include <bit>
#include <cstdint>

namespace qforge::kernels {

// E2M1 values are {0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6}: times 2 all are integers (-12..12), so
// the i8 path's levels are exact.
template <>
struct code_traits<dtype::e2m1> {
    static constexpr bool from_table = true;  // levels from values() (signed, not code - offset)
    static constexpr float i8_scale = 2.0f;
    template <class A>
    static void values(const weights_view&, float* out) {
        for (int i = 0; i < 16; ++i) out[i] = e2m1_table[static_cast<std::size_t>(i)];
    }
};

// E8M0 scale byte -> f32, exactly as qforge::e8m0_to_float: 2^(s-127) (s = 0 is the f32
// subnormal 2^-127), 0xFF the default quiet NaN. (A template on the arch: see format.hpp.)
template <class A>
inline float e8m0_bits_to_float(std::uint8_t s) {
    const std::uint32_t bits = s == 0 ? 0x00400000u : s == 0xFF ? 0x7FC00000u : static_cast<std::uint32_t>(s) << 23;
    return std::bit_cast<float>(bits);
}

// The mx kernel layout keeps the checkpoint's rows ([N, K/2] bytes, blocks of 16 bytes) but
// pack_weights swaps the nibbles of every byte, so that element 2i sits in the high nibble as in
// bnb4: the codes then walk exactly like bnb4's. Scales: one E8M0 byte per (row, block).
template <>
struct layout_traits<layout::mx> : layout_traits<layout::bnb4> {
    template <class P, class A>
    static const float* row_scales(const weights_view& w, std::int64_t n, std::int64_t b0, int nb, float* buf) {
        const std::uint8_t* s = row_blocks<P, std::uint8_t>(w, w.scales, n, b0);
        for (int i = 0; i < nb; ++i) buf[i] = e8m0_bits_to_float<A>(s[i]);
        return buf;
    }
};

}  // namespace qforge::kernels

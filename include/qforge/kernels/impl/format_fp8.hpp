// FineGrainedFP8 (formats.md §5): E4M3 codes, one byte per weight, rows along K, and an f32
// scale_inv per 2-D tile of group x group (rows x cols). The 4-bit framework does not fit one
// byte per code, so this header overloads its entry points for fp8_block policies; C++20
// constraints make these overloads win over the generic templates of dequantize.hpp and
// kernels_impl.hpp (which must include this header before defining their callers):
//   check_kernel_policy, value_table, dequantize_blocks   -> dequantize and the f32 GEMM's panels
//   gemv_f32                                              -> GEMV
//
// Decoding E4M3 in registers (decode_e4m3): the bits moved into an f16 (AVX2/AVX-512, F16C) or
// an f32 (SSE) whose value is the E4M3 value times a power of two, then one exact multiply by
// its inverse; subnormals included. The NaN codes 0x7F/0xFF would decode as ±480: dequantize replaces them by the
// reference's ±quiet NaN; GEMV and GEMM do not (valid checkpoints never hold them).
#pragma once

#include <qforge/kernels/impl/f32.hpp>

#include <cstdint>
#include <type_traits>

namespace qforge::kernels {

template <class P>
concept fp8_block_policy = P::storage == layout::fp8_block;

template <class P>
    requires fp8_block_policy<P>
constexpr void check_kernel_policy() {
    static_assert(P::type == dtype::fp8_e4m3 && P::bits == 8, "qforge fp8 kernels: E4M3 codes only");
    static_assert(P::group >= 16 && P::group % 16 == 0, "qforge fp8 kernels: the tile must be a multiple of 16");
    static_assert(P::act != compute::i8, "qforge fp8 kernels: f32, bf16 and f16 compute paths");
}

// decode_e4m3_scaled returns the values divided by this power of two (exactly): 2^8 through
// F16C (AVX2, AVX-512), 2^120 through an f32 bit pattern (SSE).
template <class A>
inline constexpr float e4m3_decode_factor =
    std::is_base_of_v<xsimd::avx2, A> || std::is_base_of_v<xsimd::avx512f, A> ? 0x1p8f : 0x1p120f;

// lanes E4M3 codes at p -> f32 / e4m3_decode_factor, exact; NaN codes come out as ±480.
template <class A>
inline simd::f32v<A> decode_e4m3_scaled(const std::uint8_t* p) {
    using F = simd::f32v<A>;
    // With F16C: the byte sign-extended to 16 bits and shifted left by 7 is, masked to the sign
    // and bits 7..13, the f16 of 2^-8 times the value; the f16 -> f32 conversion is exact and
    // turns E4M3 subnormals into normal f32s (f32 subnormal operands cost a microcode assist:
    // measured 1.8x slower GEMV on random codes with the shift-only decode below).
#if XSIMD_WITH_AVX512F
    if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
        const __m256i s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        const __m256i h = _mm256_and_si256(_mm256_slli_epi16(s16, 7), _mm256_set1_epi16(static_cast<short>(0xBF80)));
        return F(_mm512_cvtph_ps(h));
    } else
#endif
#if XSIMD_WITH_AVX2
    if constexpr (std::is_base_of_v<xsimd::avx2, A>) {
        const __m128i s16 = _mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
        const __m128i h = _mm_and_si128(_mm_slli_epi16(s16, 7), _mm_set1_epi16(static_cast<short>(0xBF80)));
        return F(_mm256_cvtph_ps(h));
    } else
#endif
    {
        // SSE: bit 7 -> 31, bits 0..6 -> 24..30, then an arithmetic shift by 4 puts them at 20..26:
        // the f32 of 2^-120 times the value (an f32 subnormal for E4M3 subnormals)
        using I = simd::i32v<A>;
        const I c = simd::load_u8_as_i32<A>(p);
        const I bits = (I(c << 24) >> 4) & I(static_cast<std::int32_t>(0x87F00000u));
        return xsimd::bitwise_cast<F>(bits);
    }
}

// lanes E4M3 codes at p -> f32, exact; NaN codes come out as ±480.
template <class A>
inline simd::f32v<A> decode_e4m3(const std::uint8_t* p) {
    return decode_e4m3_scaled<A>(p) * simd::f32v<A>(e4m3_decode_factor<A>);
}

// As decode_e4m3, with 0x7F / 0xFF -> ±quiet NaN, bit-exact with qforge::e4m3_to_float.
template <class A>
inline simd::f32v<A> decode_e4m3_exact(const std::uint8_t* p) {
    using I = simd::i32v<A>;
    const I c = simd::load_u8_as_i32<A>(p);
    const I nan_bits = (I(c << 24) & I(static_cast<std::int32_t>(0x80000000u))) | I(0x7FC00000);
    const I decoded = xsimd::bitwise_cast<I>(decode_e4m3<A>(p));
    return xsimd::bitwise_cast<simd::f32v<A>>(xsimd::select((c & I(0x7F)) == I(0x7F), nan_bits, decoded));
}

template <class P, class A>
    requires fp8_block_policy<P>
inline simd::table16<A> value_table(const weights_view&) {
    return simd::table16<A>{};  // no code table: E4M3 decodes arithmetically
}

// The f32 scales of row n: one per column tile. (A template on the arch: see format.hpp.)
template <class P, class A>
inline const float* fp8_row_scales(const weights_view& w, std::int64_t n) {
    return static_cast<const float*>(w.scales) + (n / P::group) * (w.cols / P::group);
}

// Column tiles [b0, b1) of row n, dequantized to out[0 ..): decode(code) * scale_inv, one f32
// multiply per weight as ref::dequantize_fp8.
template <class P, class A>
    requires fp8_block_policy<P>
void dequantize_blocks(const weights_view& w, const simd::table16<A>&, std::int64_t n, std::int64_t b0,
                       std::int64_t b1, float* out) {
    using F = simd::f32v<A>;
    constexpr int lanes = simd::lanes<A>;
    const std::uint8_t* codes = w.codes + n * w.cols;
    const float* scales = fp8_row_scales<P, A>(w, n);
    for (std::int64_t b = b0; b < b1; ++b) {
        const F scale(scales[b]);
        float* o = out + (b - b0) * P::group;
        const std::uint8_t* c = codes + b * P::group;
        simd::unroll<P::group / lanes>(
            [&](auto i) { (decode_e4m3_exact<A>(c + i * lanes) * scale).store_unaligned(o + i * lanes); });
    }
}

// y[n] = sum_t scale[n, t] * sum_{k in tile t} decode(code) x[k] (+ bias): one row at a time, so
// W is read as one sequential stream (see f32.hpp). Same error bound as f32.hpp.
// With F16C the decode factor 2^8 moves into the tile scale: the same result (products with
// values 2^8 smaller round alike unless they underflow), one multiply less per register. On SSE
// values 2^120 smaller would underflow: there they are decoded in full.
template <class P, class A>
    requires fp8_block_policy<P>
void gemv_f32(const weights_view& w, const float* x, const float* bias, float* y, std::int64_t n0, std::int64_t n1) {
    using F = simd::f32v<A>;
    constexpr int lanes = simd::lanes<A>;
    constexpr int regs = P::group / lanes;
    constexpr int chains = regs >= 4 ? 4 : regs;  // FMA latency
    constexpr bool rounded = rounded_operands<P>;  // bf16 / f16: each weight rounded after its scale
    constexpr bool fold = !rounded && e4m3_decode_factor<A> == 0x1p8f;
    const std::int64_t tiles = w.cols / P::group;
    x = rounded_x<P, A>(x, w.cols);
    for (std::int64_t n = n0; n < n1; ++n) {
        const std::uint8_t* codes = w.codes + n * w.cols;
        const float* scales = fp8_row_scales<P, A>(w, n);
        F acc(0.0f);
        for (std::int64_t t = 0; t < tiles; ++t) {
            F part[chains];
            for (int c = 0; c < chains; ++c) part[c] = F(0.0f);
            const std::uint8_t* c = codes + t * P::group;
            const float* xt = x + t * P::group;
            simd::unroll<regs>([&](auto i) {
                F v = fold ? decode_e4m3_scaled<A>(c + i * lanes) : decode_e4m3<A>(c + i * lanes);
                if constexpr (rounded) v = operand<P, A>(F(v * F(scales[t])));
                part[i % chains] = simd::fma<A>(v, F::load_unaligned(xt + i * lanes), part[i % chains]);
            });
            F sum = part[0];
            for (int k = 1; k < chains; ++k) sum = sum + part[k];
            if constexpr (rounded) acc = acc + sum;
            else acc = simd::fma<A>(sum, F(fold ? scales[t] * e4m3_decode_factor<A> : scales[t]), acc);
        }
        const float v = xsimd::hadd(acc);
        y[n] = bias ? v + bias[n] : v;
    }
}

}  // namespace qforge::kernels

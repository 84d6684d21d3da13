// FineGrainedFP8 (formats.md §5): E4M3 (or E5M2) codes, one byte per weight, rows along K, and an
// f32 scale_inv per 2-D tile of group x group (rows x cols). The 4-bit framework does not fit one
// byte per code, so this header overloads its entry points for fp8_block policies; C++20
// constraints make these overloads win over the generic templates of dequantize.hpp and
// kernels_impl.hpp (which must include this header before defining their callers):
//   check_kernel_policy, value_table, dequantize_blocks   -> dequantize and the f32 GEMM's panels
//   gemv_f32                                              -> GEMV
//
// Decoding in registers (decode_fp8): the bits moved into an f16 (AVX2/AVX-512, F16C) or an f32
// (SSE) whose value is the FP8 value times a power of two, then one exact multiply by its inverse;
// subnormals included. The special codes (E4M3 NaN, E5M2 Inf / NaN) decode as finite values:
// dequantize replaces them by the reference's ±Inf / ±quiet NaN; GEMV and GEMM do not (valid
// checkpoints never hold them).
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
    static_assert(is_fp8(P::type) && P::bits == 8, "qforge fp8 kernels: E4M3 or E5M2 codes");
    static_assert(P::group >= 16 && P::group % 16 == 0, "qforge fp8 kernels: the tile must be a multiple of 16");
    static_assert(P::act != compute::i8, "qforge fp8 kernels: f32, bf16 and f16 compute paths");
}

// With F16C (AVX2, AVX-512) an FP8 byte becomes an f16 by shifts: E5M2 is the high byte of an
// f16, E4M3 (bias 7) an f16 of 2^-8 times its value. Without it (SSE) the bits go into an f32
// whose value is the FP8 value times 2^-120 (E4M3) or 2^-112 (E5M2).
template <class A>
inline constexpr bool has_f16c = std::is_base_of_v<xsimd::avx2, A> || std::is_base_of_v<xsimd::avx512f, A>;

// decode_fp8_scaled returns the values divided by this power of two (exactly).
template <dtype T, class A>
inline constexpr float fp8_decode_factor =
    T == dtype::fp8_e4m3 ? (has_f16c<A> ? 0x1p8f : 0x1p120f) : (has_f16c<A> ? 1.0f : 0x1p112f);

// lanes FP8 codes of type T at p -> f32 / fp8_decode_factor, exact for finite codes; the
// special codes (E4M3 NaN, E5M2 Inf and NaN) come out finite: see decode_fp8_exact.
template <dtype T, class A>
inline simd::f32v<A> decode_fp8_scaled(const std::uint8_t* p) {
    using F = simd::f32v<A>;
    // E4M3 through F16C: the byte sign-extended to 16 bits and shifted left by 7 is, masked to the
    // sign and bits 7..13, the f16 of 2^-8 times the value. The f16 -> f32 conversion is exact and
    // turns FP8 subnormals into normal f32s (f32 subnormal operands cost a microcode assist:
    // measured 1.8x slower GEMV on random E4M3 codes with the shift-only decode below).
    constexpr bool e4m3 = T == dtype::fp8_e4m3;
#if XSIMD_WITH_AVX512F
    if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        const __m256i h = e4m3 ? _mm256_and_si256(_mm256_slli_epi16(_mm256_cvtepi8_epi16(bytes), 7),
                                                  _mm256_set1_epi16(static_cast<short>(0xBF80)))
                               : _mm256_slli_epi16(_mm256_cvtepu8_epi16(bytes), 8);
        return F(_mm512_cvtph_ps(h));
    } else
#endif
#if XSIMD_WITH_AVX2
    if constexpr (std::is_base_of_v<xsimd::avx2, A>) {
        const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
        const __m128i h = e4m3 ? _mm_and_si128(_mm_slli_epi16(_mm_cvtepi8_epi16(bytes), 7),
                                               _mm_set1_epi16(static_cast<short>(0xBF80)))
                               : _mm_slli_epi16(_mm_cvtepu8_epi16(bytes), 8);
        return F(_mm256_cvtph_ps(h));
    } else
#endif
    {
        // SSE: the sign to bit 31, then an arithmetic shift puts exponent and mantissa at the top of
        // the f32's fields (E4M3: bits 20..26, E5M2: 21..27); an f32 subnormal for FP8 subnormals
        using I = simd::i32v<A>;
        const I c = simd::load_u8_as_i32<A>(p);
        const I bits = e4m3 ? (I(c << 24) >> 4) & I(static_cast<std::int32_t>(0x87F00000u))
                            : (I(c << 24) >> 3) & I(static_cast<std::int32_t>(0x8FE00000u));
        return xsimd::bitwise_cast<F>(bits);
    }
}

// lanes FP8 codes at p -> f32, exact for finite codes.
template <dtype T, class A>
inline simd::f32v<A> decode_fp8(const std::uint8_t* p) {
    if constexpr (fp8_decode_factor<T, A> == 1.0f) return decode_fp8_scaled<T, A>(p);
    else return decode_fp8_scaled<T, A>(p) * simd::f32v<A>(fp8_decode_factor<T, A>);
}

// As decode_fp8, bit-exact with qforge::e4m3_to_float / e5m2_to_float for every code: NaN codes
// (E4M3 0x7F / 0xFF, E5M2 0x7D-0x7F / 0xFD-0xFF) give ±quiet NaN, E5M2 0x7C / 0xFC ±Inf.
template <dtype T, class A>
inline simd::f32v<A> decode_fp8_exact(const std::uint8_t* p) {
    using I = simd::i32v<A>;
    const I c = simd::load_u8_as_i32<A>(p);
    const I sign = I(c << 24) & I(static_cast<std::int32_t>(0x80000000u));
    const I magnitude = c & I(0x7F);
    I decoded = xsimd::bitwise_cast<I>(decode_fp8<T, A>(p));
    if constexpr (T == dtype::fp8_e5m2) {
        decoded = xsimd::select(magnitude == I(0x7C), sign | I(0x7F800000), decoded);
        return xsimd::bitwise_cast<simd::f32v<A>>(xsimd::select(magnitude > I(0x7C), sign | I(0x7FC00000), decoded));
    } else {
        return xsimd::bitwise_cast<simd::f32v<A>>(xsimd::select(magnitude == I(0x7F), sign | I(0x7FC00000), decoded));
    }
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
            [&](auto i) { (decode_fp8_exact<P::type, A>(c + i * lanes) * scale).store_unaligned(o + i * lanes); });
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
    constexpr float factor = fp8_decode_factor<P::type, A>;
    constexpr bool fold = !rounded && factor <= 0x1p8f;
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
                F v = fold ? decode_fp8_scaled<P::type, A>(c + i * lanes) : decode_fp8<P::type, A>(c + i * lanes);
                if constexpr (rounded) v = operand<P, A>(F(v * F(scales[t])));
                part[i % chains] = simd::fma<A>(v, F::load_unaligned(xt + i * lanes), part[i % chains]);
            });
            F sum = part[0];
            for (int k = 1; k < chains; ++k) sum = sum + part[k];
            if constexpr (rounded) acc = acc + sum;
            else acc = simd::fma<A>(sum, F(fold ? scales[t] * factor : scales[t]), acc);
        }
        const float v = xsimd::hadd(acc);
        y[n] = bias ? v + bias[n] : v;
    }
}

}  // namespace qforge::kernels

// FineGrainedFP8 (formats.md §5): E4M3 (or E5M2) codes, one byte per weight, rows along K, and an
// f32 scale_inv per 2-D tile of group x group (rows x cols). The 4-bit framework does not fit one
// byte per code, so this header overloads its entry points for fp8_block policies; C++20
// constraints make these overloads win over the generic templates of dequantize.hpp and
// kernels_impl.hpp (which must include this header before defining their callers):
//   check_kernel_policy, value_table, dequantize_blocks   -> dequantize and the f32 GEMM's panels
//   gemv_f32                                              -> GEMV (bf16 on AVX-512: gemv_fp8_bf16)
//
// Decoding in registers (decode_fp8): the bits moved into an f16 (AVX2/AVX-512, F16C) or an f32
// (SSE) whose value is the FP8 value times a power of two, then one exact multiply by its inverse;
// subnormals included. The special codes (E4M3 NaN, E5M2 Inf / NaN) decode as finite values:
// dequantize replaces them by the reference's ±Inf / ±quiet NaN; GEMV and GEMM do not (valid
// checkpoints never hold them).
#pragma once

#include <qforge/kernels/impl/bf16.hpp>
#include <qforge/kernels/impl/f32.hpp>

#include <algorithm>
#include <array>
#include <cmath>
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

// ---- the bf16 GEMV on AVX-512 ----------------------------------------------------------------
// The weights r(fl(v s)) (v an FP8 value, s its tile's scale, r the rounding to bf16) come from a
// 32-word table per tile, not from a decode, a multiply and a rounding per weight. A code of
// exponent field e > 0 has the value v = 2^(e-1) u, u the value of the code with the same sign and
// mantissa and exponent field 1. Multiplying by a power of two commutes with both roundings while
// no result leaves the normal range: fl(v s) = 2^(e-1) fl(u s), and r(2^(e-1) fl(u s)) =
// 2^(e-1) r(fl(u s)). So the bf16 bits of the weight are those of r(fl(u s)) plus (e - 1) << 7 (the
// exponent field of bf16 starts at bit 7). The table holds r(fl(u s)) for the 2^(m+1) codes of
// exponent fields 0 and 1 (m mantissa bits; subnormal codes (field 0) are looked up whole, the
// others less 1 << 7), repeated over the 32 words that vpermw indexes. A code (a byte, widened to
// a word holding it twice) looks up its mantissa and whether its exponent field is 0, adds e << 7,
// and flips the sign with the code's sign bit; zero codes give fl(±0 s) exactly. With 2^-100 <=
// |s| <= 2^100 every |fl(u s)| and |fl(v s)| lies in [2^-116, 2^117], normal in f32 and bf16 (the
// E4M3 and E5M2 magnitudes lie in [2^-16, 2^17], special codes included). A tile of any other scale
// (zero, tiny, huge, NaN: no real checkpoint's) multiplies and rounds each weight instead.
// On AVX512-BF16 vdpbf16ps multiplies the words with x in bf16 (and, as for bnb4 in bf16.hpp,
// flushes products below 2^-126); elsewhere they are widened to f32 (a bf16 is the high half of
// its f32) and multiplied with FMAs.
template <class P, class A>
inline constexpr bool fp8_table_gemv = P::act == compute::bf16 && std::is_base_of_v<xsimd::avx512bw, A> && P::group % 64 == 0;

namespace fp8_bf16 {

// Word j of the words (lo: unpacklo, hi: unpackhi of the bytes with themselves) of a 64-byte chunk
// holds element (j / 8) * 16 + 8 * half + j % 8 of the chunk; widened to f32 (unpacklo / unpackhi
// of the words, q = 0 / 1), lane l of part q holds word 8 (l / 4) + 4 q + l % 4.
constexpr int element(int half, int j) { return (j / 8) * 16 + 8 * half + j % 8; }
constexpr int word(int q, int l) { return 8 * (l / 4) + 4 * q + l % 4; }

template <dtype T>
inline constexpr int mantissa_bits = T == dtype::fp8_e4m3 ? 3 : 2;

// x rounded to bf16 in the order of the weights: words (native) or f32 (k a multiple of 64).
template <class A, class X>
void permute_x(const float* x, std::int64_t k, X* xp) {
    for (std::int64_t c = 0; c < k; c += 64)
        for (int half = 0; half < 2; ++half) {
            alignas(64) float v[32];
            if constexpr (std::is_same_v<X, float>) {
                for (int q = 0; q < 2; ++q)
                    for (int l = 0; l < 16; ++l) v[16 * q + l] = simd::round_bf16<A>(x[c + element(half, word(q, l))]);
                std::copy_n(v, 32, xp + c + 32 * half);
            } else {
                for (int j = 0; j < 32; ++j) v[j] = x[c + element(half, j)];
                const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_load_ps(v + 16), _mm512_load_ps(v));
                _mm512_storeu_si512(xp + c + 32 * half, reinterpret_cast<const __m512i&>(b));
            }
        }
}

// The tile's table from u = the values of the codes 0..15 (see above); |s| in [2^-100, 2^100].
template <dtype T, class A>
__m512i table(const __m512& u, float s) {
    constexpr int m = mantissa_bits<T>, period = 2 << m;
    constexpr bool native = std::is_base_of_v<avx512bf16, A>;
    const __m512 products = _mm512_mul_ps(u, _mm512_set1_ps(s));
    // RNE to bf16 (the products are normal): vcvtneps2bf16, else the high halves of round_bf16's f32s
    __m512i rounded;
    if constexpr (native) {
        const __m256bh b = _mm512_cvtneps_pbh(products);
        rounded = _mm512_castsi256_si512(reinterpret_cast<const __m256i&>(b));
    } else {
        rounded = xsimd::bitwise_cast<simd::i32v<A>>(simd::round_bf16<A>(simd::f32v<A>(products)));
    }
    const auto words = [](auto f) {
        std::array<std::int16_t, 32> a{};
        for (int j = 0; j < 32; ++j) a[static_cast<std::size_t>(j)] = static_cast<std::int16_t>(f(j % period));
        return a;
    };
    alignas(64) static constexpr auto entry = words([](int i) { return native ? i : 2 * i + 1; });
    alignas(64) static constexpr auto minus = words([](int i) { return i >= (1 << m) ? 1 << 7 : 0; });
    return _mm512_sub_epi16(_mm512_permutexvar_epi16(_mm512_load_si512(entry.data()), rounded),
                            _mm512_load_si512(minus.data()));
}

// The bf16 weights of 32 words w = code | code << 8 (see above).
template <dtype T>
inline __m512i weights(const __m512i& w, const __m512i& table) {
    constexpr int m = mantissa_bits<T>;
    const __m512i e = _mm512_and_si512(w, _mm512_set1_epi16(static_cast<short>(0x7F & ~((1 << m) - 1))));  // e << m
    const __m512i normal = _mm512_min_epu16(e, _mm512_set1_epi16(static_cast<short>(1 << m)));  // 1 << m where e > 0
    // index bits 0-4: the mantissa, then bit m set where e > 0 (bit m of w is bit 0 of e); above
    // it the table repeats
    const __m512i entry = _mm512_permutexvar_epi16(_mm512_or_si512(w, normal), table);
    const __m512i value = _mm512_add_epi16(entry, _mm512_slli_epi16(e, 7 - m));
    return _mm512_xor_si512(value, _mm512_and_si512(w, _mm512_set1_epi16(static_cast<short>(0x8000))));
}

// The words of a tile whose scale the table does not cover: each weight decoded, multiplied and
// rounded (simd::round_bf16), in the order of the table path's words.
template <class P, class A>
void rounded_tile(const std::uint8_t* c, float s, std::uint16_t* out) {
    using F = simd::f32v<A>;
    using I = simd::i32v<A>;
    alignas(64) std::uint16_t natural[P::group];
    for (int i = 0; i < P::group; i += 16) {
        const I bits = xsimd::bitwise_cast<I>(simd::round_bf16<A>(F(decode_fp8<P::type, A>(c + i) * F(s))));
        _mm256_store_si256(reinterpret_cast<__m256i*>(natural + i), _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
    }
    for (int c0 = 0; c0 < P::group; c0 += 64)
        for (int half = 0; half < 2; ++half)
            for (int j = 0; j < 32; ++j) out[c0 + 32 * half + j] = natural[c0 + element(half, j)];
}

}  // namespace fp8_bf16

template <class P, class A>
void gemv_fp8_bf16(const weights_view& w, const float* x, const float* bias, float* y, std::int64_t n0, std::int64_t n1) {
    constexpr bool native = native_bf16<P, A>;
    using X = std::conditional_t<native, std::uint16_t, float>;  // x's operands
    const std::int64_t tiles = w.cols / P::group;
    auto* xp = static_cast<X*>(simd::scratch<A, 1>::get(static_cast<std::size_t>(w.cols) * sizeof(X)));
    fp8_bf16::permute_x<A>(x, w.cols, xp);
    alignas(16) static constexpr std::uint8_t first_codes[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    const __m512 u = decode_fp8<P::type, A>(first_codes);
    for (std::int64_t n = n0; n < n1; ++n) {
        const std::uint8_t* codes = w.codes + n * w.cols;
        const float* scales = fp8_row_scales<P, A>(w, n);
        __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;  // latency
        // acc += the products of 64 weights (words lo, hi) with their x operands at xq
        const auto add = [&](const __m512i& lo, const __m512i& hi, const X* xq) {
            if constexpr (native) {
                const auto dot = [](__m512 acc, const __m512i& wq, const std::uint16_t* xw) {
                    const __m512i xv = _mm512_loadu_si512(xw);
                    return _mm512_dpbf16_ps(acc, reinterpret_cast<const __m512bh&>(wq), reinterpret_cast<const __m512bh&>(xv));
                };
                acc0 = dot(acc0, lo, xq);
                acc1 = dot(acc1, hi, xq + 32);
            } else {
                const __m512i zero = _mm512_setzero_si512();
                acc0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, lo)), _mm512_loadu_ps(xq), acc0);
                acc1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, lo)), _mm512_loadu_ps(xq + 16), acc1);
                acc2 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, hi)), _mm512_loadu_ps(xq + 32), acc2);
                acc3 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, hi)), _mm512_loadu_ps(xq + 48), acc3);
            }
        };
        for (std::int64_t t = 0; t < tiles; ++t) {
            const float s = scales[t];
            const std::uint8_t* c = codes + t * P::group;
            const X* xt = xp + t * P::group;
            if (std::fabs(s) >= 0x1p-100f && std::fabs(s) <= 0x1p100f) [[likely]] {
                const __m512i table = fp8_bf16::table<P::type, A>(u, s);
                for (int c0 = 0; c0 < P::group; c0 += 64) {
                    simd::prefetch_ahead(c + c0);
                    const __m512i b = _mm512_loadu_si512(c + c0);
                    add(fp8_bf16::weights<P::type>(_mm512_unpacklo_epi8(b, b), table),
                        fp8_bf16::weights<P::type>(_mm512_unpackhi_epi8(b, b), table), xt + c0);
                }
            } else {
                alignas(64) std::uint16_t words[P::group];
                fp8_bf16::rounded_tile<P, A>(c, s, words);
                for (int c0 = 0; c0 < P::group; c0 += 64)
                    add(_mm512_load_si512(words + c0), _mm512_load_si512(words + c0 + 32), xt + c0);
            }
        }
        const float v = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
        y[n] = bias ? v + bias[n] : v;
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
    if constexpr (fp8_table_gemv<P, A>) return gemv_fp8_bf16<P, A>(w, x, bias, y, n0, n1);
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

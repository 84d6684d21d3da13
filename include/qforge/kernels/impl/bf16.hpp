// The bf16 compute path on CPUs with AVX512-BF16 (ISA avx512_bf16): the same arithmetic as the
// emulated path of f32.hpp (x and every exactly dequantized weight rounded to bf16, RNE; products
// exact; sums in f32), but the weights are produced as bf16 by table lookups and multiplied with
// vdpbf16ps, 32 products per instruction.
//
// GEMV: per window (64 code bytes, 128 elements, one or two blocks) the 16 code values times each
// block's scale are rounded to bf16 once (vcvtne2ps2bf16) into a 32-entry word table; the codes,
// split into 16-bit indices (plus 16 for the window's second block), look their bf16 weights up
// with vpermw. x is rounded to bf16 and permuted once per call into the order of those lookups.
// GEMM: the f32 GEMM's panels (f32.hpp) rounded to bf16, X packed as bf16 pairs, vdpbf16ps tiles.
//
// vdpbf16ps flushes bf16 subnormals (inputs and products below 2^-126) to zero: each flushed
// product changes the sum by less than 2^-126, far below the f32 bound of the tests.
#pragma once

#include <qforge/kernels/impl/f32.hpp>
#include <qforge/kernels/impl/gemm_tiles.hpp>

#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace qforge::kernels {

// vdpbf16ps runs the GEMM of every format (its panels are dequantized rows) and the GEMV of the
// bitsandbytes 4-bit formats (16-entry code tables, blocks of 64 or more, here) and of FP8
// (gemv_fp8_bf16, format_fp8.hpp); the other GEMVs of the bf16 path round their operands in f32
// (f32.hpp), MXFP4's exactly without rounding (its weights are bf16 numbers).
template <class P, class A>
inline constexpr bool native_bf16 = P::act == compute::bf16 && std::is_base_of_v<avx512bf16, A>;
template <class P, class A>
inline constexpr bool native_bf16_gemv = native_bf16<P, A> && P::storage == layout::bnb4 && P::group >= 64;

namespace bf16 {

// One window as the lookups see it: 32 16-bit words w, word w = code bytes 2w (low byte) and
// 2w + 1; lookup q (0..3) takes bits [4q, 4q + 4) of every word.
inline constexpr int words = 32;
inline constexpr int lookups = 4;

// Element (relative to the window) of lookup q in word w.
template <class P>
constexpr int element(int q, int w) {
    return layout_traits<P::storage>::element_of(2 * w + q / 2, q % 2);
}

// x rounded to bf16 in lookup order, window after window: xb[(window * 4 + q) * 32 + w]; as row r
// of a tile of `rows` (row_windows), xb[((window * 4 + q) * rows + r) * 32 + w].
template <class P, class A>
void permute_x(std::int64_t windows, const float* x, std::uint16_t* xb, int r = 0, int rows = 1) {
    constexpr int W = 128;  // elements per window: 64 code bytes
    for (std::int64_t win = 0; win < windows; ++win)
        for (int q = 0; q < lookups; ++q) {
            alignas(64) float v[words];
            for (int w = 0; w < words; ++w) v[w] = x[win * W + element<P>(q, w)];
            const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_load_ps(v + 16), _mm512_load_ps(v));
            _mm512_storeu_si512(xb + ((win * lookups + q) * rows + r) * words, reinterpret_cast<const __m512i&>(b));
        }
}

// Windows [win0, win1) of row n (the tail blocks are the caller's) times a tile of R rows of x
// (permute_x: the rows of a window's lookup side by side, constant offsets), each looked-up
// register of weights feeding all R rows (small M: one pass over W, one decode). sums[r]: row r's
// partial sums, one per lane.
template <class P, class A, int R>
[[gnu::always_inline]] inline void row_windows(const weights_view& w, const __m512& values, const std::uint16_t* xb,
                                               std::int64_t n, std::int64_t win0, std::int64_t win1,
                                               __m512 (&sums)[R]) {
    using L = layout_traits<P::storage>;
    constexpr int group = P::group;
    static_assert(group >= 64, "the AVX512-BF16 GEMV looks up at most two blocks per window (32 words)");
    constexpr int blocks_per_window = 128 > group ? 128 / group : 1;
    constexpr int windows_per_block = group > 128 ? group / 128 : 1;
    // word w belongs to block (2w) / (group / 2) of the window: add 16 to its index for block 1
    const __m512i block_offset = blocks_per_window == 2
                                     ? _mm512_set_epi64(0x0010001000100010, 0x0010001000100010, 0x0010001000100010,
                                                        0x0010001000100010, 0, 0, 0, 0)
                                     : _mm512_setzero_si512();
    const __m512i nibble = _mm512_set1_epi16(0x000F);
    const std::uint8_t* codes = row_codes<P, A>(w, n);
    static_assert(lookups == 4);
    // chains per row: at least 4 accumulators in all (vdpbf16ps latency), at most 8 (registers)
    constexpr int C = R == 1 ? 4 : R == 2 ? 4 : R <= 4 ? 2 : 1;
    __m512 acc[R * C];
#pragma GCC unroll 32
    for (int a = 0; a < R * C; ++a) acc[a] = _mm512_setzero_ps();
    float buf[scale_chunk];
    constexpr std::int64_t windows_per_chunk = scale_chunk / blocks_per_window * windows_per_block;
    for (std::int64_t c0 = win0; c0 < win1; c0 += windows_per_chunk) {
        const std::int64_t c1 = win1 - c0 < windows_per_chunk ? win1 : c0 + windows_per_chunk;
        const std::int64_t first_block = c0 / windows_per_block * blocks_per_window;
        const int nb = static_cast<int>((c1 - c0) * blocks_per_window / windows_per_block);
        const float* scales = L::template row_scales<P, A>(w, n, first_block, nb, buf);
        __m512i table = _mm512_setzero_si512();
        for (std::int64_t win = c0; win < c1; ++win) {
            const std::int64_t b = win / windows_per_block * blocks_per_window - first_block;
            if (win % windows_per_block == 0) {
                const __m512 s0 = _mm512_set1_ps(scales[b]);
                const __m512 s1 = blocks_per_window == 2 ? _mm512_set1_ps(scales[b + 1]) : s0;
                const __m512bh t = _mm512_cvtne2ps_pbh(_mm512_mul_ps(values, s1), _mm512_mul_ps(values, s0));
                table = reinterpret_cast<const __m512i&>(t);
            }
            simd::prefetch_ahead(codes + win * 64);  // cold bnb rows with their scales: half the speed without
            const __m512i c = _mm512_loadu_si512(codes + win * 64);
            const std::uint16_t* xw = xb + win * lookups * R * words;
            // lookup q: the nibble at bit 4q of each word, each lookup's products right after it
            // (the GEMV's order: all four lookups first made the cold NF4 GEMV 2-4% slower).
            // Plain loops, not lambdas: GCC kept accumulator arrays captured by a lambda in memory.
#pragma GCC unroll 4
            for (int q = 0; q < lookups; ++q) {
                __m512i idx = q == 0 ? c : _mm512_srli_epi16(c, 4 * q);
                if (q < 3) idx = _mm512_ternarylogic_epi32(idx, nibble, block_offset, 0xEA);  // (a & b) | c
                else idx = _mm512_or_si512(idx, block_offset);
                const __m512i wq = _mm512_permutexvar_epi16(idx, table);
#pragma GCC unroll 8
                for (int r = 0; r < R; ++r) {
                    const __m512i xq = _mm512_loadu_si512(xw + (q * R + r) * words);
                    __m512& a = acc[r * C + q % C];
                    a = _mm512_dpbf16_ps(a, (__m512bh)wq, (__m512bh)xq);
                }
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
        const __m512* a = acc + r * C;
        if constexpr (C == 4) sums[r] = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
        else if constexpr (C == 2) sums[r] = _mm512_add_ps(a[0], a[1]);
        else sums[r] = a[0];
    }
}

// GEMM operands f32 -> bf16 words with vcvtneps2bf16 (len a multiple of 16). Unlike
// simd::to_bf16 (dequantize outputs, exact to_bf16) it flushes subnormals, as vdpbf16ps does anyway.
template <class A>
void operands(const float* in, std::int64_t len, std::uint16_t* out) {
    for (std::int64_t i = 0; i < len; i += 16) {
        const __m256bh b = _mm512_cvtneps_pbh(_mm512_loadu_ps(in + i));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), reinterpret_cast<const __m256i&>(b));
    }
}

// A panel row of 4-bit codes as bf16 words (table_rows, f32.hpp): per block the table rounded
// to bf16 (as bf16::operands rounds the dequantized weights), twice (a 32-word vpermw table: the
// index bit 4 is then free), and one lookup per 32 weights.
template <class P, class A>
void table_row(const weights_view& w, const float* values, std::int64_t n, std::int64_t k0, std::int64_t kc,
               std::uint16_t* out) {
    constexpr bool interleaved = layout_traits<P::storage>::interleaved;
    // word e of the 32 (from 16 code bytes): its byte, and the shift to its nibble
    const __m512i byte = interleaved ? _mm512_set_epi16(15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8, 7, 7,
                                                        6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0)
                                     : _mm512_set_epi16(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13,
                                                        12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i shift = interleaved ? _mm512_set1_epi32(4)  // even words: the high nibble
                                      : _mm512_set_epi64(0x0004000400040004, 0x0004000400040004, 0x0004000400040004,
                                                         0x0004000400040004, 0, 0, 0, 0);
    each_span_table<P, A>(w, values, n, k0, kc, [&](__m128i c, std::int64_t e, __m512 t) {
        const __m512bh tb = _mm512_cvtne2ps_pbh(t, t);
        const __m512i words = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(c));
        const __m512i idx = _mm512_srlv_epi16(_mm512_permutexvar_epi16(byte, words), shift);
        _mm512_storeu_si512(out + e, _mm512_permutexvar_epi16(idx, reinterpret_cast<const __m512i&>(tb)));
    });
}

// X rows [i0, i0 + 32) (rows past m: zeros) as bf16 pairs for vdpbf16ps: xp[(k / 2) * 64 + 2 i + k % 2].
template <class A>
void pack_x(const float* x, std::int64_t m, std::int64_t k, std::int64_t i0, std::uint32_t* xp) {
    constexpr int rows = 32;
    for (std::int64_t i = i0; i < i0 + rows; ++i) {
        std::uint32_t* out = xp + (i - i0);
        if (i >= m) {
            for (std::int64_t p = 0; p < k / 2; ++p) out[p * rows] = 0;
            continue;
        }
        alignas(64) std::uint32_t pairs[8];  // 16 words
        for (std::int64_t c = 0; c < k; c += 16) {
            operands<A>(x + i * k + c, 16, reinterpret_cast<std::uint16_t*>(pairs));
            for (int p = 0; p < 8; ++p) out[(c / 2 + p) * rows] = pairs[p];
        }
    }
}

// out[j * 32 + i] (+)= sum_{k < kc} w[j * LD + k] xp[k][i] for the NR W rows j (bf16 words) and VR
// vectors of 16 X rows i (pairs of k, pack_x); kc even. Each W pair is one broadcast dword.
template <class A, int VR, int NR, std::int64_t LD>
void gemm_tile(const std::uint32_t* xp, const std::uint16_t* w, std::int64_t kc, bool add, float* out) {
    __m512 acc[NR][VR];
    simd::unroll<NR>([&](auto j) {
        simd::unroll<VR>([&](auto v) { acc[j][v] = add ? _mm512_load_ps(out + j * 32 + v * 16) : _mm512_setzero_ps(); });
    });
    for (std::int64_t k = 0; k < kc; k += 2) {
        __m512i xv[VR];
        simd::unroll<VR>([&](auto v) { xv[v] = _mm512_load_si512(xp + k * 16 + v * 16); });
        simd::unroll<NR>([&](auto j) {
            std::uint32_t pair;
            std::memcpy(&pair, w + j * LD + k, sizeof pair);
            const __m512i wv = _mm512_set1_epi32(static_cast<int>(pair));
            simd::unroll<VR>([&](auto v) {
                acc[j][v] = _mm512_dpbf16_ps(acc[j][v], reinterpret_cast<const __m512bh&>(xv[v]),
                                             reinterpret_cast<const __m512bh&>(wv));
            });
        });
    }
    simd::unroll<NR>([&](auto j) { simd::unroll<VR>([&](auto v) { _mm512_store_ps(out + j * 32 + v * 16, acc[j][v]); }); });
}

}  // namespace bf16

// The most X rows that one pass over a W row serves (more: further passes over the row, in L1).
inline constexpr int bf16_rows_mr = 8;
// Up to this M the GEMM runs gemm_bf16_rows. Measured on NF4 b64 4096 x 11008, 1 thread, cold
// (alternated with the previous code: a GEMV per row up to M = 8, then the tiles of f32.hpp):
// M = 2 / 4 / 8 took 0.7 / 0.65-0.75 / 0.7-0.8 of the time; at M = 16 the tiles are faster (11.5
// against 14-16 ms).
inline constexpr std::int64_t gemm_bf16_rows_max = 8;

// Y = X W^T for m rows of X (the GEMV: m = 1) on the AVX512-BF16 path, W read once: per W row,
// tiles of up to bf16_rows_mr X rows (powers of two: fewer instantiations), K in passes over all
// rows (row_passes, gemm_tiles.hpp); tail blocks (K not a multiple of 128) in scalar code.
template <class P, class A>
void gemm_bf16_rows(const weights_view& w, const float* x, std::int64_t m, const float* bias, float* y,
                    std::int64_t ldy, std::int64_t n0, std::int64_t n1) {
    using L = layout_traits<P::storage>;
    constexpr int MR = bf16_rows_mr;
    const std::int64_t k = w.cols, windows = k / 128, tail0 = windows * 128, ldx = windows * 128;
    auto* xb = static_cast<std::uint16_t*>(
        simd::scratch<A, 0>::get(static_cast<std::size_t>(m * ldx + 32) * sizeof(std::uint16_t)));
    each_row_tile<MR>(m, [&](auto mt, std::int64_t i0) {  // each tile's rows side by side
        for (int r = 0; r < mt; ++r) bf16::permute_x<P, A>(windows, x + (i0 + r) * k, xb + i0 * ldx, r, mt);
    });
    alignas(64) float values[16];
    code_traits<P::type>::template values<A>(w, values);
    const __m512 value_vector = _mm512_load_ps(values);
    const std::int64_t tail_blocks = (k - tail0) / P::group;
    const auto tail = [&](std::int64_t i, std::int64_t n) {
        float v = 0.0f, buf[scale_chunk];
        const std::uint8_t* row = row_codes<P, A>(w, n);
        const float* sc = L::template row_scales<P, A>(w, n, tail0 / P::group, static_cast<int>(tail_blocks), buf);
        const float* xi = x + i * k;
        for (std::int64_t c = tail0; c < k; ++c)
            v += simd::round_bf16<A>(values[L::template code_at<A>(row, k, c)] * sc[(c - tail0) / P::group]) *
                 simd::round_bf16<A>(xi[c]);
        return v;
    };
    // windows per pass: a multiple of a block's (blocks of more than 128)
    constexpr std::int64_t unit = P::group > 128 ? P::group / 128 : 1;
    each_row_tile<MR>(m, [&](auto mt, std::int64_t i0) {
        const std::int64_t per_pass = row_pass_units(windows, mt * 128 * sizeof(std::uint16_t), unit, 32 * 1024);
        row_passes(windows, per_pass, [&](std::int64_t p0, std::int64_t p1, bool first, bool last) {
            for (std::int64_t n = n0; n < n1; ++n) {
                if (!(first && last)) prefetch_row_span<P, A>(w, n + 4, n1, p0 * 128, p1 * 128);
                float dots[mt];
                if (p1 > p0) {
                    __m512 sums[mt];
                    bf16::row_windows<P, A, mt>(w, value_vector, xb + i0 * ldx, n, p0, p1, sums);
                    if constexpr (mt == 1) dots[0] = _mm512_reduce_add_ps(sums[0]);  // the GEMV's sum
                    else reduce_rows<A, mt>(sums, dots);
                } else {
                    for (int i = 0; i < mt; ++i) dots[i] = 0.0f;
                }
                for (int i = 0; i < mt; ++i) {
                    float v = dots[i];
                    if (last && tail_blocks > 0) v += tail(i0 + i, n);
                    float& out = y[(i0 + i) * ldy + n];
                    out = first ? (bias ? v + bias[n] : v) : out + v;
                }
            }
        });
    });
}

template <class P, class A>
void gemv_bf16(const weights_view& w, const float* x, const float* bias, float* y, std::int64_t n0, std::int64_t n1) {
    gemm_bf16_rows<P, A>(w, x, 1, bias, y, 0, n0, n1);
}

}  // namespace qforge::kernels

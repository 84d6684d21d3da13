// The i8 GEMM on AVX512-VNNI: the same arithmetic as i8.hpp (activations quantized per block,
// exact integer block sums, one f32 scale product per block), organised for reuse of W.
//
// Per panel of 32 output rows and K slice, W is decoded once into u8 levels (level + 128) in a
// row-interleaved layout: for each quad of K (4 elements) the 4 bytes of all 32 rows, two zmm
// registers. Each X row contributes its quad as one broadcast dword, so one vpdpbusd computes 4
// products for 16 output rows, and a block's integer sums end up in registers indexed by output
// row: the per-block f32 work (convert, scale, FMA) is 1 op per 16 rows instead of per row.
// The +128 of the weights is removed with -128 * sum(xq) per (X row, block), as in i8.hpp.
// Asymmetric integers (levels = codes) also subtract zero * sum(xq) per (row, block) in f32, exact
// as in i8.hpp, with the zero points of the panel's rows spread over lanes as the scales are.
// MR rows of X times 32 rows of W per register tile (12 int32 + 12 f32 accumulators).
// For few rows of X (4-bit codes without zero points) the panel is not stored but decoded into
// the registers of the dots, 16 rows at a time (stream_half, gemm_i8_stream).
// 8-bit integers (format_int8.hpp) are their own u8 levels + 128 (code - 128 is the int_sym
// level); int_asym's zero points enter as zero - 128 for the same reason.
#pragma once

#include <qforge/kernels/impl/format_int8.hpp>
#include <qforge/kernels/impl/i8.hpp>

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace qforge::kernels::vnni_gemm {

// The formats it serves: the 4-bit framework's codes (nibbles, packed 2-bit and 3-bit
// integers, symmetric or with zero points) and 8-bit integers.
template <class P, class A>
inline constexpr bool applies = simd::has_vnni<A> && P::act == compute::i8 &&
                                (P::bits == 4 || (P::storage == layout::qforge && P::bits < 4) || int8_policy<P>);

// The tile's blocks are gemm_block<P> (dequantize.hpp): per channel (8-bit integers), runs of 32
// elements that share the row's scale and zero point and the X row's activation scale (X is
// quantized per whole row).

inline constexpr int panel_rows = 32;        // two zmm of int32 lanes
inline constexpr int max_mr = 6;             // X rows per register tile
inline constexpr std::int64_t k_slice = 4096;  // K per panel: 32 x 4096 bytes of levels stay in L2

// Transposes a 16 x 16 matrix of dwords held in t[0..16) (row i in t[i]).
template <class A>
inline void transpose16(__m512i (&t)[16]) {
    __m512i a[16], b[16];
    for (int i = 0; i < 16; i += 2) {
        a[i] = _mm512_unpacklo_epi32(t[i], t[i + 1]);
        a[i + 1] = _mm512_unpackhi_epi32(t[i], t[i + 1]);
    }
    // b[4g + c]: rows 4g..4g+3 of columns c, c+4, c+8, c+12 (one per 128-bit lane)
    for (int g = 0; g < 16; g += 4) {
        b[g] = _mm512_unpacklo_epi64(a[g], a[g + 2]);
        b[g + 1] = _mm512_unpackhi_epi64(a[g], a[g + 2]);
        b[g + 2] = _mm512_unpacklo_epi64(a[g + 1], a[g + 3]);
        b[g + 3] = _mm512_unpackhi_epi64(a[g + 1], a[g + 3]);
    }
    for (int c = 0; c < 4; ++c) {
        const __m512i d0 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0x88);   // col c, c+8 of rows 0-7
        const __m512i d1 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0xDD);   // col c+4, c+12 of rows 0-7
        const __m512i d2 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0x88);  // rows 8-15
        const __m512i d3 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0xDD);
        t[c] = _mm512_shuffle_i32x4(d0, d2, 0x88);
        t[c + 8] = _mm512_shuffle_i32x4(d0, d2, 0xDD);
        t[c + 4] = _mm512_shuffle_i32x4(d1, d3, 0x88);
        t[c + 12] = _mm512_shuffle_i32x4(d1, d3, 0xDD);
    }
}

// One X row: int8 levels in natural order, per block the activation scale and -128 * sum.
template <class P, class A>
void quantize_row(const float* x, std::int64_t k, std::int8_t* q, float* xs, std::int32_t* corr) {
    if constexpr (P::group == per_channel) {  // one scale for the row, as the GEMV; a sum per block of 32
        std::int32_t total;
        const float scale = quantize_block<A>(x, k, q, total);
        for (std::int64_t b = 0; b < k / gemm_block<P>; ++b) {
            std::int32_t sum = 0;
            for (std::int64_t i = b * gemm_block<P>; i < (b + 1) * gemm_block<P>; ++i) sum += q[i];
            xs[b] = scale;
            corr[b] = -128 * sum;
        }
    } else {
        for (std::int64_t b = 0; b < k / P::group; ++b) {
            std::int32_t sum = 0;
            xs[b] = quantize_block<A>(x + b * P::group, P::group, q + b * P::group, sum);
            corr[b] = -128 * sum;
        }
    }
}

// Elements [k0, k0 + len) of row n of 3-bit codes (qforge split3) as u8 levels + 128 in natural
// order (len: whole blocks).
template <class P, class A>
void decode_row(const weights_view& w, const i8_levels<P, A>& lv, std::int64_t n, std::int64_t k0, std::int64_t len,
                std::uint8_t* out) {
    static_assert(split_planes<P>, "the other codes are decoded after their transpose (decode_panel)");
    alignas(16) std::uint8_t lut_bytes[16];
    for (int c = 0; c < 16; ++c) lut_bytes[c] = static_cast<std::uint8_t>(lv.level[c] + 128);
    const __m128i lut = _mm_load_si128(reinterpret_cast<const __m128i*>(lut_bytes));
    constexpr int bits = field_bits<P>, parts = codes_per_byte<P>, span = span_elems<P>;
    const __m128i mask = _mm_set1_epi8((1 << bits) - 1);
    const std::uint8_t* codes = row_codes<P, A>(w, n);
    for (std::int64_t c = 0; c < len / span; ++c) {  // 16 code bytes: one span of elements
        const window_codes wc = window_at<P, A, 16>(codes, w.cols, k0 / span + c);
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wc.low));
        simd::unroll<parts>([&](auto p) {  // code p of the 16 bytes is elements 16p .. 16p + 15
            __m128i code = _mm_and_si128(p == 0 ? v : _mm_srli_epi16(v, bits * p), mask);
            code = simd::add_bit_bytes16<4, A>(code, wc.high + p * wc.high_stride);
            _mm_storeu_si128(reinterpret_cast<__m128i*>(out + span * c + 16 * p), _mm_shuffle_epi8(lut, code));
        });
    }
}

// The panel of rows [p0, min(p0 + 32, n1)) and K slice [k0, k0 + len): levels interleaved by quad
// (panel[(quad * 32 + row) * 4 + byte]) and f32 weight scales per block (scales[block * 32 + row]),
// int_asym also the zero points (zeros, the same layout). Rows past the end have scale 0 and the
// levels of any valid row (their outputs are never stored). The panel holds stride<P>(len)
// levels per row: whole 64-byte chunks of codes.
template <class P>
inline std::int64_t stride(std::int64_t len) {
    constexpr std::int64_t chunk = 64 * codes_per_byte<P>;
    return (len + chunk - 1) / chunk * chunk;
}

// Quad (4 elements) of the 64-byte chunk of codes that code field p of the chunk's dword d holds.
template <class P>
constexpr int quad_of(int d, int p) {
    if constexpr (layout_traits<P::storage>::interleaved) return 2 * d + p;  // byte j: elements 2j, 2j + 1
    else return d / 4 * 4 * codes_per_byte<P> + 4 * p + d % 4;             // byte j of a span: 16p + j
}

// The u8 levels (+ 128) of one dword of codes per row (t: 16 rows, dword r is row r's), one
// register per code field p, handed to store(p, levels).
template <class P, class A, class Store>
[[gnu::always_inline]] inline void decode_dword(__m512i t, __m512i lut, Store&& store) {
    constexpr int bits = field_bits<P>, parts = codes_per_byte<P>;
    if constexpr (int8_policy<P>) {
        store(0, t);
    } else if constexpr (layout_traits<P::storage>::interleaved) {  // the high nibble is the even element
        const __m512i mask = _mm512_set1_epi8(0x0F);
        const __m512i even = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(t, 4), mask));
        const __m512i odd = _mm512_shuffle_epi8(lut, _mm512_and_si512(t, mask));
        // per 128-bit lane: rows 4c, 4c + 1 as (quad 2d, quad 2d + 1), then rows 4c + 2, 4c + 3
        const __m512 lo = _mm512_castsi512_ps(_mm512_unpacklo_epi8(even, odd));
        const __m512 hi = _mm512_castsi512_ps(_mm512_unpackhi_epi8(even, odd));
        store(0, _mm512_castps_si512(_mm512_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0))));
        store(1, _mm512_castps_si512(_mm512_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1))));
    } else {
        const __m512i mask = _mm512_set1_epi8((1 << bits) - 1);
        simd::unroll<parts>([&](auto p) {
            const __m512i code = _mm512_and_si512(p == 0 ? t : _mm512_srli_epi16(t, bits * p), mask);
            store(p, _mm512_shuffle_epi8(lut, code));
        });
    }
}

// The panel's f32 weight scales per block (scales[block * 32 + row]) and int_asym zero points
// (zeros, the same layout) of the K slice [k0, k0 + len); rows past the end have scale 0.
// Always inlined: out of line, the stored-panel GEMM of the table formats took 1.5-2.5% longer at
// M = 12, 16 (W in L2).
template <class P, class A>
[[gnu::always_inline]] inline void panel_scales(const weights_view& w, std::int64_t p0, std::int64_t n1, std::int64_t k0, std::int64_t len, float* scales,
                  float* zeros) {
    const int rows = static_cast<int>(n1 - p0 < panel_rows ? n1 - p0 : panel_rows);
    const std::int64_t blocks = len / gemm_block<P>;
    for (int r = 0; r < panel_rows; ++r) {
        constexpr float shift = int8_policy<P> ? 128.0f : 0.0f;  // see the header
        if (r < rows)
            each_block_scale<P, A>(w, p0 + r, k0 / gemm_block<P>, blocks, [&](std::int64_t b, float scale, float zero) {
                scales[b * panel_rows + r] = scale;
                if constexpr (has_zeros<P>) zeros[b * panel_rows + r] = zero - shift;
            });
        else
            for (std::int64_t b = 0; b < blocks; ++b) {
                scales[b * panel_rows + r] = 0.0f;
                if constexpr (has_zeros<P>) zeros[b * panel_rows + r] = 0.0f;
            }
    }
    // the next panel's scales (and zero points) are fetched while this one's tiles compute
    const row_parts per_row = row_bytes(P::cfg, w.cols);
    for (std::int64_t n = p0 + panel_rows; n < n1 && n < p0 + 2 * panel_rows; ++n) {
        const auto* sc = row_blocks<P, std::uint8_t>(w, w.scales, n, 0);
        for (std::int64_t b = 0; b < per_row.scales; b += 64) _mm_prefetch(reinterpret_cast<const char*>(sc + b), _MM_HINT_T1);
        if constexpr (has_zeros<P>) {
            const auto* z = row_blocks<P, std::uint8_t>(w, w.zeros, n, 0);
            for (std::int64_t b = 0; b < per_row.zeros; b += 64) _mm_prefetch(reinterpret_cast<const char*>(z + b), _MM_HINT_T1);
        }
    }
}

// The u8 levels + 128 of the 16 codes in every 128-bit lane (the table of decode_dword).
template <class P, class A>
inline __m512i level_lut(const i8_levels<P, A>& lv) {
    alignas(16) std::uint8_t bytes[16];
    for (int c = 0; c < 16; ++c) bytes[c] = static_cast<std::uint8_t>(lv.level[c] + 128);
    return _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(bytes)));
}

// natural: 32 rows of stride<P>(len) bytes of scratch (3-bit codes only).
template <class P, class A>
void decode_panel(const weights_view& w, const i8_levels<P, A>& lv, std::int64_t p0, std::int64_t n1, std::int64_t k0,
                  std::int64_t len, [[maybe_unused]] std::uint8_t* natural, std::uint8_t* panel, float* scales,
                  float* zeros) {
    const int rows = static_cast<int>(n1 - p0 < panel_rows ? n1 - p0 : panel_rows);
    panel_scales<P, A>(w, p0, n1, k0, len, scales, zeros);
    if constexpr (split_planes<P>) {
        const std::int64_t ld = stride<P>(len);
        // 3-bit codes: rows decoded in natural order, then 16 x 16 dword transposes (16 rows of
        // 16 quads -> 16 quads of 16 rows)
        for (int r = 0; r < panel_rows; ++r) decode_row<P, A>(w, lv, p0 + (r < rows ? r : 0), k0, len, natural + r * ld);
        for (int half = 0; half < 2; ++half)
            for (std::int64_t q0 = 0; q0 < ld / 4; q0 += 16) {
                __m512i t[16];
                for (int r = 0; r < 16; ++r) t[r] = _mm512_loadu_si512(natural + (half * 16 + r) * ld + q0 * 4);
                transpose16<A>(t);
                for (int i = 0; i < 16; ++i) _mm512_storeu_si512(panel + ((q0 + i) * panel_rows + half * 16) * 4, t[i]);
            }
    } else {
        // The codes are transposed instead (16 rows of 16 code dwords -> 16 dwords of 16 rows),
        // then decoded 64 levels per instruction: a quarter (4-bit codes) of the shuffles of
        // transposing levels, and no pass through memory in natural order.
        const __m512i lut = level_lut<P, A>(lv);
        constexpr std::int64_t chunk_quads = 16 * codes_per_byte<P>;
        const std::int64_t code_bytes = len * code_bits<P> / 8, first = k0 * code_bits<P> / 8;
        for (int half = 0; half < 2; ++half) {
            // the next panel's codes are prefetched a chunk at a time with this one's: they arrive
            // while the tiles compute (from memory, they stalled the decode)
            const std::uint8_t *src[16], *ahead[16];
            for (int r = 0; r < 16; ++r) {
                const int row = half * 16 + r;
                src[r] = row_codes<P, A>(w, p0 + (row < rows ? row : 0)) + first;
                ahead[r] = p0 + panel_rows + row < n1 ? row_codes<P, A>(w, p0 + panel_rows + row) + first : src[r];
            }
            for (std::int64_t c = 0; c * 64 < code_bytes; ++c) {
                const std::int64_t left = code_bytes - 64 * c;  // the slice's last chunk may be short
                const __mmask64 m = left >= 64 ? ~__mmask64{0} : (__mmask64{1} << left) - 1;
                __m512i t[16];
                for (int r = 0; r < 16; ++r) {
                    t[r] = _mm512_maskz_loadu_epi8(m, src[r] + 64 * c);
                    _mm_prefetch(reinterpret_cast<const char*>(ahead[r] + 64 * c), _MM_HINT_T1);
                }
                transpose16<A>(t);
                std::uint8_t* out = panel + (c * chunk_quads * panel_rows + half * 16) * 4;
                simd::unroll<16>([&](auto d) {
                    decode_dword<P, A>(t[d], lut, [&](int p, __m512i v) {
                        _mm512_storeu_si512(out + quad_of<P>(d, p) * panel_rows * 4, v);
                    });
                });
            }
        }
    }
}

// The quantized rows of X (quantize_row): levels, k per row, and per block of each row the
// activation scale and the correction.
struct x_rows {
    std::int8_t* q;
    float* xs;
    std::int32_t* corr;
};

// One prepared X row for a K slice.
struct x_row {
    const std::int8_t* q;       // levels from the slice start
    const float* xs;            // per block of the slice
    const std::int32_t* corr;   // per block: -128 * sum of the block's levels
};

// out[i][r] = sum over the blocks of the slice of the panel's row r against X row i.
template <class P, class A, int MR>
void tile(const std::uint8_t* panel, const float* wscales, [[maybe_unused]] const float* wzeros, const x_row* x,
          std::int64_t blocks, float (&out)[MR][panel_rows]) {
    constexpr int quads = gemm_block<P> / 4;
    constexpr int unrolled_quads = 8;
    static_assert(quads % unrolled_quads == 0, "groups are multiples of 32");
    __m512 acc[MR][2];
    for (auto& a : acc) a[0] = a[1] = _mm512_setzero_ps();
    for (std::int64_t b = 0; b < blocks; ++b) {
        __m512i dots[MR][2];
        simd::unroll<MR>([&](auto i) { dots[i][0] = dots[i][1] = _mm512_set1_epi32(x[i].corr[b]); });
        // 8 quads unrolled (32 K): a whole group 128 unrolled measured 2.7x slower (code size)
        for (int q0 = 0; q0 < quads; q0 += unrolled_quads) {
            const std::uint8_t* wb = panel + (b * quads + q0) * panel_rows * 4;
            const std::int64_t xk = b * gemm_block<P> + 4 * q0;
            simd::unroll<unrolled_quads>([&](auto q) {
                const __m512i w0 = _mm512_loadu_si512(wb + q * panel_rows * 4);
                const __m512i w1 = _mm512_loadu_si512(wb + q * panel_rows * 4 + 64);
                simd::unroll<MR>([&](auto i) {
                    std::int32_t quad;
                    std::memcpy(&quad, x[i].q + xk + 4 * q, sizeof quad);
                    const __m512i xv = _mm512_set1_epi32(quad);
                    dots[i][0] = _mm512_dpbusd_epi32(dots[i][0], w0, xv);
                    dots[i][1] = _mm512_dpbusd_epi32(dots[i][1], w1, xv);
                });
            });
        }
        const __m512 ws0 = _mm512_loadu_ps(wscales + b * panel_rows), ws1 = _mm512_loadu_ps(wscales + b * panel_rows + 16);
        [[maybe_unused]] __m512 zs0, zs1;
        if constexpr (has_zeros<P>) {
            zs0 = _mm512_loadu_ps(wzeros + b * panel_rows);
            zs1 = _mm512_loadu_ps(wzeros + b * panel_rows + 16);
        }
        simd::unroll<MR>([&](auto i) {
            const __m512 xs = _mm512_set1_ps(x[i].xs[b]);
            __m512 d0 = _mm512_cvtepi32_ps(dots[i][0]), d1 = _mm512_cvtepi32_ps(dots[i][1]);
            if constexpr (has_zeros<P>) {  // + zero * (-sum(xq)): exact integers in f32
                const __m512 neg_sum = _mm512_set1_ps(static_cast<float>(x[i].corr[b] / 128));
                d0 = _mm512_fmadd_ps(zs0, neg_sum, d0);
                d1 = _mm512_fmadd_ps(zs1, neg_sum, d1);
            }
            acc[i][0] = _mm512_fmadd_ps(d0, _mm512_mul_ps(ws0, xs), acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(d1, _mm512_mul_ps(ws1, xs), acc[i][1]);
        });
    }
    const __m512 inv = _mm512_set1_ps(code_traits<P::type>::i8_scale);
    for (int i = 0; i < MR; ++i) {
        _mm512_storeu_ps(out[i], _mm512_div_ps(acc[i][0], inv));
        _mm512_storeu_ps(out[i] + 16, _mm512_div_ps(acc[i][1], inv));
    }
}

// The streamed GEMM (gemm_i8_stream) for few rows of X: the panel is not stored; each 64-byte
// chunk of codes of 16 rows is transposed and decoded straight into the registers that feed
// vpdpbusd, which saves the panel's stores and reloads (4-bit codes: a chunk holds whole blocks
// of at most 128 elements). With zero points (int4 asym g32 / g128) it was no faster than the
// row kernel and the stored panels (g32 M = 3: 3.29 against 2.72 ms): those keep them.
template <class P>
inline constexpr bool streams = P::bits == 4 && !split_planes<P> && !int8_policy<P> && !has_zeros<P> && gemm_block<P> <= 128;
// The M it serves. 4096 x 11008 cold, 1 thread, alternated with the row kernel (M <= 4 int4,
// <= 3 NF4) and the stored panels: int4 g128 M = 4 2.27 -> 1.59 ms, M = 8 3.16 -> 2.59; NF4 b64
// M = 4 2.48 -> 2.10, M = 8 3.40 -> 2.95. At M = 2 (W from memory, N = 11008 hot) int4 g128
// 1.09 against 1.19 for the row kernel, but int4 g32 1.74 against 1.54 (W in L2: four blocks per
// chunk) and NF4 b64 1.59 against 1.51 (its table lookups cost more than int_sym's none). From
// M = 9 on, decoding W twice lost to the stored panels (M = 16: 5.2 against 4.9 ms, W in L2).
template <class P>
inline constexpr std::int64_t stream_min_rows = P::type == dtype::int_sym && P::group >= 128 ? 2 : 3;
inline constexpr std::int64_t stream_max_rows = 8;  // in one pass: 16 codes + 8 dots + 3 in 32 zmm

// out[i][r] = the sums of rows [h0, h0 + 16) (16 chunk pointers src, the next rows' ahead) over
// `chunks` chunks of codes against X row i; wscales: this half's columns of the panel's.
// Flattened: GCC left the lambdas of the unrolled dwords out of line (M = 2: 3.5 instead of 1.5 ms).
// Tried and dropped (W in L2): the 128-bit lanes placed by masked broadcast loads, then 4 x 4
// transposes within lanes (half the shuffles): M = 1, 2 8-15% slower, M = 4, 8 within 3%; four
// dot registers per X row at M <= 2: M = 2 1.14 against 1.07 ms.
template <class P, class A, int MR>
[[gnu::flatten]] void stream_half(const std::uint8_t* const (&src)[16], const std::uint8_t* const (&ahead)[16], __m512i lut,
                 std::int64_t chunks, const float* wscales, const x_row* x,
                 float* const (&out)[MR]) {
    constexpr int per_chunk = 128 / gemm_block<P>;    // blocks
    constexpr int chains = MR <= 4 ? 2 : 1;           // dot registers per X row (vpdpbusd latency)
    // int_sym: the codes are the levels + 8, as in i8.hpp: no table, and the correction -8 sum(xq)
    // (exact: corr = -128 sum(xq))
    constexpr bool raw = P::type == dtype::int_sym;
    static_assert(!raw || !layout_traits<P::storage>::interleaved, "code field p of a byte is element 16p + j");
    constexpr int offset = raw ? 1 << (P::bits - 1) : 128;
    __m512 acc[MR];
    for (auto& a : acc) a = _mm512_setzero_ps();
    for (std::int64_t c = 0; c < chunks; ++c) {
        __m512i t[16];
        for (int r = 0; r < 16; ++r) {
            t[r] = _mm512_loadu_si512(src[r] + 64 * c);
            _mm_prefetch(reinterpret_cast<const char*>(ahead[r] + 64 * c), _MM_HINT_T1);
        }
        transpose16<A>(t);
        simd::unroll<per_chunk>([&](auto blk) {
            const std::int64_t b = c * per_chunk + blk;
            __m512i dots[MR][chains];
            simd::unroll<MR>([&](auto i) {
                dots[i][0] = _mm512_set1_epi32(raw ? x[i].corr[b] / 128 * offset : x[i].corr[b]);
                if constexpr (chains > 1) dots[i][1] = _mm512_setzero_si512();
            });
            simd::unroll<16 / per_chunk>([&](auto dd) {
                constexpr int d = blk * (16 / per_chunk) + dd;
                const auto codes = [&](auto&& store) {
                    if constexpr (raw) {
                        const __m512i mask = _mm512_set1_epi8(0x0F);
                        store(0, _mm512_and_si512(t[d], mask));
                        store(1, _mm512_and_si512(_mm512_srli_epi16(t[d], 4), mask));
                    } else {
                        decode_dword<P, A>(t[d], lut, store);
                    }
                };
                codes([&](int p, __m512i v) {
                    simd::unroll<MR>([&](auto i) {
                        std::int32_t quad;
                        std::memcpy(&quad, x[i].q + 128 * c + 4 * quad_of<P>(d, p), sizeof quad);
                        dots[i][p % chains] = _mm512_dpbusd_epi32(dots[i][p % chains], v, _mm512_set1_epi32(quad));
                    });
                });
            });
            const __m512 ws = _mm512_loadu_ps(wscales + b * panel_rows);
            simd::unroll<MR>([&](auto i) {
                __m512i sum = dots[i][0];
                if constexpr (chains > 1) sum = _mm512_add_epi32(sum, dots[i][1]);
                acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(ws, _mm512_set1_ps(x[i].xs[b])), acc[i]);
            });
        });
    }
    const __m512 inv = _mm512_set1_ps(code_traits<P::type>::i8_scale);
    for (int i = 0; i < MR; ++i) _mm512_storeu_ps(out[i], _mm512_div_ps(acc[i], inv));
}

}  // namespace qforge::kernels::vnni_gemm

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

// Elements [k0, k0 + len) of row n as u8 levels + 128 in natural order (len: whole blocks).
template <class P, class A>
void decode_row(const weights_view& w, const i8_levels<P, A>& lv, std::int64_t n, std::int64_t k0, std::int64_t len,
                std::uint8_t* out) {
    using L = layout_traits<P::storage>;
    alignas(16) std::uint8_t lut_bytes[16];
    for (int c = 0; c < 16; ++c) lut_bytes[c] = static_cast<std::uint8_t>(lv.level[c] + 128);
    const __m128i lut = _mm_load_si128(reinterpret_cast<const __m128i*>(lut_bytes));
    constexpr int bits = field_bits<P>, parts = codes_per_byte<P>, span = span_elems<P>;
    const __m128i mask = _mm_set1_epi8((1 << bits) - 1);
    const std::uint8_t* codes = row_codes<P, A>(w, n);
    for (std::int64_t c = 0; c < len / span; ++c) {  // 16 code bytes: one span of elements
        const window_codes wc = window_at<P, A, 16>(codes, w.cols, k0 / span + c);
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wc.low));
        __m128i level[parts];  // qforge: code p of the 16 bytes is elements 16p .. 16p + 15
        simd::unroll<parts>([&](auto p) {
            __m128i code = _mm_and_si128(p == 0 ? v : _mm_srli_epi16(v, bits * p), mask);
            if constexpr (split_planes<P>) code = simd::add_bit_bytes16<4, A>(code, wc.high + p * wc.high_stride);
            level[p] = _mm_shuffle_epi8(lut, code);
        });
        if constexpr (L::interleaved) {  // element 2j in the high nibble of byte j
            const __m128i even_first = _mm_unpacklo_epi8(level[1], level[0]);
            level[1] = _mm_unpackhi_epi8(level[1], level[0]);
            level[0] = even_first;
        }
        for (int p = 0; p < parts; ++p) _mm_storeu_si128(reinterpret_cast<__m128i*>(out + span * c + 16 * p), level[p]);
    }
}

// 8-bit integers: the codes are the levels + 128 already.
template <class P, class A>
    requires int8_policy<P>
void decode_row(const weights_view& w, const i8_levels<P, A>&, std::int64_t n, std::int64_t k0, std::int64_t len,
                std::uint8_t* out) {
    std::memcpy(out, row_codes<P, A>(w, n) + k0, static_cast<std::size_t>(len));
}

// The panel of rows [p0, p0 + rows) and K slice [k0, k0 + len): levels interleaved by quad
// (panel[(quad * 32 + row) * 4 + byte]) and f32 weight scales per block (scales[block * 32 + row]),
// int_asym also the zero points (zeros, the same layout). Rows past the end are level 0 with scale
// 0. natural: 32 rows of stride(len) bytes of scratch.
inline std::int64_t stride(std::int64_t len) { return (len + 63) / 64 * 64; }  // whole 16-quad runs

template <class P, class A>
void decode_panel(const weights_view& w, const i8_levels<P, A>& lv, std::int64_t p0, int rows, std::int64_t k0,
                  std::int64_t len, std::uint8_t* natural, std::uint8_t* panel, float* scales, float* zeros) {
    const std::int64_t blocks = len / gemm_block<P>, ld = stride(len);
    for (int r = 0; r < panel_rows; ++r) {
        std::uint8_t* row = natural + r * ld;
        if (r < rows) {
            decode_row<P, A>(w, lv, p0 + r, k0, len, row);
            constexpr float shift = int8_policy<P> ? 128.0f : 0.0f;  // see the header
            each_block_scale<P, A>(w, p0 + r, k0 / gemm_block<P>, blocks,
                                   [&](std::int64_t b, float scale, float zero) {
                                       scales[b * panel_rows + r] = scale;
                                       if constexpr (has_zeros<P>) zeros[b * panel_rows + r] = zero - shift;
                                   });
        } else {
            std::memset(row, 128, static_cast<std::size_t>(ld));
            for (std::int64_t b = 0; b < blocks; ++b) scales[b * panel_rows + r] = 0.0f;
            if constexpr (has_zeros<P>)
                for (std::int64_t b = 0; b < blocks; ++b) zeros[b * panel_rows + r] = 0.0f;
        }
    }
    // 16 x 16 dword transposes: 16 rows of 16 quads -> 16 quads of 16 rows
    for (int half = 0; half < 2; ++half)
        for (std::int64_t q0 = 0; q0 < ld / 4; q0 += 16) {
            __m512i t[16];
            for (int r = 0; r < 16; ++r) t[r] = _mm512_loadu_si512(natural + (half * 16 + r) * ld + q0 * 4);
            transpose16<A>(t);
            for (int i = 0; i < 16; ++i)
                _mm512_storeu_si512(panel + ((q0 + i) * panel_rows + half * 16) * 4, t[i]);
        }
}

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

}  // namespace qforge::kernels::vnni_gemm

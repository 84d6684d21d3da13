// The i8 path on AVX512-VNNI with W arranged in panels (weight_arrangement::vnni_panels,
// kernels/weights.hpp): the same arithmetic as i8.hpp (activations quantized per block, exact
// integer block sums, one f32 scale step per block), with the codes stored the way vpdpbusd wants
// them. Per panel of 32 rows and pair of activation quads, two zmm of code bytes hold one dword
// per row; an and and a shift (and a vpshufb for table formats) make the u8 levels of 4 elements
// of each of the 32 rows, and one broadcast dword of 4 activations then gives 4 products for 16
// rows per vpdpbusd. Every decoded register feeds the T X rows of a tile, and a block's sums are
// indexed by output row, so its f32 step (convert, scale, FMA) costs 2 ops per X row and 32 rows.
// No transposes and no panel buffer: the arrangement is made once, at load (arrange).
//
// The activations are the prepared rows of the GEMV (i8_row), so a prepared x serves arranged and
// row-layout matrices alike: each pair of code dwords holds the elements whose activations sit at
// 8 consecutive bytes of the prepared row (runs_of), which is what arrange stores.
// Measured (docs/performance.md, "Panels, seventh session" and "eighth session"): NF4 b64 (also
// with double quant) and int4 g128, 4096 x 11008, cold, 1 thread: 0.36-1.01 of the rows' time at
// M = 1-32, 0.94-1.01 at M = 128-512.
#pragma once

#include <qforge/kernels/impl/i8.hpp>

#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>

namespace qforge::kernels::panels {

template <class P, class A>
inline constexpr bool applies = simd::has_vnni<A> && has_vnni_panels(P::cfg);

inline constexpr int rows = static_cast<int>(vnni_panel_rows);  // two zmm of int32 lanes
template <class P>
inline constexpr int scale_bytes = P::storage == layout::qforge ? 2 : 4;  // f16, or bnb4's f32 absmax
template <class P>
using scale_t = std::conditional_t<P::storage == layout::qforge, std::uint16_t, float>;
template <class P>
inline constexpr std::int64_t codes_bytes = rows * P::group / 2;  // of one block
template <class P>
inline constexpr std::int64_t block_bytes = vnni_panel_block_bytes(P::cfg);
// A block: the 32 rows' scales (a multiple of 64 bytes), the codes, then the zero points.
template <class P>
inline constexpr std::int64_t codes_at = rows * scale_bytes<P>;
template <class P>
inline constexpr std::int64_t zeros_at = codes_at<P> + codes_bytes<P>;

// Where block b's activations are in a prepared row (i8_row::q): two runs of group / 2 bytes, from
// `first` and from `second`. Pair d of the block's codes (8 activation bytes) starts at first + 8 d
// for d < group / 16, else at second + 8 (d - group / 16). A window of several blocks holds each
// block's codes in both of its parts (V bytes apart); blocks of whole windows and the tail blocks
// (natural order) are one run.
struct block_runs {
    std::int64_t first, second;
};
template <class P, class A>
[[gnu::always_inline]] inline block_runs runs_of(const i8_shape<P, A>& s, std::int64_t b) {
    using S = i8_shape<P, A>;
    constexpr std::int64_t half = P::group / 2;
    if constexpr (S::W > P::group) {
        static_assert(S::parts == 2, "4-bit codes: two codes per byte");
        if (b < s.steps * S::blocks_per_window) {
            const std::int64_t first = b / S::blocks_per_window * S::W + b % S::blocks_per_window * half;
            return {first, first + S::V};
        }
    }
    return {b * P::group, b * P::group + half};
}

// The element of W's row whose activation is byte j (0 .. 8) of pair d of block b, for every
// (b, d, j) in that order: element_map()[8 (b group / 8 + d) + j] (K values in this thread's
// scratch memory). Checked against the prepared order itself (permute_step). No std containers
// here: code of a kernel TU must not define functions that other ISAs' TUs share (check_symbols).
template <class P, class A>
const std::int64_t* element_map(const i8_shape<P, A>& s) {
    using S = i8_shape<P, A>;
    std::int64_t natural[S::step_elems], order[S::step_elems];
    for (int e = 0; e < S::step_elems; ++e) natural[e] = e;
    permute_step<P, A>(natural, order);
    const std::int64_t full = s.steps * S::step_elems;
    auto* map = static_cast<std::int64_t*>(simd::scratch<A, 5>::get(static_cast<std::size_t>(s.k) * sizeof(std::int64_t)));
    for (std::int64_t b = 0; b < s.blocks; ++b) {
        const block_runs r = runs_of<P, A>(s, b);
        for (int d = 0; d < P::group / 8; ++d)
            for (int j = 0; j < 8; ++j) {
                const std::int64_t pos = (d < P::group / 16 ? r.first + 8 * d : r.second + 8 * (d - P::group / 16)) + j;
                const std::int64_t e = pos < full ? pos / S::step_elems * S::step_elems + order[pos % S::step_elems] : pos;
                if (e / P::group != b)  // a layout change of i8.hpp the panels do not follow
                    throw std::logic_error("vnni panels: a block's prepared activations are not where its codes are");
                map[b * P::group + 8 * d + j] = e;
            }
    }
    return map;
}

// Double quantization: the u8 absmax codes of rows x blocks, after the panels (vnni_panels_bytes).
[[gnu::always_inline]] inline std::int64_t absmax_codes_at(const weights_view& w) {
    return vnni_panels_read_bytes(w.cfg, w.rows, w.cols);
}

// Rows -> panels at out (kernel::arrange_ptr: vnni_panels_bytes, zeroed; qforge::arrange).
template <class P, class A>
void arrange(const weights_view& w, std::uint8_t* out) {
    using L = layout_traits<P::storage>;
    const i8_shape<P, A> s(w.cols);
    const std::int64_t* map = element_map<P, A>(s);
    float* absmax = nullptr;  // double quant: a row's decoded absmax
    if constexpr (P::double_quant)
        absmax = static_cast<float*>(simd::scratch<A, 6>::get(static_cast<std::size_t>(s.blocks) * sizeof(float)));
    for (std::int64_t n = 0; n < w.rows; ++n) {
        const std::uint8_t* codes = row_codes<P, A>(w, n);
        const auto code = [&](std::int64_t e) { return L::template code_at<A, 4>(codes, w.cols, e); };
        const std::int64_t r = n % rows;
        const scale_t<P>* scales;
        if constexpr (P::double_quant) {  // decoded as the rows kernels decode them; the codes kept for unarrange
            scales = L::template row_scales<P, A>(w, n, 0, static_cast<int>(s.blocks), absmax);
            std::memcpy(out + absmax_codes_at(w) + n * s.blocks, row_blocks<P, std::uint8_t>(w, w.scales, n, 0),
                        static_cast<std::size_t>(s.blocks));
        } else {
            scales = row_blocks<P, scale_t<P>>(w, w.scales, n, 0);
        }
        for (std::int64_t b = 0; b < s.blocks; ++b) {
            std::uint8_t* blk = out + (n / rows * s.blocks + b) * block_bytes<P>;
            const std::int64_t* e = map + b * P::group;
            for (int d = 0; d < P::group / 8; ++d, e += 8)
                for (int j = 0; j < 4; ++j) blk[codes_at<P> + d * 4 * rows + r * 4 + j] = static_cast<std::uint8_t>(code(e[j]) | code(e[4 + j]) << 4);
            std::memcpy(blk + r * scale_bytes<P>, scales + b, scale_bytes<P>);
            if constexpr (has_zeros<P>) blk[zeros_at<P> + r] = *row_blocks<P, std::uint8_t>(w, w.zeros, n, b);
        }
    }
}

// Panels -> rows [n0, n1) in the layout of rows_with_scales (row n - n0 at out + (n - n0) stride,
// row_storage): kernel::unarrange_ptr, the dequantize of arranged weights and packed_file::save.
template <class P, class A>
void unarrange(const weights_view& w, std::int64_t n0, std::int64_t n1, std::uint8_t* out) {
    using L = layout_traits<P::storage>;
    const i8_shape<P, A> s(w.cols);
    const std::int64_t* map = element_map<P, A>(s);
    const row_storage rs = row_storage_of(P::cfg, w.cols);
    const row_parts parts = row_bytes(P::cfg, w.cols);
    const auto put = [](std::uint8_t* codes, std::int64_t e, int c) {  // into a zeroed row: code_at's inverse
        const code_slot at = L::template slot_of<4>(e);
        codes[at.byte] = static_cast<std::uint8_t>(codes[at.byte] | c << at.shift);
    };
    for (std::int64_t n = n0; n < n1; ++n) {
        std::uint8_t* row = out + (n - n0) * rs.stride;
        std::memset(row, 0, static_cast<std::size_t>(rs.stride));
        std::uint8_t* codes = row + rs.codes_offset;
        const std::int64_t r = n % rows;
        for (std::int64_t b = 0; b < s.blocks; ++b) {
            const std::uint8_t* blk = w.codes + (n / rows * s.blocks + b) * block_bytes<P>;
            const std::int64_t* e = map + b * P::group;
            for (int d = 0; d < P::group / 8; ++d, e += 8)
                for (int j = 0; j < 4; ++j) {
                    const std::uint8_t byte = blk[codes_at<P> + d * 4 * rows + r * 4 + j];
                    put(codes, e[j], byte & 0x0F);
                    put(codes, e[4 + j], byte >> 4);
                }
            if constexpr (P::double_quant)
                row[b] = w.codes[absmax_codes_at(w) + n * s.blocks + b];
            else
                std::memcpy(row + b * scale_bytes<P>, blk + r * scale_bytes<P>, scale_bytes<P>);
            if constexpr (has_zeros<P>) row[parts.scales + b] = blk[zeros_at<P> + r];
        }
    }
}

// One X row of a tile: its prepared levels, and per block its scale, its sum(xq) and the integer
// term that removes the weights' offset (-offset * sum(xq); 0 with zero points, done in f32).
struct x_row {
    const std::int8_t* q;
    const float* xs;
    const float* qsum;
    const std::int32_t* corr;
};

// acc[i][h] = the sums of X row i against rows 16 h .. 16 h + 15 of the panel (before the division
// by i8_scale). T X rows; C chains of dots per row (about 8 vpdpbusd chains in flight in all).
// next (or null): the panel to prefetch into L2 meanwhile (run_panel).
template <class P, class A, int T, int C>
[[gnu::always_inline]] inline void tile(const std::uint8_t* panel, const i8_shape<P, A>& s, const x_row* x,
                                        const __m512i lut, __m512 (&acc)[T][2], const std::uint8_t* next) {
    constexpr int pairs = P::group / 8, first_pairs = P::group / 16;
    constexpr bool table = code_traits<P::type>::from_table;
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (auto& a : acc) a[0] = a[1] = _mm512_setzero_ps();
    for (std::int64_t b = 0; b < s.blocks; ++b) {
        const std::uint8_t* blk = panel + b * block_bytes<P>;
        const std::uint8_t* codes = blk + codes_at<P>;
        const block_runs runs = runs_of<P, A>(s, b);
        __m512i dots[C][T][2];
        for (int c = 0; c < C; ++c)
            for (int i = 0; i < T; ++i)
                dots[c][i][0] = dots[c][i][1] =
                    c == 0 && !has_zeros<P> ? _mm512_set1_epi32(x[i].corr[b]) : _mm512_setzero_si512();
        const auto pair = [&](int d, int c) __attribute__((always_inline)) {
            const __m512i c0 = _mm512_loadu_si512(codes + d * 4 * rows), c1 = _mm512_loadu_si512(codes + d * 4 * rows + 64);
            __m512i lo0 = _mm512_and_si512(c0, low), lo1 = _mm512_and_si512(c1, low);
            __m512i hi0 = _mm512_and_si512(_mm512_srli_epi16(c0, 4), low);
            __m512i hi1 = _mm512_and_si512(_mm512_srli_epi16(c1, 4), low);
            if constexpr (table) {
                lo0 = _mm512_shuffle_epi8(lut, lo0), lo1 = _mm512_shuffle_epi8(lut, lo1);
                hi0 = _mm512_shuffle_epi8(lut, hi0), hi1 = _mm512_shuffle_epi8(lut, hi1);
            }
            if (next != nullptr) {  // the same block of the next panel into L2: 128 bytes a pair, then the rest
                const char* ahead = reinterpret_cast<const char*>(next + (blk - panel));
                _mm_prefetch(ahead + 128 * d, _MM_HINT_T1);
                _mm_prefetch(ahead + 128 * d + 64, _MM_HINT_T1);
                if (d == 0)
                    for (std::int64_t t = 128 * pairs; t < block_bytes<P>; t += 64) _mm_prefetch(ahead + t, _MM_HINT_T1);
            }
            const std::int64_t pos = d < first_pairs ? runs.first + 8 * d : runs.second + 8 * (d - first_pairs);
#pragma GCC unroll 8
            for (int i = 0; i < T; ++i) {
                std::int32_t qa, qb;
                std::memcpy(&qa, x[i].q + pos, 4);
                std::memcpy(&qb, x[i].q + pos + 4, 4);
                const __m512i xa = _mm512_set1_epi32(qa), xb = _mm512_set1_epi32(qb);
                dots[c][i][0] = _mm512_dpbusd_epi32(dots[c][i][0], lo0, xa);
                dots[c][i][1] = _mm512_dpbusd_epi32(dots[c][i][1], lo1, xa);
                dots[c][i][0] = _mm512_dpbusd_epi32(dots[c][i][0], hi0, xb);
                dots[c][i][1] = _mm512_dpbusd_epi32(dots[c][i][1], hi1, xb);
            }
        };
        // Four pairs per iteration, not a whole block: int4 g128 (16 pairs) took 0.69-0.83 ms at
        // M = 1 and 0.75 at M = 4 this way, against 0.91-1.3 and 1.4 unrolled whole or by 8
        // (4096 x 11008, cold; blocks of 8 pairs ran as fast either way). Measured on Zen 5, not
        // explained (docs/performance.md, "Panels, seventh session").
        constexpr int unroll = pairs < 4 ? pairs : 4;
        static_assert(pairs % unroll == 0 && unroll % C == 0);
#pragma GCC unroll 1
        for (int d0 = 0; d0 < pairs; d0 += unroll)
#pragma GCC unroll 4
            for (int u = 0; u < unroll; ++u) pair(d0 + u, u % C);
        const std::uint8_t* sc = blk;
        __m512 ws0, ws1;
        if constexpr (P::storage == layout::qforge) {
            ws0 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc)));
            ws1 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc + 32)));
        } else {
            ws0 = _mm512_loadu_ps(sc);
            ws1 = _mm512_loadu_ps(sc + 64);
        }
        [[maybe_unused]] __m512 z0, z1;
        if constexpr (has_zeros<P>) {
            const std::uint8_t* z = blk + zeros_at<P>;
            z0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(z))));
            z1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(z + 16))));
        }
        for (int i = 0; i < T; ++i) {
            __m512i d0 = dots[0][i][0], d1 = dots[0][i][1];
            for (int c = 1; c < C; ++c) d0 = _mm512_add_epi32(d0, dots[c][i][0]), d1 = _mm512_add_epi32(d1, dots[c][i][1]);
            __m512 f0 = _mm512_cvtepi32_ps(d0), f1 = _mm512_cvtepi32_ps(d1);
            if constexpr (has_zeros<P>) {  // sum (code - zero) xq = sum code xq - zero sum(xq), exact in f32
                const __m512 qs = _mm512_set1_ps(x[i].qsum[b]);
                f0 = _mm512_fnmadd_ps(z0, qs, f0), f1 = _mm512_fnmadd_ps(z1, qs, f1);
            }
            const __m512 xs = _mm512_set1_ps(x[i].xs[b]);
            acc[i][0] = _mm512_fmadd_ps(f0, _mm512_mul_ps(ws0, xs), acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(f1, _mm512_mul_ps(ws1, xs), acc[i][1]);
        }
        // 8 rows' f32 sums (16 zmm) do not fit next to their 16 integer sums: kept in memory and
        // touched once per block, rather than what the compiler would spill in the pairs' loop.
        if constexpr (T >= 8) asm volatile("" : "+m"(acc));
    }
}

// y[i ldy + n] = acc[i] / i8_scale (+ bias[n]) for the rows n of panel rows [np, np + 32) in [n0, n1).
template <class P, int T>
[[gnu::always_inline]] inline void store(__m512 (&acc)[T][2], const float* bias, float* y, std::int64_t ldy,
                                         std::int64_t np, std::int64_t n0, std::int64_t n1) {
    const std::int64_t lo = n0 > np ? n0 - np : 0, hi = n1 - np < rows ? n1 - np : rows;
    const std::uint32_t mask = static_cast<std::uint32_t>((hi >= 32 ? ~0ull : (1ull << hi) - 1) & ~((1ull << lo) - 1));
    const __mmask16 m0 = static_cast<__mmask16>(mask), m1 = static_cast<__mmask16>(mask >> 16);
    constexpr float i8_scale = code_traits<P::type>::i8_scale;
    const __m512 b0 = bias ? _mm512_maskz_loadu_ps(m0, bias + np) : _mm512_setzero_ps();
    const __m512 b1 = bias ? _mm512_maskz_loadu_ps(m1, bias + np + 16) : _mm512_setzero_ps();
    for (int i = 0; i < T; ++i) {
        __m512 v0 = acc[i][0], v1 = acc[i][1];
        if constexpr (i8_scale != 1.0f) {
            v0 = _mm512_div_ps(v0, _mm512_set1_ps(i8_scale));
            v1 = _mm512_div_ps(v1, _mm512_set1_ps(i8_scale));
        }
        _mm512_mask_storeu_ps(y + i * ldy + np, m0, _mm512_add_ps(v0, b0));
        _mm512_mask_storeu_ps(y + i * ldy + np + 16, m1, _mm512_add_ps(v1, b1));
    }
}

// The table of u8 levels (level + offset) of the 16 codes in every 128-bit lane (table formats).
template <class P, class A>
__m512i level_table(const weights_view& w) {
    const i8_levels<P, A> lv(w);
    std::uint8_t u[16];
    for (int c = 0; c < 16; ++c) u[c] = static_cast<std::uint8_t>(lv.level[c] + i8_shape<P, A>::offset);
    return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(u)));
}

// X rows x[0 .. count) against the panel of rows [np, np + 32): tiles of 6 X rows x 1 chain (x 2
// halves: 12 chains, 12 accumulators; at M = 128, 4096 x 11008, NF4 b64 took 18.2 ms against 19.2
// with tiles of 4 and 19.0 with 5), then 8 x 1 (one decode for M = 8: 1.41 ms against 1.66 as
// 6 + 2; as the main tile it was no better at M = 16 or 128), 6 x 1, 4 x 1, 3 x 2, 2 x 2 or 1 x 4.
// From 6 X rows on, the tiles are compute-bound and the first one of a panel waited on DRAM: the
// tile of 6 or 8 rows at i = 6 (the second), or at i = 0 when it is the only one of them, prefetches
// the next panel into L2 (4096 x 11008, cold: int4 g128 M = 8 / 16 / 32 1.47 / 2.84 / 4.45 -> 1.05 /
// 2.18 / 3.97 ms; docs/performance.md, "Panels, eighth session"). Below 6 rows the stream is
// memory-bound and the hardware prefetcher keeps up: prefetching there made M = 1-4 up to 1.15x slower.
template <class P, class A>
[[gnu::noinline]] void run_panel(const std::uint8_t* panel, const std::uint8_t* next, const i8_shape<P, A>& s,
                                 const x_row* x, std::int64_t count, __m512i lut, const float* bias, float* y,
                                 std::int64_t ldy, std::int64_t np, std::int64_t n0, std::int64_t n1) {
    const auto run = [&]<int T, int C>(std::int64_t i) {
        __m512 acc[T][2];
        if (T >= 6 && next != nullptr && i == (count > 8 ? 6 : 0))
            tile<P, A, T, C>(panel, s, x + i, lut, acc, next);
        else
            tile<P, A, T, C>(panel, s, x + i, lut, acc, nullptr);  // inlined: no prefetch code at all
        store<P, T>(acc, bias, y + i * ldy, ldy, np, n0, n1);
    };
    std::int64_t i = 0;
    for (; count - i > 8; i += 6) run.template operator()<6, 1>(i);
    switch (count - i) {
        case 8: return run.template operator()<8, 1>(i);
        case 7: run.template operator()<6, 1>(i); i += 6; return run.template operator()<1, 4>(i);
        case 6: return run.template operator()<6, 1>(i);
        case 5: run.template operator()<4, 1>(i); i += 4; [[fallthrough]];
        case 1: return run.template operator()<1, 4>(i);
        case 4: return run.template operator()<4, 1>(i);
        case 3: return run.template operator()<3, 2>(i);
        case 2: return run.template operator()<2, 2>(i);
        default: return;
    }
}

// Y[i, n] (row i at y + i ldy) for the m prepared X rows (i8_row) and output rows [n0, n1). X in
// chunks of 64 rows (256 KiB of levels at K = 4096: a chunk and two 66 KiB panels stay in L2), the
// panels read once per chunk.
template <class P, class A>
void gemm(const weights_view& w, const i8_row* xr, std::int64_t m, const float* bias, float* y, std::int64_t ldy,
          std::int64_t n0, std::int64_t n1) {
    using S = i8_shape<P, A>;
    const S s(w.cols);
    auto* x = static_cast<x_row*>(simd::scratch<A, 2>::get(static_cast<std::size_t>(m) * sizeof(x_row)));
    auto* corr = static_cast<std::int32_t*>(simd::scratch<A, 3>::get(static_cast<std::size_t>(m * s.blocks) * 4));
    for (std::int64_t i = 0; i < m; ++i) {
        for (std::int64_t b = 0; b < s.blocks; ++b)
            corr[i * s.blocks + b] = has_zeros<P> ? 0 : -S::offset * static_cast<std::int32_t>(xr[i].qsum[b]);
        x[i] = {xr[i].q, xr[i].xs_block, xr[i].qsum, corr + i * s.blocks};
    }
    const __m512i lut = code_traits<P::type>::from_table ? level_table<P, A>(w) : _mm512_setzero_si512();
    const std::int64_t panel_bytes = s.blocks * block_bytes<P>;
    constexpr std::int64_t chunk = 64;
    for (std::int64_t c0 = 0; c0 < m; c0 += chunk)
        for (std::int64_t p = n0 / rows; p * rows < n1; ++p)
            run_panel<P, A>(w.codes + p * panel_bytes, (p + 1) * rows < n1 ? w.codes + (p + 1) * panel_bytes : nullptr,
                            s, x + c0, m - c0 < chunk ? m - c0 : chunk, lut, bias, y + c0 * ldy, ldy, p * rows, n0, n1);
}

}  // namespace qforge::kernels::panels

// The GEMMs' cache blocking, shared by every compute path: K in slices (the activations of all M
// rows for one slice stay in L2), output rows in panels (the weights of one panel and slice stay in
// L1/L2 while every M tile uses them), and register tiles of MR rows of X times NR rows of W.
#pragma once

#include <qforge/kernels/impl/simd.hpp>

#include <bit>
#include <cstdint>
#include <type_traits>

namespace qforge::kernels {

inline constexpr std::int64_t gemm_row_panel = 32;
inline constexpr std::int64_t gemm_f32_k_slice = 512;
inline constexpr std::int64_t gemm_i8_k_slice = 2048;

template <class A>
inline constexpr int gemm_i8_mr = std::is_base_of_v<xsimd::avx512f, A> ? 4 : 2;
inline constexpr int gemm_i8_nr = 2;

// The small-M i8 GEMM (gemm_i8_rows): X rows per decoded register of codes (MR int32 dots, MR f32
// accumulators, the codes and their tables fit the 32 zmm or 16 ymm / xmm registers), and the
// largest M it serves before the panel GEMMs take over. Its time grows by one GEMV's arithmetic
// per X row; the VNNI panel GEMM's (i8_gemm_vnni.hpp) by a third of that, from a higher start.
// Measured on 4096 x 11008 (int4 g128, NF4 b64), 1 thread: the VNNI panels (codes transposed
// before decoding) win from M = 5 on (M = 8: 1.6x; M = 4: a tie for int4, NF4 1.2x), the panels
// of the other ISAs (i8_tile) lose at every M up to 16 (docs/performance.md). Where a register of
// codes holds two or more blocks (NF4 b64) the row kernel also permutes the block scales per X row
// and register, and the VNNI panels win from M = 4 on (2.46 against 2.93 ms, 4096 x 11008 cold).
// 4-bit codes without zero points leave it earlier on VNNI, for the streamed GEMM
// (vnni_gemm::stream_min_rows, i8_gemm_vnni.hpp).
template <class A>
inline constexpr int gemm_i8_rows_mr = std::is_base_of_v<xsimd::avx512f, A> ? 8 : 4;
template <class A, int blocks_per_register>
inline constexpr std::int64_t gemm_i8_rows_max = simd::has_vnni<A> ? (blocks_per_register > 1 ? 3 : 4) : 16;

template <class T>
[[gnu::always_inline]] inline T smaller(T a, T b) { return a < b ? a : b; }

// y[i, n] = bias[n] (or 0) for the M rows of the output range [n0, n1): the tiles add to it.
[[gnu::always_inline]] inline void init_output(const float* bias, float* y, std::int64_t m, std::int64_t ldy, std::int64_t n0, std::int64_t n1) {
    for (std::int64_t i = 0; i < m; ++i)
        for (std::int64_t n = n0; n < n1; ++n) y[i * ldy + n] = bias ? bias[n] : 0.0f;
}

// Runs f(integral_constant<mr>, integral_constant<nr>) for a run-time tile size within the maxima
// (the edge tiles of odd shapes use the same code, instantiated smaller).
template <int MRMAX, int NRMAX, class F>
inline void with_tile(int mr, int nr, F&& f) {
    simd::unroll<MRMAX>([&](auto i) {
        if (decltype(i)::value + 1 != mr) return;
        simd::unroll<NRMAX>([&](auto j) {
            if (decltype(j)::value + 1 != nr) return;
            f(std::integral_constant<int, decltype(i)::value + 1>{}, std::integral_constant<int, decltype(j)::value + 1>{});
        });
    });
}

// The GEMMs for few rows of X that decode W once per tile of X rows (f32 / bf16: gemm_f32_rows,
// gemm_bf16_rows): f(integral_constant<mt>, i0) for tiles of the m X rows, each the largest power of
// two up to MR that fits (fewer instantiations than every height).
template <int MR, class F>
inline void each_row_tile(std::int64_t m, F&& f) {
    for (std::int64_t i0 = 0, done = 0; i0 < m; i0 += done) {
        const std::int64_t left = m - i0;
        simd::unroll<std::bit_width(unsigned{MR})>([&](auto e) {
            constexpr int mt = MR >> decltype(e)::value;
            if (left < mt || (mt < MR && left >= 2 * mt)) return;
            done = mt;
            f(std::integral_constant<int, mt>{}, i0);
        });
    }
}

// A tile takes K in passes over all the W rows where its X rows would not stay in L1 (at most
// `budget` bytes of them per pass; W's rows are then read in pieces, rows [n0, n1) per pass, as few
// and as equal as can be). For `units` of K of `unit_bytes` of X rows each, the units per pass, a
// multiple of `align`. Measured (4096 x 11008 cold, 1 thread): 32 KiB for the bf16 tiles (4 rows:
// 3.4-3.8 ms in one pass, 5.1 in 2 or 3), 24 KiB for f32 (4 rows: 5.5 ms in 3 passes, 7.2 in 2).
[[gnu::always_inline]] inline std::int64_t row_pass_units(std::int64_t units, std::int64_t unit_bytes, std::int64_t align, std::int64_t budget) {
    if (units == 0) return 1;
    const std::int64_t passes = (units * unit_bytes + budget - 1) / budget;
    return ((units + passes - 1) / passes + align - 1) / align * align;
}

// f(u0, u1, first, last) for consecutive ranges of at most `per_pass` of `units` units (one call
// for no units).
template <class F>
inline void row_passes(std::int64_t units, std::int64_t per_pass, F&& f) {
    std::int64_t u0 = 0;
    do {
        const std::int64_t u1 = units - u0 < per_pass ? units : u0 + per_pass;
        f(u0, u1, u0 == 0, u1 == units);
        u0 = u1;
    } while (u0 < units);
}

// Tile sums: out[r] = the sum of the lanes of rows[r] (one transposed sum for R > 1).
template <class A, int R, class V>
[[gnu::always_inline]] inline void reduce_rows(const V (&rows)[R], float (&out)[R]) {
    using F = simd::f32v<A>;
    if constexpr (R == 1) {
        out[0] = xsimd::hadd(F(rows[0]));
    } else {
        static_assert(R <= simd::lanes<A>);
        F parts[simd::lanes<A>];
        for (int r = 0; r < simd::lanes<A>; ++r) parts[r] = r < R ? F(rows[r < R ? r : 0]) : F(0.0f);
        alignas(64) float sums[simd::lanes<A>];
        simd::sum_rows<A>(parts).store_aligned(sums);
        for (int r = 0; r < R; ++r) out[r] = sums[r];
    }
}

// The i8 GEMMs that work on W in place: K as `units` (steps, blocks) in slices of `slice` units,
// output rows [n0, n1) in panels, and for each slice and panel every MR x NR tile:
// tile(mt, nt, i0, n, u0, u1, out) sums X rows i0.. against W rows n.. over units [u0, u1) into
// float out[mt][nt], which is added to y (ldy apart).
template <int MR, int NR, class Tile>
void each_tile(std::int64_t m, std::int64_t n0, std::int64_t n1, std::int64_t units, std::int64_t slice, float* y,
               std::int64_t ldy, Tile&& tile) {
    for (std::int64_t u0 = 0; u0 < units; u0 += slice) {
        const std::int64_t u1 = smaller(units, u0 + slice);
        for (std::int64_t p0 = n0; p0 < n1; p0 += gemm_row_panel) {
            const std::int64_t p1 = smaller(n1, p0 + gemm_row_panel);
            for (std::int64_t i0 = 0; i0 < m; i0 += MR)
                for (std::int64_t n = p0; n < p1; n += NR) {
                    const int mr = static_cast<int>(smaller<std::int64_t>(MR, m - i0));
                    const int nr = static_cast<int>(smaller<std::int64_t>(NR, p1 - n));
                    with_tile<MR, NR>(mr, nr, [&](auto mt, auto nt) {
                        float out[mt][nt] = {};
                        tile(mt, nt, i0, n, u0, u1, out);
                        for (int i = 0; i < mt; ++i)
                            for (int j = 0; j < nt; ++j) y[(i0 + i) * ldy + n + j] += out[i][j];
                    });
                }
        }
    }
}

}  // namespace qforge::kernels

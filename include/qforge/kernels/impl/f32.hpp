// The exact-f32 compute path: code values looked up exactly, products and sums in f32 with FMA.
//
// GEMV decodes the codes in registers and multiplies by the block scale once per block:
//   y[n] = sum_b scale[n, b] * sum_{k in b} value[code(n, k)] * x[k]
// GEMM dequantizes a panel of W exactly (dequantize.hpp) and runs an f32 dot-product tile on it.
// Error bound (any summation order, u = 2^-24): |y - y_exact| <= (K + 2) u sum_k |W[n,k] x[k]|.
#pragma once

#include <qforge/kernels/impl/dequantize.hpp>

#include <cstdint>

namespace qforge::kernels {

// Rows of W a GEMV step handles at once (they share the x loads); registers permitting.
template <class A>
inline constexpr int gemv_rows = std::is_base_of_v<xsimd::avx512f, A> ? 4 : 2;

// x in the order the decoded registers use: per 32-element window, first the elements of the low
// nibbles of its 16 bytes, then those of the high nibbles. The identity for the qforge layout.
template <class L>
constexpr bool f32_order_is_identity() {
    for (int j = 0; j < 16; ++j)
        if (L::element_of(j, false) != j || L::element_of(j, true) != 16 + j) return false;
    return true;
}

template <class P, class A>
void permute_for_f32(const float* x, std::int64_t k, float* xp) {
    using L = layout_traits<P::storage>;
    for (std::int64_t w0 = 0; w0 < k; w0 += 32)
        for (int j = 0; j < 16; ++j) {
            xp[w0 + j] = x[w0 + L::element_of(j, false)];
            xp[w0 + 16 + j] = x[w0 + L::element_of(j, true)];
        }
}

// out[r] = sum_k W[n + r, k] xp(k) for r < NR, xp in the permuted order above.
template <class P, class A, int NR>
void gemv_f32_rows(const weights_view& w, const simd::table16<A>& table, const float* xp, std::int64_t n,
                   float* out) {
    using L = layout_traits<P::storage>;
    using F = simd::f32v<A>;
    constexpr int lanes = simd::lanes<A>;
    constexpr int chunks = 16 / lanes;
    constexpr int wpb = windows_per_block<P>;
    const std::int64_t blocks = w.cols / P::group;

    const std::uint8_t* codes[NR];
    for (int r = 0; r < NR; ++r) codes[r] = row_codes<A>(w, n + r);
    F acc[NR];
    for (int r = 0; r < NR; ++r) acc[r] = F(0.0f);
    float buf[NR][scale_chunk];
    const float* scales[NR];

    for (std::int64_t c0 = 0; c0 < blocks; c0 += scale_chunk) {
        const int nb = static_cast<int>(blocks - c0 < scale_chunk ? blocks - c0 : scale_chunk);
        for (int r = 0; r < NR; ++r) scales[r] = L::template row_scales<P, A>(w, n + r, c0, nb, buf[r]);
        for (int i = 0; i < nb; ++i) {
            F lo_sum[NR], hi_sum[NR];  // two chains per row: FMA latency
            for (int r = 0; r < NR; ++r) lo_sum[r] = hi_sum[r] = F(0.0f);
            const std::int64_t first_window = (c0 + i) * wpb;
            simd::unroll<wpb>([&](auto wi) {
                const std::int64_t window = first_window + wi;
                simd::unroll<chunks>([&](auto ci) {
                    const F xl = F::load_unaligned(xp + window * 32 + ci * lanes);
                    const F xh = F::load_unaligned(xp + window * 32 + 16 + ci * lanes);
                    simd::unroll<NR>([&](auto r) {
                        const auto idx = simd::load_u8_as_i32<A>(codes[r] + window * 16 + ci * lanes);
                        lo_sum[r] = xsimd::fma(simd::lookup<A>(table, idx), xl, lo_sum[r]);
                        hi_sum[r] = xsimd::fma(simd::lookup<A>(table, idx >> 4), xh, hi_sum[r]);
                    });
                });
            });
            simd::unroll<NR>([&](auto r) { acc[r] = xsimd::fma(lo_sum[r] + hi_sum[r], F(scales[r][i]), acc[r]); });
        }
    }
    for (int r = 0; r < NR; ++r) out[r] = xsimd::hadd(acc[r]);
}

// Tile shape of the f32 GEMM dot products: MR rows of X times NR rows of the W panel, with
// MR * NR = lanes so that one parallel horizontal sum reduces the whole tile.
template <class A>
inline constexpr int gemm_f32_mr = std::is_base_of_v<xsimd::avx512f, A> ? 4 : 2;
template <class A>
inline constexpr int gemm_f32_nr = simd::lanes<A> / gemm_f32_mr<A>;

// out[i][j] = sum_{k < len} x[i*ldx + k] * wp[j*ldw + k]; len is a multiple of the lanes.
template <class A, int MR, int NR>
void dot_tile(const float* x, std::int64_t ldx, const float* wp, std::int64_t ldw, std::int64_t len,
              float (&out)[MR][NR]) {
    using F = simd::f32v<A>;
    constexpr int lanes = simd::lanes<A>;
    F acc[MR * NR];
    for (int t = 0; t < MR * NR; ++t) acc[t] = F(0.0f);
    for (std::int64_t k = 0; k < len; k += lanes) {
        F wv[NR];
        simd::unroll<NR>([&](auto j) { wv[j] = F::load_unaligned(wp + j * ldw + k); });
        simd::unroll<MR>([&](auto i) {
            const F xv = F::load_unaligned(x + i * ldx + k);
            simd::unroll<NR>([&](auto j) { acc[i * NR + j] = xsimd::fma(xv, wv[j], acc[i * NR + j]); });
        });
    }
    if constexpr (MR * NR == lanes) {
        alignas(64) float sums[lanes];
        simd::sum_rows<A>(acc).store_aligned(sums);
        for (int i = 0; i < MR; ++i)
            for (int j = 0; j < NR; ++j) out[i][j] = sums[i * NR + j];
    } else {
        for (int i = 0; i < MR; ++i)
            for (int j = 0; j < NR; ++j) out[i][j] = xsimd::hadd(acc[i * NR + j]);
    }
}

}  // namespace qforge::kernels

// LLM.int8() (formats.md §2, bitsandbytes load_in_8bit): int8 weights CB [N, K] with one f32
// absmax SCB per row, and the matmul with outlier threshold t, bit-identical with
// ref::int8_matmul on every ISA. Per call (GEMV: M = 1):
//
//   outlier columns  k with |X[m,k]| >= t for some row m of this call (t = 0: none)
//   activations      per row: SCA[m] = max |X[m,k]| over the other columns, XA = RNE(X * (127 / SCA))
//                    with the outlier columns 0 (as the reference's quantize_int8_row)
//   integer part     C[m,n] = sum_k XA[m,k] CB[n,k], exact in int32 (K <= llm_int8_max_cols)
//   output           (f32(C) * ((SCA[m] * SCB[n]) / 16129) + outliers) + bias[n] (0 when absent), with
//                    outliers = 0, then += X[m,k] * ((f32(CB[n,k]) * SCB[n]) * f32(1/127)) for each
//                    outlier column k ascending: the reference's f32 operations in its order, each
//                    rounded on its own (the kernel TUs are built with -ffp-contract=off).
//
// The integer sums are exact on every ISA, so the results are the same bits everywhere:
//   VNNI      vpdpbusd takes unsigned x signed bytes: the weights enter as CB + 128 (one xor
//             with 0x80), and -128 * sum_k XA[m,k] is added once per output. Lanes may wrap
//             around 2^32 on the way (vpdpbusd and vpaddd wrap); the true sum fits in int32, so
//             the wrapped sum is exact.
//   otherwise pmaddubsw, whose 16-bit pair sums saturate: |CB| as the unsigned operand and XA
//             with CB's sign, so a pair sum is at most 2 * 128 * 127 = 32512 < 2^15 (the offset
//             form above would reach 2 * 255 * 127 and saturate).
// X must be finite (the reference refuses NaN and Inf; the kernels do not check).
//
// This header overloads the entry points of kernels_impl.hpp for bnb8 policies (as format_fp8.hpp
// does; C++20 constraints make these win): check_kernel_policy, dequantize_rows, gemv_i8, gemm_i8.
#pragma once

#include <qforge/kernels/impl/simd.hpp>
#include <qforge/kernels/weights.hpp>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace qforge::kernels {

template <class P>
concept bnb8_policy = P::storage == layout::bnb8;

template <class P>
    requires bnb8_policy<P>
constexpr void check_kernel_policy() {
    static_assert(P::type == dtype::int8_row && P::bits == 8 && P::group == per_channel && !P::double_quant,
                  "qforge LLM.int8 kernels: int8 rows with one absmax each");
    static_assert(P::act == compute::i8, "qforge LLM.int8 kernels: int8 activations only");
}

namespace llm_int8 {

inline constexpr float one_over_127 = 1.0f / 127.0f;  // f32(1/127), bnb's dequantization constant
inline constexpr int row_align = 64;                  // activation rows are zero-padded to this

template <class A>
inline const std::int8_t* row_of(const weights_view& w, std::int64_t n) {
    return reinterpret_cast<const std::int8_t*>(w.codes) + n * w.cols;
}
template <class A>
inline float scb_of(const weights_view& w, std::int64_t n) {
    return static_cast<const float*>(w.scales)[n];
}

// The prepared activations of one call.
struct activations {
    std::int64_t m = 0, ld = 0;        // rows; bytes per row of q (K rounded up to row_align)
    std::int8_t* q = nullptr;          // XA [m, ld], zero beyond K and at the outlier columns
    float* sca = nullptr;              // [m]
    std::int32_t* q_sum = nullptr;     // [m] sum_k XA[m, k] (the VNNI offset correction)
    std::int32_t* outliers = nullptr;  // the outlier columns, ascending
    std::int64_t n_outliers = 0;
};

// Finds the outlier columns and quantizes every row of X [m, K] (the reference's operations).
template <class A>
activations prepare(const weights_view& w, const float* x, std::int64_t m) {
    using F = simd::f32v<A>;
    constexpr int lanes = simd::lanes<A>;
    const std::int64_t k = w.cols;
    const float t = w.outlier_threshold;
    auto align = [](std::int64_t b) { return static_cast<std::size_t>((b + 63) / 64 * 64); };
    activations a;
    a.m = m;
    a.ld = (k + row_align - 1) / row_align * row_align;
    const std::size_t q_bytes = align(m * a.ld), sca_bytes = align(m * 4), sum_bytes = align(m * 4),
                      out_bytes = align(k * 4), buf_bytes = align(k * 4), qi_bytes = align(k * 4);
    auto* mem = static_cast<std::uint8_t*>(
        simd::scratch<A, 0>::get(q_bytes + sca_bytes + sum_bytes + out_bytes + buf_bytes + qi_bytes));
    a.q = reinterpret_cast<std::int8_t*>(mem);
    a.sca = reinterpret_cast<float*>(mem + q_bytes);
    a.q_sum = reinterpret_cast<std::int32_t*>(mem + q_bytes + sca_bytes);
    a.outliers = reinterpret_cast<std::int32_t*>(mem + q_bytes + sca_bytes + sum_bytes);
    float* buf = reinterpret_cast<float*>(mem + q_bytes + sca_bytes + sum_bytes + out_bytes);
    auto* qi = reinterpret_cast<std::int32_t*>(mem + q_bytes + sca_bytes + sum_bytes + out_bytes + buf_bytes);

    // outlier columns: buf[c] = 1 where some |X[r, c]| >= t
    const std::int64_t full = k / lanes * lanes;
    if (t > 0.0f) {
        for (std::int64_t c = 0; c < k; ++c) buf[c] = 0.0f;
        for (std::int64_t r = 0; r < m; ++r) {
            const float* xr = x + r * k;
            std::int64_t c = 0;
            for (; c < full; c += lanes)
                xsimd::select(xsimd::abs(F::load_unaligned(xr + c)) >= F(t), F(1.0f), F::load_aligned(buf + c))
                    .store_aligned(buf + c);
            for (; c < k; ++c)
                if (__builtin_fabsf(xr[c]) >= t) buf[c] = 1.0f;
        }
        for (std::int64_t c = 0; c < k; ++c)
            if (buf[c] != 0.0f) a.outliers[a.n_outliers++] = static_cast<std::int32_t>(c);
    }

    for (std::int64_t r = 0; r < m; ++r) {
        std::memcpy(buf, x + r * k, static_cast<std::size_t>(k) * sizeof(float));
        for (std::int64_t j = 0; j < a.n_outliers; ++j) buf[a.outliers[j]] = 0.0f;
        F vmax(0.0f);
        std::int64_t c = 0;
        for (; c < full; c += lanes) vmax = xsimd::max(vmax, xsimd::abs(F::load_aligned(buf + c)));
        alignas(64) float lane_max[lanes];
        vmax.store_aligned(lane_max);
        float sca = 0.0f;
        for (float v : lane_max) sca = v > sca ? v : sca;
        for (; c < k; ++c) sca = __builtin_fabsf(buf[c]) > sca ? __builtin_fabsf(buf[c]) : sca;
        a.sca[r] = sca;

        const float s = sca > 0.0f ? 127.0f / sca : 0.0f;  // sca = 0: every code 0
        c = 0;
        if (__builtin_isinf(s)) {  // sca below about 3.7e-37: the reference's quotient form
            for (; c < k; ++c) qi[c] = static_cast<std::int32_t>(__builtin_nearbyintf((buf[c] / sca) * 127.0f));
        } else {
            for (; c < full; c += lanes) xsimd::nearbyint_as_int(F::load_aligned(buf + c) * F(s)).store_aligned(qi + c);
            for (; c < k; ++c) qi[c] = static_cast<std::int32_t>(__builtin_nearbyintf(buf[c] * s));
        }
        std::int8_t* q = a.q + r * a.ld;
        std::int32_t sum = 0;
        for (c = 0; c < k; ++c) {
            q[c] = static_cast<std::int8_t>(qi[c]);  // |qi| <= 127: x * s <= 127 (1 + 2^-24)^2
            sum += qi[c];
        }
        for (; c < a.ld; ++c) q[c] = 0;
        a.q_sum[r] = sum;
    }
    return a;
}

// The two exact forms of the int8 dot product (see the top of this file).
template <class A>
struct dot_form {
    using U = simd::u8v<A>;
    using I = simd::i32v<A>;
    static constexpr bool offset = simd::has_vnni<A>;

    // the unsigned operand of a register of weight bytes: CB + 128, or |CB|
    static U weights(const U& cb) {
        if constexpr (offset) return cb ^ U(std::uint8_t{0x80});
        else return xsimd::bitwise_cast<U>(xsimd::abs(xsimd::bitwise_cast<xsimd::batch<std::int8_t, A>>(cb)));
    }
    static I step(const I& acc, const U& prepared, const U& cb, const U& xa) {
        if constexpr (offset) return simd::dot_u8s8<A>(acc, prepared, xa);
        else return simd::dot_u8s8<A>(acc, prepared, simd::apply_sign<A>(xa, cb));
    }
    // what the sums need added: -128 * sum_k XA (offset form)
    static std::uint32_t correction(std::int32_t q_sum) {
        return offset ? static_cast<std::uint32_t>(q_sum) * 0xFFFFFF80u : 0u;  // * -128 modulo 2^32
    }
};

// out[j] = the sum of the lanes of v[j], j < 4, modulo 2^32 (vector adds wrap, as the offset
// form needs: see the top of this file).
template <class A>
inline void sum_lanes4(const simd::i32v<A>* v, std::uint32_t* out) {
    __m128i q[4];
    for (int j = 0; j < 4; ++j) {
#if XSIMD_WITH_AVX512F
        if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
            const __m512i r = v[j];
            const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(r), _mm512_extracti64x4_epi64(r, 1));
            q[j] = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
        } else
#endif
#if XSIMD_WITH_AVX2
        if constexpr (std::is_base_of_v<xsimd::avx2, A>) {
            const __m256i h = v[j];
            q[j] = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
        } else
#endif
        {
            q[j] = v[j];
        }
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm_hadd_epi32(_mm_hadd_epi32(q[0], q[1]), _mm_hadd_epi32(q[2], q[3])));
}

// c[i][r] = sum_k XA[i, k] * CB[n + r, k] for MR activation rows xa[i] (padded) and NR weight rows
// from n, exact; CHAINS independent accumulators per output hide the dot latency (GEMV).
template <class A, int MR, int NR, int CHAINS>
void int8_tile(const weights_view& w, const std::int8_t* const* xa, const std::int32_t* q_sum, std::int64_t n,
               std::int32_t (&c)[MR][NR]) {
    using D = dot_form<A>;
    using U = simd::u8v<A>;
    using I = simd::i32v<A>;
    constexpr int V = simd::vbytes<A>;
    const std::int64_t k = w.cols, full = k / V * V;
    const std::uint8_t* cb[NR];
    for (int r = 0; r < NR; ++r) cb[r] = reinterpret_cast<const std::uint8_t*>(row_of<A>(w, n + r));
    I acc[CHAINS][MR][NR];
    for (auto& chain : acc)
        for (auto& row : chain)
            for (auto& v : row) v = I(0);

    auto one = [&](int chain, std::int64_t at, const std::uint8_t* const* wp) {
        U xv[MR];
        simd::unroll<MR>([&](auto i) { xv[i] = U::load_aligned(reinterpret_cast<const std::uint8_t*>(xa[i]) + at); });
        simd::unroll<NR>([&](auto r) {
            const U raw = U::load_unaligned(wp[r]);
            const U prepared = D::weights(raw);
            simd::unroll<MR>([&](auto i) { acc[chain][i][r] = D::step(acc[chain][i][r], prepared, raw, xv[i]); });
        });
    };
    std::int64_t at = 0;
    for (; at + CHAINS * V <= full; at += CHAINS * V)
        simd::unroll<CHAINS>([&](auto ch) {
            const std::uint8_t* wp[NR];
            for (int r = 0; r < NR; ++r) wp[r] = cb[r] + at + ch * V;
            one(ch, at + ch * V, wp);
        });
    for (; at < full; at += V) {
        const std::uint8_t* wp[NR];
        for (int r = 0; r < NR; ++r) wp[r] = cb[r] + at;
        one(0, at, wp);
    }
    if (at < k) {  // the last bytes of each row, zero-padded (XA is zero there too)
        alignas(64) std::uint8_t tail[NR][V];
        const std::uint8_t* wp[NR];
        for (int r = 0; r < NR; ++r) {
            std::memset(tail[r], 0, V);
            std::memcpy(tail[r], cb[r] + at, static_cast<std::size_t>(k - at));
            wp[r] = tail[r];
        }
        one(0, at, wp);
    }
    // lane sums modulo 2^32 (the offset form may wrap on the way; the total fits in int32)
    constexpr int outputs = MR * NR, padded = (outputs + 3) / 4 * 4;
    I total[padded];
    for (int o = 0; o < padded; ++o) {
        total[o] = I(0);
        if (o < outputs)
            for (int ch = 0; ch < CHAINS; ++ch) total[o] = total[o] + acc[ch][o / NR][o % NR];
    }
    std::uint32_t sums[padded];
    for (int o = 0; o < padded; o += 4) sum_lanes4<A>(total + o, sums + o);
    for (int o = 0; o < outputs; ++o)
        c[o / NR][o % NR] = static_cast<std::int32_t>(sums[o] + D::correction(q_sum[o / NR]));
}

// The outputs of rows [i0, i0 + MR) of X and [n, n + NR) of W from their exact integer sums c:
// the reference's f32 operations in its order (per output, the outlier columns ascending).
template <class A, int MR, int NR>
inline void outputs(const weights_view& w, const activations& act, const float* x, std::int64_t i0, std::int64_t n,
                    const std::int32_t (&c)[MR][NR], const float* bias, float* y) {
    const std::int64_t k = w.cols, ldy = w.rows;
    for (int r = 0; r < NR; ++r) {
        const float scb = scb_of<A>(w, n + r);
        const std::int8_t* cb = row_of<A>(w, n + r);
        float outliers[MR];
        for (int i = 0; i < MR; ++i) outliers[i] = 0.0f;
        for (std::int64_t j = 0; j < act.n_outliers; ++j) {
            const std::int32_t col = act.outliers[j];
            const float wdq = (static_cast<float>(cb[col]) * scb) * one_over_127;
            for (int i = 0; i < MR; ++i) {
                const float product = x[(i0 + i) * k + col] * wdq;
                outliers[i] = outliers[i] + product;
            }
        }
        const float b = bias ? bias[n + r] : 0.0f;
        for (int i = 0; i < MR; ++i) {
            const float int_part = static_cast<float>(c[i][r]) * ((act.sca[i0 + i] * scb) / 16129.0f);
            const float sum = int_part + outliers[i];
            y[(i0 + i) * ldy + n + r] = sum + b;
        }
    }
}

template <class A>
inline constexpr int gemm_mr = std::is_base_of_v<xsimd::avx512f, A> ? 4 : 2;
template <class A>
inline constexpr int gemm_nr = 4;
inline constexpr std::int64_t gemm_panel = 16;  // rows of W kept in cache while every M tile uses them

}  // namespace llm_int8

// out[(n - n0)*K + k] = (f32(CB[n,k]) * SCB[n]) * f32(1/127), as ref::dequantize_int8row.
template <class P, class A>
    requires bnb8_policy<P>
void dequantize_rows(const weights_view& w, std::int64_t n0, std::int64_t n1, float* out) {
    using F = simd::f32v<A>;
    using I = simd::i32v<A>;
    constexpr int lanes = simd::lanes<A>;
    const std::int64_t k = w.cols, full = k / lanes * lanes;
    for (std::int64_t n = n0; n < n1; ++n) {
        const auto* cb = reinterpret_cast<const std::uint8_t*>(llm_int8::row_of<A>(w, n));
        const float scb = llm_int8::scb_of<A>(w, n);
        float* o = out + (n - n0) * k;
        std::int64_t c = 0;
        for (; c < full; c += lanes) {
            const I code = I(simd::load_u8_as_i32<A>(cb + c) << 24) >> 24;  // sign-extended
            ((xsimd::to_float(code) * F(scb)) * F(llm_int8::one_over_127)).store_unaligned(o + c);
        }
        for (; c < k; ++c) o[c] = (static_cast<float>(static_cast<std::int8_t>(cb[c])) * scb) * llm_int8::one_over_127;
    }
}

// y = W x (+ bias): W streamed one row at a time (one sequential stream, see f32.hpp).
template <class P, class A>
    requires bnb8_policy<P>
void gemv_i8(const weights_view& w, const float* x, const float* bias, float* y, std::int64_t n0, std::int64_t n1) {
    const llm_int8::activations act = llm_int8::prepare<A>(w, x, 1);
    const std::int8_t* xa[1] = {act.q};
    for (std::int64_t n = n0; n < n1; ++n) {
        std::int32_t c[1][1];
        llm_int8::int8_tile<A, 1, 1, 4>(w, xa, act.q_sum, n, c);
        llm_int8::outputs<A, 1, 1>(w, act, x, 0, n, c, bias, y);
    }
}

// Y = X W^T (+ bias): panels of W rows stay in cache while every tile of X rows uses them; each
// tile sums over the whole K in int32, then writes its outputs.
template <class P, class A>
    requires bnb8_policy<P>
void gemm_i8(const weights_view& w, const float* x, std::int64_t m, const float* bias, float* y, std::int64_t n0,
             std::int64_t n1) {
    constexpr int MR = llm_int8::gemm_mr<A>, NR = llm_int8::gemm_nr<A>;
    const llm_int8::activations act = llm_int8::prepare<A>(w, x, m);
    // a tile of MT x NT outputs from rows i0 of X and n of W
    auto tile = [&]<int MT, int NT>(std::int64_t i0, std::int64_t n) {
        const std::int8_t* xa[MT];
        for (int i = 0; i < MT; ++i) xa[i] = act.q + (i0 + i) * act.ld;
        std::int32_t c[MT][NT];
        llm_int8::int8_tile<A, MT, NT, 1>(w, xa, act.q_sum + i0, n, c);
        llm_int8::outputs<A, MT, NT>(w, act, x, i0, n, c, bias, y);
    };
    for (std::int64_t p0 = n0; p0 < n1; p0 += llm_int8::gemm_panel) {
        const std::int64_t p1 = n1 - p0 < llm_int8::gemm_panel ? n1 : p0 + llm_int8::gemm_panel;
        std::int64_t i0 = 0;
        for (; i0 + MR <= m; i0 += MR) {
            std::int64_t n = p0;
            for (; n + NR <= p1; n += NR) tile.template operator()<MR, NR>(i0, n);
            for (; n < p1; ++n) tile.template operator()<MR, 1>(i0, n);
        }
        for (; i0 < m; ++i0) {  // the last rows of X, one at a time
            std::int64_t n = p0;
            for (; n + NR <= p1; n += NR) tile.template operator()<1, NR>(i0, n);
            for (; n < p1; ++n) tile.template operator()<1, 1>(i0, n);
        }
    }
}

}  // namespace qforge::kernels

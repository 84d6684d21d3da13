// 8-bit integers (GPTQ bits=8, sym or asym) in the qforge layout: one u8 code per weight, rows
// along K ([N, K], the GPTQ code itself), an f16 scale per (row, group) and, for int_asym, a zero
// point byte per (row, group) (weights.hpp); int_sym's zero point is 128. W = scale * (code - zero),
// the integer difference first (formats.md §3). The group is a multiple of 32 or per_channel (one
// group of K per row: GPTQ group_size -1). Act-order (weights_view::perm) as for 4 bits.
//
// The nibble machinery of the 4-bit framework does not apply: as format_fp8.hpp, this header
// overloads its entry points for these policies (C++20 constraints make them win):
//   check_kernel_policy, value_table, dequantize_columns, dequantize_rows, gemv_f32, gemv_i8, gemm_i8
//
// f32 path: (code - zero) is an exact small integer in f32, so the error bound is f32.hpp's.
// i8 path: x quantized per block as in i8.hpp (xs_b = amax_b / 127, xq = RNE(x * 127 / amax_b));
// the weights are exact integers, so only the activation quantization errs (i8.hpp's bound with
// delta = 0). The integer dot takes c = code - 128 as a signed byte (|c| <= 128, so pmaddubsw's
// pair sums 2 * 128 * 127 cannot saturate) and adds (128 - zero) * sum(xq) per block.
// GEMM: the f32 path is the 4-bit one (kernels_impl.hpp: panels of exactly dequantized weights,
// dequantize_columns below); the i8 path with VNNI too (i8_gemm_vnni.hpp). Without VNNI the i8
// GEMM runs register tiles of the GEMV's integer dot on W in place (int8_tile_i8).
#pragma once

#include <qforge/kernels/impl/f32.hpp>
#include <qforge/kernels/impl/gemm_tiles.hpp>
#include <qforge/kernels/impl/i8.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <immintrin.h>

namespace qforge::kernels {

template <class P>
concept int8_policy = P::storage == layout::qforge && P::bits == 8;

template <class P>
    requires int8_policy<P>
constexpr void check_kernel_policy() {
    static_assert(P::type == dtype::int_sym || P::type == dtype::int_asym, "qforge 8-bit kernels: integers only");
    static_assert(P::group == per_channel || (P::group >= 32 && P::group % 32 == 0),
                  "qforge 8-bit kernels: group must be a multiple of 32 or per_channel");
}

// The group size of the weights (per_channel: the whole row).
template <class P>
[[gnu::always_inline]] inline std::int64_t int8_group(const weights_view& w) {
    return P::group == per_channel ? w.cols : P::group;
}

// lanes codes at p -> (code - zero) in f32, exact.
template <class A>
inline simd::f32v<A> int8_values(const std::uint8_t* p, const simd::f32v<A>& zero) {
    return xsimd::to_float(simd::load_u8_as_i32<A>(p)) - zero;
}

template <class P, class A>
    requires int8_policy<P>
inline simd::table16<A> value_table(const weights_view&) {
    return simd::table16<A>{};  // no code table: (code - zero) is computed
}

// Columns [k0, k0 + kc) of row n (whole groups; per channel, multiples of 32) dequantized to
// out[0 ..): (code - zero) * scale, as the reference. Rows of dequantize and of the GEMM's panels.
template <class P, class A>
    requires int8_policy<P>
void dequantize_columns(const weights_view& w, const simd::table16<A>&, std::int64_t n, std::int64_t k0,
                        std::int64_t kc, float* out) {
    using F = simd::f32v<A>;
    constexpr int lanes = simd::lanes<A>;
    const std::int64_t gs = int8_group<P>(w);
    const std::uint8_t* codes = row_codes<P, A>(w, n);
    float buf[scale_chunk];
    for (std::int64_t c = k0; c < k0 + kc;) {
        const std::int64_t b = c / gs, end = (b + 1) * gs < k0 + kc ? (b + 1) * gs : k0 + kc;
        const F s(*layout_traits<P::storage>::template row_scales<P, A>(w, n, b, 1, buf));
        const F z(static_cast<float>(has_zeros<P> ? *row_blocks<P, std::uint8_t>(w, w.zeros, n, b) : 128));
        for (; c < end; c += lanes) (int8_values<A>(codes + c, z) * s).store_unaligned(out + (c - k0));
    }
}

template <class P, class A>
    requires int8_policy<P>
void dequantize_rows(const weights_view& w, std::int64_t n0, std::int64_t n1, float* out) {
    const std::int64_t k = w.cols;
    float* row = w.perm ? static_cast<float*>(simd::scratch<A, 0>::get(static_cast<std::size_t>(k) * sizeof(float)))
                        : nullptr;
    for (std::int64_t n = n0; n < n1; ++n) {
        float* o = w.perm ? row : out + (n - n0) * k;  // out points at row n0
        dequantize_columns<P, A>(w, value_table<P, A>(w), n, 0, k, o);
        if (w.perm)  // act-order: stored column j is column perm[j] of W
            for (std::int64_t j = 0; j < k; ++j) out[(n - n0) * k + w.perm[j]] = row[j];
    }
}

template <class P, class A>
    requires int8_policy<P>
float int8_dot_f32(const weights_view& w, std::int64_t n, const float* x) {
    using F = simd::f32v<A>;
    constexpr int lanes = simd::lanes<A>;
    const std::int64_t k = w.cols, gs = int8_group<P>(w);
    const std::uint8_t* codes = row_codes<P, A>(w, n);
    F acc(0.0f);
    each_block_scale<P, A>(w, n, 0, k / gs, [&](std::int64_t b, float scale, float zero) {
        const F z(has_zeros<P> ? zero : 128.0f);
        F even(0.0f), odd(0.0f);  // two chains: FMA latency (gs is a multiple of 2 * lanes)
        // bf16 / f16: each weight rounded after its scale, x rounded by the caller
        const auto value = [&](std::int64_t i) {
            if constexpr (rounded_operands<P>) return operand<P, A>(F(int8_values<A>(codes + i, z) * F(scale)));
            else return int8_values<A>(codes + i, z);
        };
        for (std::int64_t i = b * gs; i < (b + 1) * gs; i += 2 * lanes) {
            simd::prefetch_ahead(codes + i);  // cold rows: latency-bound without (g32: 3-4x the hot time)
            even = simd::fma<A>(value(i), F::load_unaligned(x + i), even);
            odd = simd::fma<A>(value(i + lanes), F::load_unaligned(x + i + lanes), odd);
        }
        if constexpr (rounded_operands<P>) acc = acc + (even + odd);
        else acc = simd::fma<A>(even + odd, F(scale), acc);
    });
    return xsimd::hadd(acc);
}

template <class P, class A>
    requires int8_policy<P>
void gemv_f32(const weights_view& w, const float* x, const float* bias, float* y, std::int64_t n0, std::int64_t n1) {
    x = rounded_x<P, A>(gather_columns<A, 0>(w, x, 1), w.cols);
    for (std::int64_t n = n0; n < n1; ++n) {
        const float v = int8_dot_f32<P, A>(w, n, x);
        y[n] = bias ? v + bias[n] : v;
    }
}

// ---- i8 path ----------------------------------------------------------------------------------

// One activation row quantized per block (natural order after act-order gathering).
struct int8_act_row {
    const std::int8_t* q;       // [K]
    const float* xs;            // per block: amax / 127
    const std::int32_t* sums;   // per block: sum(xq)
};

template <class A>
inline std::size_t int8_act_bytes(std::int64_t k, std::int64_t blocks) {
    return static_cast<std::size_t>((k + 63) / 64 * 64 + (blocks * 8 + 63) / 64 * 64);
}

template <class A>
int8_act_row quantize_int8_acts(const float* x, std::int64_t k, std::int64_t gs, void* mem) {
    const std::int64_t blocks = k / gs;
    auto* q = static_cast<std::int8_t*>(mem);
    auto* xs = reinterpret_cast<float*>(static_cast<std::uint8_t*>(mem) + (k + 63) / 64 * 64);
    auto* sums = reinterpret_cast<std::int32_t*>(xs + blocks);
    for (std::int64_t b = 0; b < blocks; ++b) xs[b] = quantize_block<A>(x + b * gs, gs, q + b * gs, sums[b]);
    return {q, xs, sums};
}

// out[i][r] += sum over blocks [b0, b1) of scale_b xs_b (sum_k (code - zero) xq_k), W row n + r
// against activation row x[i]: the GEMV (1 x 1) and the GEMM tiles without VNNI. The integer dot
// of a register takes c = code - 128 as |c| times xq with the sign of c; int_asym blocks add
// scale_b xs_b (128 - zero) sum(xq) outside the integer loop (int_sym's zero 128 makes it 0).
template <class P, class A, int MR, int NR>
void int8_tile_i8(const weights_view& w, const int8_act_row* x, std::int64_t n, std::int64_t b0, std::int64_t b1,
                  float (&out)[MR][NR]) {
    using F = simd::f32v<A>;
    using I = simd::i32v<A>;
    using U = simd::u8v<A>;
    constexpr int V = simd::vbytes<A>, lanes = simd::lanes<A>, chains = MR * NR < 4 ? 2 : 1;
    const std::int64_t gs = int8_group<P>(w);
    const std::uint8_t* codes[NR];
    for (int r = 0; r < NR; ++r) codes[r] = row_codes<P, A>(w, n + r);
    F acc[MR][NR], offset_lanes[MR][NR];  // the zero-point terms (int_asym): lanes over blocks
    float offsets[MR][NR] = {};           // and the blocks after the last full register
    for (int i = 0; i < MR; ++i)
        for (int r = 0; r < NR; ++r) acc[i][r] = offset_lanes[i][r] = F(0.0f);
    // dot[i][r] += the register of codes code_at(r) against the activations act_at(i)
    // (code_at / act_at return the registers)
    const auto add = [](auto code_at, auto act_at, I(&dot)[MR][NR]) {
        U xv[MR];
        simd::unroll<MR>([&](auto i) { xv[i] = act_at(i); });
        simd::unroll<NR>([&](auto r) {
            const U c = code_at(r) ^ U(static_cast<std::uint8_t>(0x80));  // code - 128, signed
            const U magnitude = simd::apply_sign<A>(c, c);
            simd::unroll<MR>([&](auto i) {
                dot[i][r] = simd::dot_u8s8<A>(dot[i][r], magnitude, simd::apply_sign<A>(xv[i], c));
            });
        });
    };
    float scales[NR][scale_chunk];
    alignas(64) float cs[MR][NR][scale_chunk];  // scale * xs per block of the chunk
    for (std::int64_t c0 = b0; c0 < b1; c0 += scale_chunk) {
        const int nb = static_cast<int>(smaller<std::int64_t>(scale_chunk, b1 - c0));
        for (int r = 0; r < NR; ++r) {
            const float* row_scales = layout_traits<P::storage>::template row_scales<P, A>(w, n + r, c0, nb, scales[r]);
            for (int i = 0; i < MR; ++i) {
                for (int t = 0; t < nb; ++t) cs[i][r][t] = row_scales[t] * x[i].xs[c0 + t];
                if constexpr (has_zeros<P>) {  // int_sym: zero 128, no term
                    const std::uint8_t* zeros = row_blocks<P, std::uint8_t>(w, w.zeros, n + r, c0);
                    const std::int32_t* sums = x[i].sums + c0;
                    int t = 0;
                    for (; t + lanes <= nb; t += lanes) {
                        const I term = (I(128) - simd::load_u8_as_i32<A>(zeros + t)) * I::load_unaligned(sums + t);
                        const F scale = F::load_aligned(cs[i][r] + t);
                        offset_lanes[i][r] = simd::fma<A>(scale, xsimd::to_float(term), offset_lanes[i][r]);
                    }
                    for (; t < nb; ++t) offsets[i][r] += cs[i][r][t] * static_cast<float>((128 - zeros[t]) * sums[t]);
                }
            }
        }
        for (std::int64_t b = c0; b < c0 + nb; ++b) {
            I chain[chains][MR][NR];  // independent sums: small tiles would wait on the dot latency
            for (auto& c : chain)
                for (auto& d : c)
                    for (I& v : d) v = I(0);
            I(&dot)[MR][NR] = chain[0];
            const std::int64_t end = (b + 1) * gs;
            std::int64_t j = b * gs;
            const auto add_at = [&](std::int64_t at, I(&to)[MR][NR]) {
                for (int r = 0; r < NR; ++r) simd::prefetch_ahead(codes[r] + at);
                add([&](int r) { return U::load_unaligned(codes[r] + at); },
                    [&](int i) { return U::load_unaligned(reinterpret_cast<const std::uint8_t*>(x[i].q) + at); }, to);
            };
            for (; j + chains * V <= end; j += chains * V)
                simd::unroll<chains>([&](auto c) { add_at(j + c * V, chain[c]); });
            for (; j + V <= end; j += V) add_at(j, dot);
            if (j < end) {  // a block end that fills no register (every block of g32 on AVX-512)
                for (int r = 0; r < NR; ++r) simd::prefetch_ahead(codes[r] + j);
                // < V here; the min tells GCC so (-Wstringop-overflow on the copies below)
                const std::size_t in = std::min(static_cast<std::size_t>(end - j), static_cast<std::size_t>(V));
                if constexpr (std::is_base_of_v<xsimd::avx512bw, A>) {  // masked loads: x 0 past the end
                    const __mmask64 m = (std::uint64_t{1} << in) - 1;
                    add([&](int r) { return U(_mm512_maskz_loadu_epi8(m, codes[r] + j)); },
                        [&](int i) { return U(_mm512_maskz_loadu_epi8(m, x[i].q + j)); }, dot);
                } else {  // padded with code 128 (c = 0), x 0
                    alignas(64) std::uint8_t c8[NR][V], x8[MR][V];
                    for (int r = 0; r < NR; ++r) {
                        std::memset(c8[r], 0x80, V);
                        std::memcpy(c8[r], codes[r] + j, in);
                    }
                    for (int i = 0; i < MR; ++i) {
                        std::memset(x8[i], 0, V);
                        std::memcpy(x8[i], x[i].q + j, in);
                    }
                    add([&](int r) { return U::load_aligned(c8[r]); }, [&](int i) { return U::load_aligned(x8[i]); }, dot);
                }
            }
            for (int c = 1; c < chains; ++c)
                for (int i = 0; i < MR; ++i)
                    for (int r = 0; r < NR; ++r) dot[i][r] = dot[i][r] + chain[c][i][r];
            for (int i = 0; i < MR; ++i)
                for (int r = 0; r < NR; ++r)
                    acc[i][r] = simd::fma<A>(xsimd::to_float(dot[i][r]), F(cs[i][r][b - c0]), acc[i][r]);
        }
    }
    for (int i = 0; i < MR; ++i)
        for (int r = 0; r < NR; ++r) {
            const float zero_terms = has_zeros<P> ? xsimd::hadd(offset_lanes[i][r]) + offsets[i][r] : 0.0f;
            out[i][r] += xsimd::hadd(acc[i][r]) + zero_terms;
        }
}

// One activation row per row of X, quantized per block into rows[i] (scratch slot 0).
template <class P, class A>
void quantize_int8_rows(const weights_view& w, const float* x, std::int64_t m, int8_act_row* rows) {
    const std::int64_t k = w.cols, gs = int8_group<P>(w);
    const std::size_t row_bytes = int8_act_bytes<A>(k, k / gs);
    auto* mem = static_cast<std::uint8_t*>(simd::scratch<A, 0>::get(static_cast<std::size_t>(m) * row_bytes));
    for (std::int64_t i = 0; i < m; ++i) rows[i] = quantize_int8_acts<A>(x + i * k, k, gs, mem + i * row_bytes);
}

template <class P, class A>
    requires int8_policy<P>
void gemv_i8(const weights_view& w, const float* x, const float* bias, float* y, std::int64_t n0, std::int64_t n1) {
    int8_act_row xq;
    quantize_int8_rows<P, A>(w, gather_columns<A, 1>(w, x, 1), 1, &xq);
    const std::int64_t blocks = w.cols / int8_group<P>(w);
    for (std::int64_t n = n0; n < n1; ++n) {
        float v[1][1] = {{bias ? bias[n] : 0.0f}};
        int8_tile_i8<P, A, 1, 1>(w, &xq, n, 0, blocks, v);
        y[n] = v[0][0];
    }
}

// Without VNNI (with VNNI: i8_gemm_vnni.hpp): register tiles on W in place, blocked as the
// generic i8 GEMM (gemm_tiles.hpp).
template <class P, class A>
    requires int8_policy<P>
void gemm_i8(const weights_view& w, const float* x, std::int64_t m, const float* bias, float* y, std::int64_t n0,
             std::int64_t n1) {
    const std::int64_t gs = int8_group<P>(w), ldy = w.rows;
    init_output(bias, y, m, ldy, n0, n1);
    auto* rows = static_cast<int8_act_row*>(simd::scratch<A, 1>::get(static_cast<std::size_t>(m) * sizeof(int8_act_row)));
    quantize_int8_rows<P, A>(w, gather_columns<A, 2>(w, x, m), m, rows);
    const std::int64_t slice = gemm_i8_k_slice > gs ? gemm_i8_k_slice / gs : 1;  // in blocks
    each_tile<gemm_i8_mr<A>, gemm_i8_nr>(m, n0, n1, w.cols / gs, slice, y, ldy,
                                         [&](auto mt, auto nt, auto i0, auto n, auto b0, auto b1, auto& out) {
                                             int8_tile_i8<P, A, mt, nt>(w, rows + i0, n, b0, b1, out);
                                         });
}

}  // namespace qforge::kernels

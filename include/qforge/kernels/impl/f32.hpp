// The exact-f32 compute path: code values looked up exactly, products and sums in f32 with FMA.
//
// GEMV decodes the codes in registers and multiplies by the block scale once per block:
//   y[n] = sum_b scale[n, b] * sum_{k in b} value[code(n, k)] * x[k]
// (the scalar tail, when a register spans several blocks, computes the same sums).
// GEMM dequantizes panels of W exactly (dequantize.hpp, or per-block tables) and runs register
// tiles of W rows times X rows on them (see "GEMM" below).
// Error bound (any summation order, u = 2^-24): |y - y_exact| <= (K + 2) u sum_k |W[n,k] x[k]|.
//
// The bf16 and f16 compute paths (bitsandbytes' bnb_4bit_compute_dtype bfloat16 / float16) run the
// same code with rounded operands: x and every exactly dequantized weight are rounded to bf16 or
// f16 (RNE), products and sums stay in f32. So the scale is applied per weight before rounding,
// not per block.
#pragma once

#include <qforge/kernels/impl/dequantize.hpp>
#include <qforge/kernels/impl/gemm_tiles.hpp>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace qforge::kernels {

// The GEMV walks W one row at a time: it then reads W as a single sequential stream, which the
// hardware prefetchers follow at full DRAM bandwidth. Measured on this machine's Zen 5 (1 thread,
// 512 MiB): one stream 33 GB/s; four interleaved 2 KiB row streams (sharing the x loads) 11 GB/s,
// 22-23 GB/s with software prefetch of the next tile. x loads are L1 hits either way.
//
// GEMV decodes one register of codes (a window, dequantize.hpp) with 32 / bits table lookups:
// lookup i takes the code at bit offset bits * i of each 32-bit lane, i.e. in lane j code
// i % parts of byte 4j + i / parts (for nibbles: 8 lookups, the low nibble for even i). The table
// ignores the index bits above a 2-bit code (format.hpp). 3-bit codes are first completed per
// field, a byte each (the low bits plus the third from the window's bit plane), then looked up as
// byte i / parts of each lane. x is permuted once per call into that order (tail blocks: natural).
// bf16 / f16 operands: see the header of this file.
//
// Why it runs below the read bandwidth on this machine (Zen 5, 3.45 GHz): a 64-byte window of
// nibbles takes 8 lookups (vpermps), 8 FMAs, the block's scale FMA and 7 shifts (NF4 block 64:
// also a permute that spreads its two block scales). Measured with 8 independent instructions of
// each kind: every one-instruction table lookup (vpermps, vpermd, vpshufb, vpermb) shares the two
// FMA pipes (2.4 per cycle together with FMAs, 2 each alone); shifts, logic and int-to-float
// conversions do not. So a window needs at least 17 / 2.4 = 7.1 cycles (NF4: 18 / 2.4 = 7.5).
// A standalone loop of one int4 window per iteration ran at 7.3 cycles from L1; this GEMV takes
// 8.6-8.9 from L2 (K = 4096, 256 rows). Decodes without a lookup were slower in that loop: and +
// convert of the integer codes 9.7 cycles, float bits 2^23 + code made by or and then a
// subtraction 10.0. Cold, 0.7 of a 39 GB/s bandwidth (this machine's best runs) would ask 8.3
// cycles per window for int4 g128 (66 bytes with its scale) and 9.1 for NF4 block 64 (72 bytes):
// about what the GEMV takes hot.
// The bf16 and f16 compute paths round every operand (x and each exactly dequantized weight) to
// the compute dtype; products and sums stay in f32.
template <class P>
inline constexpr bool rounded_operands = P::act == compute::bf16 || P::act == compute::f16;

// Where every weight of a format is a number of the compute dtype, rounding it is the identity and
// the weights take the f32 path (the block scale applied to the block's sum). MXFP4 in bf16: an
// E2M1 value v is a multiple of 1/2 below 8 with at most 2 significant bits, the E8M0 scale s a
// power of two 2^e, e >= -127 (or NaN). So v s is exact in f32 (a multiple of 2^-128 where it is
// below 2^-126, an f32 subnormal then) or overflows to Inf, and every such f32 is a bf16 number:
// bf16 has f32's exponents and its subnormals are the multiples of 2^-133. And since s is a power
// of two, sum_k (v_k s) x_k and s sum_k v_k x_k round alike term by term, barring the underflow of
// partial sums (the factored form, the f32 path's, is then the more accurate one).
template <class P>
inline constexpr bool exact_weights = P::act == compute::bf16 && P::type == dtype::e2m1 && P::storage == layout::mx;
template <class P>
inline constexpr bool rounded_weights = rounded_operands<P> && !exact_weights<P>;

template <class P, class A, class V>
inline V operand(const V& v) {
    if constexpr (P::act == compute::bf16) return simd::round_bf16<A>(v);
    else if constexpr (P::act == compute::f16) return simd::round_f16<A>(v);
    else return v;
}

// On AVX-512 a register of 64 code bytes spans two blocks where a block is 64 nibbles (bnb4 block
// 64). Where the weights are rounded per block (bf16 / f16) a window is then half a register of
// codes, two bytes per 32-bit lane: one block, whose rounded table one-table permutes look up.
// (Both blocks' tables looked up as a pair took a two-table permute and an index op per lookup;
// on this machine's Zen 5, measured with 8 independent instructions of each kind, vpermt2ps and
// FMA pairs take 1.25x as long as vpermps and FMA pairs, and ternary-logic ops compete with both.)
template <class P, class A>
inline constexpr bool half_windows = std::is_base_of_v<xsimd::avx512f, A> && rounded_weights<P> && !split_planes<P> &&
                                     window_shape<P, A>::blocks_per_window == 2;
template <class P, class A>
using f32_shape = window_shape<P, A, half_windows<P, A> ? 2 : 4>;

// x rounded to the compute dtype once per call (bf16 / f16 paths; f32: x itself), in scratch slot 1.
template <class P, class A>
const float* rounded_x(const float* x, std::int64_t k) {
    if constexpr (!rounded_operands<P>) return x;
    auto* xr = static_cast<float*>(simd::scratch<A, 1>::get(static_cast<std::size_t>(k) * sizeof(float)));
    for (std::int64_t i = 0; i < k; ++i) xr[i] = operand<P, A>(x[i]);
    return xr;
}

// perm (act-order, weights.hpp): stored column k multiplies x[perm[k]], gathered here too. As row r
// of a tile of `rows` (gemv_f32_rows): the tile's rows side by side per window, xp[w0 rows + r W +
// e] for element e of the window at w0, then row r's tail at xp[full rows + r (k - full)].
template <class P, class A>
void permute_for_f32(const f32_shape<P, A>& s, const float* x, const std::int32_t* perm, float* xp, int r = 0,
                     int rows = 1) {
    using S = f32_shape<P, A>;
    using L = layout_traits<P::storage>;
    const auto at = [&](std::int64_t k) { return operand<P, A>(perm ? x[perm[k]] : x[k]); };
    const std::int64_t full = s.steps * S::step_elems;
    for (std::int64_t w0 = 0; w0 < full; w0 += S::W)
        for (int i = 0; i < S::lane_bytes * S::parts; ++i)
            for (int j = 0; j < S::lanes; ++j)
                xp[w0 * rows + r * S::W + i * S::lanes + j] =
                    at(w0 + L::template element_of<S::bits>(S::lane_bytes * j + i / S::parts, i % S::parts));
    for (std::int64_t k = full; k < s.k; ++k) xp[full * rows + r * (s.k - full) + k - full] = at(k);
}

// sum_k W[n, k] x[k] from the permuted xp.
template <class P, class A>
float gemv_f32_row(const weights_view& w, const f32_shape<P, A>& s, const simd::table16<A>& table,
                   const float* values, const float* xp, std::int64_t n) {
    using S = f32_shape<P, A>;
    using L = layout_traits<P::storage>;
    using F = simd::f32v<A>;
    using I = simd::i32v<A>;
    constexpr int bpw = S::blocks_per_window;
    constexpr int steps_per_chunk = scale_chunk / bpw;
    // one zero point per step: subtracted from the table once, not from every looked-up register
    // (exact either way: small integers; int4 g128 asym: 8 subtractions fewer per window)
    constexpr bool zero_in_table = has_zeros<P> && bpw == 1;
    // bf16 / f16 operands: where a window holds one block (half_windows), the block's values times
    // its scale are rounded once into the step's table, so the lookups return the rounded weights;
    // elsewhere every looked-up register is scaled and rounded. The same values either way.
    constexpr bool rounded_table = rounded_weights<P> && bpw == 1;
    // 2-bit codes on AVX-512: a lane's codes looked up in pairs from one shift of the lane, the
    // first by its low 2 bits in the table, the second by bits 2-3 in quads (table_quads): 7
    // shifts a register instead of 15 (the GEMV is bound by its vector ops, 3 per 16 weights)
    constexpr bool pairs = S::bits == 2 && !split_planes<P> && std::is_base_of_v<xsimd::avx512f, A> && !rounded_weights<P>;
    // codes of at most 3 bits: their values repeat every 8 entries, a one-op lookup on AVX2
    constexpr bool small_codes = code_bits<P> <= 3;
    const auto rounded = [&](const simd::table16<A>& t, float zero, float scale) {
        return simd::table_map<A>(has_zeros<P> ? simd::table_minus<A>(t, zero) : t,
                                  [&](const F& v) { return operand<P, A>(F(v * F(scale))); });
    };

    const std::uint8_t* codes = row_codes<P, A>(w, n);
    F acc(0.0f);
    // FMA chains: two per step where the step's sum is scaled; rounded weights need no step sum,
    // so their chains run through the row (a sum per step took 2 of the 17 vector ops of a block
    // of NF4 f16), four of them (a half window has only 4 lookups: FMA latency)
    constexpr int chains = rounded_weights<P> ? 4 : 2;
    F p0(0.0f), p1(0.0f), p2(0.0f), p3(0.0f);  // named, not an array: GCC kept arrays in memory
    float buf[scale_chunk];
    [[maybe_unused]] float zbuf[has_zeros<P> ? scale_chunk : 1];
    for (std::int64_t c0 = 0; c0 < s.steps; c0 += steps_per_chunk) {
        const std::int64_t c1 = s.steps - c0 < steps_per_chunk ? s.steps : c0 + steps_per_chunk;
        const int nb = static_cast<int>((c1 - c0) * bpw);
        const float* scales = L::template row_scales<P, A>(w, n, c0 * bpw, nb, buf);
        [[maybe_unused]] const float* zeros = has_zeros<P> ? row_zeros<P, A>(w, n, c0 * bpw, nb, zbuf) : nullptr;
        for (std::int64_t step = c0; step < c1; ++step) {
            if constexpr (!rounded_weights<P>) p0 = p1 = F(0.0f);
            const std::int64_t local = (step - c0) * bpw;
            const F step_scale = simd::expand_scales<bpw, A>(scales + local);
            const auto zero_at = [&](int b) { return has_zeros<P> ? zeros[local + b] : 0.0f; };
            const auto step_table = [&] {
                if constexpr (rounded_table) return rounded(table, zero_at(0), scales[local]);
                else return zero_in_table ? simd::table_minus<A>(table, zeros[local]) : table;
            }();
            [[maybe_unused]] simd::table16<A> quads;
            if constexpr (pairs) quads = simd::table_quads<A>(step_table);
            [[maybe_unused]] F step_zero;
            if constexpr (has_zeros<P> && !zero_in_table) step_zero = simd::expand_scales<bpw, A>(zeros + local);
            simd::unroll<S::windows_per_step>([&](auto wi) {
                const window_codes wc = window_at<P, A, S::V>(codes, s.k, step * S::windows_per_step + wi);
                simd::prefetch_ahead(wc.low);
                const float* xw = xp + (step * S::windows_per_step + wi) * S::W;
                const I c8 = S::lane_bytes == 4 ? I::load_unaligned(reinterpret_cast<const std::int32_t*>(wc.low))
                                                : simd::load_u16_as_i32<A>(wc.low);
                [[maybe_unused]] I whole[split_planes<P> ? S::parts : 1];  // 3-bit: the codes of field p
                if constexpr (split_planes<P>) {
                    simd::prefetch_ahead(wc.high);  // a 96-byte unit spans 2 cache lines
                    simd::unroll<S::parts>([&](auto p) {
                        const auto field = simd::code_field<2 * p, 2, A>(xsimd::bitwise_cast<simd::u8v<A>>(c8));
                        whole[p] = xsimd::bitwise_cast<I>(simd::add_bit_bytes<4, A>(field, wc.high + p * wc.high_stride));
                    });
                }
                simd::unroll<S::lane_bytes * S::parts>([&](auto i) {
                    // a table lookup is 1 op: cheaper than (code & 15) - zero converted, also for integers;
                    // 3-bit codes: byte i / parts of each lane of field i % parts, bit 3 clear
                    I idx = i == 0 ? c8 : I(c8 >> (S::bits * i));
                    if constexpr (split_planes<P>)
                        idx = i < S::parts ? whole[i % S::parts] : I(whole[i % S::parts] >> (8 * (i / S::parts)));
                    if constexpr (pairs) idx = i < 2 ? c8 : I(c8 >> (4 * (i / 2)));
                    F v;
                    if constexpr (pairs) v = simd::lookup<A>(i % 2 == 1 ? quads : step_table, idx);
                    else if constexpr (small_codes) v = simd::lookup8<A>(step_table, idx);
                    else v = simd::lookup<A>(step_table, idx);
                    if constexpr (has_zeros<P> && !zero_in_table) v = v - step_zero;  // exact: code - zero
                    if constexpr (rounded_weights<P> && !rounded_table) v = operand<P, A>(F(v * step_scale));
                    const F xv = F::load_unaligned(xw + i * S::lanes);
                    F& chain = i % chains == 0 ? p0 : i % chains == 1 ? p1 : i % chains == 2 ? p2 : p3;
                    chain = simd::fma<A>(v, xv, chain);
                });
            });
            if constexpr (!rounded_weights<P>) acc = simd::fma<A>(p0 + p1, step_scale, acc);
        }
    }
    if constexpr (rounded_weights<P>) acc = (p0 + p1) + (p2 + p3);
    float out = xsimd::hadd(acc);
    if (s.tail_blocks == 0) return out;
    // the blocks after the last full window, in scalar code
    const std::int64_t b0 = s.blocks - s.tail_blocks;
    const float* sc = L::template row_scales<P, A>(w, n, b0, static_cast<int>(s.tail_blocks), buf);
    const float* zr = has_zeros<P> ? row_zeros<P, A>(w, n, b0, static_cast<int>(s.tail_blocks), zbuf) : nullptr;
    for (std::int64_t b = b0; b < s.blocks; ++b) {
        float part = 0.0f;
        for (std::int64_t k = b * S::group; k < (b + 1) * S::group; ++k) {
            float v = values[L::template code_at<A, code_bits<P>>(codes, s.k, k)];
            if constexpr (has_zeros<P>) v -= zr[b - b0];
            if constexpr (rounded_weights<P>) part += operand<P, A>(v * sc[b - b0]) * xp[k];
            else part += v * xp[k];
        }
        out += rounded_weights<P> ? part : part * sc[b - b0];
    }
    return out;
}

// out[r] = sum_k W[n, k] x_r[k] from a tile of R permuted rows x_r (permute_for_f32; the GEMV: R = 1),
// k over steps [step0, step1), and the tail blocks when step1 is the last step.
// Each decoded register of W feeds the R rows: for few rows of X (the GEMM at small M) W is read
// and decoded once. (The GEMV keeps gemv_f32_row: this function with R = 1, whose inner loop
// compiled to the same instructions, took 1.06-1.17x its time in alternated runs, cold and hot.)
template <class P, class A, int R>
void gemv_f32_rows(const weights_view& w, const f32_shape<P, A>& s, const simd::table16<A>& table, const float* values,
                   const float* xp, std::int64_t n, std::int64_t step0, std::int64_t step1, float (&out)[R]) {
    using S = f32_shape<P, A>;
    using L = layout_traits<P::storage>;
    using F = simd::f32v<A>;
    using I = simd::i32v<A>;
    constexpr int bpw = S::blocks_per_window;
    constexpr int steps_per_chunk = scale_chunk / bpw;
    // one zero point per step: subtracted from the table once, not from every looked-up register
    // (exact either way: small integers; int4 g128 asym: 8 subtractions fewer per window)
    constexpr bool zero_in_table = has_zeros<P> && bpw == 1;
    // bf16 / f16 operands: where a window holds one block (half_windows), the block's values times
    // its scale are rounded once into the step's table, so the lookups return the rounded weights;
    // elsewhere every looked-up register is scaled and rounded. The same values either way.
    constexpr bool rounded_table = rounded_weights<P> && bpw == 1;
    // 2-bit codes on AVX-512: a lane's codes looked up in pairs from one shift of the lane, the
    // first by its low 2 bits in the table, the second by bits 2-3 in quads (table_quads): 7
    // shifts a register instead of 15 (the GEMV is bound by its vector ops, 3 per 16 weights)
    constexpr bool pairs = S::bits == 2 && !split_planes<P> && std::is_base_of_v<xsimd::avx512f, A> && !rounded_weights<P>;
    // codes of at most 3 bits: their values repeat every 8 entries, a one-op lookup on AVX2
    constexpr bool small_codes = code_bits<P> <= 3;
    const auto rounded = [&](const simd::table16<A>& t, float zero, float scale) {
        return simd::table_map<A>(has_zeros<P> ? simd::table_minus<A>(t, zero) : t,
                                  [&](const F& v) { return operand<P, A>(F(v * F(scale))); });
    };

    const std::uint8_t* codes = row_codes<P, A>(w, n);
    // FMA chains: two per step where the step's sum is scaled; rounded weights need no step sum,
    // so their chains run through the row (a sum per step took 2 of the 17 vector ops of a block
    // of NF4 f16), four of them (a half window has only 4 lookups: FMA latency). Per row of several:
    // fewer, as the rows' chains are independent (registers: at most 8 chains on AVX-512, 4 else).
    constexpr int budget = std::is_base_of_v<xsimd::avx512f, A> ? 8 : 4;
    constexpr int chains = R == 1 ? (rounded_weights<P> ? 4 : 2) : std::clamp(budget / R, 1, rounded_weights<P> ? 4 : 2);
    F acc[R], p[R * chains];
    for (int r = 0; r < R; ++r) acc[r] = F(0.0f);
    for (int c = 0; c < R * chains; ++c) p[c] = F(0.0f);
    const auto chain_sum = [](const F* c) {
        if constexpr (chains == 4) return (c[0] + c[1]) + (c[2] + c[3]);
        else if constexpr (chains == 2) return c[0] + c[1];
        else return c[0];
    };
    float buf[scale_chunk];
    [[maybe_unused]] float zbuf[has_zeros<P> ? scale_chunk : 1];
    for (std::int64_t c0 = step0; c0 < step1; c0 += steps_per_chunk) {
        const std::int64_t c1 = step1 - c0 < steps_per_chunk ? step1 : c0 + steps_per_chunk;
        const int nb = static_cast<int>((c1 - c0) * bpw);
        const float* scales = L::template row_scales<P, A>(w, n, c0 * bpw, nb, buf);
        [[maybe_unused]] const float* zeros = has_zeros<P> ? row_zeros<P, A>(w, n, c0 * bpw, nb, zbuf) : nullptr;
        for (std::int64_t step = c0; step < c1; ++step) {
            if constexpr (!rounded_weights<P>)
                for (int c = 0; c < R * chains; ++c) p[c] = F(0.0f);
            const std::int64_t local = (step - c0) * bpw;
            const F step_scale = simd::expand_scales<bpw, A>(scales + local);
            const auto zero_at = [&](int b) { return has_zeros<P> ? zeros[local + b] : 0.0f; };
            const auto step_table = [&] {
                if constexpr (rounded_table) return rounded(table, zero_at(0), scales[local]);
                else return zero_in_table ? simd::table_minus<A>(table, zeros[local]) : table;
            }();
            [[maybe_unused]] simd::table16<A> quads;
            if constexpr (pairs) quads = simd::table_quads<A>(step_table);
            [[maybe_unused]] F step_zero;
            if constexpr (has_zeros<P> && !zero_in_table) step_zero = simd::expand_scales<bpw, A>(zeros + local);
            simd::unroll<S::windows_per_step>([&](auto wi) {
                const window_codes wc = window_at<P, A, S::V>(codes, s.k, step * S::windows_per_step + wi);
                simd::prefetch_ahead(wc.low);
                const float* xw = xp + (step * S::windows_per_step + wi) * R * S::W;
                const I c8 = S::lane_bytes == 4 ? I::load_unaligned(reinterpret_cast<const std::int32_t*>(wc.low))
                                                : simd::load_u16_as_i32<A>(wc.low);
                [[maybe_unused]] I whole[split_planes<P> ? S::parts : 1];  // 3-bit: the codes of field p
                if constexpr (split_planes<P>) {
                    simd::prefetch_ahead(wc.high);  // a 96-byte unit spans 2 cache lines
                    simd::unroll<S::parts>([&](auto p) {
                        const auto field = simd::code_field<2 * p, 2, A>(xsimd::bitwise_cast<simd::u8v<A>>(c8));
                        whole[p] = xsimd::bitwise_cast<I>(simd::add_bit_bytes<4, A>(field, wc.high + p * wc.high_stride));
                    });
                }
                simd::unroll<S::lane_bytes * S::parts>([&](auto i) {
                    // a table lookup is 1 op: cheaper than (code & 15) - zero converted, also for integers;
                    // 3-bit codes: byte i / parts of each lane of field i % parts, bit 3 clear
                    I idx = i == 0 ? c8 : I(c8 >> (S::bits * i));
                    if constexpr (split_planes<P>)
                        idx = i < S::parts ? whole[i % S::parts] : I(whole[i % S::parts] >> (8 * (i / S::parts)));
                    if constexpr (pairs) idx = i < 2 ? c8 : I(c8 >> (4 * (i / 2)));
                    F v;
                    if constexpr (pairs) v = simd::lookup<A>(i % 2 == 1 ? quads : step_table, idx);
                    else if constexpr (small_codes) v = simd::lookup8<A>(step_table, idx);
                    else v = simd::lookup<A>(step_table, idx);
                    if constexpr (has_zeros<P> && !zero_in_table) v = v - step_zero;  // exact: code - zero
                    if constexpr (rounded_weights<P> && !rounded_table) v = operand<P, A>(F(v * step_scale));
                    for (int r = 0; r < R; ++r) {
                        F& chain = p[r * chains + i % chains];
                        chain = simd::fma<A>(v, F::load_unaligned(xw + r * S::W + i * S::lanes), chain);
                    }
                });
            });
            if constexpr (!rounded_weights<P>)
                for (int r = 0; r < R; ++r) acc[r] = simd::fma<A>(chain_sum(p + r * chains), step_scale, acc[r]);
        }
    }
    if constexpr (rounded_weights<P>)
        for (int r = 0; r < R; ++r) acc[r] = chain_sum(p + r * chains);
    reduce_rows<A, R>(acc, out);
    if (s.tail_blocks == 0 || step1 < s.steps) return;
    // the blocks after the last full window, in scalar code
    const std::int64_t b0 = s.blocks - s.tail_blocks;
    const float* sc = L::template row_scales<P, A>(w, n, b0, static_cast<int>(s.tail_blocks), buf);
    const float* zr = has_zeros<P> ? row_zeros<P, A>(w, n, b0, static_cast<int>(s.tail_blocks), zbuf) : nullptr;
    const std::int64_t full = b0 * S::group;
    for (int r = 0; r < R; ++r)
        for (std::int64_t b = b0; b < s.blocks; ++b) {
            const float* xt = xp + full * R + r * (s.k - full) - full;
            float part = 0.0f;
            for (std::int64_t k = b * S::group; k < (b + 1) * S::group; ++k) {
                float v = values[L::template code_at<A, code_bits<P>>(codes, s.k, k)];
                if constexpr (has_zeros<P>) v -= zr[b - b0];
                if constexpr (rounded_weights<P>) part += operand<P, A>(v * sc[b - b0]) * xt[k];
                else part += v * xt[k];
            }
            out[r] += rounded_weights<P> ? part : part * sc[b - b0];
        }
}

// The codes of elements [e0, e1) of row n (if n < n1) fetched into the caches: the passes of the
// few-row GEMMs (row_passes, gemm_tiles.hpp) read a piece of each row.
template <class P, class A>
[[gnu::always_inline]] inline void prefetch_row_span(const weights_view& w, std::int64_t n, std::int64_t n1,
                                                     std::int64_t e0, std::int64_t e1) {
    if (n >= n1) return;
    const std::uint8_t* codes = row_codes<P, A>(w, n);
    for (std::int64_t b = e0 * code_bits<P> / 8; b < e1 * code_bits<P> / 8; b += 64) _mm_prefetch(reinterpret_cast<const char*>(codes + b), _MM_HINT_T0);
}

// ---- GEMM --------------------------------------------------------------------------------
// The f32 GEMM (also the rounded paths, and the bf16 path's vdpbf16ps tiles in bf16.hpp; driver
// gemm_f32 in kernels_impl.hpp). X is packed once per call into blocks of gemm_x_block<A> rows
// transposed, x[k][row] (rows past M zeros). W is dequantized once, gemm_f32_panel rows times
// gemm_f32_k_chunk columns at a time, in natural order (any format's dequantize_columns, or the
// table lookups below), into a buffer that stays in L1 while every X block runs over it. A
// register tile is NR W rows times an X block of two vectors: per k two vector loads of X and NR
// broadcasts of W, each feeding two FMAs (AVX-512: 12 x 2 accumulators). The tiles' sums are per
// W row across X rows: they are carried from chunk to chunk in memory (a load and a store per
// accumulator per 256 k) and written into y, transposed, once per panel.
// (The previous tiles, 4 X rows x 4 W rows of dot products reduced horizontally, loaded both
// operands for every product pair and dequantized panels of 32 rows x 512 K into L2: 0.56-0.76 of
// the FMA peak at M = 32-128, against 0.8-0.9 here; docs/performance.md.)
template <class A>
inline constexpr int gemm_x_block = 2 * simd::lanes<A>;
template <class A>
inline constexpr int gemm_w_rows = std::is_base_of_v<xsimd::avx512f, A> ? 12 : std::is_base_of_v<xsimd::avx2, A> ? 6 : 4;
// Few X rows: the tiles cost about the same from M = 1 to 16 (their vectors of X rows are partly
// empty). Measured on 4096 x 11008 (1 thread, cold, alternated builds): on AVX-512 a GEMV per row
// is faster up to M = 8 for codes of at most 4 bits in f32 and bf16 (tiles 17 ms, 11 ms in bf16;
// the GEMV 1.5-1.8 ms per row for int4 g128, NF4 b64, int3 g128, MXFP4 in bf16), but only up to
// M = 2 for the others, whose GEMVs take 2.2-6.2 ms per row (GEMVs at M = 8: int8 g32 f32 49.5 ms,
// FP8 e4m3 f32 29.5, int4 asym g32 f16 37.9). Above that the tiles (int8 g32 f32 / bf16 18 / 12
// ms, FP8 f32 / bf16 22 / 17 at M = 4-8), but for f16, whose tiles take 20-21 ms, the previous
// dot-product tiles (gemm_f32_dots, kernels_impl.hpp: 13-20 ms) up to M = 8. On AVX2 and SSE4.2,
// whose GEMVs take 8-19 ms per row, the dot-product tiles up to M = 4 (docs/performance.md).
// The 4-bit formats run the one-pass GEMM below over part of that range.
template <class P, class A>
inline constexpr std::int64_t gemm_f32_gemv_rows =
    !std::is_base_of_v<xsimd::avx512f, A> ? 0 : (P::bits <= 4 && P::act != compute::f16) ? 8 : 2;
// The one-pass GEMM (gemm_f32_rows, kernels_impl.hpp) of the formats whose GEMV is gemv_f32_row,
// for M in [gemm_f32_rows_min, gemm_f32_rows_max] (fewer rows: a GEMV per row). Measured on 4096 x
// 11008, 1 thread, cold, alternated with the previous choice (only 4-bit codes, not f16: the
// others keep it). AVX-512: int4 g128 f32 and NF4 b64 f32 0.8-0.9 of the GEMVs' time at M = 4-8,
// at M = 2 two GEMVs were 10-20% faster; MXFP4 (bf16) 0.9-1.15, no gain: it keeps the GEMVs.
// Rounded weights (int4 g32 bf16) 0.65-0.75 at M = 2, 0.4-0.45 at M = 4, and the tiles faster
// from M = 8 (13.4-14 against 12-14 ms). AVX2 (f32): 0.5-0.8 of the dot-product tiles at M = 2-4,
// but 1.5-2.6x the panel tiles at M = 8-16.
template <class P, class A>
inline constexpr std::int64_t gemm_f32_rows_min = std::is_base_of_v<xsimd::avx512f, A> && !rounded_weights<P> ? 3 : 2;
template <class P, class A>
inline constexpr std::int64_t gemm_f32_rows_max =
    P::bits != 4 || P::act == compute::f16 || P::storage == layout::mx ? 0
    : std::is_base_of_v<xsimd::avx512f, A> ? (rounded_weights<P> ? 4 : 8)
    : std::is_base_of_v<xsimd::avx2, A> && P::act == compute::f32 ? 4 : 0;
template <class A>
inline constexpr int gemm_f32_rows_mr = std::is_base_of_v<xsimd::avx512f, A> ? 8 : 4;
template <class P, class A>
inline constexpr std::int64_t gemm_f32_dot_rows =
    !std::is_base_of_v<xsimd::avx512f, A> ? 4 : P::act == compute::f16 ? 8 : 0;
inline constexpr std::int64_t gemm_f32_panel = 24;     // W rows decoded together: a multiple of every gemm_w_rows
inline constexpr std::int64_t gemm_f32_k_chunk = 256;  // K per decoded panel: 24 KiB of f32 stay in L1

// The 4-bit formats' panel rows on AVX-512 (f32: here; bf16 words: bf16.hpp): per block, the 16
// code values minus the zero point times the scale, once (the products dequantize_blocks forms per
// weight, the same roundings), then one lookup per 16 weights.
template <class P, class A>
inline constexpr bool table_rows = std::is_base_of_v<xsimd::avx512f, A> && P::bits == 4 &&
                                   (P::storage == layout::bnb4 || P::storage == layout::qforge);

// f(c, t): per 16 code bytes c (32 weights, from element k0 of row n) with their block's table t.
template <class P, class A, class F>
[[gnu::always_inline]] inline void each_span_table(const weights_view& w, const float* values, std::int64_t n,
                                                   std::int64_t k0, std::int64_t kc, F&& f) {
    constexpr int block = gemm_block<P>;
    const __m512 v = _mm512_load_ps(values);
    const std::uint8_t* codes = row_codes<P, A>(w, n) + k0 / 2;
    each_block_scale<P, A>(w, n, k0 / block, kc / block, [&](std::int64_t b, float scale, float zero) {
        const __m512 t = _mm512_mul_ps(_mm512_sub_ps(v, _mm512_set1_ps(zero)), _mm512_set1_ps(scale));
        for (int s = 0; s < block / 32; ++s)
            f(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + b * block / 2 + 16 * s)), b * block + 32 * s, t);
    });
}

template <class P, class A>
void table_row(const weights_view& w, const float* values, std::int64_t n, std::int64_t k0, std::int64_t kc, float* out) {
    each_span_table<P, A>(w, values, n, k0, kc, [&](__m128i c, std::int64_t e, __m512 t) {
        const __m512i idx = _mm512_cvtepu8_epi32(c);
        const __m512 low = _mm512_permutexvar_ps(idx, t);  // lookups take the low 4 bits
        const __m512 high = _mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), t);
        if constexpr (layout_traits<P::storage>::interleaved) {  // byte j: elements 2j (high), 2j + 1
            const __m512i first = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
            const __m512i second = _mm512_add_epi32(first, _mm512_set1_epi32(8));
            _mm512_storeu_ps(out + e, _mm512_permutex2var_ps(high, first, low));
            _mm512_storeu_ps(out + e + 16, _mm512_permutex2var_ps(high, second, low));
        } else {  // byte j: elements j (low), 16 + j
            _mm512_storeu_ps(out + e, low);
            _mm512_storeu_ps(out + e + 16, high);
        }
    });
}

// out[j * XB + i] (+)= sum_{k < kc} w[j * LD + k] xp[k * XB + i] for the NR W rows j and VR vectors
// of X rows i (XB = gemm_x_block<A>); add: onto the sums in out.
template <class A, int VR, int NR, std::int64_t LD>
void gemm_f32_tile(const float* xp, const float* w, std::int64_t kc, bool add, float* out) {
    using F = simd::f32v<A>;
    constexpr int lanes = simd::lanes<A>, XB = gemm_x_block<A>;
    F acc[NR][VR];
    simd::unroll<NR>([&](auto j) {
        simd::unroll<VR>([&](auto v) { acc[j][v] = add ? F::load_aligned(out + j * XB + v * lanes) : F(0.0f); });
    });
    for (std::int64_t k = 0; k < kc; ++k) {
        F xv[VR];
        simd::unroll<VR>([&](auto v) { xv[v] = F::load_aligned(xp + k * XB + v * lanes); });
        simd::unroll<NR>([&](auto j) {
            const F wv(w[j * LD + k]);
            simd::unroll<VR>([&](auto v) { acc[j][v] = simd::fma<A>(xv[v], wv, acc[j][v]); });
        });
    }
    simd::unroll<NR>([&](auto j) { simd::unroll<VR>([&](auto v) { acc[j][v].store_aligned(out + j * XB + v * lanes); }); });
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
            simd::unroll<NR>([&](auto j) { acc[i * NR + j] = simd::fma<A>(xv, wv[j], acc[i * NR + j]); });
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

// The int8-activation compute path (as llama.cpp's q8 activations and onnxruntime's accuracy
// level 4): x is quantized per block of the weight group to int8 with an f32 scale, and every
// block's dot product is an exact integer sum of int8 level x int8 activation products.
//
//   xs_b = amax_b / 127, xq_k = RNE(x_k * (127 / amax_b))              (activations)
//   level(c) = RNE(i8_scale * value(c))                                (weights, format.hpp)
//   y[n] = sum_b scale[n, b] * xs_b / i8_scale * sum_{k in b} level(code_k) * xq_k
//
// Error against the exact product, per output (delta = max_c |value(c) - level(c) / i8_scale|,
// 0 for integer formats, 0.5/127 for NF4, 0.375/120 for FP4):
//   |y - y_exact| <= sum_b |scale_b| sum_{k in b} (delta |x_k| + (|value_k| + delta) xs_b / 2)
// plus f32 rounding of the final sums (tests/test_kernels.cpp checks this bound).
//
// Integer dot products: with VNNI, vpdpbusd on unsigned weights u = level + offset and signed
// activations, minus offset * sum(xq) per block (precomputed with the activations). Without VNNI,
// pmaddubsw: integer formats use the same offset form (u <= 15 cannot saturate 16-bit pair sums);
// table formats use |level| times the activation with the level's sign (2 * 127 * 127 < 2^15).
// Asymmetric integers (int_asym): u = code, and the offset is the block's zero point, a weight-row
// value: the prepared row holds -sum(xq) per block, and the tile adds zero * that to the exact
// integer dot in f32 (|zero * sum| <= 15 * 127 * group < 2^24: exact).
#pragma once

#include <qforge/kernels/impl/dequantize.hpp>

#include <cstdint>
#include <cstring>

namespace qforge::kernels {

// The window walk of dequantize.hpp plus the layout of one prepared activation row.
template <class P, class A>
struct i8_shape : window_shape<P, A> {
    using base = window_shape<P, A>;
    using base::lanes, base::group;
    static constexpr bool table = code_traits<P::type>::from_table;
    static constexpr bool offset_form = simd::has_vnni<A> || !table;
    // int_sym: the zero point 2^(bits-1); int_asym: 1, times the row's zero later
    static constexpr int offset = has_zeros<P> ? 1 : table ? 128 : 1 << (P::bits - 1);
    static_assert(table || offset_form, "integer formats always use the offset form");
    static_assert(offset_form ? (simd::has_vnni<A> || 2 * 15 * 127 <= 32767) : 2 * 127 * 127 <= 32767,
                  "pmaddubsw pair sums must not saturate");

    // byte offsets of the parts of one prepared row
    std::size_t q_off = 0, xs_off = 0, corr_off = 0, xsb_off = 0, qsum_off = 0, bytes = 0;

    explicit i8_shape(std::int64_t cols) : base(cols) {
        const std::int64_t k = this->k, steps = this->steps, blocks = this->blocks;
        auto align = [](std::size_t b) { return (b + 63) / 64 * 64; };
        xs_off = align(static_cast<std::size_t>(k));
        corr_off = xs_off + align(static_cast<std::size_t>(steps * lanes) * sizeof(float));
        xsb_off = corr_off + align(static_cast<std::size_t>(steps * lanes) * sizeof(std::int32_t));
        qsum_off = xsb_off + align(static_cast<std::size_t>(blocks) * sizeof(float));
        bytes = qsum_off + align(static_cast<std::size_t>(blocks) * sizeof(float));
    }
};

// One prepared activation row.
struct i8_row {
    const std::int8_t* q;       // full windows permuted to the code registers' order, tail natural
    const float* xs;            // per step, one register of block scales (spread per block)
    const std::int32_t* corr;   // per step, one register: -offset * sum(xq) of each block in its first lane
    const float* xs_block;      // per block
    const float* qsum;          // per block: sum(xq), exact in f32 (|sum| <= 127 * group < 2^24)
};

// One block of x (P::group elements) as int8 levels out[0 .. group) in natural order:
// xq = RNE(x * (127 / amax)); sum receives sum(xq); returns the block's activation scale amax / 127.
template <class P, class A>
float quantize_block(const float* xb, std::int8_t* out, std::int32_t& sum) {
    using F = simd::f32v<A>;
    using I = simd::i32v<A>;
    constexpr int lanes = simd::lanes<A>;
    F m(0.0f);
    // max(|x|, m) keeps m where |x| is NaN (maxps returns its second operand), as `a > m ? a : m`
    for (int i = 0; i < P::group; i += lanes) m = xsimd::max(xsimd::abs(F::load_unaligned(xb + i)), m);
    alignas(64) float lane_max[lanes];
    m.store_aligned(lane_max);
    float amax = 0.0f;
    for (const float a : lane_max) amax = a > amax ? a : amax;
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    I total(0);
    for (int i = 0; i < P::group; i += lanes) {
        const I q = xsimd::nearbyint_as_int(F::load_unaligned(xb + i) * F(inv));
        total = total + q;
        simd::store_i8<A>(q, out + i);
    }
    sum = xsimd::hadd(total);
    return amax / 127.0f;
}

template <class P, class A>
i8_row quantize_activations(const i8_shape<P, A>& s, const float* x, void* mem) {
    using S = i8_shape<P, A>;
    using L = layout_traits<P::storage>;
    auto* base = static_cast<std::uint8_t*>(mem);
    auto* q = reinterpret_cast<std::int8_t*>(base);
    auto* xs = reinterpret_cast<float*>(base + s.xs_off);
    auto* corr = reinterpret_cast<std::int32_t*>(base + s.corr_off);
    auto* xs_block = reinterpret_cast<float*>(base + s.xsb_off);
    auto* qsum = reinterpret_cast<float*>(base + s.qsum_off);

    alignas(64) std::int8_t natural[S::step_elems];
    std::int32_t sums[S::blocks_per_window];
    const std::int64_t full = s.steps * S::step_elems;  // elements in full steps
    for (std::int64_t b = 0; b < s.blocks; ++b) {
        const std::int64_t in_step = (b * S::group) % S::step_elems;
        const std::int64_t step_start = b * S::group - in_step;
        const bool tail = step_start >= full;  // only when a window spans several blocks: natural order
        std::int32_t sum = 0;
        xs_block[b] = quantize_block<P, A>(x + b * S::group, tail ? q + b * S::group : natural + in_step, sum);
        qsum[b] = static_cast<float>(sum);
        if (tail) continue;
        sums[in_step / S::group] = sum;
        if (in_step + S::group < S::step_elems) continue;  // the step has more blocks
        // The step is complete: permute its windows, spread its scales and corrections.
        for (int wi = 0; wi < S::step_elems / S::W; ++wi) {
            std::int8_t* out = q + step_start + wi * S::W;
            const std::int8_t* in = natural + wi * S::W;
            if constexpr (L::interleaved) {
                for (int p = 0; p < S::parts; ++p)
                    for (int j = 0; j < S::V; ++j) out[p * S::V + j] = in[L::template element_of<S::bits>(j, p)];
            } else {  // code p of the bytes [16c, 16c + 16) is the 16 elements from element_of(16c, p) on
                for (int p = 0; p < S::parts; ++p)
                    for (int c = 0; c < S::V / 16; ++c)
                        std::memcpy(out + p * S::V + 16 * c, in + L::template element_of<S::bits>(16 * c, p), 16);
            }
        }
        const std::int64_t step = step_start / S::step_elems;
        constexpr int seg = S::lanes / S::blocks_per_window;
        for (int l = 0; l < S::lanes; ++l) {
            const int blk = l / seg;
            xs[step * S::lanes + l] = xs_block[b - (S::blocks_per_window - 1) + blk];
            corr[step * S::lanes + l] = (S::offset_form && l % seg == 0) ? -S::offset * sums[blk] : 0;
        }
    }
    return {q, xs, corr, xs_block, qsum};
}

// The weight side of the i8 path: int8 levels of the 16 codes in the registers the dot needs.
template <class P, class A>
struct i8_levels {
    std::int8_t level[16];
    simd::u8v<A> offset_lut;  // level + offset (offset form, table formats)
    simd::u8v<A> abs_lut;     // |level| (sign form)
    simd::u8v<A> sign_lut;    // level as a signed byte (sign form)

    explicit i8_levels(const weights_view& w) {
        using C = code_traits<P::type>;
        alignas(64) float values[16];
        C::template values<A>(w, values);
        std::uint8_t u[16], a[16], sg[16];
        for (int c = 0; c < 16; ++c) {
            float l = __builtin_nearbyintf(values[c] * C::i8_scale);
            l = l > 127.0f ? 127.0f : (l < -127.0f ? -127.0f : l);
            level[c] = static_cast<std::int8_t>(l);
            u[c] = static_cast<std::uint8_t>(level[c] + i8_shape<P, A>::offset);
            a[c] = static_cast<std::uint8_t>(level[c] < 0 ? -level[c] : level[c]);
            sg[c] = static_cast<std::uint8_t>(level[c]);
        }
        offset_lut = simd::replicate16<A>(u);
        abs_lut = simd::replicate16<A>(a);
        sign_lut = simd::replicate16<A>(sg);
    }
};

// out[i][r] += sum over steps [s0, s1) of row n + r of W against activation row x[i].
template <class P, class A, int MR, int NR>
void i8_tile(const weights_view& w, const i8_levels<P, A>& lv, const i8_row* x, std::int64_t n, std::int64_t s0,
             std::int64_t s1, float (&out)[MR][NR]) {
    using S = i8_shape<P, A>;
    using L = layout_traits<P::storage>;
    using F = simd::f32v<A>;
    using I = simd::i32v<A>;
    using U = simd::u8v<A>;
    constexpr int bpw = S::blocks_per_window;
    constexpr int steps_per_chunk = scale_chunk / bpw;

    const std::uint8_t* codes[NR];
    for (int r = 0; r < NR; ++r) codes[r] = row_codes<P, A>(w, n + r);
    F acc[MR][NR];
    for (int i = 0; i < MR; ++i)
        for (int r = 0; r < NR; ++r) acc[i][r] = F(0.0f);
    float buf[NR][scale_chunk];
    const float* scales[NR];
    constexpr int zero_chunk = has_zeros<P> ? scale_chunk : 1;
    float zbuf[NR][zero_chunk];
    const float* zeros[NR] = {};

    for (std::int64_t c0 = s0; c0 < s1; c0 += steps_per_chunk) {
        const std::int64_t c1 = s1 - c0 < steps_per_chunk ? s1 : c0 + steps_per_chunk;
        const int nb = static_cast<int>((c1 - c0) * bpw);
        for (int r = 0; r < NR; ++r) scales[r] = L::template row_scales<P, A>(w, n + r, c0 * bpw, nb, buf[r]);
        if constexpr (has_zeros<P>)
            for (int r = 0; r < NR; ++r) zeros[r] = row_zeros<P, A>(w, n + r, c0 * bpw, nb, zbuf[r]);
        if constexpr (MR == 1) {  // one X row: weight scale x activation scale once per block, not per step
            const float* xs = x[0].xs_block + c0 * bpw;
            for (int r = 0; r < NR; ++r) {
                for (int b = 0; b < nb; ++b) buf[r][b] = scales[r][b] * xs[b];
                scales[r] = buf[r];
            }
        }
        for (std::int64_t step = c0; step < c1; ++step) {
            I dots[MR][NR];
            simd::unroll<MR>([&](auto i) {
                const I init = S::offset_form && !has_zeros<P> ? I::load_aligned(x[i].corr + step * S::lanes) : I(0);
                for (int r = 0; r < NR; ++r) dots[i][r] = init;
            });
            simd::unroll<S::windows_per_step>([&](auto wi) {
                const std::int64_t window = step * S::windows_per_step + wi;
                U xq[MR][S::parts];  // the activations each code of a byte multiplies
                simd::unroll<MR>([&](auto i) {
                    const auto* q = reinterpret_cast<const std::uint8_t*>(x[i].q + window * S::W);
                    simd::unroll<S::parts>([&](auto p) { xq[i][p] = U::load_aligned(q + p * S::V); });
                });
                simd::unroll<NR>([&](auto r) {
                    const U c = U::load_unaligned(codes[r] + window * S::V);
                    simd::unroll<S::parts>([&](auto p) {
                        const U code = simd::code_field<S::bits * p, S::bits, A>(c);
                        if constexpr (S::offset_form) {
                            const U u = S::table ? simd::lut16<A>(lv.offset_lut, code) : code;
                            simd::unroll<MR>([&](auto i) { dots[i][r] = simd::dot_u8s8<A>(dots[i][r], u, xq[i][p]); });
                        } else {
                            const U abs = simd::lut16<A>(lv.abs_lut, code), sign = simd::lut16<A>(lv.sign_lut, code);
                            simd::unroll<MR>([&](auto i) {
                                dots[i][r] = simd::dot_u8s8<A>(dots[i][r], abs, simd::apply_sign<A>(xq[i][p], sign));
                            });
                        }
                    });
                });
            });
            const std::int64_t local = (step - c0) * bpw;  // first block of the step within the chunk
            simd::unroll<NR>([&](auto r) {
                const F ws = simd::expand_scales<bpw, A>(scales[r] + local);
                [[maybe_unused]] F zs{};
                if constexpr (has_zeros<P>) zs = simd::expand_scales<bpw, A>(zeros[r] + local);
                simd::unroll<MR>([&](auto i) {
                    F dot = xsimd::to_float(dots[i][r]);
                    if constexpr (has_zeros<P>)  // + zero * (-sum(xq)), exact
                        dot = simd::fma<A>(zs, xsimd::to_float(I::load_aligned(x[i].corr + step * S::lanes)), dot);
                    if constexpr (MR == 1) {  // ws already holds the product
                        acc[i][r] = simd::fma<A>(dot, ws, acc[i][r]);
                    } else {
                        const F xs = F::load_aligned(x[i].xs + step * S::lanes);
                        acc[i][r] = simd::fma<A>(dot, ws * xs, acc[i][r]);
                    }
                });
            });
        }
    }
    for (int i = 0; i < MR; ++i)
        for (int r = 0; r < NR; ++r) out[i][r] += xsimd::hadd(acc[i][r]) / code_traits<P::type>::i8_scale;
}

// One GEMV row over the full steps (the GEMV's own loop: i8_tile serves the GEMM):
//   y[n] = sum_b cs_b (dot_b - off_b qsum_b) / i8_scale,   cs_b = scale[n, b] * xs_b
// where dot_b is the integer dot of the unsigned (offset form) or signed weights with xq and
// off_b the offset the unsigned weights carry (the zero point for int_asym, none in the sign
// form). The block scales are multiplied once per row, the offsets leave the inner loop as one
// short dot over the blocks, two accumulators alternate steps, and the codes are prefetched.
template <class P, class A>
float i8_gemv_row(const weights_view& w, const i8_shape<P, A>& s, const i8_levels<P, A>& lv, const i8_row& x,
                  std::int64_t n) {
    using S = i8_shape<P, A>;
    using L = layout_traits<P::storage>;
    using F = simd::f32v<A>;
    using I = simd::i32v<A>;
    using U = simd::u8v<A>;
    constexpr int bpw = S::blocks_per_window, wps = S::windows_per_step, lanes = S::lanes;
    constexpr int steps_per_chunk = scale_chunk / bpw;
    constexpr bool offsets = S::offset_form;  // else the sign form: signed levels, no offset

    const std::uint8_t* codes = row_codes<P, A>(w, n);
    // the integer dot of one step, as f32 (exact: |dot| <= 255 * 127 * group < 2^24)
    const auto step_dot = [&](std::int64_t step) {
        I dot(0);
        simd::prefetch_ahead(codes + step * wps * S::V);
        simd::unroll<wps>([&](auto wi) {
            const std::int64_t window = step * wps + wi;
            const auto* q = reinterpret_cast<const std::uint8_t*>(x.q + window * S::W);
            const U c = U::load_unaligned(codes + window * S::V);
            simd::unroll<S::parts>([&](auto p) {
                const U code = simd::code_field<S::bits * p, S::bits, A>(c);
                const U xq = U::load_aligned(q + p * S::V);
                if constexpr (offsets)
                    dot = simd::dot_u8s8<A>(dot, S::table ? simd::lut16<A>(lv.offset_lut, code) : code, xq);
                else
                    dot = simd::dot_u8s8<A>(dot, simd::lut16<A>(lv.abs_lut, code),
                                            simd::apply_sign<A>(xq, simd::lut16<A>(lv.sign_lut, code)));
            });
        });
        return xsimd::to_float(dot);
    };

    alignas(64) float cs[scale_chunk];
    [[maybe_unused]] float zbuf[has_zeros<P> ? scale_chunk : 1];
    F acc0(0.0f), acc1(0.0f), off(0.0f);
    float off_tail = 0.0f;
    for (std::int64_t c0 = 0; c0 < s.steps; c0 += steps_per_chunk) {
        const std::int64_t c1 = s.steps - c0 < steps_per_chunk ? s.steps : c0 + steps_per_chunk;
        const std::int64_t b0 = c0 * bpw;
        const int nb = static_cast<int>((c1 - c0) * bpw);
        const float* ws = L::template row_scales<P, A>(w, n, b0, nb, cs);
        [[maybe_unused]] const float* zeros = has_zeros<P> ? row_zeros<P, A>(w, n, b0, nb, zbuf) : nullptr;
        const float* xs = x.xs_block + b0;
        const float* qs = x.qsum + b0;
        int b = 0;
        for (; b + lanes <= nb; b += lanes) {
            const F c = F::load_unaligned(ws + b) * F::load_unaligned(xs + b);
            c.store_aligned(cs + b);
            if constexpr (has_zeros<P>) off = simd::fma<A>(c, F::load_unaligned(zeros + b) * F::load_unaligned(qs + b), off);
            else if constexpr (offsets) off = simd::fma<A>(c, F::load_unaligned(qs + b), off);
        }
        for (; b < nb; ++b) {
            cs[b] = ws[b] * xs[b];
            if constexpr (has_zeros<P>) off_tail += cs[b] * (zeros[b] * qs[b]);
            else if constexpr (offsets) off_tail += cs[b] * qs[b];
        }
        std::int64_t step = c0;
        for (; step + 2 <= c1; step += 2) {
            acc0 = simd::fma<A>(step_dot(step), simd::expand_scales<bpw, A>(cs + (step - c0) * bpw), acc0);
            acc1 = simd::fma<A>(step_dot(step + 1), simd::expand_scales<bpw, A>(cs + (step + 1 - c0) * bpw), acc1);
        }
        if (step < c1) acc0 = simd::fma<A>(step_dot(step), simd::expand_scales<bpw, A>(cs + (step - c0) * bpw), acc0);
    }
    // int_asym: off_b is the block's zero (1 * zero); integer formats and VNNI tables: S::offset
    constexpr float offset = has_zeros<P> ? 1.0f : static_cast<float>(S::offset);
    const float dots = xsimd::hadd(acc0 + acc1);
    return (dots - offset * (xsimd::hadd(off) + off_tail)) / code_traits<P::type>::i8_scale;
}

// The blocks after the last full window (only when a register spans several blocks and K is not
// a multiple of it), in scalar code: the same integer sums and the same scale products.
template <class P, class A>
float i8_tail(const weights_view& w, const i8_shape<P, A>& s, const i8_levels<P, A>& lv, const i8_row& x,
              std::int64_t n) {
    using S = i8_shape<P, A>;
    using L = layout_traits<P::storage>;
    if (s.tail_blocks == 0) return 0.0f;
    const std::int64_t b0 = s.blocks - s.tail_blocks;
    float buf[scale_chunk];  // tail_blocks < blocks_per_window; sized for the vector converters
    const float* scales = L::template row_scales<P, A>(w, n, b0, static_cast<int>(s.tail_blocks), buf);
    const std::uint8_t* codes = row_codes<P, A>(w, n);
    float total = 0.0f;
    for (std::int64_t b = b0; b < s.blocks; ++b) {
        const std::int32_t zero = has_zeros<P> ? w.zeros[n * s.blocks + b] : 0;
        std::int32_t dot = 0;
        for (std::int64_t k = b * S::group; k < (b + 1) * S::group; ++k)
            dot += (lv.level[L::template code_at<A, S::bits>(codes, k)] - zero) * x.q[k];
        total += static_cast<float>(dot) * (scales[b - b0] * x.xs_block[b]);
    }
    return total / code_traits<P::type>::i8_scale;
}

}  // namespace qforge::kernels

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
// value. The offset terms offset_b * sum(xq)_b are one short f32 dot over the blocks per output,
// outside the integer loops (sum(xq) is exact in f32: |sum| <= 127 * group < 2^24).
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
    std::size_t xsb_off = 0, qsum_off = 0, bytes = 0;

    explicit i8_shape(std::int64_t cols) : base(cols) {
        auto align = [](std::size_t b) { return (b + 63) / 64 * 64; };
        xsb_off = align(static_cast<std::size_t>(this->k));
        qsum_off = xsb_off + align(static_cast<std::size_t>(this->blocks) * sizeof(float));
        bytes = qsum_off + align(static_cast<std::size_t>(this->blocks) * sizeof(float));
    }
};

// One prepared activation row.
struct i8_row {
    const std::int8_t* q;       // full windows permuted to the code registers' order, tail natural
    const float* xs_block;      // per block: the activation scale amax / 127
    const float* qsum;          // per block: sum(xq), exact in f32 (|sum| <= 127 * group < 2^24)
};

// One block of x (len elements, a multiple of the lanes) as int8 levels out[0 .. len) in natural
// order: xq = RNE(x * (127 / amax)); sum receives sum(xq); returns the activation scale amax / 127.
// Every i8 path quantizes its activations with it.
template <class A>
float quantize_block(const float* xb, std::int64_t len, std::int8_t* out, std::int32_t& sum) {
    using F = simd::f32v<A>;
    using I = simd::i32v<A>;
    constexpr int lanes = simd::lanes<A>;
    F m(0.0f);
    // max(|x|, m) keeps m where |x| is NaN (maxps returns its second operand), as `a > m ? a : m`
    for (std::int64_t i = 0; i < len; i += lanes) m = xsimd::max(xsimd::abs(F::load_unaligned(xb + i)), m);
    alignas(64) float lane_max[lanes];
    m.store_aligned(lane_max);
    float amax = 0.0f;
    for (const float a : lane_max) amax = a > amax ? a : amax;
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    I total(0);
    for (std::int64_t i = 0; i < len; i += lanes) {
        const I q = xsimd::nearbyint_as_int(F::load_unaligned(xb + i) * F(inv));
        total = total + q;
        simd::store_i8<A>(q, out + i);
    }
    sum = xsimd::hadd(total);
    return amax / 127.0f;
}

// The prepared row held in s.bytes of memory at mem (written by quantize_activations).
template <class P, class A>
i8_row prepared_row(const i8_shape<P, A>& s, const void* mem) {
    const auto* base = static_cast<const std::uint8_t*>(mem);
    return {reinterpret_cast<const std::int8_t*>(base), reinterpret_cast<const float*>(base + s.xsb_off),
            reinterpret_cast<const float*>(base + s.qsum_off)};
}

// The windows of one full step of a row (step_elems values in natural order) in the order of the
// code registers: the order of a prepared row (i8_row::q), also the map of its positions to
// elements when T holds element indices (the VNNI panels, i8_panels.hpp).
template <class P, class A, class T>
void permute_step(const T* natural, T* out) {
    using S = i8_shape<P, A>;
    using L = layout_traits<P::storage>;
    for (int wi = 0; wi < S::step_elems / S::W; ++wi, out += S::W) {
        const T* in = natural + wi * S::W;
        if constexpr (L::interleaved) {
            for (int p = 0; p < S::parts; ++p)
                for (int j = 0; j < S::V; ++j) out[p * S::V + j] = in[L::template element_of<S::bits>(j, p)];
        } else {  // code p of the bytes [16c, 16c + 16) is the 16 elements from element_of(16c, p) on
            for (int p = 0; p < S::parts; ++p)
                for (int c = 0; c < S::V / 16; ++c)
                    std::memcpy(out + p * S::V + 16 * c, in + L::template element_of<S::bits>(16 * c, p), 16 * sizeof(T));
        }
    }
}

template <class P, class A>
i8_row quantize_activations(const i8_shape<P, A>& s, const float* x, void* mem) {
    using S = i8_shape<P, A>;
    auto* base = static_cast<std::uint8_t*>(mem);
    auto* q = reinterpret_cast<std::int8_t*>(base);
    auto* xs_block = reinterpret_cast<float*>(base + s.xsb_off);
    auto* qsum = reinterpret_cast<float*>(base + s.qsum_off);

    alignas(64) std::int8_t natural[S::step_elems];
    const std::int64_t full = s.steps * S::step_elems;  // elements in full steps
    for (std::int64_t b = 0; b < s.blocks; ++b) {
        const std::int64_t in_step = (b * S::group) % S::step_elems;
        const std::int64_t step_start = b * S::group - in_step;
        const bool tail = step_start >= full;  // only when a window spans several blocks: natural order
        std::int32_t sum = 0;
        xs_block[b] = quantize_block<A>(x + b * S::group, S::group, tail ? q + b * S::group : natural + in_step, sum);
        qsum[b] = static_cast<float>(sum);
        if (tail || in_step + S::group < S::step_elems) continue;  // or the step has more blocks
        permute_step<P, A>(natural, q + step_start);  // the step is complete
    }
    return prepared_row(s, mem);
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

// 2-bit codes with VNNI and one X row: fields 1 and 3 are taken in place, at bit 2 (c & 0x0C,
// (c >> 4) & 0x0C: 4 times their codes), into a dot of their own whose quarter (exact: a multiple
// of 4) starts the dot of fields 0 and 2. One shift by 4 serves all four fields instead of three
// shifts, for one arithmetic shift of the sums (shifts issue once per cycle here, logic ops twice:
// docs/performance.md, "Low-bit GEMV"). A copy of the loop in L2: 5.95 instead of 6.14 TSC cycles
// per register; the int2 g128 GEMV, 4096x11008 cold: median 0.69 ms instead of 0.77 (9 alternated
// runs each; with 4 KiB prefetch, cold times move 10-20% between windows: see prefetch_codes).
// Not for 3-bit codes: the same decode plus the third bits took 0.82-0.84 ms instead of 0.73.
template <class P, class A, int MR>
inline constexpr bool odd_fields_at_2 = MR == 1 && simd::has_vnni<A> && i8_shape<P, A>::bits == 2 &&
                                        !split_planes<P> && i8_shape<P, A>::parts == 4 &&
                                        i8_shape<P, A>::offset_form && !i8_shape<P, A>::table;

// dots[i] += the integer dots of one window of codes wc (one weight row) with the activations
// xq[i][p] (X row i, code p of each byte): the decode of the GEMV row and of the GEMM tile.
template <class P, class A, int MR>
inline void add_window_dots(const i8_levels<P, A>& lv, const window_codes& wc,
                            const simd::u8v<A> (&xq)[MR][i8_shape<P, A>::parts], simd::i32v<A> (&dots)[MR]) {
    using S = i8_shape<P, A>;
    using U = simd::u8v<A>;
    const U c = simd::in_register<std::uint8_t, A>(wc.low);
    if constexpr (odd_fields_at_2<P, A, MR>) {
        using I = simd::i32v<A>;
        const auto field = [&](auto p) {  // fields 0, 2 at bit 0, fields 1, 3 at bit 2: one shift by 4
            constexpr int at = p % 2 == 1 ? 2 : 0;
            return simd::code_field<2 * p, 2, A, at>(c);
        };
        using std::integral_constant;
        const U f0 = field(integral_constant<int, 0>{}), f1 = field(integral_constant<int, 1>{}),
                f2 = field(integral_constant<int, 2>{}), f3 = field(integral_constant<int, 3>{});
        const I odd = simd::dot_u8s8<A>(simd::dot_u8s8<A>(I(0), f1, xq[0][1]), f3, xq[0][3]);
        dots[0] = simd::dot_u8s8<A>(simd::dot_u8s8<A>(dots[0] + (odd >> 2), f0, xq[0][0]), f2, xq[0][2]);
        return;
    }
    simd::unroll<S::parts>([&](auto p) {
        U code = simd::code_field<S::bits * p, S::bits, A>(c);
        if constexpr (split_planes<P>) code = simd::add_bit_bytes<4, A>(code, wc.high + p * wc.high_stride);
        if constexpr (S::offset_form) {
            const U u = S::table ? simd::lut16<A>(lv.offset_lut, code) : code;
            simd::unroll<MR>([&](auto i) { dots[i] = simd::dot_u8s8<A>(dots[i], u, xq[i][p]); });
        } else {  // the sign form
            const U abs = simd::lut16<A>(lv.abs_lut, code), sign = simd::lut16<A>(lv.sign_lut, code);
            simd::unroll<MR>([&](auto i) { dots[i] = simd::dot_u8s8<A>(dots[i], abs, simd::apply_sign<A>(xq[i][p], sign)); });
        }
    });
}

// The activations of window `window` of X row x, one register per code of a byte.
template <class P, class A>
inline void load_window_acts(const i8_row& x, std::int64_t window, simd::u8v<A> (&xq)[i8_shape<P, A>::parts]) {
    using S = i8_shape<P, A>;
    const auto* q = reinterpret_cast<const std::uint8_t*>(x.q + window * S::W);
    simd::unroll<S::parts>([&](auto p) { xq[p] = simd::u8v<A>::load_aligned(q + p * S::V); });
}

// The offset the unsigned weights of the offset form carry, per block: the zero point for
// int_asym (times the row's zero), S::offset otherwise; 0 in the sign form.
template <class P, class A>
inline constexpr float weight_offset = i8_shape<P, A>::offset_form ? static_cast<float>(i8_shape<P, A>::offset) : 0.0f;

// The software prefetch of a row's codes (simd::prefetch_ahead) at the first window of step
// `step`, for a row loop that feeds MR X rows. A loop that spends few instructions per window
// (VNNI, MR <= 2) prefetches one step in every 512 bytes of codes, the others every step (without
// VNNI the sparse prefetch took 2-7% longer, AVX2 / AVX-512 / SSE4.2, M = 1, 2): prefetching
// every line 4 KiB ahead made the cold int4 g128 GEMV (4096 x 11008, 1 thread, AVX512-VNNI) take
// 1.9-2.0 ms instead of 1.1 ms with no software prefetch and 1.05 ms with one per 512 bytes (NF4
// b64: 1.35, 1.27 and 1.16 ms), while at MR = 4 the same change made the GEMM 1.3x slower. (On
// this machine the hardware prefetchers stream W better alone than behind a prefetch of every
// line; the fast loop's demand loads then caught up with its own prefetches. No hardware
// counters here to confirm it: the numbers are alternated timings.) Codes of 2 and 3 bits keep
// the prefetch of every step: sparse, the cold int2 g128 GEMV took 1.10-1.18 ms instead of
// 0.71-0.76 and its M = 2 1.9-2.0 ms instead of 1.04-1.11 (int3 M = 2: 2.4-2.7 against 1.4).
// 8-bit integers keep it sparse (int8 per channel: 1.74-1.78 against 1.87-1.93 ms).
// The GEMV of 2-bit codes with VNNI (one shift per register, add_window_dots) prefetches 2 KiB
// ahead instead of 4: the cold int2 g128 GEMV (4096x11008) took 0.68-0.73 ms (median 0.70)
// instead of 0.69-1.17 (median 0.75), 12 alternated runs at load 4-5; 1, 1.5, 3 and 8 KiB were no
// better than 2. Against main (3-shift decode, 4 KiB) in a later window: minimum of 7 runs
// 0.70-0.74 ms instead of 0.76-0.82, 3 alternated rounds.
template <class P, class A, int MR>
[[gnu::always_inline]] inline void prefetch_codes(const window_codes& wc, std::int64_t step) {
    using S = i8_shape<P, A>;
    constexpr bool sparse = simd::has_vnni<A> && MR <= 2 && P::bits >= 4 && 512 > S::V * S::windows_per_step;
    constexpr std::int64_t steps_apart = sparse ? 512 / (S::V * S::windows_per_step) : 1;
    constexpr bool near = simd::has_vnni<A> && MR == 1 && P::bits == 2;
    if (step % steps_apart != 0) return;
    simd::prefetch_ahead<near ? 2048 : simd::prefetch_distance>(wc.low);
    if constexpr (split_planes<P>) simd::prefetch_ahead(wc.high);  // a 96-byte unit spans 2 lines
}

// out[i][r] += sum over steps [s0, s1) of row n + r of W against activation row x[i]: per block
// cs = scale * xs times (dot - offset * sum(xq)), the offsets as one short dot over the blocks.
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
    F acc[MR][NR], off[MR][NR];  // off: cs * sum(xq) (times the zero), lanes over blocks
    float off_tail[MR][NR] = {};
    for (int i = 0; i < MR; ++i)
        for (int r = 0; r < NR; ++r) acc[i][r] = off[i][r] = F(0.0f);
    float buf[NR][scale_chunk];
    const float* scales[NR];
    constexpr int zero_chunk = has_zeros<P> ? scale_chunk : 1;
    float zbuf[NR][zero_chunk];
    const float* zeros[NR] = {};

    for (std::int64_t c0 = s0; c0 < s1; c0 += steps_per_chunk) {
        const std::int64_t c1 = s1 - c0 < steps_per_chunk ? s1 : c0 + steps_per_chunk;
        const std::int64_t b0 = c0 * bpw;
        const int nb = static_cast<int>((c1 - c0) * bpw);
        for (int r = 0; r < NR; ++r) scales[r] = L::template row_scales<P, A>(w, n + r, b0, nb, buf[r]);
        if constexpr (has_zeros<P>)
            for (int r = 0; r < NR; ++r) zeros[r] = row_zeros<P, A>(w, n + r, b0, nb, zbuf[r]);
        if constexpr (weight_offset<P, A> != 0.0f)
            for (int i = 0; i < MR; ++i)
                for (int r = 0; r < NR; ++r) {
                    const float* xs = x[i].xs_block + b0;
                    const float* qs = x[i].qsum + b0;
                    int b = 0;
                    for (; b + S::lanes <= nb; b += S::lanes) {
                        F sum = F::load_unaligned(qs + b);
                        if constexpr (has_zeros<P>) sum = sum * F::load_unaligned(zeros[r] + b);
                        off[i][r] = simd::fma<A>(F::load_unaligned(scales[r] + b) * F::load_unaligned(xs + b), sum, off[i][r]);
                    }
                    for (; b < nb; ++b)
                        off_tail[i][r] += scales[r][b] * xs[b] * (qs[b] * (has_zeros<P> ? zeros[r][b] : 1.0f));
                }
        for (std::int64_t step = c0; step < c1; ++step) {
            I dots[NR][MR];
            for (auto& d : dots)
                for (I& v : d) v = I(0);
            simd::unroll<S::windows_per_step>([&](auto wi) {
                const std::int64_t window = step * S::windows_per_step + wi;
                U xq[MR][S::parts];
                simd::unroll<MR>([&](auto i) { load_window_acts<P, A>(x[i], window, xq[i]); });
                simd::unroll<NR>([&](auto r) {
                    add_window_dots<P, A, MR>(lv, window_at<P, A, S::V>(codes[r], w.cols, window), xq, dots[r]);
                });
            });
            const std::int64_t local = (step - c0) * bpw;  // first block of the step within the chunk
            simd::unroll<NR>([&](auto r) {
                const F ws = simd::expand_scales<bpw, A>(scales[r] + local);
                simd::unroll<MR>([&](auto i) {
                    const F xs = simd::expand_scales<bpw, A>(x[i].xs_block + step * bpw);
                    acc[i][r] = simd::fma<A>(xsimd::to_float(dots[r][i]), ws * xs, acc[i][r]);
                });
            });
        }
    }
    for (int i = 0; i < MR; ++i)
        for (int r = 0; r < NR; ++r)
            out[i][r] += (xsimd::hadd(acc[i][r]) - weight_offset<P, A> * (xsimd::hadd(off[i][r]) + off_tail[i][r])) /
                         code_traits<P::type>::i8_scale;
}

// What a GEMV row computes: its value is the sum of `lanes` plus `rest`.
template <class A>
struct row_sum {
    simd::f32v<A> lanes;
    float rest = 0.0f;
};

// y[n] = finish(n, value of row(n)) for n in [n0, n1): the rows' lanes are summed `lanes` rows at a
// time by one transposed sum (simd::sum_rows) instead of two horizontal sums per row, which took
// a third of a short row's time (K = 1024: 8 windows of int4 codes). Flattened so that the row is
// always inlined: tried on the exact-f32 GEMV, whose row GCC does not inline, the row returned
// its register through memory and the GEMV ran 1.5x slower. (That GEMV keeps a horizontal sum
// per row: batched and inlined, its 4096 x 11008 cold runs were 2-5% slower.)
template <class A, class Row, class Finish>
[[gnu::flatten]] void for_each_row(std::int64_t n0, std::int64_t n1, Row&& row, Finish&& finish) {
    using F = simd::f32v<A>;
    constexpr int lanes = simd::lanes<A>;
    for (std::int64_t n = n0; n < n1; n += lanes) {
        const int count = n1 - n < lanes ? static_cast<int>(n1 - n) : lanes;
        F parts[lanes];
        float rest[lanes];
        for (int r = 0; r < count; ++r) {
            const row_sum<A> v = row(n + r);
            parts[r] = v.lanes;
            rest[r] = v.rest;
        }
        for (int r = count; r < lanes; ++r) parts[r] = F(0.0f);
        alignas(64) float sums[lanes];
        simd::sum_rows<A>(parts).store_aligned(sums);
        for (int r = 0; r < count; ++r) finish(n + r, sums[r] + rest[r]);
    }
}

// One row n of W over the full steps against MR prepared activation rows x[0 .. MR), as the
// row_sum of each numerator (the callers divide by i8_scale):
//   y[i, n] = sum_b cs_ib (dot_ib - off_b qsum_ib) / i8_scale,   cs_ib = scale[n, b] * xs_ib
// where dot_ib is the integer dot of the unsigned (offset form) or signed weights with xq_i and
// off_b the offset the unsigned weights carry (the zero point for int_asym, none in the sign
// form). The block scales are multiplied once per row, the offsets leave the inner loop as one
// short dot over the blocks, and the codes are prefetched. The small-M GEMM's tile
// (gemm_i8_rows): each register of codes is decoded once for all MR rows, so W is read and
// decoded once per MR rows of X; with MR = 1 two accumulators alternate steps, as in the GEMV.
// One row of W at a time keeps W one stream: two rows per pass sharing the activation loads
// took no less time (4 x 2 tiles against 8 x 1, M = 4..16, 4096x11008 cold).
// The GEMV keeps its own row (i8_gemv_row below, the same arithmetic): with this one at MR = 1
// instead, its 4096x11008 cold times moved both ways, NF4 b64 1.3 -> 2.2 ms, int4 g128 2.0 ->
// 1.0 ms (alternating runs, loaded machine; cause not pinned down).
template <class P, class A, int MR>
void i8_rows(const weights_view& w, const i8_shape<P, A>& s, const i8_levels<P, A>& lv, const i8_row* x,
             std::int64_t n, row_sum<A> (&out)[MR]) {
    using S = i8_shape<P, A>;
    using L = layout_traits<P::storage>;
    using F = simd::f32v<A>;
    using I = simd::i32v<A>;
    using U = simd::u8v<A>;
    constexpr int bpw = S::blocks_per_window, wps = S::windows_per_step, lanes = S::lanes;
    constexpr int steps_per_chunk = scale_chunk / bpw;
    constexpr bool offsets = weight_offset<P, A> != 0.0f;
    constexpr int chains = MR == 1 ? 2 : 1;  // accumulators per X row (MR > 1: MR chains already)

    const std::uint8_t* codes = row_codes<P, A>(w, n);
    alignas(64) float cs[MR][scale_chunk];
    // acc[i] += the integer dots of one step with X row i (as f32, exact: |dot| <= 255 * 127 *
    // group < 2^24) times cs
    const auto add_step = [&](std::int64_t step, std::int64_t local, auto& acc) {
        I dot[MR];
        for (I& d : dot) d = I(0);
        simd::unroll<wps>([&](auto wi) {
            const std::int64_t window = step * wps + wi;
            const window_codes wc = window_at<P, A, S::V>(codes, w.cols, window);
            if constexpr (wi == 0) prefetch_codes<P, A, MR>(wc, step);
            U xq[MR][S::parts];
            simd::unroll<MR>([&](auto i) { load_window_acts<P, A>(x[i], window, xq[i]); });
            add_window_dots<P, A, MR>(lv, wc, xq, dot);
        });
        simd::unroll<MR>([&](auto i) {
            acc[i] = simd::fma<A>(xsimd::to_float(dot[i]), simd::expand_scales<bpw, A>(cs[i] + local * bpw), acc[i]);
        });
    };

    [[maybe_unused]] float zbuf[has_zeros<P> ? scale_chunk : 1];
    F acc[chains][MR], off[MR];
    float off_tail[MR] = {};
    for (int i = 0; i < MR; ++i) {
        off[i] = F(0.0f);
        for (auto& a : acc) a[i] = F(0.0f);
    }
    for (std::int64_t c0 = 0; c0 < s.steps; c0 += steps_per_chunk) {
        const std::int64_t c1 = s.steps - c0 < steps_per_chunk ? s.steps : c0 + steps_per_chunk;
        const std::int64_t b0 = c0 * bpw;
        const int nb = static_cast<int>((c1 - c0) * bpw);
        const float* ws = L::template row_scales<P, A>(w, n, b0, nb, cs[0]);
        [[maybe_unused]] const float* zeros = has_zeros<P> ? row_zeros<P, A>(w, n, b0, nb, zbuf) : nullptr;
        for (int i = MR - 1; i >= 0; --i) {  // cs[0] last: ws may point into it
            const float* xs = x[i].xs_block + b0;
            const float* qs = x[i].qsum + b0;
            int b = 0;
            for (; b + lanes <= nb; b += lanes) {
                const F c = F::load_unaligned(ws + b) * F::load_unaligned(xs + b);
                c.store_aligned(cs[i] + b);
                if constexpr (has_zeros<P>) off[i] = simd::fma<A>(c, F::load_unaligned(zeros + b) * F::load_unaligned(qs + b), off[i]);
                else if constexpr (offsets) off[i] = simd::fma<A>(c, F::load_unaligned(qs + b), off[i]);
            }
            for (; b < nb; ++b) {
                cs[i][b] = ws[b] * xs[b];
                if constexpr (has_zeros<P>) off_tail[i] += cs[i][b] * (zeros[b] * qs[b]);
                else if constexpr (offsets) off_tail[i] += cs[i][b] * qs[b];
            }
        }
        std::int64_t step = c0;
        for (; step + chains <= c1; step += chains)
            simd::unroll<chains>([&](auto c) { add_step(step + c, step + c - c0, acc[c]); });
        for (; step < c1; ++step) add_step(step, step - c0, acc[0]);
    }
    // the offset is 128, 2^(bits-1), 1 or 0: offset * off is exact
    for (int i = 0; i < MR; ++i) {
        F sum = acc[0][i];
        for (int c = 1; c < chains; ++c) sum = sum + acc[c][i];
        out[i] = {sum - F(weight_offset<P, A>) * off[i], -weight_offset<P, A> * off_tail[i]};
    }
}

// One GEMV row over the full steps (the GEMV's own loop: i8_tile serves the GEMM), as the row_sum
// of the numerator (gemv_i8 divides by i8_scale):
//   y[n] = sum_b cs_b (dot_b - off_b qsum_b) / i8_scale,   cs_b = scale[n, b] * xs_b
// where dot_b is the integer dot of the unsigned (offset form) or signed weights with xq and
// off_b the offset the unsigned weights carry (the zero point for int_asym, none in the sign
// form). The block scales are multiplied once per row, the offsets leave the inner loop as one
// short dot over the blocks, two accumulators alternate steps, and the codes are prefetched.
// One row at a time keeps W one stream: two rows per pass sharing the activation loads (i8_tile
// with NR = 2, both rows prefetched) took 12-23% longer, 4096x11008 cold.
template <class P, class A>
row_sum<A> i8_gemv_row(const weights_view& w, const i8_shape<P, A>& s, const i8_levels<P, A>& lv, const i8_row& x,
                       std::int64_t n) {
    using S = i8_shape<P, A>;
    using L = layout_traits<P::storage>;
    using F = simd::f32v<A>;
    using I = simd::i32v<A>;
    using U = simd::u8v<A>;
    constexpr int bpw = S::blocks_per_window, wps = S::windows_per_step, lanes = S::lanes;
    constexpr int steps_per_chunk = scale_chunk / bpw;
    constexpr bool offsets = weight_offset<P, A> != 0.0f;

    const std::uint8_t* codes = row_codes<P, A>(w, n);
    // the integer dot of one step, as f32 (exact: |dot| <= 255 * 127 * group < 2^24)
    const auto step_dot = [&](std::int64_t step) {
        I dot[1] = {I(0)};
        simd::unroll<wps>([&](auto wi) {
            const std::int64_t window = step * wps + wi;
            const window_codes wc = window_at<P, A, S::V>(codes, w.cols, window);
            if constexpr (wi == 0) prefetch_codes<P, A, 1>(wc, step);
            U xq[1][S::parts];
            load_window_acts<P, A>(x, window, xq[0]);
            add_window_dots<P, A, 1>(lv, wc, xq, dot);
        });
        return xsimd::to_float(dot[0]);
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
    // the offset is 128, 2^(bits-1), 1 or 0: offset * off is exact
    return {(acc0 + acc1) - F(weight_offset<P, A>) * off, -weight_offset<P, A> * off_tail};
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
        const std::int32_t zero = has_zeros<P> ? *row_blocks<P, std::uint8_t>(w, w.zeros, n, b) : 0;
        std::int32_t dot = 0;
        for (std::int64_t k = b * S::group; k < (b + 1) * S::group; ++k)
            dot += (lv.level[L::template code_at<A, code_bits<P>>(codes, s.k, k)] - zero) * x.q[k];
        total += static_cast<float>(dot) * (scales[b - b0] * x.xs_block[b]);
    }
    return total / code_traits<P::type>::i8_scale;
}

}  // namespace qforge::kernels

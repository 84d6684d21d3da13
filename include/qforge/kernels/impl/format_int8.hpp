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
// GEMM takes one integer row of W against every row of X: correct, not tiled for the caches.
#pragma once

#include <qforge/kernels/impl/f32.hpp>

#include <cstdint>

namespace qforge::kernels {

template <class P>
concept int8_policy = P::storage == layout::qforge && P::bits == 8;

template <class P>
    requires int8_policy<P>
constexpr void check_kernel_policy() {
    static_assert(P::type == dtype::int_sym || P::type == dtype::int_asym, "qforge 8-bit kernels: integers only");
    static_assert(P::group == per_channel || (P::group >= 32 && P::group % 32 == 0),
                  "qforge 8-bit kernels: group must be a multiple of 32 or per_channel");
    static_assert(P::act == compute::f32 || P::act == compute::i8, "qforge 8-bit kernels: f32 and i8 paths");
}

// The group size of the weights (per_channel: the whole row).
template <class P>
inline std::int64_t int8_group(const weights_view& w) {
    return P::group == per_channel ? w.cols : P::group;
}

// f(b, scale, zero) for every block b of row n, in order; scales decoded in chunks.
template <class P, class A, class F>
inline void int8_each_block(const weights_view& w, std::int64_t n, std::int64_t blocks, F&& f) {
    float scales[scale_chunk];
    const std::uint16_t* h = static_cast<const std::uint16_t*>(w.scales) + n * blocks;
    for (std::int64_t c0 = 0; c0 < blocks; c0 += scale_chunk) {
        const int nb = static_cast<int>(blocks - c0 < scale_chunk ? blocks - c0 : scale_chunk);
        simd::f16_to_f32<A>(h + c0, nb, scales);
        for (int i = 0; i < nb; ++i) {
            const std::int64_t b = c0 + i;
            const int zero = has_zeros<P> ? w.zeros[n * blocks + b] : 128;
            f(b, scales[i], zero);
        }
    }
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
    const std::int64_t gs = int8_group<P>(w), blocks = w.cols / gs;
    const std::uint8_t* codes = w.codes + n * w.cols;
    for (std::int64_t c = k0; c < k0 + kc;) {
        const std::int64_t b = c / gs, end = (b + 1) * gs < k0 + kc ? (b + 1) * gs : k0 + kc;
        float scale;
        simd::f16_to_f32<A>(static_cast<const std::uint16_t*>(w.scales) + n * blocks + b, 1, &scale);
        const F s(scale), z(static_cast<float>(has_zeros<P> ? w.zeros[n * blocks + b] : 128));
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
    const std::uint8_t* codes = w.codes + n * k;
    F acc(0.0f);
    int8_each_block<P, A>(w, n, k / gs, [&](std::int64_t b, float scale, int zero) {
        const F z(static_cast<float>(zero));
        F even(0.0f), odd(0.0f);  // two chains: FMA latency (gs is a multiple of 2 * lanes)
        for (std::int64_t i = b * gs; i < (b + 1) * gs; i += 2 * lanes) {
            even = simd::fma<A>(int8_values<A>(codes + i, z), F::load_unaligned(x + i), even);
            odd = simd::fma<A>(int8_values<A>(codes + i + lanes, z), F::load_unaligned(x + i + lanes), odd);
        }
        acc = simd::fma<A>(even + odd, F(scale), acc);
    });
    return xsimd::hadd(acc);
}

template <class P, class A>
    requires int8_policy<P>
void gemv_f32(const weights_view& w, const float* x, const float* bias, float* y, std::int64_t n0, std::int64_t n1) {
    x = gather_columns<A, 0>(w, x, 1);
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
    using F = simd::f32v<A>;
    using I = simd::i32v<A>;
    constexpr int lanes = simd::lanes<A>;
    const std::int64_t blocks = k / gs;
    auto* q = static_cast<std::int8_t*>(mem);
    auto* xs = reinterpret_cast<float*>(static_cast<std::uint8_t*>(mem) + (k + 63) / 64 * 64);
    auto* sums = reinterpret_cast<std::int32_t*>(xs + blocks);
    alignas(64) std::int32_t qi[simd::lanes<A>];
    for (std::int64_t b = 0; b < blocks; ++b) {
        const float* xb = x + b * gs;
        float amax = 0.0f;
        for (std::int64_t i = 0; i < gs; ++i) {
            const float a = __builtin_fabsf(xb[i]);
            amax = a > amax ? a : amax;
        }
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;  // as i8.hpp
        xs[b] = amax / 127.0f;
        I sum(0);
        for (std::int64_t i = 0; i < gs; i += lanes) {
            const I v = xsimd::nearbyint_as_int(F::load_unaligned(xb + i) * F(inv));
            sum = sum + v;
            v.store_aligned(qi);
            for (int j = 0; j < lanes; ++j) q[b * gs + i + j] = static_cast<std::int8_t>(qi[j]);
        }
        sums[b] = xsimd::hadd(sum);
    }
    return {q, xs, sums};
}

// sum_b scale_b xs_b (sum_k (code - zero) xq_k) of row n against one activation row.
template <class P, class A>
float int8_dot_i8(const weights_view& w, std::int64_t n, const int8_act_row& x) {
    using F = simd::f32v<A>;
    using I = simd::i32v<A>;
    using U = simd::u8v<A>;
    constexpr int V = simd::vbytes<A>;
    const std::int64_t k = w.cols, gs = int8_group<P>(w);
    const std::uint8_t* codes = w.codes + n * k;
    const auto* xq = reinterpret_cast<const std::uint8_t*>(x.q);
    F acc(0.0f);
    float scalar = 0.0f;  // the zero-point terms
    const auto add = [](const I& dot, const std::uint8_t* c8, const std::uint8_t* x8) {
        const U c = U::load_unaligned(c8) ^ U(static_cast<std::uint8_t>(0x80));  // code - 128, signed
        return simd::dot_u8s8<A>(dot, simd::apply_sign<A>(c, c), simd::apply_sign<A>(U::load_unaligned(x8), c));
    };
    int8_each_block<P, A>(w, n, k / gs, [&](std::int64_t b, float scale, int zero) {
        const std::int64_t end = (b + 1) * gs;
        std::int64_t i = b * gs;
        I dot(0);
        for (; i + V <= end; i += V) dot = add(dot, codes + i, xq + i);
        if (i < end) {  // a block end that fills no register: padded with code 128 (c = 0), x 0
            alignas(64) std::uint8_t c8[V], x8[V];
            for (int j = 0; j < V; ++j) {
                const bool in = i + j < end;
                c8[j] = in ? codes[i + j] : 0x80;
                x8[j] = in ? xq[i + j] : 0;
            }
            dot = add(dot, c8, x8);
        }
        const float f = scale * x.xs[b];
        acc = simd::fma<A>(xsimd::to_float(dot), F(f), acc);
        scalar += static_cast<float>((128 - zero) * x.sums[b]) * f;
    });
    return xsimd::hadd(acc) + scalar;
}

template <class P, class A>
    requires int8_policy<P>
void gemv_i8(const weights_view& w, const float* x, const float* bias, float* y, std::int64_t n0, std::int64_t n1) {
    const std::int64_t k = w.cols, gs = int8_group<P>(w);
    const int8_act_row xq = quantize_int8_acts<A>(gather_columns<A, 1>(w, x, 1), k, gs,
                                                  simd::scratch<A, 0>::get(int8_act_bytes<A>(k, k / gs)));
    for (std::int64_t n = n0; n < n1; ++n) {
        const float v = int8_dot_i8<P, A>(w, n, xq);
        y[n] = bias ? v + bias[n] : v;
    }
}

template <class P, class A>
    requires int8_policy<P>
void gemm_i8(const weights_view& w, const float* x, std::int64_t m, const float* bias, float* y, std::int64_t n0,
             std::int64_t n1) {
    const std::int64_t k = w.cols, gs = int8_group<P>(w), ldy = w.rows;
    const std::size_t row_bytes = int8_act_bytes<A>(k, k / gs);
    x = gather_columns<A, 2>(w, x, m);
    auto* mem = static_cast<std::uint8_t*>(simd::scratch<A, 0>::get(static_cast<std::size_t>(m) * row_bytes));
    auto* rows = static_cast<int8_act_row*>(simd::scratch<A, 1>::get(static_cast<std::size_t>(m) * sizeof(int8_act_row)));
    for (std::int64_t i = 0; i < m; ++i) rows[i] = quantize_int8_acts<A>(x + i * k, k, gs, mem + i * row_bytes);
    for (std::int64_t n = n0; n < n1; ++n)
        for (std::int64_t i = 0; i < m; ++i) {
            const float v = int8_dot_i8<P, A>(w, n, rows[i]);
            y[i * ldy + n] = bias ? v + bias[n] : v;
        }
}

}  // namespace qforge::kernels

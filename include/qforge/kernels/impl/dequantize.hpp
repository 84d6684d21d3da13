// Exact dequantization of 4-bit (and packed 2- and 3-bit) codes to f32: value[code] * scale, one f32
// multiply per weight, as the scalar reference does. Also the panel producer of the f32 GEMM.
#pragma once

#include <qforge/kernels/impl/format.hpp>

#include <cstdint>
#include <cstring>

namespace qforge::kernels {

// Scales are decoded in chunks of this many blocks (bounded stack buffers for any K).
inline constexpr int scale_chunk = 256;

// How the GEMV / GEMM paths walk a row: one "window" is one register of codes (V bytes, V * parts
// elements, parts = codes per byte). A step is a window when a window holds several blocks (their
// scales are spread over the register's lanes: lanes [i*lanes/NB, (i+1)*lanes/NB) belong to block
// i, because byte j of a window belongs to block j / (group/parts) in both layouts), else a block
// of several windows. K need not be a multiple of the window: the blocks after the last full
// window are the "tail". LaneBytes: code bytes per 32-bit lane of the register (4: a whole
// register of codes; 2: half of one, zero-extended, see f32.hpp).
template <class P, class A, int LaneBytes = 4>
struct window_shape {
    static constexpr int bits = field_bits<P>;  // of a code within a byte of the window
    static constexpr int parts = codes_per_byte<P>;
    static constexpr int lane_bytes = LaneBytes;
    static constexpr int V = simd::lanes<A> * LaneBytes;
    static constexpr int W = parts * V;
    static constexpr int lanes = simd::lanes<A>;
    static constexpr int group = P::group;
    static constexpr int blocks_per_window = W > group ? W / group : 1;
    static constexpr int windows_per_step = W < group ? group / W : 1;
    static constexpr int step_elems = W > group ? W : group;

    std::int64_t k = 0, blocks = 0, steps = 0, tail_blocks = 0;
    explicit window_shape(std::int64_t cols) : k(cols), blocks(cols / group) {
        steps = W > group ? cols / W : blocks;
        tail_blocks = blocks - steps * blocks_per_window;
    }
};

// The blocks the GEMMs step K by: the group; per channel (one group of K), runs of 32 elements,
// which K always holds whole (the registry checks it).
template <class P>
inline constexpr int gemm_block = P::group == per_channel ? 32 : P::group;

// A 16-byte window of codes holds 16 * parts elements; a block (group) holds group / that windows.
template <class P>
inline constexpr int span_elems = 16 * codes_per_byte<P>;
template <class P>
inline constexpr int windows_per_block = P::group / span_elems<P>;

template <class P>
constexpr void check_kernel_policy() {
    // 2- and 3-bit integers are packed in the qforge layout only (pack.hpp)
    static_assert(P::bits == 4 || (P::storage == layout::qforge && P::bits < 4), "qforge 4-bit kernels: bits must be 4");
    static_assert(P::group >= span_elems<P> && P::group % span_elems<P> == 0,
                  "qforge packed kernels: group must be a multiple of a 16-byte span of codes");
}

// The whole 3-bit codes of a 16-byte window (split3): out[p][j] = code field p of byte j plus its
// third bit. One 16-byte store per field: the loads that follow are then forwarded from it.
template <class A>
inline void split3_span_codes(const window_codes& wc, std::uint8_t (&out)[4][16]) {
    const __m128i low = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wc.low));
    simd::unroll<4>([&](auto p) {
        const __m128i field = _mm_and_si128(_mm_srli_epi16(low, 2 * p), _mm_set1_epi8(3));
        const __m128i code = simd::add_bit_bytes16<4, A>(field, wc.high + p * wc.high_stride);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out[p]), code);
    });
}

// The f32 code values of P in A's lookup-table representation.
template <class P, class A>
inline simd::table16<A> value_table(const weights_view& w) {
    alignas(64) float values[16];
    code_traits<P::type>::template values<A>(w, values);
    return simd::make_table16<A>(values);
}

// f(b, scale, zero) for the blocks [b0, b0 + nb) of row n in gemm_block<P> units, b counted from
// b0 (zero: 0 without zero points); per channel every block has the row's scale and zero point.
template <class P, class A, class F>
void each_block_scale(const weights_view& w, std::int64_t n, std::int64_t b0, std::int64_t nb, F&& f) {
    using L = layout_traits<P::storage>;
    float buf[scale_chunk], zbuf[scale_chunk];
    if constexpr (P::group == per_channel) {
        const float scale = *L::template row_scales<P, A>(w, n, 0, 1, buf);
        const float zero = has_zeros<P> ? *row_zeros<P, A>(w, n, 0, 1, zbuf) : 0.0f;
        for (std::int64_t b = 0; b < nb; ++b) f(b, scale, zero);
    } else {
        for (std::int64_t c0 = 0; c0 < nb; c0 += scale_chunk) {
            const int nc = static_cast<int>(nb - c0 < scale_chunk ? nb - c0 : scale_chunk);
            const float* s = L::template row_scales<P, A>(w, n, b0 + c0, nc, buf);
            const float* z = has_zeros<P> ? row_zeros<P, A>(w, n, b0 + c0, nc, zbuf) : nullptr;
            for (int i = 0; i < nc; ++i) f(c0 + i, s[i], z ? z[i] : 0.0f);
        }
    }
}

// Elements [b0 * group, b1 * group) of row n, dequantized to out[0 ..).
template <class P, class A>
void dequantize_blocks(const weights_view& w, const simd::table16<A>& table, std::int64_t n, std::int64_t b0,
                       std::int64_t b1, float* out) {
    check_kernel_policy<P>();
    using L = layout_traits<P::storage>;
    using F = simd::f32v<A>;
    constexpr int lanes = simd::lanes<A>;
    constexpr int chunks = 16 / lanes;  // registers per code of the window's bytes
    constexpr int wpb = windows_per_block<P>, bits = field_bits<P>, parts = codes_per_byte<P>;
    const std::uint8_t* codes = row_codes<P, A>(w, n);
    float buf[scale_chunk], zbuf[has_zeros<P> ? scale_chunk : 1];
    for (std::int64_t c0 = b0; c0 < b1; c0 += scale_chunk) {
        const int nb = static_cast<int>(b1 - c0 < scale_chunk ? b1 - c0 : scale_chunk);
        const float* scales = L::template row_scales<P, A>(w, n, c0, nb, buf);
        const float* zeros = has_zeros<P> ? row_zeros<P, A>(w, n, c0, nb, zbuf) : nullptr;
        for (int i = 0; i < nb; ++i) {
            const F scale(scales[i]);
            // (code - zero) * scale: the exact integer difference (looked up from the table minus
            // the block's zero point), then one rounding (int_asym)
            const simd::table16<A> block_table = has_zeros<P> ? simd::table_minus<A>(table, zeros[i]) : table;
            const std::int64_t first_window = (c0 + i) * wpb;
            simd::unroll<wpb>([&](auto wi) {
                const std::int64_t window = first_window + wi;
                const window_codes wc = window_at<P, A, 16>(codes, w.cols, window);
                float* o = out + (window - b0 * wpb) * span_elems<P>;
                [[maybe_unused]] std::uint8_t whole[parts][16];
                if constexpr (split_planes<P>) split3_span_codes<A>(wc, whole);
                simd::unroll<chunks>([&](auto ci) {
                    const auto idx = simd::load_u8_as_i32<A>(wc.low + ci * lanes);
                    if constexpr (L::interleaved) {  // nibbles; the high one is the even element
                        const F lo = simd::lookup<A>(block_table, idx) * scale;
                        simd::store_interleaved<A>(o + 2 * ci * lanes, simd::lookup<A>(block_table, idx >> 4) * scale, lo);
                    } else {  // the table ignores the bits above a code (format.hpp)
                        simd::unroll<parts>([&](auto p) {
                            simd::i32v<A> code = idx >> (bits * p);
                            if constexpr (split_planes<P>) code = simd::load_u8_as_i32<A>(whole[p] + ci * lanes);
                            const F v = simd::lookup<A>(block_table, code) * scale;
                            v.store_unaligned(o + 16 * p + ci * lanes);
                        });
                    }
                });
            });
        }
    }
}

// X (m rows of K) in the stored column order of the weights (act-order), or X itself.
template <class A, int Slot>
const float* gather_columns(const weights_view& w, const float* x, std::int64_t m) {
    if (w.perm == nullptr) return x;
    auto* g = static_cast<float*>(simd::scratch<A, Slot>::get(static_cast<std::size_t>(m * w.cols) * sizeof(float)));
    for (std::int64_t i = 0; i < m; ++i)
        for (std::int64_t j = 0; j < w.cols; ++j) g[i * w.cols + j] = x[i * w.cols + w.perm[j]];
    return g;
}

}  // namespace qforge::kernels

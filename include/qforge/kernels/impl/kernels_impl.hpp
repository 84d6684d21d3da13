// Definitions of the kernel templates declared in kernels/kernels.hpp: the drivers that split
// the work into tiles, pick the compute path from the policy, and block for the caches.
// Included only by the generated per-ISA translation units (generated/kernels_*.cpp).
#pragma once

#include <qforge/kernels/impl/bf16.hpp>
#include <qforge/kernels/impl/f32.hpp>
#include <qforge/kernels/impl/format_fp8.hpp>  // overloads: before the callers below
#include <qforge/kernels/impl/format_int8.hpp>
#include <qforge/kernels/impl/format_mx.hpp>
#include <qforge/kernels/impl/gemm_tiles.hpp>
#include <qforge/kernels/impl/i8.hpp>
#include <qforge/kernels/impl/i8_gemm_vnni.hpp>
#include <qforge/kernels/impl/i8_panels.hpp>
#include <qforge/kernels/impl/llm_int8.hpp>  // overloads for bnb8: before the callers below
#include <qforge/kernels/kernels.hpp>
#include <qforge/registry.hpp>

#include <bit>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

namespace qforge::kernels {

// Weights in vnni panels run only on the kernels that arranged them (kernel::arrange_ptr).
template <class P, class A>
[[gnu::always_inline]] inline void check_arrangement(const weights_view& w) {
    if (w.arrangement != weight_arrangement::rows && !panels::applies<P, A>) [[unlikely]]
        qforge::detail::refuse_arrangement(P::cfg, isa_of<A>());
}

// Columns [k0, k0 + kc) (whole blocks) of row n in f32: the rows of the f32 GEMM's panels.
template <class P, class A>
void dequantize_columns(const weights_view& w, const simd::table16<A>& table, std::int64_t n, std::int64_t k0,
                        std::int64_t kc, float* out) {
    dequantize_blocks<P, A>(w, table, n, k0 / P::group, (k0 + kc) / P::group, out);
}

// Rows [n0, n1) of W in f32; out points at row n0 (format overloads follow the same contract).
template <class P, class A>
void dequantize_rows(const weights_view& w, std::int64_t n0, std::int64_t n1, float* out) {
    const auto table = value_table<P, A>(w);
    const std::int64_t blocks = w.cols / P::group;
    if (w.perm != nullptr) {  // act-order: stored column j is column perm[j] of W
        auto* row = static_cast<float*>(simd::scratch<A, 0>::get(static_cast<std::size_t>(w.cols) * sizeof(float)));
        for (std::int64_t n = n0; n < n1; ++n) {
            dequantize_blocks<P, A>(w, table, n, 0, blocks, row);
            for (std::int64_t j = 0; j < w.cols; ++j) out[(n - n0) * w.cols + w.perm[j]] = row[j];
        }
        return;
    }
    for (std::int64_t n = n0; n < n1; ++n) dequantize_blocks<P, A>(w, table, n, 0, blocks, out + (n - n0) * w.cols);
}

// The same for every compute path; bf16 / f16 outputs are rounded from the exact f32 row.
template <class P, class A>
void dequantize(const weights_view& w, std::int64_t n0, std::int64_t n1, void* out, element type) {
    check_kernel_policy<P>();
    check_arrangement<P, A>(w);
    const std::int64_t k = w.cols;
    if constexpr (panels::applies<P, A>)
        if (w.arrangement == weight_arrangement::vnni_panels) {  // a panel's rows at a time, back in rows
            const row_storage rs = row_storage_of(P::cfg, k);
            auto* mem = static_cast<std::uint8_t*>(simd::scratch<A, 4>::get(static_cast<std::size_t>(panels::rows * rs.stride)));
            const std::size_t size = type == element::f32 ? 4 : 2;
            for (std::int64_t c0 = n0; c0 < n1; c0 += panels::rows) {
                const std::int64_t c1 = n1 - c0 < panels::rows ? n1 : c0 + panels::rows;
                panels::unarrange<P, A>(w, c0, c1, mem);
                dequantize<P, A>(rows_at(w, c1 - c0, mem, c0), 0, c1 - c0,
                                 static_cast<std::uint8_t*>(out) + static_cast<std::size_t>(c0 * k) * size, type);
            }
            return;
        }
    if (type == element::f32) return dequantize_rows<P, A>(w, n0, n1, static_cast<float*>(out) + n0 * k);
    auto* row = static_cast<float*>(simd::scratch<A, 3>::get(static_cast<std::size_t>(k) * sizeof(float)));
    auto* half = static_cast<std::uint16_t*>(out);
    for (std::int64_t n = n0; n < n1; ++n) {
        dequantize_rows<P, A>(w, n, n + 1, row);
        if (type == element::bf16) simd::to_bf16<A>(row, k, half + n * k);
        else simd::to_f16<A>(row, k, half + n * k);
    }
}

// ---- GEMV ----------------------------------------------------------------------------------

template <class P, class A>
void gemv_f32(const weights_view& w, const float* x, const float* bias, float* y, std::int64_t n0, std::int64_t n1) {
    const f32_shape<P, A> s(w.cols);
    auto* xp = static_cast<float*>(simd::scratch<A, 0>::get(static_cast<std::size_t>(w.cols) * sizeof(float)));
    permute_for_f32<P, A>(s, x, w.perm, xp);
    alignas(64) float values[16];
    code_traits<P::type>::template values<A>(w, values);
    const auto table = simd::make_table16<A>(values);
    for (std::int64_t n = n0; n < n1; ++n) {
        const float v = gemv_f32_row<P, A>(w, s, table, values, xp, n);
        y[n] = bias ? v + bias[n] : v;
    }
}

// The i8 GEMV in two parts, so that x is prepared once for every matrix and thread that reads it
// (kernel::prepare, engine.hpp): x gathered to the stored column order, quantized per block and
// permuted to the code registers' order (i8.hpp); then the rows on the prepared bytes.
// (LLM.int8 and the 8-bit qforge layout quantize x inside their own gemv_i8 overloads.)
template <class P>
inline constexpr bool has_prepared_gemv = P::act == compute::i8 && P::storage != layout::bnb8 &&
                                          !(P::storage == layout::qforge && P::bits == 8);

template <class P, class A>
std::size_t prepare_gemv(const weights_view& w, const float* x, void* mem) {
    const i8_shape<P, A> s(w.cols);
    if (mem != nullptr) quantize_activations<P, A>(s, gather_columns<A, 1>(w, x, 1), mem);
    return s.bytes;
}

// Not inlined into gemv_i8: one copy of the row loop per kernel (compile time).
template <class P, class A>
[[gnu::noinline]] void gemv_prepared(const weights_view& w, const void* prepared, const float* bias, float* y,
                                     std::int64_t n0, std::int64_t n1) {
    check_arrangement<P, A>(w);
    const i8_shape<P, A> s(w.cols);
    const i8_row xq = prepared_row<P, A>(s, prepared);
    if constexpr (panels::applies<P, A>)
        if (w.arrangement == weight_arrangement::vnni_panels) return panels::gemm<P, A>(w, &xq, 1, bias, y, w.rows, n0, n1);
    const i8_levels<P, A> levels(w);
    for_each_row<A>(
        n0, n1, [&](std::int64_t n) { return i8_gemv_row<P, A>(w, s, levels, xq, n); },
        [&](std::int64_t n, float dots) {
            const float v = dots / code_traits<P::type>::i8_scale + i8_tail<P, A>(w, s, levels, xq, n);
            y[n] = bias ? v + bias[n] : v;
        });
}

template <class P, class A>
void gemv_i8(const weights_view& w, const float* x, const float* bias, float* y, std::int64_t n0, std::int64_t n1) {
    void* mem = simd::scratch<A, 0>::get(prepare_gemv<P, A>(w, x, nullptr));
    prepare_gemv<P, A>(w, x, mem);
    gemv_prepared<P, A>(w, mem, bias, y, n0, n1);
}

template <class P, class A>
void gemv(const weights_view& w, const float* x, const float* bias, float* y, std::int64_t n0, std::int64_t n1) {
    check_kernel_policy<P>();
    check_arrangement<P, A>(w);
    if constexpr (native_bf16_gemv<P, A>) gemv_bf16<P, A>(w, x, bias, y, n0, n1);
    else if constexpr (P::act == compute::i8) gemv_i8<P, A>(w, x, bias, y, n0, n1);
    else gemv_f32<P, A>(w, x, bias, y, n0, n1);  // f32, and bf16 / f16 with rounded operands
}

// ---- GEMM (cache blocking and register tiles: gemm_tiles.hpp) ---------------------------------

// The GEMM for few rows of X (m <= gemm_f32_dot_rows, f32.hpp): tiles of MR X rows x
// NR W rows of dot products over panels of 32 rows x gemm_f32_k_slice columns dequantized to f32
// (the only f32 GEMM before the register tiles of f32.hpp).
template <class P, class A>
void gemm_f32_dots(const weights_view& w, const float* x, std::int64_t m, const float* bias, float* y, std::int64_t n0,
                   std::int64_t n1) {
    constexpr int MR = gemm_f32_mr<A>, NR = gemm_f32_nr<A>;
    constexpr std::int64_t group = gemm_block<P>;
    constexpr std::int64_t k_slice = gemm_f32_k_slice > group ? gemm_f32_k_slice / group * group : group;
    const std::int64_t ldy = w.rows, k = w.cols;
    init_output(bias, y, m, ldy, n0, n1);
    auto* panel = static_cast<float*>(simd::scratch<A, 0>::get(static_cast<std::size_t>(gemm_row_panel * k_slice) * sizeof(float)));
    const auto table = value_table<P, A>(w);
    x = gather_columns<A, 2>(w, x, m);  // act-order: X in the stored column order
    const float* xe = x;
    if constexpr (rounded_operands<P>) {  // X rounded to bf16 / f16 once
        auto* xb = static_cast<float*>(simd::scratch<A, 1>::get(static_cast<std::size_t>(m * k) * sizeof(float)));
        for (std::int64_t i = 0; i < m * k; ++i) xb[i] = operand<P, A>(x[i]);
        xe = xb;
    }
    for (std::int64_t k0 = 0; k0 < k; k0 += k_slice) {
        const std::int64_t kc = smaller(k_slice, k - k0);
        for (std::int64_t p0 = n0; p0 < n1; p0 += gemm_row_panel) {
            const std::int64_t pc = smaller(gemm_row_panel, n1 - p0);
            for (std::int64_t r = 0; r < pc; ++r) {
                float* row = panel + r * k_slice;
                dequantize_columns<P, A>(w, table, p0 + r, k0, kc, row);
                if constexpr (rounded_operands<P>)
                    for (std::int64_t c = 0; c < kc; c += simd::lanes<A>)
                        operand<P, A>(simd::f32v<A>::load_unaligned(row + c)).store_unaligned(row + c);
            }
            for (std::int64_t i0 = 0; i0 < m; i0 += MR)
                for (std::int64_t r0 = 0; r0 < pc; r0 += NR) {
                    const int mr = static_cast<int>(smaller<std::int64_t>(MR, m - i0));
                    const int nr = static_cast<int>(smaller<std::int64_t>(NR, pc - r0));
                    with_tile<MR, NR>(mr, nr, [&](auto mt, auto nt) {
                        float out[mt][nt];
                        dot_tile<A, mt, nt>(xe + i0 * k + k0, k, panel + r0 * k_slice, k_slice, kc, out);
                        for (int i = 0; i < mt; ++i)
                            for (int j = 0; j < nt; ++j) y[(i0 + i) * ldy + p0 + r0 + j] += out[i][j];
                    });
                }
        }
    }
}

// The GEMM for few rows of X (m <= gemm_f32_rows_max, f32.hpp) in the GEMV's order: each decoded
// register of W feeds a tile of up to gemm_f32_rows_mr X rows (gemv_f32_rows), W read once; more X
// rows run as further tiles on the same W row, then in L1.
// The formats whose GEMV is gemv_f32_rows (f32.hpp): not FP8 or 8-bit integers (their own GEMVs).
template <class P>
inline constexpr bool window_gemv = !fp8_block_policy<P> && !int8_policy<P>;

template <class P, class A>
void gemm_f32_rows(const weights_view& w, const float* x, std::int64_t m, const float* bias, float* y, std::int64_t n0,
                   std::int64_t n1) {
    constexpr int MR = gemm_f32_rows_mr<A>;
    const std::int64_t k = w.cols, ldy = w.rows;
    const f32_shape<P, A> s(k);
    auto* xp = static_cast<float*>(simd::scratch<A, 0>::get(static_cast<std::size_t>(m * k) * sizeof(float)));
    each_row_tile<MR>(m, [&](auto mt, std::int64_t i0) {  // each tile's rows side by side
        for (int r = 0; r < mt; ++r) permute_for_f32<P, A>(s, x + (i0 + r) * k, w.perm, xp + i0 * k, r, mt);
    });
    alignas(64) float values[16];
    code_traits<P::type>::template values<A>(w, values);
    const auto table = simd::make_table16<A>(values);
    each_row_tile<MR>(m, [&](auto mt, std::int64_t i0) {
        const std::int64_t per_pass = row_pass_units(s.steps, mt * s.step_elems * sizeof(float), 1, 24 * 1024);
        row_passes(s.steps, per_pass, [&](std::int64_t p0, std::int64_t p1, bool first, bool last) {
            for (std::int64_t n = n0; n < n1; ++n) {
                if (!(first && last)) prefetch_row_span<P, A>(w, n + 4, n1, p0 * s.step_elems, p1 * s.step_elems);
                float v[mt];
                gemv_f32_rows<P, A, mt>(w, s, table, values, xp + i0 * k, n, p0, p1, v);
                for (int i = 0; i < mt; ++i) {
                    float& out = y[(i0 + i) * ldy + n];
                    out = first ? (bias ? v[i] + bias[n] : v[i]) : out + v[i];
                }
            }
        });
    });
}

// Also the bf16 and f16 paths: emulated (operands rounded in f32) or, for bf16 on avx512_bf16, with
// panels and X stored as bf16 and vdpbf16ps tiles (bf16.hpp). Blocking and tiles: f32.hpp.
template <class P, class A>
void gemm_f32(const weights_view& w, const float* x, std::int64_t m, const float* bias, float* y, std::int64_t n0,
              std::int64_t n1) {
    constexpr bool native = native_bf16<P, A>;
    using E = std::conditional_t<native, std::uint16_t, float>;  // element of the panel
    using X = std::conditional_t<native, std::uint32_t, float>;  // of packed X: a bf16 pair, or f32
    constexpr int XB = native ? 32 : gemm_x_block<A>, NR = gemm_w_rows<A>, lanes = native ? 16 : simd::lanes<A>;
    constexpr std::int64_t group = gemm_block<P>, rows = gemm_f32_panel, per_k = native ? XB / 2 : XB;
    constexpr std::int64_t chunk = gemm_f32_k_chunk > group ? gemm_f32_k_chunk / group * group : group;
    const std::int64_t ldy = w.rows, k = w.cols, xblocks = (m + XB - 1) / XB;
    auto* panel = static_cast<E*>(simd::scratch<A, 0>::get(static_cast<std::size_t>(rows * chunk) * sizeof(E)));
    const auto table = value_table<P, A>(w);
    alignas(64) float values[16];
    if constexpr (table_rows<P, A>) code_traits<P::type>::template values<A>(w, values);
    x = gather_columns<A, 2>(w, x, m);  // act-order: X in the stored column order
    [[maybe_unused]] float* exact = nullptr;  // native: one dequantized row before its rounding to bf16
    if constexpr (native) exact = static_cast<float*>(simd::scratch<A, 3>::get(chunk * sizeof(float)));
    // X packed once: block b (rows [b XB, b XB + XB), zeros past m) at xp + b k per_k
    auto* xp = static_cast<X*>(simd::scratch<A, 1>::get(static_cast<std::size_t>(xblocks * k * per_k) * sizeof(X)));
    for (std::int64_t b = 0; b < xblocks; ++b) {
        if constexpr (native) {
            bf16::pack_x<A>(x, m, k, b * XB, xp + b * k * per_k);
        } else {
            for (std::int64_t c = 0; c < k; ++c)
                for (std::int64_t i = 0; i < XB; ++i)
                    xp[(b * k + c) * XB + i] = b * XB + i < m ? operand<P, A>(x[(b * XB + i) * k + c]) : 0.0f;
        }
    }
    // the sums of every tile of the panel, carried from chunk to chunk: [xblock][tile][NR][XB]
    constexpr std::int64_t tiles = rows / NR;
    auto* sums = static_cast<float*>(simd::scratch<A, 4>::get(static_cast<std::size_t>(xblocks * rows * XB) * sizeof(float)));
    for (std::int64_t p0 = n0; p0 < n1; p0 += rows) {
        const std::int64_t pc = smaller(rows, n1 - p0);
        for (std::int64_t k0 = 0; k0 < k; k0 += chunk) {
            const std::int64_t kc = smaller(chunk, k - k0);
            for (std::int64_t r = 0; r < rows; ++r) {
                E* row = panel + r * chunk;
                // the next chunk's codes and scales (or the next panel's first) are fetched while
                // this one computes: W is read as `rows` streams of a chunk at a time, and from
                // memory the decode stalled on them (a third of the time at M = 32)
                if constexpr (P::storage == layout::bnb4 || P::storage == layout::qforge) {
                    const bool last = k0 + chunk >= k;
                    const std::int64_t n = last ? p0 + rows + r : p0 + r, c0 = last ? 0 : k0 + chunk;
                    if (r < pc && n < n1) {
                        const std::uint8_t* next = row_codes<P, A>(w, n) + c0 * code_bits<P> / 8;
                        for (std::int64_t b = 0; b < chunk * code_bits<P> / 8; b += 64)
                            _mm_prefetch(reinterpret_cast<const char*>(next + b), _MM_HINT_T0);
                        const std::int64_t scale_byte = c0 * row_bytes(P::cfg, k).scales / k;
                        _mm_prefetch(reinterpret_cast<const char*>(row_blocks<P, std::uint8_t>(w, w.scales, n, 0) + scale_byte),
                                     _MM_HINT_T0);
                    }
                }
                if (r >= pc) {  // rows past the end: zeros (never stored)
                    std::memset(row, 0, static_cast<std::size_t>(kc) * sizeof(E));
                } else if constexpr (native && table_rows<P, A>) {
                    bf16::table_row<P, A>(w, values, p0 + r, k0, kc, row);
                } else if constexpr (native) {
                    dequantize_columns<P, A>(w, table, p0 + r, k0, kc, exact);
                    bf16::operands<A>(exact, kc, row);
                } else {
                    if constexpr (table_rows<P, A>) table_row<P, A>(w, values, p0 + r, k0, kc, row);
                    else dequantize_columns<P, A>(w, table, p0 + r, k0, kc, row);
                    if constexpr (rounded_operands<P>)
                        for (std::int64_t c = 0; c < kc; c += simd::lanes<A>)
                            operand<P, A>(simd::f32v<A>::load_unaligned(row + c)).store_unaligned(row + c);
                }
            }
            for (std::int64_t b = 0; b < xblocks; ++b) {
                const X* xb = xp + (b * k + k0) * per_k;
                const bool wide = m - b * XB > lanes;
                for (std::int64_t t = 0; t < tiles && t * NR < pc; ++t) {
                    float* out = sums + (b * tiles + t) * NR * XB;
                    const auto run = [&](auto vr) {
                        if constexpr (native) bf16::gemm_tile<A, vr, NR, chunk>(xb, panel + t * NR * chunk, kc, k0 > 0, out);
                        else gemm_f32_tile<A, vr, NR, chunk>(xb, panel + t * NR * chunk, kc, k0 > 0, out);
                    };
                    if (wide) run(std::integral_constant<int, 2>{});
                    else run(std::integral_constant<int, 1>{});
                }
            }
        }
        // y = bias (or 0) + the sums, transposed
        for (std::int64_t b = 0; b < xblocks; ++b) {
            const int mr = static_cast<int>(smaller<std::int64_t>(XB, m - b * XB));
            for (std::int64_t t = 0; t < tiles && t * NR < pc; ++t) {
                const float* out = sums + (b * tiles + t) * NR * XB;
                const int nr = static_cast<int>(smaller<std::int64_t>(NR, pc - t * NR));
                for (int i = 0; i < mr; ++i) {
                    float* yi = y + (b * XB + i) * ldy + p0 + t * NR;
                    for (int j = 0; j < nr; ++j) yi[j] = (bias ? bias[p0 + t * NR + j] : 0.0f) + out[j * XB + i];
                }
            }
        }
    }
}

// The m rows of X prepared for the i8 GEMMs (i8.hpp), in the stored column order of W.
template <class P, class A>
const i8_row* prepare_rows(const weights_view& w, const i8_shape<P, A>& s, const float* x, std::int64_t m) {
    auto* mem = static_cast<std::uint8_t*>(simd::scratch<A, 0>::get(static_cast<std::size_t>(m) * s.bytes));
    auto* rows = static_cast<i8_row*>(simd::scratch<A, 1>::get(static_cast<std::size_t>(m) * sizeof(i8_row)));
    x = gather_columns<A, 2>(w, x, m);
    for (std::int64_t i = 0; i < m; ++i) rows[i] = quantize_activations<P, A>(s, x + i * w.cols, mem + i * s.bytes);
    return rows;
}

template <class P, class A>
void gemm_i8(const weights_view& w, const float* x, std::int64_t m, const float* bias, float* y, std::int64_t n0,
             std::int64_t n1) {
    using S = i8_shape<P, A>;
    constexpr int MR = gemm_i8_mr<A>, NR = gemm_i8_nr;
    constexpr std::int64_t slice_steps = gemm_i8_k_slice > S::step_elems ? gemm_i8_k_slice / S::step_elems : 1;
    const std::int64_t ldy = w.rows, k = w.cols;
    init_output(bias, y, m, ldy, n0, n1);
    const S s(k);
    const i8_levels<P, A> levels(w);
    const i8_row* rows = prepare_rows<P, A>(w, s, x, m);

    each_tile<MR, NR>(m, n0, n1, s.steps, slice_steps, y, ldy,
                      [&](auto mt, auto nt, auto i0, auto n, auto s0, auto s1, auto& out) {
                          i8_tile<P, A, mt, nt>(w, levels, rows + i0, n, s0, s1, out);
                      });
    if (s.tail_blocks > 0)
        for (std::int64_t i = 0; i < m; ++i)
            for (std::int64_t n = n0; n < n1; ++n) y[i * ldy + n] += i8_tail<P, A>(w, s, levels, rows[i], n);
}

// The i8 GEMM for few rows of X (m <= gemm_i8_rows_max): one pass over W in the GEMV's order, each
// decoded register of codes feeding up to gemm_i8_rows_mr X rows (i8_rows); more X rows run as
// further tiles on the same W row, then in L1. Tiles are powers of two (fewer instantiations).
template <class P, class A>
void gemm_i8_rows(const weights_view& w, const float* x, std::int64_t m, const float* bias, float* y, std::int64_t n0,
                  std::int64_t n1) {
    using S = i8_shape<P, A>;
    using F = simd::f32v<A>;
    constexpr int MR = gemm_i8_rows_mr<A>, lanes = simd::lanes<A>;
    static_assert(MR <= lanes, "one transposed sum per tile");
    const std::int64_t ldy = w.rows, k = w.cols;
    const S s(k);
    const i8_levels<P, A> levels(w);
    const i8_row* rows = prepare_rows<P, A>(w, s, x, m);
    for (std::int64_t n = n0; n < n1; ++n)
        for (std::int64_t i0 = 0, done = 0; i0 < m; i0 += done) {
            const std::int64_t left = m - i0;
            simd::unroll<std::bit_width(unsigned{MR})>([&](auto e) {
                constexpr int mt = MR >> decltype(e)::value;
                if (left < mt || (mt < MR && left >= 2 * mt)) return;  // the largest tile that fits
                done = mt;
                row_sum<A> sum[mt];
                i8_rows<P, A, mt>(w, s, levels, rows + i0, n, sum);
                F parts[lanes];
                for (int i = 0; i < lanes; ++i) parts[i] = i < mt ? sum[i < mt ? i : 0].lanes : F(0.0f);
                alignas(64) float dots[lanes];
                simd::sum_rows<A>(parts).store_aligned(dots);
                for (int i = 0; i < mt; ++i) {
                    const float v = (dots[i] + sum[i].rest) / code_traits<P::type>::i8_scale +
                                    i8_tail<P, A>(w, s, levels, rows[i0 + i], n);
                    y[(i0 + i) * ldy + n] = bias ? v + bias[n] : v;
                }
            });
        }
}

// The m rows of X quantized for the VNNI GEMMs (quantize_row, i8_gemm_vnni.hpp), in the stored
// column order of W: levels (k per row), per block the activation scales and -128 * sum(xq).
template <class P, class A>
vnni_gemm::x_rows quantize_rows(const weights_view& w, const float* x, std::int64_t m) {
    const std::int64_t k = w.cols, blocks = k / gemm_block<P>;
    x = gather_columns<A, 3>(w, x, m);  // act-order: X in the stored column order
    auto* xq = static_cast<std::int8_t*>(simd::scratch<A, 0>::get(static_cast<std::size_t>(m * k)));
    auto* xmeta = static_cast<std::uint8_t*>(simd::scratch<A, 1>::get(static_cast<std::size_t>(m * blocks) * 8));
    auto* xs = reinterpret_cast<float*>(xmeta);
    auto* corr = reinterpret_cast<std::int32_t*>(xmeta + m * blocks * 4);
    for (std::int64_t i = 0; i < m; ++i)
        vnni_gemm::quantize_row<P, A>(x + i * k, k, xq + i * k, xs + i * blocks, corr + i * blocks);
    return {xq, xs, corr};
}

// The i8 GEMM with VNNI: W decoded per panel into row-interleaved levels (i8_gemm_vnni.hpp).
template <class P, class A>
void gemm_i8_vnni(const weights_view& w, const float* x, std::int64_t m, const float* bias, float* y, std::int64_t n0,
                  std::int64_t n1) {
    using namespace vnni_gemm;
    constexpr std::int64_t group = gemm_block<P>;
    const std::int64_t k = w.cols, ldy = w.rows, blocks = k / group;
    const i8_levels<P, A> levels(w);
    const vnni_gemm::x_rows xr = quantize_rows<P, A>(w, x, m);
    const std::int8_t* xq = xr.q;
    const float* xs = xr.xs;
    const std::int32_t* corr = xr.corr;

    constexpr std::int64_t slice = k_slice / group * group;
    const std::int64_t ld = stride<P>(slice < k ? slice : k);
    const std::size_t per_block = static_cast<std::size_t>((ld / group + 1) * panel_rows) * sizeof(float);
    auto* mem = static_cast<std::uint8_t*>(simd::scratch<A, 2>::get(
        static_cast<std::size_t>(2 * panel_rows * ld) + (has_zeros<P> ? 2 : 1) * per_block));
    std::uint8_t* natural = mem;
    std::uint8_t* panel = mem + panel_rows * ld;
    auto* wscales = reinterpret_cast<float*>(mem + 2 * panel_rows * ld);
    float* wzeros = has_zeros<P> ? reinterpret_cast<float*>(mem + 2 * panel_rows * ld + per_block) : nullptr;
    for (std::int64_t k0 = 0; k0 < k; k0 += slice) {
        const std::int64_t len = smaller(slice, k - k0), b0 = k0 / group;
        for (std::int64_t p0 = n0; p0 < n1; p0 += panel_rows) {
            const int rows = static_cast<int>(smaller<std::int64_t>(panel_rows, n1 - p0));
            decode_panel<P, A>(w, levels, p0, n1, k0, len, natural, panel, wscales, wzeros);
            // ceil(m / max_mr) tiles of nearly equal height: no short tile (fewer dot chains than
            // the vpdpbusd latency needs) at the end
            const std::int64_t tiles = (m + max_mr - 1) / max_mr, base = m / tiles, taller = m % tiles;
            for (std::int64_t t = 0, i0 = 0; t < tiles; ++t) {
                const int mr = static_cast<int>(base + (t < taller ? 1 : 0));
                with_tile<max_mr, 1>(mr, 1, [&](auto mt, auto) {
                    x_row rows_x[mt];
                    for (int i = 0; i < mt; ++i)
                        rows_x[i] = {xq + (i0 + i) * k + k0, xs + (i0 + i) * blocks + b0, corr + (i0 + i) * blocks + b0};
                    // the tile's output lines are fetched while it computes (y is usually far larger
                    // than the caches: its read for ownership stalled the stores at M >= 128)
                    for (int i = 0; i < mt; ++i)
                        for (const int h : {0, 16, panel_rows - 1})  // 3 lines when not 64-byte aligned
                            _mm_prefetch(reinterpret_cast<const char*>(y + (i0 + i) * ldy + p0 + h), _MM_HINT_T0);
                    alignas(64) float out[mt][panel_rows];
                    tile<P, A, mt>(panel, wscales, wzeros, rows_x, len / group, out);
                    // y = bias (or 0) + the first slice's sums, then + each further slice's
                    for (int i = 0; i < mt; ++i) {
                        float* yi = y + (i0 + i) * ldy;
                        const float* from = k0 == 0 ? bias : yi;  // indexed by output column
                        if (rows == panel_rows)
                            for (int h = 0; h < panel_rows; h += 16) {
                                const __m512 b = from ? _mm512_loadu_ps(from + p0 + h) : _mm512_setzero_ps();
                                _mm512_storeu_ps(yi + p0 + h, _mm512_add_ps(b, _mm512_load_ps(out[i] + h)));
                            }
                        else
                            for (int r = 0; r < rows; ++r) yi[p0 + r] = (from ? from[p0 + r] : 0.0f) + out[i][r];
                    }
                });
                i0 += mr;
            }
        }
    }
}

// The VNNI GEMM for few rows of X and 4-bit codes (vnni_gemm::streams): the codes of 16 rows at a
// time transposed and decoded straight into the registers of the dots (stream_half), every X row
// in one pass when m <= stream_max_rows.
template <class P, class A>
void gemm_i8_stream(const weights_view& w, const float* x, std::int64_t m, const float* bias, float* y, std::int64_t n0,
                    std::int64_t n1) {
    using namespace vnni_gemm;
    const std::int64_t k = w.cols, ldy = w.rows, blocks = k / gemm_block<P>;
    const __m512i lut = level_lut<P, A>(i8_levels<P, A>(w));
    const vnni_gemm::x_rows xr = quantize_rows<P, A>(w, x, m);
    const std::int8_t* xq = xr.q;
    const float* xs = xr.xs;
    const std::int32_t* corr = xr.corr;
    auto* wscales = static_cast<float*>(simd::scratch<A, 2>::get(static_cast<std::size_t>(blocks * panel_rows) * sizeof(float)));
    // one tile of all m rows, instantiated for the heights this path serves
    simd::unroll<stream_max_rows - stream_min_rows<P> + 1>([&](auto e) {
        constexpr int mt = static_cast<int>(stream_min_rows<P>) + decltype(e)::value;
        if (mt != m) return;
        x_row rows_x[mt];
        for (int i = 0; i < mt; ++i) rows_x[i] = {xq + i * k, xs + i * blocks, corr + i * blocks};
        for (std::int64_t p0 = n0; p0 < n1; p0 += panel_rows) {
            const int rows = static_cast<int>(smaller<std::int64_t>(panel_rows, n1 - p0));
            panel_scales<P, A>(w, p0, n1, 0, k, wscales, nullptr);
            alignas(64) float out[mt][panel_rows];
            for (int half = 0; half < 2; ++half) {
                // the next 16 rows' codes are prefetched a chunk at a time with these (32 rows
                // ahead: no faster, 4096 x 11008 cold M = 4 1.61 against 1.60 ms, M = 8 2.67 / 2.55)
                const std::uint8_t *src[16], *ahead[16];
                float* o[mt];
                for (int r = 0; r < 16; ++r) {
                    const int row = half * 16 + r;
                    src[r] = row_codes<P, A>(w, p0 + (row < rows ? row : 0));
                    ahead[r] = p0 + 16 + row < n1 ? row_codes<P, A>(w, p0 + 16 + row) : src[r];
                }
                for (int i = 0; i < mt; ++i) o[i] = out[i] + 16 * half;
                stream_half<P, A, mt>(src, ahead, lut, k / 128, wscales + 16 * half, rows_x, o);
            }
            for (int i = 0; i < mt; ++i)
                for (int r = 0; r < rows; ++r) y[i * ldy + p0 + r] = (bias ? bias[p0 + r] : 0.0f) + out[i][r];
        }
    });
}

template <class P, class A>
void gemm(const weights_view& w, const float* x, std::int64_t m, const float* bias, float* y, std::int64_t n0,
          std::int64_t n1) {
    check_kernel_policy<P>();
    check_arrangement<P, A>(w);
    if constexpr (panels::applies<P, A>)
        if (w.arrangement == weight_arrangement::vnni_panels) {  // every M: tiles of up to 6 X rows (i8_panels.hpp)
            if (m == 1) return gemv_i8<P, A>(w, x, bias, y, n0, n1);
            return panels::gemm<P, A>(w, prepare_rows<P, A>(w, i8_shape<P, A>(w.cols), x, m), m, bias, y, w.rows, n0, n1);
        }
    if constexpr (P::act != compute::i8) {
        if constexpr (native_bf16_gemv<P, A>)  // one pass over W for few rows (bf16.hpp)
            if (m <= gemm_bf16_rows_max) return gemm_bf16_rows<P, A>(w, x, m, bias, y, w.rows, n0, n1);
        // f32.hpp: one pass over W for some M, below that a GEMV per row (AVX2 at M = 1 too: 8.4 / 13.7
        // ms for int4 g128 / NF4 b64 f32 on 4096 x 11008 cold, against 17.4 / 19.5 in the dot tiles)
        constexpr bool one_pass = window_gemv<P> && gemm_f32_rows_max<P, A> > 0;
        if constexpr (one_pass)
            if (m >= gemm_f32_rows_min<P, A> && m <= gemm_f32_rows_max<P, A>) return gemm_f32_rows<P, A>(w, x, m, bias, y, n0, n1);
        if (one_pass ? m < gemm_f32_rows_min<P, A> : m <= gemm_f32_gemv_rows<P, A>) {
            for (std::int64_t i = 0; i < m; ++i) gemv<P, A>(w, x + i * w.cols, bias, y + i * w.rows, n0, n1);
            return;
        }
        if (m <= gemm_f32_dot_rows<P, A>) return gemm_f32_dots<P, A>(w, x, m, bias, y, n0, n1);
        gemm_f32<P, A>(w, x, m, bias, y, n0, n1);  // f32, bf16, f16
    } else {
        if constexpr (has_prepared_gemv<P>) {  // the codes of the GEMV's row (not 8-bit integers)
            // one row is the GEMV (its own row loop measured as fast or faster on every ISA)
            if (m == 1) return gemv_i8<P, A>(w, x, bias, y, n0, n1);
            const bool streamed = vnni_gemm::applies<P, A> && vnni_gemm::streams<P> && w.cols % 128 == 0;
            if (m <= (streamed ? vnni_gemm::stream_min_rows<P> - 1 : gemm_i8_rows_max<A, i8_shape<P, A>::blocks_per_window>))
                return gemm_i8_rows<P, A>(w, x, m, bias, y, n0, n1);
        }
        if constexpr (vnni_gemm::applies<P, A> && vnni_gemm::streams<P>)
            if (m <= vnni_gemm::stream_max_rows && w.cols % 128 == 0) return gemm_i8_stream<P, A>(w, x, m, bias, y, n0, n1);
        if constexpr (vnni_gemm::applies<P, A>) gemm_i8_vnni<P, A>(w, x, m, bias, y, n0, n1);
        else gemm_i8<P, A>(w, x, m, bias, y, n0, n1);
    }
}

// ---- registration: descriptors filled from the policy ------------------------------------

template <class P, class A>
void register_policy(registry& r, std::string_view name) {
    kernel k;
    k.name = name;
    k.cfg = P::cfg;
    k.arch = isa_of<A>();
    if constexpr (panels::applies<P, A>) {
        k.arrange_ptr = &panels::arrange<P, A>;
        k.unarrange_ptr = &panels::unarrange<P, A>;
    }
    k.kind = op::dequantize;
    k.dequantize_ptr = &dequantize<P, A>;
    r.add(k);
    k.dequantize_ptr = nullptr;
    k.kind = op::gemv;
    k.gemv_ptr = &gemv<P, A>;
    if constexpr (has_prepared_gemv<P>) {
        k.prepare_ptr = &prepare_gemv<P, A>;
        k.gemv_prepared_ptr = &gemv_prepared<P, A>;
    }
    r.add(k);
    k.gemv_ptr = nullptr;
    k.prepare_ptr = nullptr;
    k.gemv_prepared_ptr = nullptr;
    k.kind = op::gemm;
    k.gemm_ptr = &gemm<P, A>;
    r.add(k);
}

}  // namespace qforge::kernels

// Explicit instantiation of the three kernels of one policy for one arch (generated TUs).
#define QFORGE_INSTANTIATE_KERNELS(P, A)                                                                    \
    template void qforge::kernels::dequantize<P, A>(const qforge::weights_view&, std::int64_t, std::int64_t, \
                                                    void*, qforge::element);                                \
    template void qforge::kernels::gemv<P, A>(const qforge::weights_view&, const float*, const float*, float*, \
                                              std::int64_t, std::int64_t);                                  \
    template void qforge::kernels::gemm<P, A>(const qforge::weights_view&, const float*, std::int64_t,       \
                                              const float*, float*, std::int64_t, std::int64_t);

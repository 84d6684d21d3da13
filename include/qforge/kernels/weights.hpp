// Quantized weights as the kernels see them, and the signatures of the kernel operations.
//
// W has shape [N, K] = [rows, cols] (nn.Linear.weight). Every kernel works on an output-row
// range [n0, n1) so that an engine can split the rows over its own threads; outputs are indexed
// absolutely (row n of the result is written at the same place whatever the range).
#pragma once

#include <qforge/config/config.hpp>
#include <qforge/memory.hpp>

#include <cstdint>
#include <string_view>
#include <vector>

namespace qforge {

// A non-owning view of one weight matrix in a kernel layout (cfg.storage):
//   bnb4   codes: the bitsandbytes packed bytes, element 2i in the high nibble
//          scales: f32 absmax per block, or (double quant) one uint8 code per block
//   qforge codes: per row K/2 bytes; in every 16-byte span s, byte j holds element 32s+j in its
//          low nibble and element 32s+16+j in its high nibble (so a 16-byte load decodes into
//          32 consecutive elements); scales: f16 bits per (row, group), row-major [N, K/group]
//   fp8_block codes: one E4M3 / E5M2 byte per element, row-major [N, K]; scales: f32 scale_inv per
//          group x group tile, row-major [ceil(N/group), K/group]
//   mx     codes: per row K/2 bytes, element 2i in the HIGH nibble (the checkpoint's nibbles
//          swapped by pack_weights); scales: one E8M0 byte per (row, block of 32), [N, K/32]
//   bnb8   codes: the int8 CB bytes, row-major [N, K]; scales: f32 SCB [N]; outlier_threshold:
//          the LLM.int8 matmul's t (transformers' llm_int8_threshold; 0 disables the outlier
//          decomposition; negative, NaN and infinite values are refused); K <= llm_int8_max_cols
//   qforge 8-bit: codes one byte per weight (the GPTQ code), row-major [N, K]; scales as above
//          (per_channel: one per row). 2-bit: per row K/4 bytes, in every 16-byte span s byte j
//          holds element 64s+16p+j in bits [2p, 2p+2) (p = 0..3). 3-bit: per row 3K/8 bytes in
//          units of 256 elements (split3), the low two bits of each code in the 2-bit layout, the
//          third bits in a plane after them
// Rows with their scales (row_stride > 0, as pack_weights stores bnb4, mx and qforge weights):
// row n's codes, scales and zeros are at codes, scales and zeros + n * row_stride bytes, each
// row one run of memory (rows_with_scales, kernels/pack.hpp). The arrays above are the
// row_stride 0 case (dense, as in the checkpoint).
// Integer layouts (qforge) may also carry
//   zeros  (dtype int_asym) one zero point byte per (row, group), row-major [N, K/group]:
//          W[n, k] = scale * (code - zero), the integer difference first (formats.md §3, §4)
//   perm   (act-order, GPTQ desc_act) int32 [K]: the columns are stored sorted by group (stable),
//          stored column j is column perm[j] of W; null when the columns are in their own order
// 3-bit codes in the qforge layout: a row is units of 256 elements (the last may hold fewer:
// r = 1 .. 4 spans of 64), each 16 r bytes of the codes' low two bits in the 2-bit span order, then
// per code field p (p = 0 .. 3) 2 r bytes: bit b % 8 of byte b / 8 is the third bit of field p of
// low byte b (element 64 (b / 16) + 16 p + b % 16 of the unit). So a window of V <= 64 low bytes
// has the third bits of each field in V / 8 consecutive bytes. K must be a multiple of 64.
struct split3 {
    static constexpr std::int64_t unit_elems = 256, unit_bytes = 96;
    // spans (of 64 elements) in unit u of a row of cols elements
    static constexpr std::int64_t spans(std::int64_t cols, std::int64_t u) {
        return cols / 64 - 4 * u < 4 ? cols / 64 - 4 * u : 4;
    }
    // bytes of third bits per code field in a unit of r spans
    static constexpr std::int64_t field_plane_bytes(std::int64_t r) { return 2 * r; }
    // the unit's byte holding the third bit of field p of low byte b (as its bit b % 8)
    static constexpr std::int64_t plane_byte(std::int64_t r, std::int64_t p, std::int64_t b) {
        return 16 * r + field_plane_bytes(r) * p + b / 8;
    }
};

// How a weights_view's bytes are laid out.
//   rows         as described above (cfg.storage; row_stride 0, or rows with their scales)
//   vnni_panels  the arrangement of the avx512_vnni i8 kernels of 4-bit configs (has_vnni_panels),
//                made once by kernel::arrange (qforge::matrix does it when it owns the weights) and
//                never stored in a file (packed_file::save writes the rows back). W in panels of
//                32 rows (the last one padded with zero rows); per panel and group: the 32 rows'
//                scales as stored (f16, or bnb4's f32 absmax), then the codes as group / 8 runs of
//                32 dwords, dword r for row r, whose byte j holds in its low and high nibble the
//                codes of the 2 x 4 elements the i8 kernels' prepared activations hold at 8
//                consecutive bytes (i8_panels.hpp: the activation quads broadcast per vpdpbusd),
//                then (int_asym) the 32 zero points. Double quantization: the panels hold each
//                block's absmax decoded to f32 (as the rows kernels decode it), and after the last
//                panel the u8 absmax codes follow in rows (rows x blocks bytes), which only the
//                way back to rows reads. codes points at the first panel; scales (and zeros)
//                point at the same bytes.
enum class weight_arrangement : std::uint8_t { rows, vnni_panels };

// The configs whose avx512_vnni kernels have the vnni_panels arrangement: the i8 path of
// bitsandbytes' 4-bit codes (with or without double quantization) and of 4-bit integers in
// qforge's layout in groups up to 128 (larger ones are not measured). Chosen by measurement
// (docs/performance.md, "W arranged in panels", "Panels, seventh session" and "eighth session"):
// on panels their cold GEMV (4096 x 11008) took 0.6-1.01 of its time on rows, and M = 2-32 0.36-0.8.
constexpr bool has_vnni_panels(const config& c) {
    if (c.act != compute::i8 || c.bits != 4 || c.group <= 0) return false;
    if (c.storage == layout::qforge) return (c.type == dtype::int_sym || c.type == dtype::int_asym) && c.group <= 128;
    return c.storage == layout::bnb4;
}
// The bytes of one block of a panel (32 rows: scales, codes, zero points) and of all panels.
inline constexpr std::int64_t vnni_panel_rows = 32;
constexpr std::int64_t vnni_panel_block_bytes(const config& c) {
    return vnni_panel_rows * (c.group / 2 + (c.storage == layout::qforge ? 2 : 4) + (c.type == dtype::int_asym ? 1 : 0));
}
// The panels' bytes, which the kernels read, and the double-quant absmax codes after them.
constexpr std::int64_t vnni_panels_read_bytes(const config& c, std::int64_t rows, std::int64_t cols) {
    return (rows + vnni_panel_rows - 1) / vnni_panel_rows * (cols / c.group) * vnni_panel_block_bytes(c);
}
constexpr std::int64_t vnni_panels_bytes(const config& c, std::int64_t rows, std::int64_t cols) {
    return vnni_panels_read_bytes(c, rows, cols) + (c.double_quant ? rows * (cols / c.group) : 0);
}

struct weights_view {
    config cfg{};
    std::int64_t rows = 0, cols = 0;
    const std::uint8_t* codes = nullptr;
    const void* scales = nullptr;
    const float* code_table = nullptr;     // 16 values of a 4-bit code (bnb quant_map); unused for integers
    const float* nested_map = nullptr;     // double quant: 256 values (nested_quant_map)
    const float* nested_absmax = nullptr;  // double quant: [ceil(blocks / 256)]
    float nested_offset = 0.0f;            // double quant: added after the nested product
    float outlier_threshold = 6.0f;        // bnb8: LLM.int8 outlier threshold (run time)
    const std::uint8_t* zeros = nullptr;   // int_asym: zero point per (row, group)
    const std::int32_t* perm = nullptr;    // act-order: stored column -> column of W
    std::int64_t row_stride = 0;           // rows with their scales: bytes from row to row; 0: dense
    weight_arrangement arrangement = weight_arrangement::rows;
    std::int64_t first_row = 0;            // double quant: the matrix row of row 0 (rows_at)
};

// |CB * XA| <= 128 * 128, so the LLM.int8 int32 sums are exact up to this K (as ref::int8_matmul).
inline constexpr std::int64_t llm_int8_max_cols = 2147483647 / (128 * 128);

// The layouts whose rows can carry their scales (and zero points): bnb4, mx, qforge.
[[gnu::always_inline]] inline bool rows_can_carry_scales(const config& cfg) {
    return cfg.storage == layout::bnb4 || cfg.storage == layout::mx || cfg.storage == layout::qforge;
}
// In those layouts: the bits of a code (qforge: the integer width, 2, 3, 4 or 8; bnb4 and mx:
// nibbles) and the blocks of a row of cols elements (one per channel).
constexpr int row_code_bits(const config& cfg) { return cfg.storage == layout::qforge ? cfg.bits : 4; }
constexpr std::int64_t row_blocks_of(const config& cfg, std::int64_t cols) {
    return cfg.group == per_channel ? 1 : cols / cfg.group;
}
// The bytes of one row: its codes, its scales (bnb4 f32 absmax or double-quant uint8 codes, mx
// E8M0 bytes, qforge f16) and its zero points (qforge int_asym, a byte per group).
struct row_parts {
    std::int64_t codes, scales, zeros;
};
[[gnu::always_inline]] inline row_parts row_bytes(const config& cfg, std::int64_t cols) {
    const std::int64_t blocks = row_blocks_of(cfg, cols);
    return {cols * row_code_bits(cfg) / 8,
            blocks * (cfg.storage == layout::qforge ? 2 : cfg.storage == layout::mx || cfg.double_quant ? 1 : 4),
            cfg.type == dtype::int_asym ? blocks : 0};
}

// Rows with their scales (pack_weights, kernels/pack.hpp: rows_with_scales): each row its scales,
// its zero points, padding to 64 bytes, from codes_offset on its codes, padding to 64 bytes.
struct row_storage {
    std::int64_t stride, codes_offset;
};
[[gnu::always_inline]] inline row_storage row_storage_of(const config& cfg, std::int64_t cols) {
    const row_parts r = row_bytes(cfg, cols);
    const auto pad = [](std::int64_t b) { return (b + 63) / 64 * 64; };
    return {pad(r.scales + r.zeros) + pad(r.codes), pad(r.scales + r.zeros)};
}

struct weights_view;
// w's config, tables and perm with `rows` rows stored at mem as rows with their scales, the first
// of them row first_row of w's matrix.
[[gnu::always_inline]] inline weights_view rows_at(const weights_view& w, std::int64_t rows, const std::uint8_t* mem,
                                                   std::int64_t first_row = 0);

// Owning storage behind a weights_view (see kernels/pack.hpp for building one).
struct packed_weights {
    config cfg{};
    std::int64_t rows = 0, cols = 0;
    // codes, scales and zeros are streamed by every matmul: huge pages (memory.hpp)
    weight_buffer codes;
    weight_buffer scales;  // raw bytes of the scales (f32, u8 or f16 per layout)
    std::vector<float> code_table;
    std::vector<float> nested_map;
    std::vector<float> nested_absmax;
    float nested_offset = 0.0f;
    float outlier_threshold = 6.0f;
    weight_buffer zeros;
    std::vector<std::int32_t> perm;
    // Rows with their scales (rows_with_scales): `codes` holds rows of row_stride bytes, each its
    // scales, its zero points, then from row_codes_offset on its codes; `scales` and `zeros` are empty.
    std::int64_t row_stride = 0, row_codes_offset = 0;
    // vnni_panels: `codes` holds the panels (weight_arrangement); scales and zeros are empty.
    weight_arrangement arrangement = weight_arrangement::rows;

    weights_view view() const {
        const bool panels = arrangement != weight_arrangement::rows;
        const std::uint8_t* z = zeros.empty() ? nullptr : zeros.data();
        if (row_stride != 0 && cfg.type == dtype::int_asym) z = codes.data() + row_bytes(cfg, cols).scales;
        if (panels && cfg.type == dtype::int_asym) z = codes.data();
        return {cfg,
                rows,
                cols,
                codes.data() + row_codes_offset,
                row_stride != 0 || panels ? codes.data() : scales.data(),
                code_table.empty() ? nullptr : code_table.data(),
                nested_map.empty() ? nullptr : nested_map.data(),
                nested_absmax.empty() ? nullptr : nested_absmax.data(),
                nested_offset,
                outlier_threshold,
                z,
                perm.empty() ? nullptr : perm.data(),
                row_stride,
                arrangement,
                0};
    }
    // Bytes a matmul reads per pass over W: codes + scales + nested absmax + zero points + the
    // act-order permutation (tables and the padding of rows and panels excluded; panels: their
    // blocks, whose double-quant absmax are decoded f32).
    std::size_t weight_bytes() const {
        const std::size_t order = perm.size() * sizeof(std::int32_t);
        if (arrangement == weight_arrangement::vnni_panels)
            return static_cast<std::size_t>(rows * (cols / cfg.group) * vnni_panel_block_bytes(cfg) / vnni_panel_rows) + order;
        const row_parts r = row_bytes(cfg, cols);
        const std::size_t stored = row_stride != 0 ? static_cast<std::size_t>(rows * (r.codes + r.scales + r.zeros))
                                                   : codes.size() + scales.size() + zeros.size();
        return stored + nested_absmax.size() * sizeof(float) + order;
    }
};

[[gnu::always_inline]] inline weights_view rows_at(const weights_view& w, std::int64_t rows, const std::uint8_t* mem,
                                                   std::int64_t first_row) {
    const row_storage rs = row_storage_of(w.cfg, w.cols);
    weights_view v = w;
    v.rows = rows;
    v.codes = mem + rs.codes_offset;
    v.scales = mem;
    v.zeros = w.cfg.type == dtype::int_asym ? mem + row_bytes(w.cfg, w.cols).scales : nullptr;
    v.row_stride = rs.stride;
    v.arrangement = weight_arrangement::rows;
    v.first_row = w.first_row + first_row;
    return v;
}

enum class op : std::uint8_t { dequantize, gemv, gemm };

constexpr std::string_view to_string(op o) {
    switch (o) {
        case op::dequantize: return "dequantize";
        case op::gemv: return "gemv";
        case op::gemm: return "gemm";
    }
    return "?";
}

// Element type of a dequantized output: f32, or its RNE rounding to bf16 / f16 (as qforge::to_bf16 /
// to_f16, i.e. the reference's dequantize_bf16 / dequantize_f16).
enum class element : std::uint8_t { f32, bf16, f16 };

// out[n*K + k] = W[n, k] for n in [n0, n1), bit-exact with the scalar reference; out holds
// elements of `type` (float, or the 16-bit patterns of qforge::bf16 / qforge::f16).
using dequantize_fn = void (*)(const weights_view& w, std::int64_t n0, std::int64_t n1, void* out, element type);
// y[n] = sum_k W[n, k] x[k] (+ bias[n]) for n in [n0, n1); x has K elements, y and bias N.
using gemv_fn = void (*)(const weights_view& w, const float* x, const float* bias, float* y, std::int64_t n0,
                         std::int64_t n1);
// The GEMV in two parts where the kernel transforms x (the i8 path: quantized per block and
// permuted): prepare writes x's preparation for w's K and column order to mem and returns its
// bytes (mem null: only the bytes); gemv_prepared then computes rows [n0, n1) as gemv_fn does,
// with the same bits. The preparation is read only: threads and matrices of the same kernel,
// K and column order (perm) may share it.
using prepare_fn = std::size_t (*)(const weights_view& w, const float* x, void* mem);
using gemv_prepared_fn = void (*)(const weights_view& w, const void* prepared, const float* bias, float* y,
                                  std::int64_t n0, std::int64_t n1);
// Y[i, n] = sum_k X[i, k] W[n, k] (+ bias[n]) for i < m, n in [n0, n1); X is [m, K] and Y is
// [m, N], both row-major and dense.
using gemm_fn = void (*)(const weights_view& w, const float* x, std::int64_t m, const float* bias, float* y,
                         std::int64_t n0, std::int64_t n1);
// The kernel's own arrangement of the weights (weight_arrangement): weights in rows in, their
// arrangement written at out (vnni_panels_bytes, zeroed; once, at load time: qforge::arrange);
// and back: rows [n0, n1) of arranged weights written at out as rows with their scales
// (row_storage_of: row n at out + (n - n0) stride).
using arrange_fn = void (*)(const weights_view& w, std::uint8_t* out);
using unarrange_fn = void (*)(const weights_view& w, std::int64_t n0, std::int64_t n1, std::uint8_t* out);

}  // namespace qforge

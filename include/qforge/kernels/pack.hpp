// From checkpoint-shaped tensors (qforge::ref) to the kernel layouts (kernels/weights.hpp).
//
//   bnb4_tensor -> layout::bnb4    the bitsandbytes bytes as they are
//   gptq_tensor -> layout::qforge  GPTQ (v1 or v2) repacked once: rows along K, 16-byte spans
//                                  (2-, 3-, 4-bit codes: weights.hpp), f16 scales per (row, group); int_asym
//                                  also zero points per (row, group); act-order g_idx: columns
//                                  sorted by group and the permutation (weights.hpp); 2- and
//                                  3-bit codes widened to 4 bits for a 4-bit kernel config
//                                  (kernel_config_of: the same values)
//   awq_tensor  -> layout::qforge  AWQ gemm (N-interleaved) repacked once into the same layout
//   fp8_tensor  -> layout::fp8_block   E4M3 / E5M2 codes and f32 scale_inv as they are (K whole tiles)
//   mx_tensor   -> layout::mx          MXFP4 blocks with the nibbles of each byte swapped
//                                      (element 2i high, as bnb4), E8M0 scale bytes as they are
//   int8row_tensor -> layout::bnb8     LLM.int8 CB bytes and f32 SCB as they are; the outlier
//                                      threshold is the packed_weights default (6.0): set
//                                      outlier_threshold from llm_int8_threshold
//
// pack_weights then moves each row's scales and zero points in front of its codes (bnb4, mx and
// qforge: rows_with_scales). The kernel config names the compute path (act); the rest must
// describe the tensor.
#pragma once

#include <qforge/config/name.hpp>
#include <qforge/format/packing.hpp>
#include <qforge/kernels/kernels.hpp>
#include <qforge/kernels/weights.hpp>
#include <qforge/reference/layouts.hpp>
#include <qforge/reference/reference.hpp>

#include <array>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace qforge {

namespace detail {

[[noreturn]] inline void pack_error(std::string_view tensor, const std::string& why) {
    throw std::invalid_argument("tensor '" + std::string(tensor) + "': " + why);
}

// rows x groups values -> rows x out_groups, out[i][j] = v[i][j / r]: a value per kernel group,
// where r kernel groups make one stored group (out_groups <= groups * r: bnb4's flat blocks).
template <class T>
std::vector<T> repeat_groups(const std::vector<T>& v, std::int64_t rows, std::int64_t groups, std::int64_t r,
                             std::int64_t out_groups) {
    if (r == 1) return v;
    std::vector<T> out(static_cast<std::size_t>(rows * out_groups));
    for (std::int64_t i = 0; i < rows; ++i)
        for (std::int64_t j = 0; j < out_groups; ++j)
            out[static_cast<std::size_t>(i * out_groups + j)] = v[static_cast<std::size_t>(i * groups + j / r)];
    return out;
}

template <class T>
void append_bytes(weight_buffer& out, const std::vector<T>& v) {
    const std::size_t at = out.size();
    out.resize(at + v.size() * sizeof(T));
    if (!v.empty()) std::memcpy(out.data() + at, v.data(), v.size() * sizeof(T));
}

}  // namespace detail

// Weights in the arrangement the kernels read fastest (weights.hpp, row_stride): each row's
// scales and zero points, then its codes, both parts padded to 64 bytes, in one buffer, so that
// a GEMV reads W as one sequential stream, not two or three. Measured, the cold 1-thread i8 GEMV
// ran 1.0-1.7x as fast as on dense arrays (README, "Kernels"). Dense weights of the bnb4, mx or
// qforge layouts in, the same weights out; other layouts, rows that carry their scales already and
// weights in vnni panels are left as they are.
inline void rows_with_scales(packed_weights& p) {
    if (!rows_can_carry_scales(p.cfg) || p.row_stride != 0 || p.rows == 0 || p.arrangement != weight_arrangement::rows)
        return;
    const row_parts r = row_bytes(p.cfg, p.cols);
    const auto size = [&](std::int64_t per_row) { return static_cast<std::size_t>(p.rows * per_row); };
    if (p.codes.size() != size(r.codes) || p.scales.size() != size(r.scales) || p.zeros.size() != size(r.zeros))
        throw std::logic_error("rows_with_scales: the weights are not dense " + canonical_name(p.cfg) + " arrays");
    const row_storage rs = row_storage_of(p.cfg, p.cols);
    p.row_codes_offset = rs.codes_offset;
    p.row_stride = rs.stride;
    weight_buffer rows(size(p.row_stride), 0);
    const auto copy = [](std::uint8_t* to, const weight_buffer& from, std::int64_t row, std::int64_t bytes) {
        if (bytes > 0) std::memcpy(to, from.data() + row * bytes, static_cast<std::size_t>(bytes));  // zeros may be empty (null)
    };
    for (std::int64_t n = 0; n < p.rows; ++n) {
        std::uint8_t* row = rows.data() + n * p.row_stride;
        copy(row, p.scales, n, r.scales);
        copy(row + r.scales, p.zeros, n, r.zeros);
        copy(row + p.row_codes_offset, p.codes, n, r.codes);
    }
    p.codes = std::move(rows);
    p.scales = weight_buffer();
    p.zeros = weight_buffer();
}

namespace detail {

// A kernel whose blocks divide the checkpoint's (regrouped, kernel_config_of) reads every absmax
// once per kernel block: absmax'[j] = absmax[j / r], r = blocksize / kernel block, decoded to f32
// first when double-quantized. A block of the kernel then lies inside one checkpoint block even
// where the checkpoint's blocks cross rows.
inline packed_weights pack_bnb4(const config& cfg, const ref::bnb4_tensor& t, std::string_view tensor) {
    const bool as_stored = cfg.group == t.blocksize && cfg.double_quant == t.nested;
    if (t.type != cfg.type || cfg.group <= 0 || t.blocksize % cfg.group != 0 || (cfg.double_quant && !as_stored))
        pack_error(tensor, "bitsandbytes " + std::string(to_string(t.type)) + " blocksize " +
                               std::to_string(t.blocksize) + (t.nested ? " (double quant)" : "") +
                               " does not match the kernel config " + canonical_name(cfg));
    if (t.cols % cfg.group != 0)
        pack_error(tensor, "K = " + std::to_string(t.cols) + " is not a multiple of the kernel's block " +
                               std::to_string(cfg.group) + ": its blocks would cross rows");
    packed_weights p;
    p.cfg = cfg;
    p.rows = t.rows;
    p.cols = t.cols;
    p.codes.assign(t.packed.begin(), t.packed.end());
    if (as_stored && t.nested) {
        p.scales.assign(t.absmax_codes.begin(), t.absmax_codes.end());
        p.nested_map.assign(t.nested_quant_map.begin(), t.nested_quant_map.end());
        p.nested_absmax = t.nested_absmax;
        p.nested_offset = t.nested_offset;
    } else {
        const std::vector<float> absmax = ref::bnb4_absmax(t);
        append_bytes(p.scales, repeat_groups(absmax, 1, static_cast<std::int64_t>(absmax.size()), t.blocksize / cfg.group,
                                             t.rows * t.cols / cfg.group));
    }
    p.code_table.assign(t.quant_map.begin(), t.quant_map.end());
    return p;
}

// ---- integer checkpoints -> the qforge layout ----------------------------------------------

// Elements [first, first + count) of a row, codes in natural order, into the qforge layout of
// Bits-wide codes (weights.hpp). 2 and 4 bits: in the 16-byte span s (128 / Bits elements), byte j
// holds element s * 128 / Bits + 16 p + j in bits [Bits p, Bits p + Bits); first and count are
// whole spans. 3 bits: one split3 unit, first a multiple of 256 and count its 64 r elements.
template <int Bits>
inline void put_qforge_codes(const std::uint8_t* codes, std::int64_t first, std::int64_t count, std::uint8_t* row) {
    if constexpr (Bits == 3) {
        const std::int64_t r = count / 64;
        std::uint8_t* unit = row + first / split3::unit_elems * split3::unit_bytes;
        for (std::int64_t s = 0; s < r; ++s)  // low byte 16 s + j: elements 64 s + 16 p + j
            for (int j = 0; j < 16; ++j) {
                const std::uint8_t* e = codes + 64 * s + j;
                unit[16 * s + j] =
                    static_cast<std::uint8_t>((e[0] & 3) | (e[16] & 3) << 2 | (e[32] & 3) << 4 | (e[48] & 3) << 6);
            }
        for (int p = 0; p < 4; ++p)  // third-bit byte i of field p: low bytes 8i .. 8i + 7
            for (std::int64_t i = 0; i < split3::field_plane_bytes(r); ++i) {
                const std::uint8_t* e = codes + 64 * (i / 2) + 16 * p + 8 * (i % 2);
                std::uint8_t bits = 0;
                for (int t = 0; t < 8; ++t) bits = static_cast<std::uint8_t>(bits | (e[t] >> 2 & 1) << t);
                unit[split3::plane_byte(r, p, 8 * i)] = bits;
            }
    } else {
        constexpr std::int64_t span = 128 / Bits;
        for (std::int64_t s = 0; s < count / span; ++s) {
            const std::uint8_t* c = codes + s * span;
            std::uint8_t* bytes = row + (first / span + s) * 16;
            for (int j = 0; j < 16; ++j) {
                std::uint8_t b = 0;
                for (int p = 0; p < 8 / Bits; ++p) b = static_cast<std::uint8_t>(b | c[16 * p + j] << (Bits * p));
                bytes[j] = b;
            }
        }
    }
}
// Any whole spans (3 bits: whole units; the row's last unit may be short).
inline void put_qforge_codes(int bits, const std::uint8_t* codes, std::int64_t first, std::int64_t count,
                             std::uint8_t* row) {
    switch (bits) {  // 2-bit codes four per byte, 3-bit ones in split3 units
        case 2: put_qforge_codes<2>(codes, first, count, row); break;
        case 3:
            for (std::int64_t u = first; u < first + count; u += split3::unit_elems) {
                const std::int64_t n = first + count - u < split3::unit_elems ? first + count - u : split3::unit_elems;
                put_qforge_codes<3>(codes + (u - first), u, n, row);
            }
            break;
        default: put_qforge_codes<4>(codes, first, count, row);
    }
}

// The act-order permutation of a GPTQ g_idx: the columns sorted by group (stable), so that every
// group is `group` consecutive stored columns; empty when g_idx is k / group already. Refuses a
// g_idx that does not give every group exactly `group` columns (GPTQ's desc_act always does).
inline std::vector<std::int32_t> act_order_perm(const ref::gptq_tensor& t, std::string_view tensor) {
    const std::int64_t k = t.cols, groups = k / t.group;
    bool natural = true;
    std::vector<std::int64_t> count(static_cast<std::size_t>(groups), 0);
    for (std::int64_t i = 0; i < k; ++i) {
        const std::int32_t g = t.g_idx[static_cast<std::size_t>(i)];
        if (g < 0 || g >= groups)
            pack_error(tensor, "g_idx[" + std::to_string(i) + "] = " + std::to_string(g) + " is outside [0, " +
                                   std::to_string(groups) + ")");
        natural = natural && g == i / t.group;
        ++count[static_cast<std::size_t>(g)];
    }
    if (natural) return {};
    for (std::int64_t g = 0; g < groups; ++g)
        if (count[static_cast<std::size_t>(g)] != t.group)
            pack_error(tensor, "g_idx gives group " + std::to_string(g) + " " + std::to_string(count[static_cast<std::size_t>(g)]) +
                                   " columns, not " + std::to_string(t.group) + ": not a GPTQ act-order (desc_act) g_idx");
    std::vector<std::int32_t> perm(static_cast<std::size_t>(k));
    std::vector<std::int64_t> next(static_cast<std::size_t>(groups));
    for (std::int64_t g = 0; g < groups; ++g) next[static_cast<std::size_t>(g)] = g * t.group;
    for (std::int64_t i = 0; i < k; ++i)
        perm[static_cast<std::size_t>(next[static_cast<std::size_t>(t.g_idx[static_cast<std::size_t>(i)])]++)] =
            static_cast<std::int32_t>(i);
    return perm;
}

// What a checkpoint code c of `bits` bits is stored as in a kernel of cfg.bits bits: c plus this
// offset. Widened (2- and 3-bit codes in a 4-bit kernel, kernel_config_of): int_sym keeps its value
// scale (c - 2^(bits-1)) as c + 2^3 - 2^(bits-1) with the kernel's zero 2^3; int_asym keeps c and
// its zero point. Otherwise 0.
constexpr int widened_code_offset(const config& cfg, int bits) {
    return cfg.type == dtype::int_sym ? (1 << (cfg.bits - 1)) - (1 << (bits - 1)) : 0;
}

// The integer kernel config and the checkpoint must agree on bits (or widen 2- and 3-bit codes to
// 4), and the kernel's group (per_channel: K) must divide the checkpoint's, which divides K.
// Returns the number of kernel groups per checkpoint group (1, or more when regrouped:
// kernel_config_of).
inline std::int64_t check_int_config(const config& cfg, int bits, std::int64_t group, std::int64_t k,
                                     const char* method, std::string_view tensor) {
    const bool widened = bits < 4 && cfg.bits == 4;
    if ((bits != cfg.bits && !widened) || !gptq_bits_supported(bits) ||
        (cfg.type != dtype::int_sym && cfg.type != dtype::int_asym))
        pack_error(tensor, "the qforge layout holds 2, 3, 4 or 8-bit integers of the config's width (2 and 3 bits also "
                           "widened to 4); got " + std::to_string(bits) + "-bit " + method + " for " + canonical_name(cfg));
    const std::int64_t kernel_group = cfg.group == per_channel ? k : cfg.group;
    if (group <= 0 || kernel_group <= 0 || k % group != 0 || group % kernel_group != 0)
        pack_error(tensor, std::string(method) + " group " + std::to_string(group) + " with K = " + std::to_string(k) +
                               " does not fit the kernel config " + canonical_name(cfg));
    return group / kernel_group;
}

// zeros [N, G] (row-major) for int_asym, each repeated r times ([N, G r], as the kernels read
// them); for int_sym every zero point must be 2^(b-1) (b: the checkpoint's bits) and nothing is stored.
inline void store_zeros(const config& cfg, int bits, const std::vector<std::uint8_t>& zeros_nG, packed_weights& p,
                        std::int64_t groups, std::int64_t r, std::string_view tensor) {
    const std::int64_t n = p.rows;
    if (cfg.type == dtype::int_asym) {
        append_bytes(p.zeros, repeat_groups(zeros_nG, n, groups, r, groups * r));
        return;
    }
    const int sym_zero = 1 << (bits - 1);
    for (std::int64_t c = 0; c < n; ++c)
        for (std::int64_t g = 0; g < groups; ++g)
            if (const int z = zeros_nG[static_cast<std::size_t>(c * groups + g)]; z != sym_zero)
                pack_error(tensor, "zero point " + std::to_string(z) + " at group " + std::to_string(g) + ", column " +
                                       std::to_string(c) + ": the qforge int_sym layout is symmetric (zero " +
                                       std::to_string(sym_zero) + "); use the int_asym kernels");
}

// f16 scales [G, N] (checkpoint) -> [N, G r] (kernels), each repeated r times.
inline void store_scales(const std::vector<f16>& scales_gN, packed_weights& p, std::int64_t groups, std::int64_t r) {
    const std::int64_t n = p.rows;
    std::vector<std::uint16_t> scales(static_cast<std::size_t>(n * groups));
    for (std::int64_t g = 0; g < groups; ++g)
        for (std::int64_t c = 0; c < n; ++c)
            scales[static_cast<std::size_t>(c * groups + g)] = scales_gN[static_cast<std::size_t>(g * n + c)].bits;
    append_bytes(p.scales, repeat_groups(scales, n, groups, r, groups * r));
}

// GPTQ (v1 or v2, any zero points, act-order or not) -> qforge layout, repacked once. int_sym
// configs refuse zero points other than 2^(b-1); int_asym configs store them. Act-order columns
// are stored sorted by group with the permutation (weights.hpp). Codes: 8 bits one byte each
// (row-major); 4 bits the nibble layout; 2 bits four per byte in the same span order; 3 bits in
// split3 units (weights.hpp).
inline packed_weights pack_gptq_to_qforge(const config& cfg, const ref::gptq_tensor& t, std::string_view tensor) {
    const std::int64_t n = t.rows, k = t.cols;
    const int bits = t.bits;
    const std::int64_t r = check_int_config(cfg, bits, t.group, k, "GPTQ", tensor);
    if (const int span = cfg.bits < 4 ? 64 : 32; k % span != 0)
        pack_error(tensor, "K = " + std::to_string(k) + " is not a multiple of " + std::to_string(span) +
                               " (the qforge layout stores " + std::to_string(cfg.bits) + "-bit codes in spans of " +
                               std::to_string(span) + ")");
    const std::int64_t groups = k / t.group;
    packed_weights p;
    p.cfg = cfg;
    p.rows = n;
    p.cols = k;
    p.perm = act_order_perm(t, tensor);

    const std::int64_t zero_words = n * bits / 32;  // per group row of qzeros
    std::vector<std::uint8_t> fields(static_cast<std::size_t>(n)), zeros(static_cast<std::size_t>(n * groups));
    for (std::int64_t g = 0; g < groups; ++g) {
        unpack_gptq_line(bits, t.qzeros, static_cast<std::size_t>(g * zero_words), 1, fields);
        for (std::int64_t c = 0; c < n; ++c)
            zeros[static_cast<std::size_t>(c * groups + g)] =
                static_cast<std::uint8_t>(gptq_zero_from_field(bits, fields[static_cast<std::size_t>(c)], t.v2));
    }
    store_zeros(cfg, bits, zeros, p, groups, r, tensor);

    // the kernel's codes: `bits` wide, or widened to 4 bits (kernel_config_of) by adding `offset`
    const int code_bits = cfg.bits;
    const auto offset = static_cast<std::uint8_t>(widened_code_offset(cfg, bits));
    const auto widen = [&](std::uint8_t* c, std::int64_t count) {
        if (offset != 0)
            for (std::int64_t i = 0; i < count; ++i) c[i] = static_cast<std::uint8_t>(c[i] + offset);
    };
    const std::int64_t row_bytes = k * code_bits / 8;
    p.codes.assign(static_cast<std::size_t>(n * row_bytes), 0);
    if (p.perm.empty()) {  // run by run: the `bits` word rows of 32 values of K are read in order
        // GPTQ runs of 32 codes per put_qforge_codes call: a whole span (two runs for 2-bit codes)
        // or a split3 unit (up to eight runs for 3-bit codes)
        const std::int64_t runs = bits == 2 ? 2 : bits == 3 ? split3::unit_elems / gptq_run_codes : 1;
        std::array<std::uint32_t, 8> run{};
        std::array<std::uint8_t, split3::unit_elems> codes{};
        for (std::int64_t r0 = 0; r0 < k / gptq_run_codes; r0 += runs)
            for (std::int64_t c = 0; c < n; ++c) {
                const std::int64_t r1 = r0 + runs < k / gptq_run_codes ? r0 + runs : k / gptq_run_codes;
                for (std::int64_t r = r0; r < r1; ++r) {
                    for (int w = 0; w < bits; ++w)
                        run[static_cast<std::size_t>(w)] =
                            static_cast<std::uint32_t>(t.qweight[static_cast<std::size_t>((r * bits + w) * n + c)]);
                    const auto out = std::span(codes).subspan(static_cast<std::size_t>((r - r0) * gptq_run_codes));
                    unpack_gptq_run(bits, std::span<const std::uint32_t>(run).first(static_cast<std::size_t>(bits)),
                                    out.first<gptq_run_codes>());
                }
                std::uint8_t* row = p.codes.data() + c * row_bytes;
                widen(codes.data(), (r1 - r0) * gptq_run_codes);
                if (bits == 8) std::memcpy(row + r0 * gptq_run_codes, codes.data(), gptq_run_codes);
                else put_qforge_codes(code_bits, codes.data(), r0 * gptq_run_codes, (r1 - r0) * gptq_run_codes, row);
            }
        store_scales(t.scales, p, groups, r);
        return p;
    }
    std::vector<std::uint8_t> column(static_cast<std::size_t>(k)), sorted(static_cast<std::size_t>(k));
    for (std::int64_t c = 0; c < n; ++c) {  // act-order: output row c is column c of qweight, gathered
        unpack_gptq_line(bits, t.qweight, static_cast<std::size_t>(c), static_cast<std::size_t>(n), column);
        for (std::int64_t j = 0; j < k; ++j)
            sorted[static_cast<std::size_t>(j)] = column[static_cast<std::size_t>(p.perm[static_cast<std::size_t>(j)])];
        std::uint8_t* row = p.codes.data() + c * row_bytes;
        widen(sorted.data(), k);
        if (bits == 8) std::memcpy(row, sorted.data(), sorted.size());
        else put_qforge_codes(code_bits, sorted.data(), 0, k, row);
    }
    store_scales(t.scales, p, groups, r);
    return p;
}

// AWQ gemm (codes and zeros packed along N in AWQ's nibble order) -> qforge layout, repacked once.
inline packed_weights pack_awq_to_qforge(const config& cfg, const ref::awq_tensor& t, std::string_view tensor) {
    const std::int64_t n = t.rows, k = t.cols;
    const std::int64_t r = check_int_config(cfg, 4, t.group, k, "AWQ", tensor);
    if (n % awq_pack_codes != 0 || k % 32 != 0)
        pack_error(tensor, "AWQ shape [" + std::to_string(n) + ", " + std::to_string(k) +
                               "] needs N a multiple of 8 and K of 32");
    const std::int64_t groups = k / t.group, words_per_row = n / awq_pack_codes;
    const auto code = [&](const std::vector<std::int32_t>& words, std::int64_t row, std::int64_t c) {
        return static_cast<std::uint8_t>(awq_code(
            static_cast<std::uint32_t>(words[static_cast<std::size_t>(row * words_per_row + c / awq_pack_codes)]),
            static_cast<int>(c % awq_pack_codes)));
    };
    packed_weights p;
    p.cfg = cfg;
    p.rows = n;
    p.cols = k;
    std::vector<std::uint8_t> zeros(static_cast<std::size_t>(n * groups));
    for (std::int64_t c = 0; c < n; ++c)
        for (std::int64_t g = 0; g < groups; ++g) zeros[static_cast<std::size_t>(c * groups + g)] = code(t.qzeros, g, c);
    store_zeros(cfg, 4, zeros, p, groups, r, tensor);

    // 32 rows of K at a time: their packed words are L2-resident while every output row takes
    // its 16-byte span
    p.codes.assign(static_cast<std::size_t>(n * k / 2), 0);
    std::uint8_t span_codes[32];
    for (std::int64_t s = 0; s < k / 32; ++s)
        for (std::int64_t c = 0; c < n; ++c) {
            for (std::int64_t i = 0; i < 32; ++i) span_codes[i] = code(t.qweight, s * 32 + i, c);
            put_qforge_codes<4>(span_codes, s * 32, 32, p.codes.data() + c * (k / 2));
        }
    store_scales(t.scales, p, groups, r);
    return p;
}

// A kernel tile inside a stored tile (regrouped, e.g. per tensor on 128 x 128 tiles) reads the
// stored tile's scale_inv.
inline packed_weights pack_fp8(const config& cfg, const ref::fp8_tensor& t, std::string_view tensor) {
    const std::int64_t g = cfg.group;
    if (t.type != cfg.type || g <= 0 || t.tile_cols % g != 0 || (t.tile_rows % g != 0 && t.tile_rows < t.rows))
        pack_error(tensor, "FP8 " + std::string(to_string(t.type)) + " with tile " + std::to_string(t.tile_rows) + "x" +
                               std::to_string(t.tile_cols) + " does not match the kernel config " + canonical_name(cfg));
    if (t.cols % g != 0)
        pack_error(tensor, "K = " + std::to_string(t.cols) + " is not a multiple of the tile " + std::to_string(g) +
                               ": the fp8 kernels need whole tiles along K");
    packed_weights p;
    p.cfg = cfg;
    p.rows = t.rows;
    p.cols = t.cols;
    p.codes.assign(t.codes.begin(), t.codes.end());
    const std::int64_t tile_rows = (t.rows + g - 1) / g, tile_cols = t.cols / g;
    const std::int64_t stored_cols = (t.cols + t.tile_cols - 1) / t.tile_cols;
    std::vector<float> scale_inv(static_cast<std::size_t>(tile_rows * tile_cols));
    for (std::int64_t i = 0; i < tile_rows; ++i)
        for (std::int64_t j = 0; j < tile_cols; ++j)
            scale_inv[static_cast<std::size_t>(i * tile_cols + j)] =
                t.scale_inv.at(static_cast<std::size_t>(i * g / t.tile_rows * stored_cols + j * g / t.tile_cols));
    append_bytes(p.scales, scale_inv);
    return p;
}

inline packed_weights pack_mx(const config& cfg, const ref::mx_tensor& t, std::string_view tensor) {
    if (cfg.type != dtype::e2m1 || cfg.bits != 4 || cfg.group != 32)
        pack_error(tensor, "MXFP4 weights (E2M1, blocks of 32) do not match the kernel config " + canonical_name(cfg));
    packed_weights p;
    p.cfg = cfg;
    p.rows = t.rows;
    p.cols = t.cols;
    p.codes.resize(t.blocks.size());
    for (std::size_t i = 0; i < t.blocks.size(); ++i)
        p.codes[i] = static_cast<std::uint8_t>((t.blocks[i] << 4) | (t.blocks[i] >> 4));
    p.scales.assign(t.scales.begin(), t.scales.end());
    return p;
}

inline packed_weights pack_int8row(const config& cfg, const ref::int8row_tensor& t, std::string_view tensor) {
    if (cfg.type != dtype::int8_row)
        pack_error(tensor, "LLM.int8 weights do not match the kernel config " + canonical_name(cfg));
    if (t.rows < 0 || t.cols < 0 || t.codes.size() != static_cast<std::size_t>(t.rows * t.cols) ||
        t.scb.size() != static_cast<std::size_t>(t.rows))
        pack_error(tensor, "LLM.int8 shape [" + std::to_string(t.rows) + ", " + std::to_string(t.cols) + "] with " +
                               std::to_string(t.codes.size()) + " codes and " + std::to_string(t.scb.size()) +
                               " SCB values (need N*K and N)");
    packed_weights p;
    p.cfg = cfg;
    p.rows = t.rows;
    p.cols = t.cols;
    append_bytes(p.codes, t.codes);
    append_bytes(p.scales, t.scb);
    return p;
}

// The kernel layout's arrays, dense as in the checkpoint (pack_weights then arranges the rows).
inline packed_weights pack_dense(const config& kernel_cfg, const ref::quantized& q, std::string_view tensor) {
    if (const auto* t = std::get_if<ref::bnb4_tensor>(&q)) {
        if (kernel_cfg.storage != layout::bnb4)
            detail::pack_error(tensor, "bitsandbytes 4-bit weights need a bnb kernel config, not " + canonical_name(kernel_cfg));
        return detail::pack_bnb4(kernel_cfg, *t, tensor);
    }
    if (const auto* t = std::get_if<ref::gptq_tensor>(&q)) {
        if (kernel_cfg.storage != layout::qforge)
            detail::pack_error(tensor, "GPTQ weights are repacked into the qforge layout (storage qf), not for " +
                                           canonical_name(kernel_cfg));
        return detail::pack_gptq_to_qforge(kernel_cfg, *t, tensor);
    }
    if (const auto* t = std::get_if<ref::awq_tensor>(&q)) {
        if (kernel_cfg.storage != layout::qforge)
            detail::pack_error(tensor, "AWQ weights are repacked into the qforge layout (storage qf), not for " +
                                           canonical_name(kernel_cfg));
        return detail::pack_awq_to_qforge(kernel_cfg, *t, tensor);
    }
    if (const auto* t = std::get_if<ref::fp8_tensor>(&q)) {
        if (kernel_cfg.storage != layout::fp8_block)
            detail::pack_error(tensor, "FP8 weights need an fp8blk kernel config, not " + canonical_name(kernel_cfg));
        return detail::pack_fp8(kernel_cfg, *t, tensor);
    }
    if (const auto* t = std::get_if<ref::mx_tensor>(&q)) {
        if (kernel_cfg.storage != layout::mx)
            detail::pack_error(tensor, "MXFP4 weights need an mx kernel config, not " + canonical_name(kernel_cfg));
        return detail::pack_mx(kernel_cfg, *t, tensor);
    }
    if (const auto* t = std::get_if<ref::int8row_tensor>(&q)) {
        if (kernel_cfg.storage != layout::bnb8)
            detail::pack_error(tensor, "LLM.int8 weights need a bnb8 kernel config, not " + canonical_name(kernel_cfg));
        return detail::pack_int8row(kernel_cfg, *t, tensor);
    }
    detail::pack_error(tensor, "no kernel layout for this checkpoint format yet (kernel config " +
                                   canonical_name(kernel_cfg) + ")");
}

}  // namespace detail

inline packed_weights pack_weights(const config& kernel_cfg, const ref::quantized& q,
                                   std::string_view tensor = "weight") {
    validate(kernel_cfg);
    packed_weights p = detail::pack_dense(kernel_cfg, q, tensor);
    rows_with_scales(p);
    return p;
}

// For the compile-time route: weights described by policy P (an alias such as gptq_int4_g128
// included), packed for the kernels that run them, kernels::kernel_policy<P>.
template <class P>
packed_weights pack_weights(const ref::quantized& q, std::string_view tensor = "weight") {
    return pack_weights(kernels::kernel_policy<P>::cfg, q, tensor);
}

}  // namespace qforge

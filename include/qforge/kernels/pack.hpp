// From checkpoint-shaped tensors (qforge::ref) to the kernel layouts (kernels/weights.hpp).
//
//   bnb4_tensor -> layout::bnb4    the bitsandbytes bytes as they are (no repacking needed)
//   gptq_tensor -> layout::qforge  4-bit symmetric GPTQ (v1 or v2) repacked once: rows along K,
//                                  16-byte spans of 32 elements, f16 scales per (row, group)
//   fp8_tensor  -> layout::fp8_block   E4M3 codes and f32 scale_inv as they are (K whole tiles)
//   mx_tensor   -> layout::mx          MXFP4 blocks with the nibbles of each byte swapped
//                                      (element 2i high, as bnb4), E8M0 scale bytes as they are
//   int8row_tensor -> layout::bnb8     LLM.int8 CB bytes and f32 SCB as they are; the outlier
//                                      threshold is the packed_weights default (6.0): set
//                                      outlier_threshold from llm_int8_threshold
//
// The kernel config names the compute path (act); the rest must describe the tensor.
#pragma once

#include <qforge/config/name.hpp>
#include <qforge/format/packing.hpp>
#include <qforge/kernels/weights.hpp>
#include <qforge/reference/reference.hpp>

#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>

namespace qforge {

namespace detail {

[[noreturn]] inline void pack_error(std::string_view tensor, const std::string& why) {
    throw std::invalid_argument("tensor '" + std::string(tensor) + "': " + why);
}

template <class T>
void append_bytes(std::vector<std::uint8_t>& out, const std::vector<T>& v) {
    const std::size_t at = out.size();
    out.resize(at + v.size() * sizeof(T));
    if (!v.empty()) std::memcpy(out.data() + at, v.data(), v.size() * sizeof(T));
}

inline packed_weights pack_bnb4(const config& cfg, const ref::bnb4_tensor& t, std::string_view tensor) {
    if (t.type != cfg.type || t.blocksize != cfg.group || t.nested != cfg.double_quant)
        pack_error(tensor, "bitsandbytes " + std::string(to_string(t.type)) + " blocksize " +
                               std::to_string(t.blocksize) + (t.nested ? " (double quant)" : "") +
                               " does not match the kernel config " + canonical_name(cfg));
    if (t.cols % t.blocksize != 0)
        pack_error(tensor, "K = " + std::to_string(t.cols) + " is not a multiple of the blocksize " +
                               std::to_string(t.blocksize) + ": blocks would cross rows");
    packed_weights p;
    p.cfg = cfg;
    p.rows = t.rows;
    p.cols = t.cols;
    p.codes = t.packed;
    if (t.nested) {
        p.scales = t.absmax_codes;
        p.nested_map.assign(t.nested_quant_map.begin(), t.nested_quant_map.end());
        p.nested_absmax = t.nested_absmax;
        p.nested_offset = t.nested_offset;
    } else {
        append_bytes(p.scales, t.absmax);
    }
    p.code_table.assign(t.quant_map.begin(), t.quant_map.end());
    return p;
}

// GPTQ -> qforge layout. Refuses what the qforge int4 kernels cannot express: other bit widths,
// zero points other than 2^(b-1) (asymmetric), and act-order g_idx (not k / group).
inline packed_weights pack_gptq_to_qforge(const config& cfg, const ref::gptq_tensor& t, std::string_view tensor) {
    const std::int64_t n = t.rows, k = t.cols;
    if (t.bits != 4 || cfg.bits != 4 || cfg.type != dtype::int_sym)
        pack_error(tensor, "the qforge layout holds 4-bit symmetric integers; got " + std::to_string(t.bits) +
                               "-bit GPTQ for " + canonical_name(cfg));
    if (t.group != cfg.group || k % t.group != 0)
        pack_error(tensor, "GPTQ group " + std::to_string(t.group) + " with K = " + std::to_string(k) +
                               " does not fit the kernel config " + canonical_name(cfg));
    const std::int64_t groups = k / t.group;
    for (std::int64_t i = 0; i < k; ++i)
        if (t.g_idx[static_cast<std::size_t>(i)] != i / t.group)
            pack_error(tensor, "g_idx[" + std::to_string(i) + "] = " + std::to_string(t.g_idx[static_cast<std::size_t>(i)]) +
                                   " is not k / group: act-order (desc_act) checkpoints are not supported by the qforge layout yet");
    const std::int64_t zero_words = n * 4 / 32;  // per group row of qzeros
    for (std::int64_t g = 0; g < groups; ++g)
        for (std::int64_t c = 0; c < n; ++c) {
            const auto word = static_cast<std::uint32_t>(t.qzeros[static_cast<std::size_t>(g * zero_words + c / 8)]);
            const int z = gptq_zero_from_field(4, (word >> (4 * (c % 8))) & 0xFu, t.v2);
            if (z != 8)
                pack_error(tensor, "zero point " + std::to_string(z) + " at group " + std::to_string(g) + ", column " +
                                       std::to_string(c) + ": the qforge int4 layout is symmetric (zero 8)");
        }

    packed_weights p;
    p.cfg = cfg;
    p.rows = n;
    p.cols = k;
    p.codes.assign(static_cast<std::size_t>(n * k / 2), 0);
    for (std::int64_t kk = 0; kk < k; ++kk) {
        const std::int64_t run = kk / 32, in_run = kk % 32;
        const std::int64_t byte_in_row = run * 16 + in_run % 16;  // qforge span: element j and j + 16
        const int shift = in_run >= 16 ? 4 : 0;
        for (std::int64_t c = 0; c < n; ++c) {
            std::uint32_t words[4];
            for (int w = 0; w < 4; ++w)
                words[w] = static_cast<std::uint32_t>(t.qweight[static_cast<std::size_t>((run * 4 + w) * n + c)]);
            const std::uint32_t code = gptq_code(4, words, static_cast<int>(in_run));
            p.codes[static_cast<std::size_t>(c * (k / 2) + byte_in_row)] |= static_cast<std::uint8_t>(code << shift);
        }
    }
    std::vector<std::uint16_t> scales(static_cast<std::size_t>(n * groups));
    for (std::int64_t g = 0; g < groups; ++g)
        for (std::int64_t c = 0; c < n; ++c)
            scales[static_cast<std::size_t>(c * groups + g)] = t.scales[static_cast<std::size_t>(g * n + c)].bits;
    append_bytes(p.scales, scales);
    return p;
}

inline packed_weights pack_fp8(const config& cfg, const ref::fp8_tensor& t, std::string_view tensor) {
    if (t.type != cfg.type || t.tile_rows != cfg.group || t.tile_cols != cfg.group)
        pack_error(tensor, "FP8 " + std::string(to_string(t.type)) + " with tile " + std::to_string(t.tile_rows) + "x" +
                               std::to_string(t.tile_cols) + " does not match the kernel config " + canonical_name(cfg));
    if (t.cols % cfg.group != 0)
        pack_error(tensor, "K = " + std::to_string(t.cols) + " is not a multiple of the tile " +
                               std::to_string(cfg.group) + ": the fp8 kernels need whole tiles along K");
    packed_weights p;
    p.cfg = cfg;
    p.rows = t.rows;
    p.cols = t.cols;
    p.codes = t.codes;
    append_bytes(p.scales, t.scale_inv);
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
    p.scales = t.scales;
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

}  // namespace detail

inline packed_weights pack_weights(const config& kernel_cfg, const ref::quantized& q,
                                   std::string_view tensor = "weight") {
    validate(kernel_cfg);
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

}  // namespace qforge

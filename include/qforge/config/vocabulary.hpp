// The words a quantization configuration is made of. Each enum has one short token used in
// canonical names (see name.hpp); gen/vocabulary.py holds the same table for the generator.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

namespace qforge {

// Element data type: what one code means.
enum class dtype : std::uint8_t {
    int_sym,   // integer codes, zero point fixed at 2^(bits-1) (GPTQ sym)
    int_asym,  // integer codes, one learned zero point per group (GPTQ asym, AWQ)
    nf4,       // bitsandbytes NormalFloat4 table
    fp4,       // bitsandbytes FP4 table
    fp8_e4m3,  // OCP E4M3FN
    fp8_e5m2,  // OCP E5M2
    e2m1,      // OCP MXFP4 element
    int8_row,  // LLM.int8(): int8 codes, one absmax per output row
};

// How codes, scales and zeros are laid out in memory / in a checkpoint.
enum class layout : std::uint8_t {
    bnb4,       // bitsandbytes 4-bit: flat blocks, two codes per byte, high nibble first
    bnb8,       // bitsandbytes LLM.int8(): int8 [N, K] + SCB [N]
    gptq_v1,    // GPTQ, zeros stored as z - 1
    gptq_v2,    // GPTQ, zeros stored as z
    awq_gemm,   // AWQ gemm: packed along N with the [0,2,4,6,1,3,5,7] interleave
    fp8_block,  // FineGrainedFP8: e4m3 weight + f32 scale_inv per 2-D tile
    mx,         // OCP microscaling: E8M0 scale per 32 elements along K
    qforge,     // qforge's own kernel layout (repacked for SIMD)
};

// The arithmetic of a matmul against these weights.
enum class compute : std::uint8_t {
    f32,   // dequantize to f32, FMA in f32
    bf16,  // bf16 activations and dot products
    f16,   // f16 activations
    i8,    // activations quantized to int8 per block, integer dot products
};

// Group sizes: a positive power of two, or one of these.
inline constexpr std::int32_t per_channel = -1;  // one group spans a whole row (gs = K)
inline constexpr std::int32_t per_tensor = 0;    // one scale for the whole tensor

// Double quantization re-quantizes bnb absmax values in nested blocks of this size.
inline constexpr std::int32_t nested_blocksize = 256;

template <class E>
struct token_entry {
    E value;
    std::string_view token;
};

inline constexpr std::array dtype_tokens{
    token_entry<dtype>{dtype::int_sym, "sym"},      token_entry<dtype>{dtype::int_asym, "asym"},
    token_entry<dtype>{dtype::nf4, "nf4"},          token_entry<dtype>{dtype::fp4, "fp4"},
    token_entry<dtype>{dtype::fp8_e4m3, "e4m3"},    token_entry<dtype>{dtype::fp8_e5m2, "e5m2"},
    token_entry<dtype>{dtype::e2m1, "e2m1"},        token_entry<dtype>{dtype::int8_row, "int8row"},
};

inline constexpr std::array layout_tokens{
    token_entry<layout>{layout::bnb4, "bnb"},         token_entry<layout>{layout::bnb8, "bnb8"},
    token_entry<layout>{layout::gptq_v1, "gptq"},     token_entry<layout>{layout::gptq_v2, "gptq2"},
    token_entry<layout>{layout::awq_gemm, "awq"},     token_entry<layout>{layout::fp8_block, "fp8blk"},
    token_entry<layout>{layout::mx, "mx"},            token_entry<layout>{layout::qforge, "qf"},
};

inline constexpr std::array compute_tokens{
    token_entry<compute>{compute::f32, "f32"},
    token_entry<compute>{compute::bf16, "bf16"},
    token_entry<compute>{compute::f16, "f16"},
    token_entry<compute>{compute::i8, "i8"},
};

template <class E, std::size_t N>
constexpr std::string_view token_of(const std::array<token_entry<E>, N>& table, E value) {
    for (const auto& e : table)
        if (e.value == value) return e.token;
    return "?";
}

template <class E, std::size_t N>
constexpr std::optional<E> from_token(const std::array<token_entry<E>, N>& table, std::string_view t) {
    for (const auto& e : table)
        if (e.token == t) return e.value;
    return std::nullopt;
}

constexpr std::string_view to_string(dtype v) { return token_of(dtype_tokens, v); }
constexpr std::string_view to_string(layout v) { return token_of(layout_tokens, v); }
constexpr std::string_view to_string(compute v) { return token_of(compute_tokens, v); }

// Which family of group a layout uses; decides the group token in canonical names.
enum class grouping : std::uint8_t {
    flat_block,  // consecutive elements of the row-major flattened tensor (bnb 4-bit)
    row_group,   // consecutive elements along K within one row (GPTQ, AWQ, MX)
    tile,        // square 2-D tiles of rows x columns (FP8 block)
    row,         // exactly one group per row (LLM.int8)
};

constexpr grouping grouping_of(layout l) {
    switch (l) {
        case layout::bnb4: return grouping::flat_block;
        case layout::bnb8: return grouping::row;
        case layout::fp8_block: return grouping::tile;
        default: return grouping::row_group;
    }
}

constexpr bool is_gptq(layout l) { return l == layout::gptq_v1 || l == layout::gptq_v2; }
constexpr bool is_integer(dtype t) { return t == dtype::int_sym || t == dtype::int_asym || t == dtype::int8_row; }
constexpr bool is_fp8(dtype t) { return t == dtype::fp8_e4m3 || t == dtype::fp8_e5m2; }

}  // namespace qforge

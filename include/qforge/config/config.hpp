// The configuration value: a structural type, so it can be a template argument
// (qforge::policy<cfg>), and the same value validated at run time.
#pragma once

#include <qforge/config/vocabulary.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace qforge {

// Every field is public and of enum, integer or bool type: C++20 structural, and accepted as a
// non-type template argument by g++ 12 and clang 14. Floating parameters (the LLM.int8 outlier
// threshold) are run-time arguments of the kernels, not part of the config.
struct config {
    dtype type = dtype::nf4;
    std::uint8_t bits = 4;
    std::int32_t group = 64;  // > 0: group / block / tile size; or per_channel, per_tensor
    bool double_quant = false;
    layout storage = layout::bnb4;
    compute act = compute::f32;

    friend constexpr bool operator==(const config&, const config&) = default;
};

// Every way a config can be wrong. The enumerator names the offending field first: a compile-time
// rejection prints it as `qforge::config_error<qforge::config_rule::...>`.
enum class config_rule : std::uint8_t {
    ok,
    bits_not_2_3_4_or_8,
    bits_must_be_4_for_nf4_fp4_e2m1,
    bits_must_be_8_for_fp8_and_int8row,
    type_nf4_fp4_need_layout_bnb4,
    type_int8row_needs_layout_bnb8,
    type_fp8_needs_layout_fp8_block,
    type_e2m1_needs_layout_mx,
    type_integer_needs_layout_gptq_awq_or_qforge,
    layout_awq_needs_bits_4,
    layout_awq_needs_type_int_asym,
    group_not_power_of_two_32_to_4096,
    group_bnb8_must_be_per_channel,
    group_fp8_block_must_be_128_or_per_tensor,
    group_mx_must_be_32,
    group_per_tensor_only_for_fp8_block,
    double_quant_needs_bnb4_absmax,
    act_i8_needs_integer_or_4bit_type,
    act_int8row_needs_i8,
};

constexpr bool is_power_of_two_group(std::int32_t g) { return g >= 32 && g <= 4096 && (g & (g - 1)) == 0; }

constexpr config_rule check(const config& c) {
    using r = config_rule;
    const bool is4 = c.type == dtype::nf4 || c.type == dtype::fp4 || c.type == dtype::e2m1;
    if (c.bits != 2 && c.bits != 3 && c.bits != 4 && c.bits != 8) return r::bits_not_2_3_4_or_8;
    if (is4 && c.bits != 4) return r::bits_must_be_4_for_nf4_fp4_e2m1;
    if ((is_fp8(c.type) || c.type == dtype::int8_row) && c.bits != 8) return r::bits_must_be_8_for_fp8_and_int8row;
    switch (c.type) {
        case dtype::nf4:
        case dtype::fp4:
            if (c.storage != layout::bnb4) return r::type_nf4_fp4_need_layout_bnb4;
            break;
        case dtype::int8_row:
            if (c.storage != layout::bnb8) return r::type_int8row_needs_layout_bnb8;
            break;
        case dtype::fp8_e4m3:
        case dtype::fp8_e5m2:
            if (c.storage != layout::fp8_block) return r::type_fp8_needs_layout_fp8_block;
            break;
        case dtype::e2m1:
            if (c.storage != layout::mx) return r::type_e2m1_needs_layout_mx;
            break;
        case dtype::int_sym:
        case dtype::int_asym:
            if (!is_gptq(c.storage) && c.storage != layout::awq_gemm && c.storage != layout::qforge)
                return r::type_integer_needs_layout_gptq_awq_or_qforge;
            break;
    }
    if (c.storage == layout::awq_gemm && c.bits != 4) return r::layout_awq_needs_bits_4;
    if (c.storage == layout::awq_gemm && c.type != dtype::int_asym) return r::layout_awq_needs_type_int_asym;
    switch (c.storage) {
        case layout::bnb8:
            if (c.group != per_channel) return r::group_bnb8_must_be_per_channel;
            break;
        case layout::fp8_block:
            if (c.group != 128 && c.group != per_tensor) return r::group_fp8_block_must_be_128_or_per_tensor;
            break;
        case layout::mx:
            if (c.group != 32) return r::group_mx_must_be_32;
            break;
        case layout::gptq_v1:
        case layout::gptq_v2:
        case layout::qforge:
            if (c.group == per_tensor) return r::group_per_tensor_only_for_fp8_block;
            if (c.group != per_channel && !is_power_of_two_group(c.group)) return r::group_not_power_of_two_32_to_4096;
            break;
        case layout::bnb4:
        case layout::awq_gemm:
            if (c.group == per_tensor) return r::group_per_tensor_only_for_fp8_block;
            if (!is_power_of_two_group(c.group)) return r::group_not_power_of_two_32_to_4096;
            break;
    }
    if (c.double_quant && c.storage != layout::bnb4) return r::double_quant_needs_bnb4_absmax;
    if (c.act == compute::i8 && !(is_integer(c.type) || is4)) return r::act_i8_needs_integer_or_4bit_type;
    if (c.type == dtype::int8_row && c.act != compute::i8) return r::act_int8row_needs_i8;
    return r::ok;
}

// The field a rule is about, and a sentence for people.
struct rule_text {
    std::string_view field;
    std::string_view message;
};

constexpr rule_text describe(config_rule r) {
    using cr = config_rule;
    switch (r) {
        case cr::ok: return {"", "valid"};
        case cr::bits_not_2_3_4_or_8: return {"bits", "must be 2, 3, 4 or 8"};
        case cr::bits_must_be_4_for_nf4_fp4_e2m1: return {"bits", "must be 4 for nf4, fp4 and e2m1"};
        case cr::bits_must_be_8_for_fp8_and_int8row: return {"bits", "must be 8 for fp8 and int8row"};
        case cr::type_nf4_fp4_need_layout_bnb4: return {"type", "nf4 and fp4 are stored only in the bnb 4-bit layout"};
        case cr::type_int8row_needs_layout_bnb8: return {"type", "int8row is stored only in the bnb8 layout"};
        case cr::type_fp8_needs_layout_fp8_block: return {"type", "fp8 is stored only in the fp8 block layout"};
        case cr::type_e2m1_needs_layout_mx: return {"type", "e2m1 is stored only in the mx layout"};
        case cr::type_integer_needs_layout_gptq_awq_or_qforge:
            return {"type", "integer codes are stored in the gptq, gptq2, awq or qf layout"};
        case cr::layout_awq_needs_bits_4: return {"storage", "awq stores 4-bit codes only"};
        case cr::layout_awq_needs_type_int_asym: return {"storage", "awq stores asymmetric integer codes (zero_point)"};
        case cr::group_not_power_of_two_32_to_4096: return {"group", "must be a power of two from 32 to 4096"};
        case cr::group_bnb8_must_be_per_channel: return {"group", "LLM.int8 has one scale per row (per_channel)"};
        case cr::group_fp8_block_must_be_128_or_per_tensor: return {"group", "fp8 tiles are 128x128 or per tensor"};
        case cr::group_mx_must_be_32: return {"group", "mx blocks are 32 elements"};
        case cr::group_per_tensor_only_for_fp8_block: return {"group", "per_tensor exists only for fp8 block"};
        case cr::double_quant_needs_bnb4_absmax: return {"double_quant", "needs the absmax of the bnb 4-bit layout"};
        case cr::act_i8_needs_integer_or_4bit_type: return {"act", "int8 activations need integer or 4-bit weights"};
        case cr::act_int8row_needs_i8: return {"act", "LLM.int8 computes with int8 activations (act i8)"};
    }
    return {"?", "unknown rule"};
}

struct config_error_exception : std::invalid_argument {
    config_rule rule;
    config_error_exception(config_rule r, const std::string& what) : std::invalid_argument(what), rule(r) {}
};

// Throws config_error_exception naming the field; returns the config unchanged when valid.
const config& validate(const config& c);

// A compile-time rejection names the rule in the compiler's message.
template <config_rule R>
struct config_error {
    static_assert(R == config_rule::ok, "invalid qforge config: see the config_rule in this type's name");
    static constexpr bool value = true;
};

// The compile-time face of a config. Kernels are templated on `policy<C>`.
template <config C>
struct policy {
    static_assert(config_error<check(C)>::value);
    static constexpr config cfg = C;
    static constexpr dtype type = C.type;
    static constexpr int bits = C.bits;
    static constexpr std::int32_t group = C.group;
    static constexpr bool double_quant = C.double_quant;
    static constexpr layout storage = C.storage;
    static constexpr compute act = C.act;
};

}  // namespace qforge

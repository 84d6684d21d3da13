// The real-world configurations, as compile-time policies.
#pragma once

#include <qforge/config/config.hpp>

#include <boost/hana/tuple.hpp>
#include <boost/hana/type.hpp>

namespace qforge {

namespace configs {
// QLoRA: NF4, block 64, double quantization, bf16 compute (BitsAndBytesConfig as in the QLoRA paper).
inline constexpr config qlora_nf4{dtype::nf4, 4, 64, true, layout::bnb4, compute::bf16};
// BitsAndBytesConfig(load_in_4bit=True) with its defaults: fp4, no double quant, f32 compute.
inline constexpr config bnb_fp4{dtype::fp4, 4, 64, false, layout::bnb4, compute::f32};
// BitsAndBytesConfig(load_in_8bit=True): LLM.int8() with outlier decomposition.
inline constexpr config llm_int8{dtype::int8_row, 8, per_channel, false, layout::bnb8, compute::i8};
// GPTQConfig(bits=4, group_size=128, sym=True), checkpoint_format "gptq" (v1).
inline constexpr config gptq_int4_g128{dtype::int_sym, 4, 128, false, layout::gptq_v1, compute::f32};
inline constexpr config gptq_int3_g128{dtype::int_sym, 3, 128, false, layout::gptq_v1, compute::f32};
// GPTQConfig(bits=8, group_size=-1): one scale per output channel.
inline constexpr config gptq_int8_pc{dtype::int_sym, 8, per_channel, false, layout::gptq_v1, compute::f32};
// AwqConfig(bits=4, group_size=128, zero_point=True, version="gemm").
inline constexpr config awq_int4_g128{dtype::int_asym, 4, 128, false, layout::awq_gemm, compute::f32};
// FineGrainedFP8Config(weight_block_size=(128, 128)).
inline constexpr config fp8_block128{dtype::fp8_e4m3, 8, 128, false, layout::fp8_block, compute::f32};
// Mxfp4Config (gpt-oss): E2M1 elements, E8M0 scale per 32.
inline constexpr config mxfp4{dtype::e2m1, 4, 32, false, layout::mx, compute::f32};
}  // namespace configs

using qlora_nf4 = policy<configs::qlora_nf4>;
using bnb_fp4 = policy<configs::bnb_fp4>;
using llm_int8 = policy<configs::llm_int8>;
using gptq_int4_g128 = policy<configs::gptq_int4_g128>;
using gptq_int3_g128 = policy<configs::gptq_int3_g128>;
using gptq_int8_pc = policy<configs::gptq_int8_pc>;
using awq_int4_g128 = policy<configs::awq_int4_g128>;
using fp8_block128 = policy<configs::fp8_block128>;
using mxfp4 = policy<configs::mxfp4>;

// Every alias above, as a compile-time list to walk (boost::hana::for_each): tests run each one
// on both routes.
inline constexpr auto all_aliases = boost::hana::tuple_t<qlora_nf4, bnb_fp4, llm_int8, gptq_int4_g128, gptq_int3_g128,
                                                         gptq_int8_pc, awq_int4_g128, fp8_block128, mxfp4>;

}  // namespace qforge

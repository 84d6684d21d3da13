// Per-layout entry points of the scalar reference; reference.hpp's generic functions dispatch here.
// Inputs are already validated configs and f32 weights checked for NaN/Inf.
#pragma once

#include <qforge/reference/reference.hpp>

namespace qforge::ref {

// Throws std::invalid_argument "tensor '<name>': <NaN|Inf> at flat index <i>" on the first bad value.
void check_finite(std::span<const float> w, const std::string& tensor_name);

// §1 (and §2's blockwise 8-bit for the nested absmax)
bnb4_tensor quantize_bnb4(const config& cfg, std::span<const float> w, std::int64_t rows, std::int64_t cols);
std::vector<float> dequantize_bnb4(const bnb4_tensor& q);
// The double quantization of a bnb 4-bit tensor's f32 absmax (q.packed and the rest are kept):
// offset = exact_mean(absmax), then quantize_blockwise8(absmax - offset, 256).
void double_quantize(bnb4_tensor& q, std::vector<float> absmax);
// The f32 nearest (ties to even) to the exact mean of non-negative finite f32 values.
float exact_mean(std::span<const float> v);
// The f32 absmax of every block: as stored, or decoded from double quantization (§1).
std::vector<float> bnb4_absmax(const bnb4_tensor& q);
blockwise8 quantize_blockwise8(std::span<const float> x, std::int32_t blocksize);
std::vector<float> dequantize_blockwise8(const blockwise8& q, std::span<const float, 256> map);

// §2 LLM.int8 weights
int8row_tensor quantize_int8row(std::span<const float> w, std::int64_t rows, std::int64_t cols);
std::vector<float> dequantize_int8row(const int8row_tensor& q);

// §3 GPTQ round-to-nearest (g_idx = k / gs). The calibrated algorithm lives in quantize/.
gptq_tensor quantize_gptq(const config& cfg, std::span<const float> w, std::int64_t rows, std::int64_t cols);
std::vector<float> dequantize_gptq(const gptq_tensor& q);

// §4 AWQ gemm round-to-nearest with zero point
awq_tensor quantize_awq(const config& cfg, std::span<const float> w, std::int64_t rows, std::int64_t cols);
std::vector<float> dequantize_awq(const awq_tensor& q);

// §5 FineGrainedFP8
fp8_tensor quantize_fp8(const config& cfg, std::span<const float> w, std::int64_t rows, std::int64_t cols);
std::vector<float> dequantize_fp8(const fp8_tensor& q);

// §6 MXFP4
mx_tensor quantize_mx(std::span<const float> w, std::int64_t rows, std::int64_t cols, mx_scale_rule rule);
std::vector<float> dequantize_mx(const mx_tensor& q);

}  // namespace qforge::ref

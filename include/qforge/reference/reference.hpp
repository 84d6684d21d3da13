// The scalar reference: every format of formats.md §1-6 in plain C++, exactly as specified there.
// It is the oracle the SIMD kernels are tested against; clarity beats speed here.
//
// Weights are W [N, K] row-major (N = out_features, K = in_features). Quantization reads f32
// (bf16 and f16 inputs are widened exactly first) and refuses NaN/Inf with an error naming the
// tensor and the first bad flat index. Dequantization produces f32 (then RNE to bf16/f16).
#pragma once

#include <qforge/config/config.hpp>
#include <qforge/format/float.hpp>

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <variant>
#include <vector>

namespace qforge::ref {

// ---- checkpoint-shaped quantized tensors, one per storage layout ----------------------------

// bitsandbytes 8-bit blockwise (dynamic map): also the nested part of double quantization.
struct blockwise8 {
    std::int32_t blocksize = 256;
    std::vector<std::uint8_t> codes;  // one per element
    std::vector<float> absmax;        // [ceil(n / blocksize)]
};

// bitsandbytes 4-bit, NF4 or FP4 (§1).
struct bnb4_tensor {
    dtype type = dtype::nf4;
    std::int64_t rows = 0, cols = 0;
    std::int32_t blocksize = 64;
    std::vector<std::uint8_t> packed;     // (N*K+1)/2 bytes, element 2i in the high nibble
    std::vector<float> absmax;            // [blocks]; empty when nested
    std::array<float, 16> quant_map{};    // the table used to dequantize
    bool nested = false;
    std::vector<std::uint8_t> absmax_codes;  // [blocks] when nested
    std::vector<float> nested_absmax;        // [ceil(blocks/256)]
    std::array<float, 256> nested_quant_map{};
    float nested_offset = 0.0f;
};

// LLM.int8() weights (§2).
struct int8row_tensor {
    std::int64_t rows = 0, cols = 0;
    std::vector<std::int8_t> codes;  // CB [N, K]
    std::vector<float> scb;          // [N], max |W[n, :]|
};

// GPTQ v1 / v2 (§3). Words are the checkpoint's int32 values.
struct gptq_tensor {
    std::int64_t rows = 0, cols = 0;  // N, K
    int bits = 4;
    std::int32_t group = 128;         // resolved size (per_channel becomes K)
    bool v2 = false;                  // zeros stored as z (v2) or z - 1 (v1)
    bool sym = true;
    std::vector<std::int32_t> qweight;  // [K*b/32, N]
    std::vector<std::int32_t> qzeros;   // [G, N*b/32]
    std::vector<f16> scales;            // [G, N]
    std::vector<std::int32_t> g_idx;    // [K]
};

// AWQ gemm (§4).
struct awq_tensor {
    std::int64_t rows = 0, cols = 0;    // N, K
    std::int32_t group = 128;
    std::vector<std::int32_t> qweight;  // [K, N/8]
    std::vector<std::int32_t> qzeros;   // [K/gs, N/8]
    std::vector<f16> scales;            // [K/gs, N]
};

// FineGrainedFP8 (§5).
struct fp8_tensor {
    dtype type = dtype::fp8_e4m3;
    std::int64_t rows = 0, cols = 0;
    std::int64_t tile_rows = 128, tile_cols = 128;  // N, K for per-tensor
    std::vector<std::uint8_t> codes;                // [N, K]
    std::vector<float> scale_inv;                   // [ceil(N/tile), ceil(K/tile)]
};

// OCP MXFP4 (§6).
enum class mx_scale_rule : std::uint8_t { ocp, round_up };
struct mx_tensor {
    std::int64_t rows = 0, cols = 0;
    std::vector<std::uint8_t> blocks;  // [N, K/32, 16], element 2i in the low nibble
    std::vector<std::uint8_t> scales;  // [N, K/32], E8M0
};

using quantized = std::variant<bnb4_tensor, int8row_tensor, gptq_tensor, awq_tensor, fp8_tensor, mx_tensor>;

// Options that are not part of the structural config.
struct quantize_options {
    std::string tensor_name = "weight";  // named in errors
    mx_scale_rule mx_rule = mx_scale_rule::ocp;
};

// ---- the generic entry points ------------------------------------------------------------

// Throws std::invalid_argument on NaN/Inf ("tensor 'name': NaN at flat index i"), on shapes the
// config cannot hold (K not divisible by the group for GPTQ/AWQ/MX, ...), and on invalid configs.
quantized quantize(const config& cfg, std::span<const float> w, std::int64_t rows, std::int64_t cols,
                   const quantize_options& opt = {});
quantized quantize(const config& cfg, std::span<const bf16> w, std::int64_t rows, std::int64_t cols,
                   const quantize_options& opt = {});
quantized quantize(const config& cfg, std::span<const f16> w, std::int64_t rows, std::int64_t cols,
                   const quantize_options& opt = {});

std::vector<float> dequantize(const quantized& q);
std::vector<bf16> dequantize_bf16(const quantized& q);
std::vector<f16> dequantize_f16(const quantized& q);

// Bits per weight including every piece of metadata stored per group (scales, zeros, nested
// absmax); fixed-size tables (quant_map, nested map, offset) and g_idx are not counted.
double bits_per_weight(const config& cfg, std::int64_t rows, std::int64_t cols);

// ---- matmul oracles: dequantize exactly, accumulate in double ---------------------------

// y[n] = sum_k W[n,k] x[k] (+ bias[n])
std::vector<double> gemv(const quantized& q, std::span<const float> x, std::span<const float> bias = {});
// Y[m,n] = sum_k X[m,k] W[n,k] (+ bias[n]); X is [M, K] row-major, Y is [M, N].
std::vector<double> gemm(const quantized& q, std::span<const float> x, std::int64_t m,
                         std::span<const float> bias = {});
// The same sums on weights already dequantized: W is [N, K] row-major (dequantize(q), or its
// first N rows), bias empty or at least N long.
std::vector<double> gemm(std::span<const float> w, std::int64_t n, std::span<const float> x, std::int64_t m,
                         std::span<const float> bias = {});

// LLM.int8() matmul with outlier threshold (§2); t = 0 disables the decomposition. Returns f32
// [M, N] computed as formats.md specifies (exact int32 accumulation for the int8 part).
std::vector<float> int8_matmul(const int8row_tensor& w, std::span<const float> x, std::int64_t m, float threshold,
                               std::span<const float> bias = {});

}  // namespace qforge::ref

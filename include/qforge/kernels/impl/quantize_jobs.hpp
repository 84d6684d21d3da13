// The work items of the checkpoint quantizers and dequantizers (kernels/quantize.hpp): plain
// data the dispatcher (src/kernels/quantize.cpp) fills, and the table of per-ISA entry points
// (kernels/impl/quantize.hpp, instantiated in src/kernels/quantize_<isa>.cpp).
//
// Each entry point handles a range of independent units (blocks, rows, tile rows) so that the
// dispatcher can split a tensor over threads; the quantizers return false when they met a value
// they refuse (NaN / Inf, a scale fp16 cannot hold), and the dispatcher then lets the reference
// throw its own error.
#pragma once

#include <qforge/kernels/weights.hpp>

#include <cstddef>
#include <cstdint>

namespace qforge::kernels::quant {

struct source {
    const void* data;
    element type;
};
struct sink {
    void* data;
    element type;
    std::size_t first = 0;  // the element data[0] holds (a piece of the tensor: dequantize_in_pieces)
};

// ---- quantize ---------------------------------------------------------------------------------

// bnb 4-bit: flat blocks [b0, b1) of `n` elements; packed and absmax are the whole tensor's.
struct bnb4_job {
    source src;
    std::size_t n, blocksize;
    bool nf4;
    std::uint8_t* packed;
    float* absmax;
};
// bnb blockwise 8-bit (the double quantization of bnb 4-bit's absmax): blocks [b0, b1) of `n`
// f32 values; codes and absmax are the whole array's.
struct blockwise8_job {
    const float* x;
    std::size_t n, blocksize;
    std::uint8_t* codes;
    float* absmax;
};
// LLM.int8 weights: rows [r0, r1).
struct int8row_job {
    source src;
    std::size_t rows, cols;
    std::int8_t* codes;
    float* scb;
};
// GPTQ round-to-nearest: rows [r0, r1). scales [G, N] fp16 bits, zeros [G, N] the z of each group.
struct gptq_job {
    source src;
    std::size_t rows, cols, group;
    int bits;
    bool sym;
    std::int32_t* qweight;
    std::uint16_t* scales;
    std::uint8_t* zeros;
};
// AWQ gemm: rows [r0, r1), both multiples of 8 (a word holds 8 output rows).
struct awq_job {
    source src;
    std::size_t rows, cols, group;
    std::int32_t* qweight;
    std::uint16_t* scales;
    std::uint8_t* zeros;
};
// FP8 blocks: tile rows [t0, t1).
struct fp8_job {
    source src;
    std::size_t rows, cols, tile_rows, tile_cols;
    bool e4m3;
    std::uint8_t* codes;
    float* scale_inv;
};
// MXFP4: blocks of 32 [b0, b1) (a block never crosses a row).
struct mx_job {
    source src;
    std::size_t blocks;
    bool round_up;
    std::uint8_t* packed;
    std::uint8_t* scales;
};

// ---- dequantize (to `out`, the plain weight's elements) ---------------------------------------

struct bnb4_dq_job {
    const std::uint8_t* packed;
    const float* absmax;  // resolved (double quant undone)
    const float* table;   // 16
    std::size_t n, blocksize;
    sink out;
};
struct int8row_dq_job {
    const std::int8_t* codes;
    const float* scb;
    std::size_t rows, cols;
    sink out;
};
struct gptq_dq_job {
    const std::int32_t* qweight;
    const std::uint16_t* scales;  // [G, N] fp16 bits
    const std::int32_t* zeros;    // [G, N] decoded z
    const std::int32_t* g_idx;    // [K], each < groups
    int bits;
    std::size_t rows, cols, groups;
    sink out;
};
struct awq_dq_job {
    const std::int32_t* qweight;
    const std::int32_t* qzeros;
    const std::uint16_t* scales;
    std::size_t rows, cols, group;
    sink out;
};
struct fp8_dq_job {
    const std::uint8_t* codes;
    const float* scale_inv;
    const float* decode;  // 256 code values
    std::size_t rows, cols, tile_rows, tile_cols;
    sink out;
};
struct mx_dq_job {
    const std::uint8_t* packed;
    const std::uint8_t* scales;
    const float* table;  // the 16 E2M1 values
    std::size_t rows, cols;
    sink out;
};

struct ops {
    bool (*bnb4)(const bnb4_job&, std::size_t, std::size_t);
    bool (*bnb4_absmax)(const bnb4_job&, std::size_t, std::size_t);  // absmax only (packed unused)
    bool (*blockwise8)(const blockwise8_job&, std::size_t, std::size_t);
    bool (*int8row)(const int8row_job&, std::size_t, std::size_t);
    bool (*gptq)(const gptq_job&, std::size_t, std::size_t);
    bool (*awq)(const awq_job&, std::size_t, std::size_t);
    bool (*fp8)(const fp8_job&, std::size_t, std::size_t);
    bool (*mx)(const mx_job&, std::size_t, std::size_t);
    void (*bnb4_dq)(const bnb4_dq_job&, std::size_t, std::size_t);
    void (*int8row_dq)(const int8row_dq_job&, std::size_t, std::size_t);
    void (*gptq_dq)(const gptq_dq_job&, std::size_t, std::size_t);
    void (*awq_dq)(const awq_dq_job&, std::size_t, std::size_t);
    void (*fp8_dq)(const fp8_dq_job&, std::size_t, std::size_t);
    void (*mx_dq)(const mx_dq_job&, std::size_t, std::size_t);
};

// The entry points compiled for xsimd arch A (one translation unit per ISA).
template <class A>
ops ops_for();

}  // namespace qforge::kernels::quant

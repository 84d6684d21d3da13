// Checkpoint layouts of every method (formats.md §1-6): which safetensors keys, dtypes and shapes
// hold one quantized weight, read into the scalar reference's checkpoint-shaped structs (import)
// and written back exactly as transformers loads them (export). Import -> export is
// byte-identical for every file qforge accepts, but for one part: the bnb 4-bit quant_state blob
// is written as bitsandbytes writes it (json.dumps with its key order, nested_offset as the repr
// of its float32 value). A blob that is valid JSON in another layout (other spacing or key order,
// extra keys, a nested_offset with more digits than its float32) imports to the same values and
// exports in bitsandbytes' layout, hence with other bytes.
//
// A quantized weight is named by the plain tensor it stands for, `W = <module>.weight`:
//   bnb 4-bit  W (packed codes), W.absmax, W.quant_map, [W.nested_absmax, W.nested_quant_map],
//              W.quant_state.bitsandbytes__nf4|fp4 (a JSON blob)
//   bnb 8-bit  W (int8), <module>.SCB, <module>.weight_format
//   GPTQ       <module>.qweight, .qzeros, .scales, .g_idx
//   AWQ gemm   <module>.qweight, .qzeros, .scales
//   FP8 block  W (F8_E4M3), W_scale_inv                      (i.e. <module>.weight_scale_inv)
//   MXFP4      W_blocks, W_scales                            (gpt-oss also names W without
//              `.weight`, e.g. `...experts.gate_up_proj`, with leading expert dimensions)
// A bias (`<module>.bias`) is an ordinary tensor: it is copied, never part of the weight.
//
// Every error is an io_error naming the file, the tensor and what was expected.
#pragma once

#include <qforge/config/config.hpp>
#include <qforge/config/hf.hpp>
#include <qforge/io/safetensors.hpp>
#include <qforge/reference/reference.hpp>

#include <cstddef>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qforge {
class thread_pool;
}

namespace qforge::checkpoint {

namespace st = safetensors;

// The tensors of one file, or of every shard of a sharded checkpoint (a module's tensors may sit
// in different shards). Holds pointers into the readers, which must outlive it.
class tensor_set {
public:
    tensor_set() = default;
    explicit tensor_set(const st::reader& r) { add(r); }
    // Throws io_error when a name is already present (naming both files).
    void add(const st::reader& r);

    const st::tensor_view* find(std::string_view name) const;
    const st::tensor_view& at(std::string_view name) const;  // io_error naming the missing tensor
    // Every tensor, file by file in the order added, each file in data order.
    const std::vector<const st::tensor_view*>& all() const { return all_; }

private:
    std::vector<const st::tensor_view*> all_;
    std::map<std::string, const st::tensor_view*, std::less<>> by_name_;
};

// How a quantized weight is stored: the checkpoint formats of formats.md §1-6.
enum class method : std::uint8_t { bnb4, bnb8, gptq, awq, fp8, mxfp4 };
std::string_view to_string(method m);  // "bnb 4-bit", "bnb 8-bit", "gptq", "awq gemm", "fp8 block", "mxfp4"
method method_of(layout l);            // gptq_v1 and gptq_v2 are both method::gptq; throws for layout::qforge

// A quantized weight found by its signature key (the bnb quant_state blob, `.SCB`, `.qweight`,
// `_scale_inv`, `_blocks`).
struct detected_weight {
    std::string name;               // the plain weight it stands for
    method kind;
    std::string anchor;             // the key holding the codes: the output shard follows it
    std::vector<std::string> keys;  // every key of the weight present in the set, anchor first
};

struct detection {
    std::vector<detected_weight> weights;  // in the order of their anchors in the set
    // Tensors that look like parts of a quantized weight but belong to none (e.g. `.qzeros`
    // without `.qweight`, an F8_E4M3 tensor without its `_scale_inv`), one sentence each.
    std::vector<std::string> orphans;
};
detection detect(const tensor_set& s);

// What a checkpoint's quantization_config says that its tensors cannot say, and a check that
// both agree. When `expected` is given (to_config(quantization_config)): the method must match
// (else io_error naming the tensor); GPTQ's checkpoint_format (v1/v2), sym and group size and the
// compute type are taken from it; what the file records (bnb quant_type, blocksize, nesting; the
// bits) is authoritative, as it is for transformers. Without it: GPTQ v1, sym when every zero is
// 2^(bits-1), one group per row when there is one group, act f32 (i8 for LLM.int8).
struct import_options {
    std::optional<config> expected;
    // false: the packed codes (bnb 4-bit weight, LLM.int8 codes, GPTQ / AWQ qweight, MXFP4 blocks)
    // are checked but not copied, their vector stays empty: enough to plan an output file from
    // the shapes (a 90 MB weight's plan spent most of its time copying its codes).
    bool codes = true;
};

// One quantized weight as held in memory.
struct quantized_weight {
    std::string name;         // the plain weight: "<module>.weight" (or the gpt-oss "<X>" of "<X>_blocks")
    config cfg{};             // the stored layout (validate() passes)
    ref::quantized data;      // codes, scales, zeros, tables exactly as stored
    st::shape_t shape;        // of the plain weight: [N, K], or [..., N, K] for MXFP4
    std::optional<st::dtype> original_dtype;  // bnb 4-bit records the dtype it was quantized from
    st::dtype bnb4_storage = st::dtype::U8;   // bnb 4-bit: the bnb_4bit_quant_storage dtype of W

    std::int64_t rows() const;  // N (MXFP4 leading dimensions folded in)
    std::int64_t cols() const;  // K
};

// Reads and validates every tensor of a detected weight (dtypes and shapes against each other,
// the bnb blob, g_idx ranges, ...). A scale, code table entry or code that decodes to NaN or an
// infinity (GPTQ/AWQ scales, bnb absmax and tables, SCB, FP8 codes and scale_inv, E8M0 0xFF) is
// refused, naming the tensor, the index and the byte offset.
quantized_weight import_weight(const tensor_set& s, const detected_weight& d, const import_options& opt = {});
// The weight `<module_prefix>.weight` of one file, whatever its method; io_error when it is not
// quantized.
quantized_weight import_module(const st::reader& r, std::string_view module_prefix, const import_options& opt = {});

// Adds the weight's tensors to `w` under the keys above and returns their names. Borrows q's
// data: keep q alive and unchanged until w has written.
std::vector<std::string> export_weight(st::writer& w, const quantized_weight& q);
// The same tensors added as deferred (writer::add_deferred: names, dtypes and shapes, no bytes),
// from q's sizes alone; for a planned weight (quantize_plan) its data is empty.
std::vector<std::string> export_weight_deferred(st::writer& w, const quantized_weight& q);

// ---- quantizing and dequantizing one tensor -------------------------------------------------

struct quantize_settings {
    ref::mx_scale_rule mx_rule = ref::mx_scale_rule::ocp;
    st::dtype bnb4_storage = st::dtype::U8;
};
// The settings a quantization_config implies (mx_scale_rule, bnb_4bit_quant_storage).
quantize_settings settings_of(const hf_quant_config& q);

// Round-to-nearest quantization of a 2-D F32/BF16/F16 tensor into layout `cfg` (the SIMD
// kernels, kernels/quantize.hpp: the scalar reference's bytes), split over `pool` when given; the
// weight keeps the tensor's name and records its dtype. Errors (NaN/Inf, shapes the layout cannot
// hold, other dtypes) name the file and the tensor.
quantized_weight quantize_tensor(const st::tensor_view& v, const config& cfg, const quantize_settings& s = {},
                                 thread_pool* pool = nullptr);
// Whether a file of layout `cfg` can be planned before anything is quantized (quantize_plan):
// GPTQ, AWQ and bnb 4-bit, not the others for now.
bool plannable(const config& cfg);
// quantize_tensor's result without its data, for export_weight_deferred (cfg: plannable); the
// same errors for the dtype and shape. Every size follows from the shape but for the quant_state
// blob of bnb 4-bit double quantization, which records the mean of the absmax: that pass over the
// weight (cheap: max |x| per block) is split over `pool` when given.
quantized_weight quantize_plan(const st::tensor_view& v, const config& cfg, const quantize_settings& s = {},
                               thread_pool* pool = nullptr);

// The plain weight's values as `out` (F32, BF16 or F16): the reference's f32 dequantization,
// rounded to nearest even (on the SIMD kernels, split over `pool` when given). io_error naming
// the weight and [n, k] when a value is not finite in `out` (finite scales times codes can overflow).
std::vector<std::byte> dequantize_weight(const quantized_weight& q, st::dtype out, thread_pool* pool = nullptr);
// The same into `dst` (rows * cols * itemsize(out) bytes, else std::invalid_argument).
void dequantize_weight_into(const quantized_weight& q, st::dtype out, std::span<std::byte> dst,
                            thread_pool* pool = nullptr);
// The same in pieces of a few hundred KiB, each handed to `ready` in order on the calling thread
// as soon as it is made and checked, while the pool makes the next ones: a writer overlaps its
// writes with the dequantization, and memory holds a few pieces, not the weight. A piece's bytes
// are valid until ready returns. A non-finite value stops it before its piece is handed over.
void dequantize_weight_pieces(const quantized_weight& q, st::dtype out, thread_pool* pool,
                              const std::function<void(std::span<const std::byte>)>& ready);

// ---- lossless layout conversions ----------------------------------------------------------

// GPTQ v1 <-> v2: rewrites the zero fields (v1 stores (z - 1) mod 2^b, v2 stores z).
ref::gptq_tensor convert_gptq(const ref::gptq_tensor& t, bool to_v2);
// AWQ gemm -> GPTQ: the same codes, zeros and scales repacked along K; g_idx = k / group.
// Needs N and K to be multiples of 32 (GPTQ's packing). The transpose runs on `pool` if given.
ref::gptq_tensor awq_to_gptq(const ref::awq_tensor& t, bool v2, thread_pool* pool = nullptr);
// Converts a GPTQ or AWQ weight to `target` (gptq_v1 or gptq_v2); dequantizes to the same values.
quantized_weight convert(const quantized_weight& q, layout target, thread_pool* pool = nullptr);

// ---- small pieces, public for tests ----------------------------------------------------------

// The bnb quant_state blob: Python json.dumps output with bitsandbytes' key order.
std::string bnb_quant_state_json(const ref::bnb4_tensor& t, st::dtype original);
// Python's repr() of a float: shortest round-trip digits, fixed notation for exponents -4..15,
// otherwise d.ddde[+-]XX ("0.20999999344348907", "6.0", "1e-05", "1e+16").
std::string python_float_repr(double x);
// torch dtype names as bitsandbytes and transformers write them ("float32", "bfloat16", ...).
std::string_view torch_dtype_name(st::dtype t);
std::optional<st::dtype> dtype_of_torch_name(std::string_view name);

}  // namespace qforge::checkpoint

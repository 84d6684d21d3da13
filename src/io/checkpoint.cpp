// Checkpoint layouts of every method: detection, import (validated against formats.md §1-6),
// export, and the lossless GPTQ/AWQ conversions.
#include <qforge/io/checkpoint.hpp>

#include <qforge/format/packing.hpp>
#include <qforge/format/tables.hpp>
#include <qforge/io/staged_file.hpp>
#include <qforge/kernels/quantize.hpp>
#include <qforge/parallel.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <set>
#include <stdexcept>
#include <utility>

namespace qforge::checkpoint {

namespace {

using json = nlohmann::json;
using st::shape_t;
using sdt = st::dtype;  // the file's dtypes (qforge::dtype is the code type of a config)

// ---- messages ------------------------------------------------------------------------------

std::string shape_text(std::span<const std::int64_t> shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

// "checkpoint 'file': tensor 'name': what"
[[noreturn]] void fail(const st::tensor_view& v, const std::string& what) {
    throw io_error("checkpoint '" + std::string(v.file) + "': tensor '" + std::string(v.name) + "': " + what);
}

// A missing partner tensor, named with the tensor that needs it.
[[noreturn]] void fail_missing(const st::tensor_view& needing, std::string_view missing) {
    fail(needing, "its partner tensor '" + std::string(missing) + "' is missing");
}

void expect_dtype(const st::tensor_view& v, sdt t, std::string_view why = {}) {
    if (v.type != t)
        fail(v, "dtype is " + std::string(st::to_string(v.type)) + ", expected " + std::string(st::to_string(t)) +
                    (why.empty() ? "" : " (" + std::string(why) + ")"));
}

void expect_shape(const st::tensor_view& v, const shape_t& s, std::string_view why) {
    if (!std::ranges::equal(v.shape, s))
        fail(v, "shape is " + shape_text(v.shape) + ", expected " + shape_text(s) + " (" + std::string(why) + ")");
}

void expect_rank(const st::tensor_view& v, std::size_t rank, std::string_view what) {
    if (v.shape.size() != rank)
        fail(v, "shape " + shape_text(v.shape) + " has " + std::to_string(v.shape.size()) + " dimensions, expected " +
                    std::to_string(rank) + " (" + std::string(what) + ")");
}

std::string strip(std::string_view s, std::string_view suffix) { return std::string(s.substr(0, s.size() - suffix.size())); }

// Shape arithmetic on sizes read from a file happens here, checked: a hostile shape (one that the
// reader accepts because another dimension is 0, or one a JSON blob states) is an error naming the
// tensor, never an overflow.
std::int64_t checked_mul(const st::tensor_view& v, std::int64_t a, std::int64_t b) {
    std::int64_t product = 0;
    if (__builtin_mul_overflow(a, b, &product))
        fail(v, "shape " + shape_text(v.shape) + ": " + std::to_string(a) + " * " + std::to_string(b) +
                    " overflows 64 bits");
    return product;
}
// ceil(a / b) for a >= 0, b > 0, without the overflow of (a + b - 1) / b.
std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return a / b + (a % b != 0 ? 1 : 0); }
// A size from the file narrowed to the type the reference holds it in, checked first.
template <class T>
T narrow(const st::tensor_view& v, std::int64_t x, std::string_view what) {
    if (x < std::numeric_limits<T>::min() || x > std::numeric_limits<T>::max())
        fail(v, std::string(what) + " " + std::to_string(x) + " is out of range");
    return static_cast<T>(x);
}

// A stored scale, table entry or code that decodes to NaN or an infinity would make the weight's
// values so: refused, naming the tensor, the flat index and the byte offset.
template <class T, class Decode>
void expect_finite(const st::tensor_view& v, std::span<const T> stored, Decode decode) {
    for (std::size_t i = 0; i < stored.size(); ++i) {
        const float x = decode(stored[i]);
        if (!std::isfinite(x))
            fail(v, "value [" + std::to_string(i) + "] is " + (std::isnan(x) ? "NaN" : "infinite") +
                        " (byte offset " + std::to_string(v.file_offset + i * sizeof(T)) + ")");
    }
}
template <class T>
void expect_finite(const st::tensor_view& v, const std::vector<T>& stored) {
    expect_finite(v, std::span<const T>(stored), [](T x) { return to_float(x); });
}
template <std::size_t N>
void expect_finite(const st::tensor_view& v, const std::array<float, N>& stored) {
    expect_finite(v, std::span<const float>(stored), [](float x) { return x; });
}

// Copies of tensor data (the format does not promise alignment).
template <class T>
std::vector<T> values(const st::tensor_view& v) {
    return v.to_vector<T>();
}
std::vector<std::uint8_t> raw_bytes(const st::tensor_view& v) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(v.bytes.data());
    return std::vector<std::uint8_t>(p, p + v.bytes.size());  // one copy, no zeroing first
}
template <std::size_t N>
std::array<float, N> table(const st::tensor_view& v) {
    expect_dtype(v, sdt::F32);
    expect_shape(v, {static_cast<std::int64_t>(N)}, "a code table");
    std::array<float, N> t{};
    v.copy_to(std::span<float>(t));
    return t;
}

// ---- signature keys of each method ---------------------------------------------------------

constexpr std::string_view bnb4_blob_nf4 = ".quant_state.bitsandbytes__nf4";
constexpr std::string_view bnb4_blob_fp4 = ".quant_state.bitsandbytes__fp4";
constexpr std::string_view bnb8_scb = ".SCB";
constexpr std::string_view int_qweight = ".qweight";
constexpr std::string_view fp8_scale_inv = "_scale_inv";
constexpr std::string_view mx_blocks = "_blocks";
constexpr std::string_view mx_scales = "_scales";
constexpr std::string_view dot_weight = ".weight";

constexpr std::int64_t fp8_tile = 128;
constexpr std::int64_t mx_block = 32;
constexpr std::int64_t mx_block_bytes = mx_block / 2;
constexpr std::uint8_t bnb8_row_format = 0;

// `<module>.weight` -> `<module>`; weights of the methods keyed on the module must end so.
std::string module_of(const std::string& weight_name, method m) {
    if (!weight_name.ends_with(dot_weight))
        throw io_error("weight '" + weight_name + "': " + std::string(to_string(m)) +
                       " weights are keyed by their module, so the weight must be named '<module>.weight'");
    return strip(weight_name, dot_weight);
}

std::string bnb4_blob_key(const std::string& weight, qforge::dtype type) {
    return weight + std::string(type == qforge::dtype::nf4 ? bnb4_blob_nf4 : bnb4_blob_fp4);
}

// The compute type of an imported weight: the quantization_config's when it has one.
compute act_of(const import_options& opt, compute fallback) { return opt.expected ? opt.expected->act : fallback; }

// A blob key's JSON value, with messages naming the blob tensor.
struct blob_reader {
    const st::tensor_view& view;
    json j;

    const json& at(const char* key) const {
        if (!j.contains(key)) fail(view, std::string("the quant_state JSON has no key \"") + key + "\"");
        return j[key];
    }
    std::int64_t integer(const char* key) const {
        const json& v = at(key);
        if (!v.is_number_integer() ||
            (v.is_number_unsigned() && v.get<std::uint64_t>() > std::uint64_t{std::numeric_limits<std::int64_t>::max()}))
            fail(view, std::string("quant_state \"") + key + "\" is not a 64-bit integer: " + v.dump());
        return v.get<std::int64_t>();
    }
    std::string text(const char* key) const {
        const json& v = at(key);
        if (!v.is_string()) fail(view, std::string("quant_state \"") + key + "\" is not a string: " + v.dump());
        return v.get<std::string>();
    }
};

// ---- import, one function per method -----------------------------------------------------

void import_bnb4(const tensor_set& s, const detected_weight& d, const import_options& opt, quantized_weight& q) {
    const std::string& w = d.name;
    const st::tensor_view* nf4_blob = s.find(bnb4_blob_key(w, qforge::dtype::nf4));
    const st::tensor_view* fp4_blob = s.find(bnb4_blob_key(w, qforge::dtype::fp4));
    if (nf4_blob && fp4_blob) fail(*nf4_blob, "a second quant_state blob '" + std::string(fp4_blob->name) + "' exists");
    const st::tensor_view& blob_view = nf4_blob ? *nf4_blob : *fp4_blob;
    const qforge::dtype type = nf4_blob ? qforge::dtype::nf4 : qforge::dtype::fp4;
    expect_dtype(blob_view, sdt::U8, "UTF-8 JSON bytes");
    expect_rank(blob_view, 1, "UTF-8 JSON bytes");

    const auto* text = reinterpret_cast<const char*>(blob_view.bytes.data());
    blob_reader blob{blob_view, json::parse(text, text + blob_view.bytes.size(), nullptr, false)};
    if (blob.j.is_discarded()) fail(blob_view, "the quant_state blob is not valid JSON");
    if (!blob.j.is_object()) fail(blob_view, "the quant_state JSON is not an object");
    const std::string quant_type = blob.text("quant_type");
    if (quant_type != (type == qforge::dtype::nf4 ? "nf4" : "fp4"))
        fail(blob_view, "quant_state \"quant_type\" is \"" + quant_type + "\", which contradicts the key's suffix");
    const std::int64_t blocksize = blob.integer("blocksize");
    if (blocksize < 32 || blocksize > 4096 || !is_power_of_two_group(static_cast<std::int32_t>(blocksize)))
        fail(blob_view, "quant_state \"blocksize\" " + std::to_string(blocksize) + " is not a power of two from 32 to 4096");
    const std::string dtype_name = blob.text("dtype");
    const auto original = dtype_of_torch_name(dtype_name);
    if (!original || (*original != sdt::F32 && *original != sdt::BF16 && *original != sdt::F16))
        fail(blob_view, "quant_state \"dtype\" \"" + dtype_name + "\" is not float32, bfloat16 or float16");
    const json& shape = blob.at("shape");
    if (!shape.is_array() || shape.size() != 2 || !shape[0].is_number_integer() || !shape[1].is_number_integer() ||
        shape[0].get<std::int64_t>() <= 0 || shape[1].get<std::int64_t>() <= 0)
        fail(blob_view, "quant_state \"shape\" " + shape.dump() + " is not two positive integers [N, K]");
    const std::int64_t rows = shape[0].get<std::int64_t>(), cols = shape[1].get<std::int64_t>();
    std::int64_t n = 0;
    if (__builtin_mul_overflow(rows, cols, &n)) fail(blob_view, "quant_state \"shape\" " + shape.dump() + " overflows");
    const bool nested = blob.j.contains("nested_offset") || blob.j.contains("nested_blocksize");

    ref::bnb4_tensor t;
    t.type = type;
    t.rows = rows;
    t.cols = cols;
    t.blocksize = static_cast<std::int32_t>(blocksize);
    t.nested = nested;
    const std::int64_t blocks = ceil_div(n, blocksize), packed = ceil_div(n, 2);

    const st::tensor_view* weight = s.find(w);
    if (!weight) fail_missing(blob_view, w);
    const std::int64_t item = static_cast<std::int64_t>(st::itemsize(weight->type));
    const bool storage_ok = weight->type == sdt::U8 || weight->type == sdt::I8 || weight->type == sdt::F16 ||
                            weight->type == sdt::BF16 || weight->type == sdt::F32 || weight->type == sdt::F64;
    if (!storage_ok)
        fail(*weight, "dtype " + std::string(st::to_string(weight->type)) +
                          " is not a bnb_4bit_quant_storage dtype (uint8, int8, float16, bfloat16, float32, float64)");
    if (packed % item != 0)
        fail(*weight, "the " + std::to_string(packed) + " packed bytes of shape " + shape.dump() +
                          " are not a multiple of the " + std::to_string(item) + "-byte storage dtype " +
                          std::string(st::to_string(weight->type)));
    expect_shape(*weight, {packed / item, 1}, "(N*K+1)/2 packed bytes as [bytes / itemsize, 1] for shape " + shape.dump());
    if (opt.codes) t.packed = raw_bytes(*weight);

    const std::string absmax_key = w + ".absmax";
    const st::tensor_view* absmax = s.find(absmax_key);
    if (!absmax) fail_missing(*weight, absmax_key);
    expect_dtype(*absmax, nested ? sdt::U8 : sdt::F32, nested ? "nested: one 8-bit code per block" : "one per block");
    expect_shape(*absmax, {blocks}, "ceil(N*K / blocksize) blocks");
    const std::string map_key = w + ".quant_map";
    const st::tensor_view* quant_map = s.find(map_key);
    if (!quant_map) fail_missing(*weight, map_key);
    t.quant_map = table<16>(*quant_map);

    const std::string nested_absmax_key = w + ".nested_absmax", nested_map_key = w + ".nested_quant_map";
    const st::tensor_view* nested_absmax = s.find(nested_absmax_key);
    const st::tensor_view* nested_map = s.find(nested_map_key);
    if (!nested) {
        if (nested_absmax || nested_map)
            fail(nested_absmax ? *nested_absmax : *nested_map,
                 "present, but the quant_state blob '" + std::string(blob_view.name) + "' has no nested_* keys");
        t.absmax = values<float>(*absmax);
        expect_finite(*absmax, t.absmax);
    } else {
        if (blob.integer("nested_blocksize") != nested_blocksize)
            fail(blob_view, "quant_state \"nested_blocksize\" is " + blob.at("nested_blocksize").dump() + ", expected 256");
        if (blob.text("nested_dtype") != "float32")
            fail(blob_view, "quant_state \"nested_dtype\" is \"" + blob.text("nested_dtype") + "\", expected \"float32\"");
        const json& offset = blob.at("nested_offset");
        if (!offset.is_number()) fail(blob_view, "quant_state \"nested_offset\" is not a number: " + offset.dump());
        t.nested_offset = static_cast<float>(offset.get<double>());  // bitsandbytes holds it as a float32 tensor
        if (!std::isfinite(t.nested_offset))
            fail(blob_view, "quant_state \"nested_offset\" " + offset.dump() + " is not a finite float32");
        if (!nested_absmax) fail_missing(*weight, nested_absmax_key);
        if (!nested_map) fail_missing(*weight, nested_map_key);
        expect_dtype(*nested_absmax, sdt::F32);
        expect_shape(*nested_absmax, {ceil_div(blocks, nested_blocksize)}, "one per 256 blocks");
        t.absmax_codes = raw_bytes(*absmax);
        t.nested_absmax = values<float>(*nested_absmax);
        t.nested_quant_map = table<256>(*nested_map);
        expect_finite(*nested_absmax, t.nested_absmax);
        expect_finite(*nested_map, t.nested_quant_map);
    }
    expect_finite(*quant_map, t.quant_map);

    q.cfg = config{type, 4, t.blocksize, nested, layout::bnb4, act_of(opt, compute::f32)};
    q.shape = {rows, cols};
    q.original_dtype = original;
    q.bnb4_storage = weight->type;
    q.data = std::move(t);
}

void import_bnb8(const tensor_set& s, const detected_weight& d, const import_options& opt, quantized_weight& q) {
    const std::string module = module_of(d.name, method::bnb8);
    const st::tensor_view& scb = s.at(module + std::string(bnb8_scb));
    const st::tensor_view* weight = s.find(d.name);
    if (!weight) fail_missing(scb, d.name);
    expect_dtype(*weight, sdt::I8, "LLM.int8 codes");
    expect_rank(*weight, 2, "[N, K]");
    const std::int64_t rows = weight->shape[0], cols = weight->shape[1];
    if (rows <= 0 || cols <= 0) fail(*weight, "shape " + shape_text(weight->shape) + " is empty");
    expect_dtype(scb, sdt::F32);
    expect_shape(scb, {rows}, "one absmax per output row of " + std::string(weight->name));
    const std::string format_key = module + ".weight_format";
    const st::tensor_view* format = s.find(format_key);
    if (!format) fail_missing(*weight, format_key);
    expect_dtype(*format, sdt::U8);
    expect_shape(*format, {}, "a scalar");
    const auto code = static_cast<std::uint8_t>(format->bytes[0]);
    if (code != bnb8_row_format)
        fail(*format, "weight_format " + std::to_string(code) +
                          " is a GPU tile layout (col32/col_turing/col_ampere); qforge reads the row layout (0)");

    ref::int8row_tensor t;
    t.rows = rows;
    t.cols = cols;
    if (opt.codes) t.codes = values<std::int8_t>(*weight);
    t.scb = values<float>(scb);
    expect_finite(scb, t.scb);
    q.cfg = config{qforge::dtype::int8_row, 8, per_channel, false, layout::bnb8, act_of(opt, compute::i8)};
    q.shape = {rows, cols};
    q.data = std::move(t);
}

// The int32 / fp16 tensors shared by GPTQ and AWQ.
struct integer_tensors {
    const st::tensor_view& qweight;
    const st::tensor_view& qzeros;
    const st::tensor_view& scales;
};

integer_tensors integer_tensors_of(const tensor_set& s, const std::string& module) {
    const st::tensor_view& qweight = s.at(module + std::string(int_qweight));
    const auto partner = [&](const char* suffix) -> const st::tensor_view& {
        const st::tensor_view* v = s.find(module + suffix);
        if (!v) fail_missing(qweight, module + suffix);
        return *v;
    };
    const integer_tensors t{qweight, partner(".qzeros"), partner(".scales")};
    expect_dtype(t.qweight, sdt::I32, "packed codes");
    expect_rank(t.qweight, 2, "packed codes");
    expect_dtype(t.qzeros, sdt::I32, "packed zero points");
    expect_rank(t.qzeros, 2, "packed zero points");
    expect_dtype(t.scales, sdt::F16, "one fp16 scale per group and output feature");
    expect_rank(t.scales, 2, "[groups, N]");
    if (t.scales.shape[0] <= 0 || t.scales.shape[1] <= 0) fail(t.scales, "shape " + shape_text(t.scales.shape) + " is empty");
    return t;
}

// The words of a 32-field run of GPTQ v1 zeros all holding the symmetric zero 2^(bits-1). A qzeros
// row is N/32 such runs, so word i of the tensor is run[i % bits].
std::vector<std::uint32_t> sym_zero_run(int bits) {
    std::array<std::uint8_t, gptq_run_codes> fields{};
    fields.fill(static_cast<std::uint8_t>(gptq_zero_field(bits, 1 << (bits - 1), false)));
    std::vector<std::uint32_t> run(static_cast<std::size_t>(bits));
    pack_gptq_run(bits, fields, run);
    return run;
}

// GPTQ's group size from the number of groups G = ceil(K / gs): the config's when given, else one
// group per row for G = 1, else the power of two that gives G groups.
std::int32_t gptq_group(const st::tensor_view& scales, std::int64_t k, std::int64_t groups,
                        const std::optional<config>& expected) {
    if (expected) {
        const std::int64_t gs = expected->group == per_channel ? k : expected->group;
        if (ceil_div(k, gs) != groups)
            fail(scales, "has " + std::to_string(groups) + " groups, but group_size " + std::to_string(expected->group) +
                             " of the quantization_config gives ceil(K / group_size) = " +
                             std::to_string(ceil_div(k, gs)) + " for K = " + std::to_string(k));
        return expected->group;
    }
    if (groups == 1) return per_channel;
    for (std::int32_t gs = 32; gs <= 4096; gs *= 2)
        if (ceil_div(k, gs) == groups) return gs;
    fail(scales, "no group size from 32 to 4096 gives its " + std::to_string(groups) + " groups for K = " +
                     std::to_string(k) + " (give the quantization_config)");
}

void import_gptq(const tensor_set& s, const detected_weight& d, const import_options& opt, quantized_weight& q) {
    const std::string module = module_of(d.name, method::gptq);
    const integer_tensors it = integer_tensors_of(s, module);
    const std::int64_t groups = it.scales.shape[0], rows = it.scales.shape[1];
    if (rows % 32 != 0) fail(it.scales, "N = " + std::to_string(rows) + " is not a multiple of 32 (GPTQ packing)");
    if (it.qzeros.shape[0] != groups || checked_mul(it.qzeros, it.qzeros.shape[1], 32) % rows != 0)
        fail(it.qzeros, "shape " + shape_text(it.qzeros.shape) + " is not [G, N*bits/32] = [" + std::to_string(groups) +
                            ", N*bits/32] for N = " + std::to_string(rows) + " and bits 2, 3, 4 or 8");
    const std::int64_t bits = it.qzeros.shape[1] * 32 / rows;
    if (bits > 8 || !gptq_bits_supported(static_cast<int>(bits)))
        fail(it.qzeros, "shape " + shape_text(it.qzeros.shape) + " means " + std::to_string(bits) +
                            "-bit zeros for N = " + std::to_string(rows) + "; GPTQ has 2, 3, 4 or 8 bits");
    if (opt.expected && opt.expected->bits != bits)
        fail(it.qzeros, "holds " + std::to_string(bits) + "-bit zeros, but the quantization_config says bits " +
                            std::to_string(opt.expected->bits));
    if (it.qweight.shape[1] != rows || it.qweight.shape[0] <= 0 || it.qweight.shape[0] % bits != 0)
        fail(it.qweight, "shape " + shape_text(it.qweight.shape) + " is not [K*" + std::to_string(bits) + "/32, N] with N = " +
                             std::to_string(rows) + " and K a multiple of 32");
    const std::int64_t cols = checked_mul(it.qweight, it.qweight.shape[0], 32) / bits;
    const std::string g_idx_key = module + ".g_idx";
    const st::tensor_view* g_idx = s.find(g_idx_key);
    if (!g_idx) fail_missing(it.qweight, g_idx_key);
    expect_dtype(*g_idx, sdt::I32, "group index per input feature");
    expect_shape(*g_idx, {cols}, "one group index per input feature, K = " + std::to_string(cols));

    ref::gptq_tensor t;
    t.rows = rows;
    t.cols = cols;
    t.bits = static_cast<int>(bits);
    const std::int32_t group = gptq_group(it.scales, cols, groups, opt.expected);
    t.group = group == per_channel ? narrow<std::int32_t>(it.qweight, cols, "K") : group;
    t.v2 = opt.expected && opt.expected->storage == layout::gptq_v2;
    if (opt.codes) t.qweight = values<std::int32_t>(it.qweight);
    t.qzeros = values<std::int32_t>(it.qzeros);
    t.scales = values<f16>(it.scales);
    expect_finite(it.scales, t.scales);
    t.g_idx = values<std::int32_t>(*g_idx);
    for (std::size_t k = 0; k < t.g_idx.size(); ++k)
        if (t.g_idx[k] < 0 || t.g_idx[k] >= groups)
            fail(*g_idx, "g_idx[" + std::to_string(k) + "] = " + std::to_string(t.g_idx[k]) + " is outside [0, " +
                             std::to_string(groups) + ") (byte offset " + std::to_string(g_idx->file_offset + 4 * k) + ")");
    if (opt.expected) {
        t.sym = opt.expected->type == qforge::dtype::int_sym;
    } else {
        // Symmetric checkpoints store the fixed zero 2^(bits-1) in every field (v1 assumed).
        const std::vector<std::uint32_t> run = sym_zero_run(static_cast<int>(bits));
        t.sym = true;
        for (std::size_t i = 0; i < t.qzeros.size() && t.sym; ++i)
            t.sym = static_cast<std::uint32_t>(t.qzeros[i]) == run[i % run.size()];
    }
    q.cfg = config{t.sym ? qforge::dtype::int_sym : qforge::dtype::int_asym, static_cast<std::uint8_t>(bits), group, false,
                   t.v2 ? layout::gptq_v2 : layout::gptq_v1, act_of(opt, compute::f32)};
    q.shape = {rows, cols};
    q.data = std::move(t);
}

void import_awq(const tensor_set& s, const detected_weight& d, const import_options& opt, quantized_weight& q) {
    const std::string module = module_of(d.name, method::awq);
    const integer_tensors it = integer_tensors_of(s, module);
    const std::int64_t groups = it.scales.shape[0], rows = it.scales.shape[1];
    if (rows % awq_pack_codes != 0) fail(it.scales, "N = " + std::to_string(rows) + " is not a multiple of 8 (AWQ packing)");
    const std::int64_t words = rows / awq_pack_codes;
    if (it.qweight.shape[1] != words || it.qweight.shape[0] <= 0)
        fail(it.qweight, "shape " + shape_text(it.qweight.shape) + " is not [K, N/8] with N/8 = " + std::to_string(words));
    const std::int64_t cols = it.qweight.shape[0];
    expect_shape(it.qzeros, {groups, words}, "[K/group, N/8] like the scales");
    if (cols % groups != 0)
        fail(it.scales, "has " + std::to_string(groups) + " groups, which do not divide K = " + std::to_string(cols));
    const std::int64_t group = cols / groups;
    if (opt.expected) {
        const std::int64_t want = opt.expected->group == per_channel ? cols : opt.expected->group;
        if (want != group)
            fail(it.scales, "has groups of " + std::to_string(group) + " for K = " + std::to_string(cols) +
                                ", but the quantization_config says group_size " + std::to_string(opt.expected->group));
    }

    ref::awq_tensor t;
    t.rows = rows;
    t.cols = cols;
    t.group = narrow<std::int32_t>(it.scales, group, "group size");
    if (opt.codes) t.qweight = values<std::int32_t>(it.qweight);
    t.qzeros = values<std::int32_t>(it.qzeros);
    t.scales = values<f16>(it.scales);
    expect_finite(it.scales, t.scales);
    q.cfg = config{qforge::dtype::int_asym, 4, t.group, false, layout::awq_gemm, act_of(opt, compute::f32)};
    q.shape = {rows, cols};
    q.data = std::move(t);
}

void import_fp8(const tensor_set& s, const detected_weight& d, const import_options& opt, quantized_weight& q) {
    const st::tensor_view& scale_inv = s.at(d.name + std::string(fp8_scale_inv));
    const st::tensor_view* weight = s.find(d.name);
    if (!weight) fail_missing(scale_inv, d.name);
    if (weight->type != sdt::F8_E4M3 && weight->type != sdt::F8_E5M2)
        fail(*weight, "dtype is " + std::string(st::to_string(weight->type)) + ", expected F8_E4M3 (or F8_E5M2)");
    expect_rank(*weight, 2, "[N, K]");
    const std::int64_t rows = weight->shape[0], cols = weight->shape[1];
    if (rows <= 0 || cols <= 0) fail(*weight, "shape " + shape_text(weight->shape) + " is empty");
    expect_dtype(scale_inv, sdt::F32);
    expect_shape(scale_inv, {ceil_div(rows, fp8_tile), ceil_div(cols, fp8_tile)},
                 "one per 128x128 block of " + std::string(weight->name) + " " + shape_text(weight->shape));

    ref::fp8_tensor t;
    t.type = weight->type == sdt::F8_E4M3 ? qforge::dtype::fp8_e4m3 : qforge::dtype::fp8_e5m2;
    t.rows = rows;
    t.cols = cols;
    t.tile_rows = t.tile_cols = fp8_tile;
    t.codes = raw_bytes(*weight);
    t.scale_inv = values<float>(scale_inv);
    const bool e4m3 = t.type == qforge::dtype::fp8_e4m3;
    expect_finite(*weight, std::span<const std::uint8_t>(t.codes),
                  [e4m3](std::uint8_t c) { return e4m3 ? e4m3_to_float(c) : e5m2_to_float(c); });
    expect_finite(scale_inv, t.scale_inv);
    q.cfg = config{t.type, 8, static_cast<std::int32_t>(fp8_tile), false, layout::fp8_block, act_of(opt, compute::f32)};
    q.shape = {rows, cols};
    q.data = std::move(t);
}

void import_mx(const tensor_set& s, const detected_weight& d, const import_options& opt, quantized_weight& q) {
    const st::tensor_view& blocks = s.at(d.name + std::string(mx_blocks));
    const std::string scales_key = d.name + std::string(mx_scales);
    const st::tensor_view* scales = s.find(scales_key);
    if (!scales) fail_missing(blocks, scales_key);
    expect_dtype(blocks, sdt::U8, "two E2M1 codes per byte");
    if (blocks.shape.size() < 3 || blocks.shape.back() != mx_block_bytes)
        fail(blocks, "shape " + shape_text(blocks.shape) + " is not [..., N, K/32, 16]");
    expect_dtype(*scales, sdt::U8, "E8M0 scales");
    const shape_t lead(blocks.shape.begin(), blocks.shape.end() - 1);  // [..., N, K/32]
    expect_shape(*scales, lead, "one E8M0 scale per 32 elements, [..., N, K/32] like " + std::string(blocks.name));
    if (std::ranges::find(lead, 0) != lead.end()) fail(blocks, "shape " + shape_text(blocks.shape) + " is empty");
    std::int64_t rows = 1;
    for (std::size_t i = 0; i + 1 < lead.size(); ++i) rows = checked_mul(blocks, rows, lead[i]);
    const std::int64_t cols = checked_mul(blocks, lead.back(), mx_block);

    ref::mx_tensor t;
    t.rows = rows;
    t.cols = cols;
    if (opt.codes) t.blocks = raw_bytes(blocks);
    t.scales = raw_bytes(*scales);
    expect_finite(*scales, std::span<const std::uint8_t>(t.scales), e8m0_to_float);  // 0xFF is NaN
    q.cfg = config{qforge::dtype::e2m1, 4, static_cast<std::int32_t>(mx_block), false, layout::mx, act_of(opt, compute::f32)};
    q.shape = shape_t(lead.begin(), lead.end() - 1);
    q.shape.push_back(cols);
    q.data = std::move(t);
}

// ---- export ----------------------------------------------------------------------------------

class exporter {
public:
    // deferred: tensors added by name, dtype and shape only (export_weight_deferred)
    explicit exporter(st::writer& w, bool deferred = false) : w_(w), deferred_(deferred) {}

    template <class R>
    void add(std::string name, sdt type, shape_t shape, const R& data) {
        names_.push_back(name);
        if (deferred_) w_.add_deferred(std::move(name), type, std::move(shape));
        else w_.add(std::move(name), type, std::move(shape), data);
    }
    template <class T>
    void add_owned(std::string name, sdt type, shape_t shape, std::vector<T> data) {
        names_.push_back(name);
        w_.add_owned(std::move(name), type, std::move(shape), std::move(data));
    }
    std::vector<std::string> names() && { return std::move(names_); }

private:
    st::writer& w_;
    bool deferred_;
    std::vector<std::string> names_;
};

void export_bnb4(exporter& e, const quantized_weight& q, const ref::bnb4_tensor& t) {
    if (!q.original_dtype) throw io_error("weight '" + q.name + "': bnb 4-bit export needs the original dtype");
    const std::int64_t n = t.rows * t.cols, blocks = ceil_div(n, t.blocksize);
    const std::int64_t packed = ceil_div(n, 2);  // import checks it; a planned weight has no bytes
    const auto item = static_cast<std::int64_t>(st::itemsize(q.bnb4_storage));
    if (packed % item != 0)
        throw io_error("weight '" + q.name + "': its " + std::to_string(packed) +
                       " packed bytes are not a multiple of the bnb_4bit_quant_storage dtype " +
                       std::string(st::to_string(q.bnb4_storage)));
    e.add(q.name, q.bnb4_storage, {packed / item, 1}, t.packed);
    if (t.nested) {
        e.add(q.name + ".absmax", sdt::U8, {blocks}, t.absmax_codes);
        e.add(q.name + ".nested_absmax", sdt::F32, {ceil_div(blocks, nested_blocksize)}, t.nested_absmax);
        e.add(q.name + ".nested_quant_map", sdt::F32, {256}, t.nested_quant_map);
    } else {
        e.add(q.name + ".absmax", sdt::F32, {blocks}, t.absmax);
    }
    e.add(q.name + ".quant_map", sdt::F32, {16}, t.quant_map);
    const std::string blob = bnb_quant_state_json(t, *q.original_dtype);
    e.add_owned(bnb4_blob_key(q.name, t.type), sdt::U8, {static_cast<std::int64_t>(blob.size())},
                std::vector<std::uint8_t>(blob.begin(), blob.end()));
}

void export_bnb8(exporter& e, const quantized_weight& q, const ref::int8row_tensor& t) {
    const std::string module = module_of(q.name, method::bnb8);
    e.add(q.name, sdt::I8, {t.rows, t.cols}, t.codes);
    e.add(module + std::string(bnb8_scb), sdt::F32, {t.rows}, t.scb);
    e.add_owned(module + ".weight_format", sdt::U8, {}, std::vector<std::uint8_t>{bnb8_row_format});
}

void export_gptq(exporter& e, const quantized_weight& q, const ref::gptq_tensor& t) {
    const std::string module = module_of(q.name, method::gptq);
    const std::int64_t groups = ceil_div(t.cols, t.group);
    e.add(module + ".qweight", sdt::I32, {t.cols * t.bits / 32, t.rows}, t.qweight);
    e.add(module + ".qzeros", sdt::I32, {groups, t.rows * t.bits / 32}, t.qzeros);
    e.add(module + ".scales", sdt::F16, {groups, t.rows}, t.scales);
    e.add(module + ".g_idx", sdt::I32, {t.cols}, t.g_idx);
}

void export_awq(exporter& e, const quantized_weight& q, const ref::awq_tensor& t) {
    const std::string module = module_of(q.name, method::awq);
    const std::int64_t groups = t.cols / t.group, words = t.rows / awq_pack_codes;
    e.add(module + ".qweight", sdt::I32, {t.cols, words}, t.qweight);
    e.add(module + ".qzeros", sdt::I32, {groups, words}, t.qzeros);
    e.add(module + ".scales", sdt::F16, {groups, t.rows}, t.scales);
}

void export_fp8(exporter& e, const quantized_weight& q, const ref::fp8_tensor& t) {
    e.add(q.name, t.type == qforge::dtype::fp8_e4m3 ? sdt::F8_E4M3 : sdt::F8_E5M2, {t.rows, t.cols}, t.codes);
    e.add(q.name + std::string(fp8_scale_inv), sdt::F32, {ceil_div(t.rows, t.tile_rows), ceil_div(t.cols, t.tile_cols)},
          t.scale_inv);
}

void export_mx(exporter& e, const quantized_weight& q, const ref::mx_tensor& t) {
    shape_t scales_shape(q.shape.begin(), q.shape.end() - 1);  // [..., N]
    scales_shape.push_back(t.cols / mx_block);
    shape_t blocks_shape = scales_shape;
    blocks_shape.push_back(mx_block_bytes);
    e.add(q.name + std::string(mx_blocks), sdt::U8, std::move(blocks_shape), t.blocks);
    e.add(q.name + std::string(mx_scales), sdt::U8, std::move(scales_shape), t.scales);
}

}  // namespace

// ---- tensor_set ------------------------------------------------------------------------------

void tensor_set::add(const st::reader& r) {
    for (const st::tensor_view& v : r.tensors()) {
        const auto [it, inserted] = by_name_.emplace(std::string(v.name), &v);
        if (!inserted)
            throw io_error("tensor '" + std::string(v.name) + "' is in both '" + std::string(it->second->file) + "' and '" +
                           std::string(v.file) + "'");
        all_.push_back(&v);
    }
}

const st::tensor_view* tensor_set::find(std::string_view name) const {
    const auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : it->second;
}

const st::tensor_view& tensor_set::at(std::string_view name) const {
    if (const st::tensor_view* v = find(name)) return *v;
    throw io_error("checkpoint: no tensor named '" + std::string(name) + "'");
}

// ---- methods and detection ----------------------------------------------------------------

std::string_view to_string(method m) {
    switch (m) {
        case method::bnb4: return "bnb 4-bit";
        case method::bnb8: return "bnb 8-bit";
        case method::gptq: return "gptq";
        case method::awq: return "awq gemm";
        case method::fp8: return "fp8 block";
        case method::mxfp4: return "mxfp4";
    }
    return "?";
}

method method_of(layout l) {
    switch (l) {
        case layout::bnb4: return method::bnb4;
        case layout::bnb8: return method::bnb8;
        case layout::gptq_v1:
        case layout::gptq_v2: return method::gptq;
        case layout::awq_gemm: return method::awq;
        case layout::fp8_block: return method::fp8;
        case layout::mx: return method::mxfp4;
        case layout::qforge: break;
    }
    throw std::invalid_argument("the qforge kernel layout is not a checkpoint format");
}

detection detect(const tensor_set& s) {
    detection d;
    // candidates: every key the method may have, the codes key first; the signature key is one.
    const auto found = [&](std::string name, method m, const std::vector<std::string>& candidates) {
        detected_weight w{std::move(name), m, {}, {}};
        for (const std::string& k : candidates)
            if (s.find(k)) w.keys.push_back(k);
        w.anchor = w.keys.front();
        d.weights.push_back(std::move(w));
    };
    for (const st::tensor_view* v : s.all()) {
        const std::string key(v->name);
        if (key.ends_with(bnb4_blob_nf4) || key.ends_with(bnb4_blob_fp4)) {
            const std::string w = strip(key, bnb4_blob_nf4);  // both suffixes have the same length
            if (key.ends_with(bnb4_blob_fp4) && s.find(bnb4_blob_key(w, qforge::dtype::nf4))) continue;  // one weight
            found(w, method::bnb4,
                  {w, w + ".absmax", w + ".quant_map", w + ".nested_absmax", w + ".nested_quant_map",
                   bnb4_blob_key(w, qforge::dtype::nf4), bnb4_blob_key(w, qforge::dtype::fp4)});
        } else if (key.ends_with(bnb8_scb)) {
            const std::string module = strip(key, bnb8_scb);
            found(module + std::string(dot_weight), method::bnb8, {module + ".weight", key, module + ".weight_format"});
        } else if (key.ends_with(int_qweight)) {
            const std::string module = strip(key, int_qweight);
            const st::tensor_view* scales = s.find(module + ".scales");
            // AWQ packs along N ([K, N/8]), GPTQ along K ([K*b/32, N]); only GPTQ has g_idx.
            const bool awq = !s.find(module + ".g_idx") && scales && scales->shape.size() == 2 && v->shape.size() == 2 &&
                             scales->shape[1] % awq_pack_codes == 0 && v->shape[1] == scales->shape[1] / awq_pack_codes;
            found(module + std::string(dot_weight), awq ? method::awq : method::gptq,
                  {key, module + ".qzeros", module + ".scales", module + ".g_idx"});
        } else if (key.ends_with(fp8_scale_inv)) {
            const std::string w = strip(key, fp8_scale_inv);
            found(w, method::fp8, {w, key});
        } else if (key.ends_with(mx_blocks)) {
            const std::string w = strip(key, mx_blocks);
            found(w, method::mxfp4, {key, w + std::string(mx_scales)});
        }
    }
    // In the order of the anchors.
    std::map<std::string_view, std::size_t> position;
    for (std::size_t i = 0; i < s.all().size(); ++i) position.emplace(s.all()[i]->name, i);
    std::ranges::stable_sort(d.weights, {}, [&](const detected_weight& w) { return position.at(w.anchor); });

    std::set<std::string_view> claimed;
    for (const detected_weight& w : d.weights)
        for (const std::string& k : w.keys) claimed.insert(k);
    struct orphan_rule {
        std::string_view suffix, part, signature;  // signature: appended to the key minus suffix
    };
    static constexpr std::array<orphan_rule, 7> rules{{
        {".absmax", "bnb 4-bit absmax", ".quant_state.bitsandbytes__nf4 (or __fp4)"},
        {".quant_map", "bnb 4-bit code table", ".quant_state.bitsandbytes__nf4 (or __fp4)"},
        {".nested_absmax", "bnb 4-bit nested absmax", ".quant_state.bitsandbytes__nf4 (or __fp4)"},
        {".nested_quant_map", "bnb 4-bit nested code table", ".quant_state.bitsandbytes__nf4 (or __fp4)"},
        {".weight_format", "bnb 8-bit weight format", ".SCB"},
        {".qzeros", "GPTQ/AWQ zero points", ".qweight"},
        {".g_idx", "GPTQ group index", ".qweight"},
    }};
    for (const st::tensor_view* v : s.all()) {
        if (claimed.contains(v->name)) continue;
        const std::string key(v->name);
        const auto orphan = [&](std::string_view part, const std::string& missing) {
            d.orphans.push_back("checkpoint '" + std::string(v->file) + "': tensor '" + key + "' looks like " +
                                std::string(part) + ", but '" + missing + "' is missing");
        };
        if (v->type == sdt::F8_E4M3 || v->type == sdt::F8_E5M2) {
            orphan("FP8 weight codes", key + std::string(fp8_scale_inv));
            continue;
        }
        if (key.ends_with(mx_scales) && v->type == sdt::U8) {
            orphan("MXFP4 scales", strip(key, mx_scales) + std::string(mx_blocks));
            continue;
        }
        for (const orphan_rule& r : rules)
            if (key.ends_with(r.suffix)) {
                orphan(r.part, strip(key, r.suffix) + std::string(r.signature));
                break;
            }
    }
    return d;
}

// ---- import / export -------------------------------------------------------------------------

std::int64_t quantized_weight::rows() const {
    return std::visit([](const auto& t) { return t.rows; }, data);
}
std::int64_t quantized_weight::cols() const {
    return std::visit([](const auto& t) { return t.cols; }, data);
}

quantized_weight import_weight(const tensor_set& s, const detected_weight& d, const import_options& opt) {
    const st::tensor_view& anchor = s.at(d.anchor);
    if (opt.expected && method_of(opt.expected->storage) != d.kind)
        fail(anchor, "stored as " + std::string(to_string(d.kind)) + ", but the quantization_config is " +
                         std::string(to_string(method_of(opt.expected->storage))));
    quantized_weight q;
    q.name = d.name;
    switch (d.kind) {
        case method::bnb4: import_bnb4(s, d, opt, q); break;
        case method::bnb8: import_bnb8(s, d, opt, q); break;
        case method::gptq: import_gptq(s, d, opt, q); break;
        case method::awq: import_awq(s, d, opt, q); break;
        case method::fp8: import_fp8(s, d, opt, q); break;
        case method::mxfp4: import_mx(s, d, opt, q); break;
    }
    if (const config_rule r = check(q.cfg); r != config_rule::ok)
        fail(anchor, "its layout is not a valid qforge config: " + std::string(describe(r).field) + " " +
                         std::string(describe(r).message));
    return q;
}

quantized_weight import_module(const st::reader& r, std::string_view module_prefix, const import_options& opt) {
    const tensor_set s(r);
    const std::string name = std::string(module_prefix) + std::string(dot_weight);
    for (const detected_weight& d : detect(s).weights)
        if (d.name == name) return import_weight(s, d, opt);
    throw io_error("checkpoint '" + r.path().string() + "': no quantized weight '" + name + "'");
}

namespace {

std::vector<std::string> export_to(exporter&& e, const quantized_weight& q) {
    std::visit(
        [&](const auto& t) {
            using T = std::decay_t<decltype(t)>;
            if constexpr (std::is_same_v<T, ref::bnb4_tensor>) export_bnb4(e, q, t);
            else if constexpr (std::is_same_v<T, ref::int8row_tensor>) export_bnb8(e, q, t);
            else if constexpr (std::is_same_v<T, ref::gptq_tensor>) export_gptq(e, q, t);
            else if constexpr (std::is_same_v<T, ref::awq_tensor>) export_awq(e, q, t);
            else if constexpr (std::is_same_v<T, ref::fp8_tensor>) export_fp8(e, q, t);
            else export_mx(e, q, t);
        },
        q.data);
    return std::move(e).names();
}

}  // namespace

std::vector<std::string> export_weight(st::writer& w, const quantized_weight& q) { return export_to(exporter(w), q); }

std::vector<std::string> export_weight_deferred(st::writer& w, const quantized_weight& q) {
    if (!plannable(q.cfg)) throw io_error("weight '" + q.name + "': its layout cannot be planned");
    return export_to(exporter(w, true), q);
}

// ---- quantize / dequantize one tensor --------------------------------------------------------

quantize_settings settings_of(const hf_quant_config& q) {
    quantize_settings s;
    if (const auto* b = std::get_if<hf_bnb>(&q.fields)) {
        const auto storage = dtype_of_torch_name(b->bnb_4bit_quant_storage);
        if (!storage) throw hf_config_error("bnb_4bit_quant_storage", "unknown dtype '" + b->bnb_4bit_quant_storage + "'");
        s.bnb4_storage = *storage;
    }
    if (const auto* m = std::get_if<hf_mxfp4>(&q.fields)) s.mx_rule = m->mx_scale_rule;
    return s;
}

namespace {

// What quantize_tensor and quantize_plan check and record before quantizing: the weight's name,
// config, shape and dtype; returns the element type of its values.
element start_weight(const st::tensor_view& v, const config& cfg, const quantize_settings& s, quantized_weight& q) {
    if (v.shape.size() != 2) fail(v, "shape " + shape_text(v.shape) + " is not 2-D: only [N, K] weights are quantized");
    const std::int64_t rows = v.shape[0], cols = v.shape[1];
    q.name = std::string(v.name);
    q.cfg = cfg;
    q.shape = {rows, cols};
    q.original_dtype = v.type;
    q.bnb4_storage = s.bnb4_storage;
    if (cfg.storage == layout::bnb4) {
        const std::int64_t packed = (rows * cols + 1) / 2, item = static_cast<std::int64_t>(st::itemsize(s.bnb4_storage));
        if (packed % item != 0)
            fail(v, "its " + std::to_string(packed) + " packed 4-bit bytes are not a multiple of the " +
                        std::to_string(item) + "-byte bnb_4bit_quant_storage dtype " +
                        std::string(st::to_string(s.bnb4_storage)));
    }
    switch (v.type) {
        case sdt::F32: return element::f32;
        case sdt::BF16: return element::bf16;
        case sdt::F16: return element::f16;
        default: fail(v, "dtype " + std::string(st::to_string(v.type)) + " cannot be quantized (F32, BF16 and F16 can)");
    }
}

}  // namespace

quantized_weight quantize_tensor(const st::tensor_view& v, const config& cfg, const quantize_settings& s,
                                 thread_pool* pool) {
    quantized_weight q;
    const element type = start_weight(v, cfg, s, q);
    const ref::quantize_options opt{std::string(v.name), s.mx_rule};
    try {
        q.data = kernels::quantize_checkpoint(cfg, {v.bytes.data(), type}, q.shape[0], q.shape[1], opt, pool);
    } catch (const std::invalid_argument& e) {
        // The reference names the tensor; add the file.
        throw io_error("checkpoint '" + std::string(v.file) + "': " + e.what());
    }
    return q;
}

bool plannable(const config& cfg) {
    return cfg.storage == layout::gptq_v1 || cfg.storage == layout::gptq_v2 || cfg.storage == layout::awq_gemm ||
           cfg.storage == layout::bnb4;
}

quantized_weight quantize_plan(const st::tensor_view& v, const config& cfg, const quantize_settings& s,
                               thread_pool* pool) {
    if (!plannable(cfg)) throw std::invalid_argument("quantize_plan: the layout cannot be planned");
    quantized_weight q;
    const element type = start_weight(v, cfg, s, q);
    const std::int64_t rows = q.shape[0], cols = q.shape[1];
    const std::int32_t group = cfg.group == per_channel ? static_cast<std::int32_t>(cols) : cfg.group;
    if (cfg.storage == layout::bnb4) {  // the fields export_bnb4 reads
        ref::bnb4_tensor t;
        t.type = cfg.type;
        t.rows = rows;
        t.cols = cols;
        t.blocksize = group;
        t.nested = cfg.double_quant;
        if (t.nested && rows > 0 && cols > 0)  // the quant_state blob's length depends on it (an empty
                                               // weight: quantize_tensor names what is wrong)
            t.nested_offset = kernels::bnb4_nested_offset({v.bytes.data(), type}, static_cast<std::size_t>(rows * cols),
                                                          static_cast<std::size_t>(group), pool);
        q.data = std::move(t);
    } else if (cfg.storage == layout::awq_gemm) {  // the fields export_awq reads
        ref::awq_tensor t;
        t.rows = rows;
        t.cols = cols;
        t.group = group;
        q.data = std::move(t);
    } else {  // the fields export_gptq reads
        ref::gptq_tensor t;
        t.rows = rows;
        t.cols = cols;
        t.bits = cfg.bits;
        t.group = group;
        t.v2 = cfg.storage == layout::gptq_v2;
        t.sym = cfg.type == dtype::int_sym;
        q.data = std::move(t);
    }
    return q;
}

namespace {

// The element type of a dequantized weight's values.
element dequantized_type(st::dtype out) {
    switch (out) {
        case sdt::F32: return element::f32;
        case sdt::BF16: return element::bf16;
        case sdt::F16: return element::f16;
        default:
            throw std::invalid_argument("dequantize: output dtype " + std::string(st::to_string(out)) +
                                        " is not F32, BF16 or F16");
    }
}

std::size_t element_count(const quantized_weight& q) {
    return q.rows() > 0 && q.cols() > 0 ? static_cast<std::size_t>(q.rows()) * static_cast<std::size_t>(q.cols()) : 0;
}

// Import refuses non-finite scales; finite ones can still overflow (FP8 scale_inv * 448, or a
// value beyond the f16 range). The index in `bytes` (values of `out`) of the first non-finite
// value, or npos. 4096 values at a time: the inner loop vectorizes.
std::size_t first_non_finite(std::span<const std::byte> bytes, st::dtype out) {
    const auto scan = [&]<class T>(T exponent) -> std::size_t {  // T: the element's bits; exponent: all ones
        const std::size_t n = bytes.size() / sizeof(T);
        const auto v = [&](std::size_t i) {  // memcpy of a constant size: any alignment, still vectorized
            T x;
            std::memcpy(&x, bytes.data() + i * sizeof(T), sizeof(T));
            return x;
        };
        const T lowest = exponent & static_cast<T>(~exponent + 1u);
        const T sign = static_cast<T>(exponent + lowest);
        constexpr std::size_t chunk = 4096;
        for (std::size_t i0 = 0; i0 < n; i0 += chunk) {
            const std::size_t i1 = std::min(n, i0 + chunk);
            // (x & exponent) + its lowest bit carries into the sign bit exactly when the exponent
            // is all ones: and, add, or per element, which vectorizes on any x86-64 (the bool
            // reduction `bad |= (x & e) == e` ran at 1.5 G values/s).
            T carries = 0;
            for (std::size_t i = i0; i < i1; ++i) carries |= static_cast<T>((v(i) & exponent) + lowest);
            if ((carries & sign) == 0) continue;
            std::size_t i = i0;
            while ((v(i) & exponent) != exponent) ++i;
            return i;
        }
        return std::string::npos;
    };
    if (out == sdt::F32) return scan(std::uint32_t{0x7F800000u});
    return scan(static_cast<std::uint16_t>(out == sdt::BF16 ? 0x7F80u : 0x7C00u));
}

[[noreturn]] void fail_non_finite(const quantized_weight& q, std::size_t i, st::dtype out) {
    const auto cols = static_cast<std::size_t>(q.cols());
    throw io_error("weight '" + q.name + "': dequantized value [" + std::to_string(i / cols) + ", " +
                   std::to_string(i % cols) + "] is not finite in " + std::string(st::to_string(out)));
}

// Lowers `first` to i.
void keep_lowest(std::atomic<std::size_t>& first, std::size_t i) {
    for (std::size_t seen = first.load(); i < seen && !first.compare_exchange_weak(seen, i);) {
    }
}

}  // namespace

void dequantize_weight_into(const quantized_weight& q, st::dtype out, std::span<std::byte> dst, thread_pool* pool) {
    const element type = dequantized_type(out);
    const std::size_t n = element_count(q), item = st::itemsize(out);
    if (dst.size() != n * item)  // (a bad shape: the reference throws before writing)
        throw std::invalid_argument("dequantize: weight '" + q.name + "' needs " + std::to_string(n * item) +
                                    " bytes, the buffer has " + std::to_string(dst.size()));
    kernels::dequantize_checkpoint(q.data, type, dst.data(), pool);
    // The scan on the pool (a third of a bnb dequantize's time when it ran on one thread after the
    // kernel), in chunks; the first bad value of the whole tensor is the one reported.
    constexpr std::size_t chunk = 1 << 16;
    std::atomic<std::size_t> first_bad{n};
    const auto scan = [&](std::int64_t c0, std::int64_t c1) {
        for (auto c = static_cast<std::size_t>(c0); c < static_cast<std::size_t>(c1); ++c) {
            const std::size_t i0 = c * chunk, i1 = std::min(n, i0 + chunk);
            if (const std::size_t i = first_non_finite(dst.subspan(i0 * item, (i1 - i0) * item), out); i != std::string::npos)
                return keep_lowest(first_bad, i0 + i);
        }
    };
    const auto chunks = static_cast<std::int64_t>((n + chunk - 1) / chunk);
    if (pool != nullptr) pool->parallel_for(0, chunks, 1, scan);
    else scan(0, chunks);
    if (const std::size_t i = first_bad.load(); i < n) fail_non_finite(q, i, out);
}

void dequantize_weight_pieces(const quantized_weight& q, st::dtype out, thread_pool* pool,
                              const std::function<void(std::span<const std::byte>)>& ready) {
    const element type = dequantized_type(out);
    const std::size_t n = element_count(q);
    // Each piece is scanned by the thread that made it, while it is in cache; the first bad value
    // of the tensor is reported before the piece holding it is handed over (every earlier piece
    // was made and scanned by then).
    std::atomic<std::size_t> first_bad{n};
    kernels::dequantize_in_pieces(
        q.data, type, pool, staged_file::write_piece / st::itemsize(out),
        [&](const kernels::dequantized_piece& p) {
            if (const std::size_t i = first_non_finite(p.bytes, out); i != std::string::npos) keep_lowest(first_bad, p.first + i);
        },
        [&](const kernels::dequantized_piece& p) {
            if (const std::size_t i = first_bad.load(); i < p.first + p.count) fail_non_finite(q, i, out);
            ready(p.bytes);
        });
}

std::vector<std::byte> dequantize_weight(const quantized_weight& q, st::dtype out, thread_pool* pool) {
    const std::size_t n = q.rows() > 0 && q.cols() > 0 ? static_cast<std::size_t>(q.rows()) * static_cast<std::size_t>(q.cols()) : 0;
    std::vector<std::byte> bytes(n * (out == sdt::F32 ? 4 : 2));
    dequantize_weight_into(q, out, bytes, pool);
    return bytes;
}

// ---- conversions -----------------------------------------------------------------------------

ref::gptq_tensor convert_gptq(const ref::gptq_tensor& t, bool to_v2) {
    ref::gptq_tensor out = t;
    out.v2 = to_v2;
    if (t.v2 == to_v2) return out;
    const auto n = static_cast<std::size_t>(t.rows);
    const std::size_t words = n * static_cast<std::size_t>(t.bits) / 32;
    for (std::size_t first = 0; first < t.qzeros.size(); first += words) {
        std::vector<std::uint8_t> fields(n);
        unpack_gptq_line(t.bits, t.qzeros, first, 1, fields);
        for (std::uint8_t& f : fields)
            f = static_cast<std::uint8_t>(gptq_zero_field(t.bits, gptq_zero_from_field(t.bits, f, t.v2), to_v2));
        pack_gptq_line(t.bits, fields, out.qzeros, first, 1);
    }
    return out;
}

ref::gptq_tensor awq_to_gptq(const ref::awq_tensor& t, bool v2, thread_pool* pool) {
    if (t.rows % 32 != 0 || t.cols % 32 != 0)
        throw std::invalid_argument("AWQ -> GPTQ: shape [" + std::to_string(t.rows) + ", " + std::to_string(t.cols) +
                                    "] needs N and K to be multiples of 32 (GPTQ packs 32 codes per run)");
    constexpr int bits = 4;
    const auto n = static_cast<std::size_t>(t.rows), k = static_cast<std::size_t>(t.cols);
    const auto gs = static_cast<std::size_t>(t.group);
    const std::size_t groups = k / gs, awq_words = n / awq_pack_codes;
    // Column c of AWQ row r (a qweight row is one input feature, a qzeros row one group).
    const auto awq_at = [&](const std::vector<std::int32_t>& words, std::size_t r, std::size_t c) {
        return static_cast<std::uint8_t>(awq_code(static_cast<std::uint32_t>(words[r * awq_words + c / awq_pack_codes]),
                                                  static_cast<int>(c % awq_pack_codes)));
    };
    ref::gptq_tensor g;
    g.rows = t.rows;
    g.cols = t.cols;
    g.bits = bits;
    g.group = t.group;
    g.v2 = v2;
    g.sym = false;
    g.qweight.assign(k * bits / 32 * n, 0);
    // A transpose of 8 x 8 blocks of codes: an AWQ word holds 8 output columns of one input row,
    // a 4-bit GPTQ word 8 input rows of one column (row 8j + i at bits 4i of word [j, c]). Eight
    // AWQ rows are read side by side and one GPTQ row of words is written in order; blocks of rows
    // go to the pool. (A column at a time through pack_gptq_line took 2.4 s of CPU per 361 MB
    // model: every word read was a cache line apart.)
    static_assert(awq_pack_codes == 8 && 32 / bits == 8);
    const auto transpose = [&](std::int64_t j0, std::int64_t j1) {
        for (auto j = static_cast<std::size_t>(j0); j < static_cast<std::size_t>(j1); ++j)
            for (std::size_t cw = 0; cw < awq_words; ++cw) {
                std::uint32_t rows[8];
                for (std::size_t i = 0; i < 8; ++i) rows[i] = static_cast<std::uint32_t>(t.qweight[(8 * j + i) * awq_words + cw]);
                for (std::size_t c = 0; c < awq_pack_codes; ++c) {
                    std::uint32_t word = 0;
                    for (std::size_t i = 0; i < 8; ++i) word |= awq_code(rows[i], static_cast<int>(c)) << (4 * i);
                    g.qweight[j * n + cw * awq_pack_codes + c] = static_cast<std::int32_t>(word);
                }
            }
    };
    if (pool != nullptr) pool->parallel_for(0, static_cast<std::int64_t>(k / 8), 1, transpose);
    else transpose(0, static_cast<std::int64_t>(k / 8));
    std::vector<std::uint8_t> line(n);
    const std::size_t zero_words = n * bits / 32;
    g.qzeros.assign(groups * zero_words, 0);
    for (std::size_t r = 0; r < groups; ++r) {
        for (std::size_t c = 0; c < n; ++c)
            line[c] = static_cast<std::uint8_t>(gptq_zero_field(bits, awq_at(t.qzeros, r, c), v2));  // AWQ stores z as is
        pack_gptq_line(bits, line, g.qzeros, r * zero_words, 1);
    }
    g.scales = t.scales;  // both [G, N]
    g.g_idx.resize(k);
    for (std::size_t i = 0; i < k; ++i) g.g_idx[i] = static_cast<std::int32_t>(i / gs);
    return g;
}

quantized_weight convert(const quantized_weight& q, layout target, thread_pool* pool) {
    if (!is_gptq(target))
        throw std::invalid_argument("convert: the target layout " + std::string(qforge::to_string(target)) +
                                    " is not gptq or gptq_v2");
    const bool v2 = target == layout::gptq_v2;
    quantized_weight out;
    out.name = q.name;
    out.shape = q.shape;
    try {
        if (const auto* g = std::get_if<ref::gptq_tensor>(&q.data)) {
            out.data = convert_gptq(*g, v2);
            out.cfg = q.cfg;
        } else if (const auto* a = std::get_if<ref::awq_tensor>(&q.data)) {
            out.data = awq_to_gptq(*a, v2, pool);
            out.cfg = config{qforge::dtype::int_asym, 4, q.cfg.group, false, target, q.cfg.act};
        } else {
            throw std::invalid_argument("convert handles GPTQ and AWQ weights, not " +
                                        std::string(to_string(method_of(q.cfg.storage))));
        }
    } catch (const std::invalid_argument& e) {
        throw io_error("weight '" + q.name + "': " + e.what());
    }
    out.cfg.storage = target;
    return out;
}

// ---- small pieces ----------------------------------------------------------------------------

std::string python_float_repr(double x) {
    if (std::isnan(x)) return "NaN";  // what json.dumps writes
    if (std::isinf(x)) return x > 0 ? "Infinity" : "-Infinity";
    // Shortest round-trip digits d.ddd and exponent e: x = d.ddd * 10^e.
    std::array<char, 64> buf{};
    const auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), x, std::chars_format::scientific);
    std::string_view s(buf.data(), static_cast<std::size_t>(end - buf.data()));
    std::string out;
    if (s.front() == '-') {
        out = "-";
        s.remove_prefix(1);
    }
    const std::size_t e_pos = s.find('e');
    std::string digits;
    for (const char c : s.substr(0, e_pos))
        if (c != '.') digits += c;
    int exponent = 0;
    const std::string_view exponent_text = s.substr(e_pos + 1);
    std::from_chars(exponent_text.data() + (exponent_text.front() == '+' ? 1 : 0),
                    exponent_text.data() + exponent_text.size(), exponent);
    // Python's repr: fixed notation when -4 <= exponent < 16, always with a fractional part.
    if (exponent < -4 || exponent >= 16) {
        out += digits.substr(0, 1);
        if (digits.size() > 1) out += "." + digits.substr(1);
        const std::string e = std::to_string(std::abs(exponent));
        out += std::string(exponent < 0 ? "e-" : "e+") + (e.size() < 2 ? "0" : "") + e;
    } else if (exponent < 0) {
        out += "0." + std::string(static_cast<std::size_t>(-exponent - 1), '0') + digits;
    } else {
        const auto whole = static_cast<std::size_t>(exponent) + 1;
        if (digits.size() <= whole)
            out += digits + std::string(whole - digits.size(), '0') + ".0";
        else
            out += digits.substr(0, whole) + "." + digits.substr(whole);
    }
    return out;
}

std::string bnb_quant_state_json(const ref::bnb4_tensor& t, st::dtype original) {
    // json.dumps of bitsandbytes' QuantState.as_dict(packed=True) non-tensor items, in its order.
    std::string s = "{\"quant_type\": \"" + std::string(t.type == qforge::dtype::nf4 ? "nf4" : "fp4") +
                    "\", \"blocksize\": " + std::to_string(t.blocksize) + ", \"dtype\": \"" +
                    std::string(torch_dtype_name(original)) + "\", \"shape\": [" + std::to_string(t.rows) + ", " +
                    std::to_string(t.cols) + "]";
    if (t.nested)
        s += ", \"nested_blocksize\": " + std::to_string(nested_blocksize) +
             ", \"nested_dtype\": \"float32\", \"nested_offset\": " + python_float_repr(static_cast<double>(t.nested_offset));
    return s + "}";
}

namespace {
constexpr std::array<std::pair<st::dtype, std::string_view>, 6> torch_names{{
    {st::dtype::F32, "float32"},
    {st::dtype::BF16, "bfloat16"},
    {st::dtype::F16, "float16"},
    {st::dtype::F64, "float64"},
    {st::dtype::U8, "uint8"},
    {st::dtype::I8, "int8"},
}};
}  // namespace

std::string_view torch_dtype_name(st::dtype t) {
    for (const auto& [d, name] : torch_names)
        if (d == t) return name;
    throw std::invalid_argument("no torch dtype name for " + std::string(st::to_string(t)));
}

std::optional<st::dtype> dtype_of_torch_name(std::string_view name) {
    for (const auto& [d, n] : torch_names)
        if (n == name) return d;
    return std::nullopt;
}

}  // namespace qforge::checkpoint

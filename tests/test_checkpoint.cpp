// Checkpoint layouts (io/checkpoint.hpp): round trips through files for every method, byte
// identity of import -> export, golden words and bytes from formats.md, validation errors,
// and the lossless GPTQ/AWQ conversions.
#include <qforge/config/aliases.hpp>
#include <qforge/config/name.hpp>
#include <qforge/format/tables.hpp>
#include <qforge/io/checkpoint.hpp>
#include <qforge/parallel.hpp>
#include <qforge/reference/reference.hpp>
#include <qforge/synthetic.hpp>

#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <set>
#include <string>
#include <tuple>
#include <vector>

using namespace qforge;
namespace ck = qforge::checkpoint;
namespace st = qforge::safetensors;
namespace fs = std::filesystem;
using sdt = st::dtype;

namespace {

// A fresh directory per test case, removed afterwards.
struct temp_dir {
    fs::path path;
    temp_dir() {
        static std::atomic<int> counter{0};
        path = fs::temp_directory_path() /
               ("qforge_test_checkpoint_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
        fs::create_directories(path);
    }
    ~temp_dir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    fs::path operator/(const std::string& name) const { return path / name; }
};

std::vector<std::byte> file_bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    const std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::byte> out(chars.size());
    std::memcpy(out.data(), chars.data(), chars.size());
    return out;
}

// Bitwise equality of f32 vectors (so -0.0 and NaN patterns count).
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::vector<float> weights(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
    return synthetic_weights({.rows = rows, .cols = cols, .seed = seed});
}

// The raw bytes of `w` in dtype t (F32, or RNE to BF16 / F16).
std::vector<std::byte> encode(const std::vector<float>& w, sdt t) {
    const std::size_t item = st::itemsize(t);
    std::vector<std::byte> out(w.size() * item);
    for (std::size_t i = 0; i < w.size(); ++i) {
        if (t == sdt::F32) std::memcpy(&out[i * item], &w[i], 4);
        if (t == sdt::BF16) {
            const bf16 v = to_bf16(w[i]);
            std::memcpy(&out[i * item], &v, 2);
        }
        if (t == sdt::F16) {
            const f16 v = to_f16(w[i]);
            std::memcpy(&out[i * item], &v, 2);
        }
    }
    return out;
}

// What the reference makes of the same input (widened exactly from the stored dtype).
ref::quantized reference(const config& cfg, const std::vector<std::byte>& raw, sdt t, std::int64_t rows,
                         std::int64_t cols, ref::mx_scale_rule rule) {
    const ref::quantize_options opt{"w", rule};
    const auto as = [&]<class T>(T) {
        std::vector<T> v(raw.size() / sizeof(T));
        std::memcpy(v.data(), raw.data(), raw.size());
        return ref::quantize(cfg, std::span<const T>(v), rows, cols, opt);
    };
    if (t == sdt::BF16) return as(bf16{});
    if (t == sdt::F16) return as(f16{});
    return as(float{});
}

const std::string weight_name = "model.layers.0.mlp.down_proj.weight";
const std::string bias_name = "model.layers.0.mlp.down_proj.bias";

// A plain file: the weight and an f16 bias.
void write_plain(const fs::path& p, const std::vector<std::byte>& raw, sdt t, std::int64_t rows, std::int64_t cols) {
    st::writer w;
    w.add(weight_name, t, {rows, cols}, raw);
    std::vector<f16> bias(static_cast<std::size_t>(rows), to_f16(0.25f));
    w.add_owned(bias_name, sdt::F16, {rows}, bias);
    w.set_metadata("format", "pt");
    w.write(p);
}

// Every detected weight re-exported, every other tensor copied: the file's exact bytes.
std::vector<std::byte> reexport(const st::reader& r, const std::optional<config>& expected) {
    const ck::tensor_set s(r);
    const ck::detection d = ck::detect(s);
    REQUIRE(d.orphans.empty());
    std::vector<ck::quantized_weight> kept;
    kept.reserve(d.weights.size());
    std::set<std::string> claimed;
    for (const ck::detected_weight& w : d.weights) {
        kept.push_back(ck::import_weight(s, w, {expected}));
        claimed.insert(w.keys.begin(), w.keys.end());
    }
    st::writer out;
    for (const auto& [k, v] : r.metadata()) out.set_metadata(k, v);
    for (const ck::quantized_weight& q : kept) ck::export_weight(out, q);
    for (const st::tensor_view& v : r.tensors())
        if (!claimed.contains(std::string(v.name))) out.add(v);
    return out.serialize();
}

struct round_trip_case {
    config cfg;
    sdt input;
    std::int64_t rows, cols;
    ck::quantize_settings settings{};
};

void check_round_trip(const round_trip_case& c) {
    INFO(canonical_name(c.cfg) << " from " << st::to_string(c.input) << " [" << c.rows << ", " << c.cols << "]");
    temp_dir dir;
    const std::vector<std::byte> raw = encode(weights(c.rows, c.cols, 7), c.input);
    write_plain(dir / "plain.safetensors", raw, c.input, c.rows, c.cols);
    const ref::quantized expected = reference(c.cfg, raw, c.input, c.rows, c.cols, c.settings.mx_rule);
    const std::vector<float> expected_values = ref::dequantize(expected);

    // quantize -> file
    const st::reader plain(dir / "plain.safetensors");
    const ck::quantized_weight q = ck::quantize_tensor(plain.at(weight_name), c.cfg, c.settings);
    CHECK(q.cfg == c.cfg);
    CHECK(same_bits(ref::dequantize(q.data), expected_values));
    {
        st::writer w;
        w.set_metadata("format", "pt");
        const std::vector<std::string> names = ck::export_weight(w, q);
        CHECK(!names.empty());
        w.add(plain.at(bias_name));
        w.write(dir / "quantized.safetensors");
    }

    // file -> import: detected, same values, same config
    const st::reader r(dir / "quantized.safetensors");
    const ck::tensor_set s(r);
    const ck::detection d = ck::detect(s);
    REQUIRE(d.weights.size() == 1);
    CHECK(d.orphans.empty());
    CHECK(d.weights[0].name == weight_name);
    CHECK(d.weights[0].kind == ck::method_of(c.cfg.storage));
    const ck::quantized_weight back = ck::import_weight(s, d.weights[0], {c.cfg});
    CHECK(back.cfg == c.cfg);
    CHECK(back.shape == st::shape_t{c.rows, c.cols});
    CHECK(same_bits(ref::dequantize(back.data), expected_values));
    // dequantize_weight rounds the same values to the output dtype
    const std::vector<std::byte> as_bf16 = ck::dequantize_weight(back, sdt::BF16);
    CHECK(as_bf16 == encode(expected_values, sdt::BF16));

    // import -> export is byte-identical, with and without the config
    CHECK(reexport(r, c.cfg) == file_bytes(dir / "quantized.safetensors"));
    CHECK(reexport(r, std::nullopt) == file_bytes(dir / "quantized.safetensors"));
}

// Builds a file from (name, dtype, shape, bytes) entries.
struct entry {
    std::string name;
    sdt type;
    st::shape_t shape;
    std::vector<std::byte> bytes;
};
template <class T>
std::vector<std::byte> bytes_of(const std::vector<T>& v) {
    std::vector<std::byte> out(v.size() * sizeof(T));
    if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
    return out;
}
std::vector<std::byte> bytes_of(const std::string& s) {
    std::vector<std::byte> out(s.size());
    std::memcpy(out.data(), s.data(), s.size());
    return out;
}
void write_entries(const fs::path& p, const std::vector<entry>& entries) {
    st::writer w;
    for (const entry& e : entries) w.add(e.name, e.type, e.shape, e.bytes);
    w.write(p);
}

// The entries of an exported weight, to be tampered with.
std::vector<entry> entries_of(const ck::quantized_weight& q) {
    temp_dir dir;
    st::writer w;
    ck::export_weight(w, q);
    w.write(dir / "x.safetensors");
    const st::reader r(dir / "x.safetensors");
    std::vector<entry> out;
    for (const st::tensor_view& v : r.tensors())
        out.push_back({std::string(v.name), v.type, st::shape_t(v.shape.begin(), v.shape.end()),
                       std::vector<std::byte>(v.bytes.begin(), v.bytes.end())});
    return out;
}
void set_text(entry& e, const std::string& text) {
    e.bytes = bytes_of(text);
    e.shape = {static_cast<std::int64_t>(text.size())};
}
entry& find_entry(std::vector<entry>& es, const std::string& name) {
    for (entry& e : es)
        if (e.name == name) return e;
    FAIL("no entry " << name);
    throw std::logic_error("unreachable");
}

ck::quantized_weight quantized(const config& cfg, std::int64_t rows, std::int64_t cols, sdt input = sdt::F32,
                               std::uint64_t seed = 3) {
    temp_dir dir;
    const std::vector<std::byte> raw = encode(weights(rows, cols, seed), input);
    write_plain(dir / "p.safetensors", raw, input, rows, cols);
    const st::reader r(dir / "p.safetensors");
    return ck::quantize_tensor(r.at(weight_name), cfg, {});
}

// An FP8 weight [rows, 300] in 128 x 128 tiles whose scale_inv is replaced by `scale_inv` (finite
// values such as 3e38 overflow): the imported weight, its exact values and the index of the first
// non-finite one.
struct overflowing_weight {
    ck::quantized_weight q;
    std::vector<float> exact;
    std::size_t first;
};
overflowing_weight fp8_overflowing(std::int64_t rows, const std::vector<float>& scale_inv) {
    std::vector<entry> es = entries_of(quantized(configs::fp8_block128, rows, 300));
    find_entry(es, weight_name + "_scale_inv").bytes = bytes_of(scale_inv);
    temp_dir dir;
    write_entries(dir / "f.safetensors", es);
    overflowing_weight w{ck::import_module(st::reader(dir / "f.safetensors"), "model.layers.0.mlp.down_proj"), {}, 0};
    w.exact = ref::dequantize(w.q.data);
    w.first = static_cast<std::size_t>(
        std::find_if(w.exact.begin(), w.exact.end(), [](float v) { return !std::isfinite(v); }) - w.exact.begin());
    return w;
}

// Imports the only weight of a tampered file and returns the error message ("" when accepted).
std::string import_error(const std::vector<entry>& entries, const std::optional<config>& expected = std::nullopt) {
    temp_dir dir;
    write_entries(dir / "bad.safetensors", entries);
    const st::reader r(dir / "bad.safetensors");
    const ck::tensor_set s(r);
    const ck::detection d = ck::detect(s);
    if (d.weights.size() != 1) return "detected " + std::to_string(d.weights.size()) + " weights";
    try {
        (void)ck::import_weight(s, d.weights[0], {expected});
    } catch (const io_error& e) {
        return e.what();
    }
    return "";
}

std::uint32_t word(const std::vector<std::int32_t>& v, std::size_t i) { return static_cast<std::uint32_t>(v[i]); }
std::uint32_t word_at(const std::vector<std::byte>& bytes, std::size_t i) {
    std::uint32_t w = 0;
    std::memcpy(&w, bytes.data() + 4 * i, 4);
    return w;
}

}  // namespace

TEST_CASE("python_float_repr prints what Python's repr prints", "[checkpoint]") {
    // Reference strings: CPython 3 repr() of the same doubles.
    CHECK(ck::python_float_repr(static_cast<double>(0.21f)) == "0.20999999344348907");
    CHECK(ck::python_float_repr(6.0) == "6.0");
    CHECK(ck::python_float_repr(1e-05) == "1e-05");
    CHECK(ck::python_float_repr(1e16) == "1e+16");
    CHECK(ck::python_float_repr(1e15) == "1000000000000000.0");
    CHECK(ck::python_float_repr(0.0001) == "0.0001");
    CHECK(ck::python_float_repr(123.456) == "123.456");
    CHECK(ck::python_float_repr(-0.0) == "-0.0");
    CHECK(ck::python_float_repr(0.0) == "0.0");
    CHECK(ck::python_float_repr(1.5e-300) == "1.5e-300");
    CHECK(ck::python_float_repr(0.1) == "0.1");
    CHECK(ck::python_float_repr(1e22) == "1e+22");
    CHECK(ck::python_float_repr(12345678901234567890.0) == "1.2345678901234567e+19");
    CHECK(ck::python_float_repr(static_cast<double>(0.0123f)) == "0.012299999594688416");
    CHECK(ck::python_float_repr(5e-324) == "5e-324");
    CHECK(ck::python_float_repr(100.0) == "100.0");
    CHECK(ck::python_float_repr(static_cast<double>(3.1e-5f)) == "3.099999958067201e-05");
}

TEST_CASE("bnb quant_state blob: formats.md's text byte for byte", "[checkpoint][golden]") {
    ref::bnb4_tensor t;
    t.type = dtype::nf4;
    t.rows = 4096;
    t.cols = 11008;
    t.blocksize = 64;
    t.nested = true;
    t.nested_offset = 0.21f;
    CHECK(ck::bnb_quant_state_json(t, sdt::BF16) ==
          R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [4096, 11008], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.20999999344348907})");
    t.type = dtype::fp4;
    t.nested = false;
    t.rows = 32;
    t.cols = 64;
    t.blocksize = 128;
    CHECK(ck::bnb_quant_state_json(t, sdt::F16) ==
          R"({"quant_type": "fp4", "blocksize": 128, "dtype": "float16", "shape": [32, 64]})");
}

TEST_CASE("round trips through files for every method", "[checkpoint]") {
    const std::vector<round_trip_case> cases = {
        {configs::qlora_nf4, sdt::BF16, 64, 256},
        {configs::qlora_nf4, sdt::BF16, 300, 257},  // more than 256 blocks: two nested absmax; partial block
        {configs::bnb_fp4, sdt::F16, 33, 65},      // odd N*K: a padded last byte
        {{dtype::nf4, 4, 64, false, layout::bnb4, compute::f32}, sdt::F32, 17, 64},
        {{dtype::fp4, 4, 128, true, layout::bnb4, compute::f32}, sdt::F32, 64, 256},
        {configs::qlora_nf4, sdt::BF16, 64, 256, {.bnb4_storage = sdt::BF16}},
        {configs::qlora_nf4, sdt::BF16, 64, 256, {.bnb4_storage = sdt::F32}},
        {configs::llm_int8, sdt::F32, 48, 96},
        {configs::llm_int8, sdt::F16, 48, 96},
        {configs::gptq_int4_g128, sdt::F16, 64, 256},
        {configs::gptq_int3_g128, sdt::F32, 64, 256},
        {configs::gptq_int8_pc, sdt::BF16, 32, 96},
        {{dtype::int_sym, 2, 64, false, layout::gptq_v1, compute::f32}, sdt::F32, 32, 256},
        {{dtype::int_asym, 4, 32, false, layout::gptq_v2, compute::f32}, sdt::F32, 64, 128},
        {{dtype::int_asym, 3, 64, false, layout::gptq_v1, compute::f32}, sdt::F32, 96, 128},
        {{dtype::int_asym, 8, per_channel, false, layout::gptq_v2, compute::f32}, sdt::F32, 32, 64},
        {configs::awq_int4_g128, sdt::F16, 64, 256},
        {{dtype::int_asym, 4, 32, false, layout::awq_gemm, compute::f32}, sdt::F32, 24, 96},
        {configs::fp8_block128, sdt::BF16, 200, 300},  // partial edge tiles
        {configs::fp8_block128, sdt::F32, 128, 128},
        {configs::mxfp4, sdt::BF16, 40, 96},
        {configs::mxfp4, sdt::F32, 8, 64, {.mx_rule = ref::mx_scale_rule::round_up}},
    };
    for (const round_trip_case& c : cases) check_round_trip(c);
}

TEST_CASE("bnb 4-bit keys, dtypes and shapes; quant_storage reinterpretation", "[checkpoint][golden]") {
    // One block of 64: [1, -1, 0, ...]: NF4 codes 15, 0, 7, 7, ... packed high nibble first.
    std::vector<float> w(64, 0.0f);
    w[0] = 1.0f;
    w[1] = -1.0f;
    temp_dir dir;
    write_plain(dir / "p.safetensors", encode(w, sdt::F32), sdt::F32, 1, 64);
    const st::reader plain(dir / "p.safetensors");
    const config nf4_plain{dtype::nf4, 4, 64, false, layout::bnb4, compute::f32};
    const std::vector<entry> es = entries_of(ck::quantize_tensor(plain.at(weight_name), nf4_plain, {}));
    REQUIRE(es.size() == 4);
    std::vector<entry> sorted = es;
    std::ranges::sort(sorted, {}, &entry::name);
    CHECK(sorted[0].name == weight_name);
    CHECK(sorted[0].type == sdt::U8);
    CHECK(sorted[0].shape == st::shape_t{32, 1});
    CHECK(sorted[0].bytes[0] == std::byte{0xF0});
    for (std::size_t i = 1; i < 32; ++i) CHECK(sorted[0].bytes[i] == std::byte{0x77});
    CHECK(sorted[1].name == weight_name + ".absmax");
    CHECK(sorted[1].type == sdt::F32);
    CHECK(sorted[1].shape == st::shape_t{1});
    CHECK(sorted[1].bytes == bytes_of(std::vector<float>{1.0f}));
    CHECK(sorted[2].name == weight_name + ".quant_map");
    CHECK(sorted[2].bytes == bytes_of(std::vector<float>(nf4_table.begin(), nf4_table.end())));
    CHECK(sorted[3].name == weight_name + ".quant_state.bitsandbytes__nf4");
    CHECK(sorted[3].bytes ==
          bytes_of(std::string(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [1, 64]})")));

    // Nested: every block's absmax is 0.5, so the offset is exactly 0.5.
    std::vector<float> halves(4 * 64, 0.0f);
    for (std::size_t b = 0; b < 4; ++b) halves[b * 64 + 3] = b % 2 ? 0.5f : -0.5f;
    write_plain(dir / "h.safetensors", encode(halves, sdt::BF16), sdt::BF16, 4, 64);
    const st::reader h(dir / "h.safetensors");
    std::vector<entry> nested = entries_of(ck::quantize_tensor(h.at(weight_name), configs::qlora_nf4, {.bnb4_storage = sdt::F16}));
    CHECK(find_entry(nested, weight_name).type == sdt::F16);
    CHECK(find_entry(nested, weight_name).shape == st::shape_t{64, 1});  // 128 bytes as 64 float16
    CHECK(find_entry(nested, weight_name + ".absmax").type == sdt::U8);
    CHECK(find_entry(nested, weight_name + ".absmax").shape == st::shape_t{4});
    CHECK(find_entry(nested, weight_name + ".nested_absmax").shape == st::shape_t{1});
    CHECK(find_entry(nested, weight_name + ".nested_quant_map").bytes ==
          bytes_of(std::vector<float>(dynamic_map.begin(), dynamic_map.end())));
    CHECK(find_entry(nested, weight_name + ".quant_state.bitsandbytes__nf4").bytes ==
          bytes_of(std::string(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [4, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.5})")));

    // 3 packed bytes cannot be float16 storage: refused when quantizing, and when reading.
    write_plain(dir / "odd.safetensors", encode(std::vector<float>(6, 1.0f), sdt::F32), sdt::F32, 2, 3);
    const st::reader odd(dir / "odd.safetensors");
    CHECK_THROWS_WITH(ck::quantize_tensor(odd.at(weight_name), nf4_plain, {.bnb4_storage = sdt::F16}),
                      Catch::Contains(weight_name) && Catch::Contains("not a multiple"));
    std::vector<entry> bad = entries_of(ck::quantize_tensor(odd.at(weight_name), nf4_plain, {}));
    find_entry(bad, weight_name) = {weight_name, sdt::F16, {1, 1}, std::vector<std::byte>(2)};
    CHECK_THAT(import_error(bad), Catch::Contains(weight_name) && Catch::Contains("3 packed bytes") &&
                                      Catch::Contains("not a multiple of the 2-byte"));
}

TEST_CASE("the stored quant_map and nested_quant_map are what dequantization uses", "[checkpoint]") {
    const ck::quantized_weight q = quantized(configs::qlora_nf4, 8, 64);
    std::vector<entry> es = entries_of(q);
    // Double every code value and every nested code value: absmax doubles, then every element.
    auto scaled = [](entry& e, std::size_t n) {
        std::vector<float> v(n);
        std::memcpy(v.data(), e.bytes.data(), 4 * n);
        for (float& x : v) x *= 2.0f;
        e.bytes = bytes_of(v);
    };
    scaled(find_entry(es, weight_name + ".quant_map"), 16);
    temp_dir dir;
    write_entries(dir / "m.safetensors", es);
    const st::reader r(dir / "m.safetensors");
    const ck::tensor_set s(r);
    const ck::quantized_weight back = ck::import_weight(s, ck::detect(s).weights.at(0));
    const std::vector<float> a = ref::dequantize(q.data), b = ref::dequantize(back.data);
    for (std::size_t i = 0; i < a.size(); ++i) CHECK(b[i] == 2.0f * a[i]);
}

TEST_CASE("bnb 8-bit keys: int8 weight, SCB, scalar weight_format 0", "[checkpoint][golden]") {
    std::vector<float> w{1.0f, -0.5f, 0.25f, 0.0f, 2.0f, -4.0f, 1.0f, 0.5f};
    temp_dir dir;
    write_plain(dir / "p.safetensors", encode(w, sdt::F32), sdt::F32, 2, 4);
    const st::reader r(dir / "p.safetensors");
    std::vector<entry> es = entries_of(ck::quantize_tensor(r.at(weight_name), configs::llm_int8, {}));
    const entry& weight = find_entry(es, weight_name);
    CHECK(weight.type == sdt::I8);
    CHECK(weight.shape == st::shape_t{2, 4});
    // RNE(w * 127 / rowmax): 127, -64 (63.5 ties to even), 32 (31.75), 0 | 64 (63.5), -127, 32 (31.75), 16 (15.875)
    CHECK(weight.bytes == bytes_of(std::vector<std::int8_t>{127, -64, 32, 0, 64, -127, 32, 16}));
    const entry& scb = find_entry(es, "model.layers.0.mlp.down_proj.SCB");
    CHECK(scb.type == sdt::F32);
    CHECK(scb.bytes == bytes_of(std::vector<float>{1.0f, 4.0f}));
    const entry& format = find_entry(es, "model.layers.0.mlp.down_proj.weight_format");
    CHECK(format.type == sdt::U8);
    CHECK(format.shape.empty());
    CHECK(format.bytes == std::vector<std::byte>{std::byte{0}});

    find_entry(es, "model.layers.0.mlp.down_proj.weight_format").bytes = {std::byte{1}};
    CHECK_THAT(import_error(es), Catch::Contains("weight_format") && Catch::Contains("row layout (0)"));
}

TEST_CASE("GPTQ golden words: sym zeros 0x77777777 / 0x88888888, 4-bit and 3-bit packing", "[checkpoint][golden]") {
    const ck::quantized_weight v1 = quantized(configs::gptq_int4_g128, 64, 256);
    const auto& t1 = std::get<ref::gptq_tensor>(v1.data);
    for (std::size_t i = 0; i < t1.qzeros.size(); ++i) CHECK(word(t1.qzeros, i) == 0x77777777u);
    std::vector<entry> es = entries_of(v1);
    CHECK(find_entry(es, "model.layers.0.mlp.down_proj.qweight").type == sdt::I32);
    CHECK(find_entry(es, "model.layers.0.mlp.down_proj.qweight").shape == st::shape_t{32, 64});  // [K*4/32, N]
    CHECK(find_entry(es, "model.layers.0.mlp.down_proj.qzeros").shape == st::shape_t{2, 8});     // [G, N*4/32]
    CHECK(find_entry(es, "model.layers.0.mlp.down_proj.scales").type == sdt::F16);
    CHECK(find_entry(es, "model.layers.0.mlp.down_proj.scales").shape == st::shape_t{2, 64});
    CHECK(find_entry(es, "model.layers.0.mlp.down_proj.g_idx").type == sdt::I32);
    std::vector<std::int32_t> g_idx(256);
    for (std::size_t k = 0; k < 256; ++k) g_idx[k] = static_cast<std::int32_t>(k / 128);
    CHECK(find_entry(es, "model.layers.0.mlp.down_proj.g_idx").bytes == bytes_of(g_idx));
    const config v2cfg{dtype::int_sym, 4, 128, false, layout::gptq_v2, compute::f32};
    const auto t2 = std::get<ref::gptq_tensor>(quantized(v2cfg, 64, 256).data);
    for (std::size_t i = 0; i < t2.qzeros.size(); ++i) CHECK(word(t2.qzeros, i) == 0x88888888u);

    // asym 4-bit, one column of values k % 16 - 8 per group of 32: scale 1, zero 8, codes k % 16.
    const auto column = [](std::int64_t rows, std::int64_t cols, int levels) {
        std::vector<float> w(static_cast<std::size_t>(rows * cols));
        for (std::int64_t n = 0; n < rows; ++n)
            for (std::int64_t k = 0; k < cols; ++k)
                w[static_cast<std::size_t>(n * cols + k)] = static_cast<float>(k % levels - levels / 2);
        return w;
    };
    temp_dir dir;
    write_plain(dir / "a.safetensors", encode(column(32, 32, 16), sdt::F32), sdt::F32, 32, 32);
    const st::reader a(dir / "a.safetensors");
    const auto t4 = std::get<ref::gptq_tensor>(
        ck::quantize_tensor(a.at(weight_name), {dtype::int_asym, 4, 32, false, layout::gptq_v1, compute::f32}, {}).data);
    CHECK(word(t4.qweight, 0) == 0x76543210u);   // qweight[0, 0]: k = 0..7
    CHECK(word(t4.qweight, 32) == 0xFEDCBA98u);  // qweight[1, 0]: k = 8..15
    CHECK(word(t4.qzeros, 0) == 0x77777777u);    // z = 8 stored as 7
    // 3-bit, values k % 8 - 4: scale 1, zero 4, codes k % 8 -> A, B, C of formats.md §3.
    write_plain(dir / "b.safetensors", encode(column(32, 32, 8), sdt::F32), sdt::F32, 32, 32);
    const st::reader b(dir / "b.safetensors");
    const auto t3 = std::get<ref::gptq_tensor>(
        ck::quantize_tensor(b.at(weight_name), {dtype::int_asym, 3, 32, false, layout::gptq_v1, compute::f32}, {}).data);
    CHECK(word(t3.qweight, 0) == 0x88FAC688u);
    CHECK(word(t3.qweight, 32) == 0xC688FAC6u);
    CHECK(word(t3.qweight, 64) == 0xFAC688FAu);
}

TEST_CASE("AWQ golden: columns 0..7 valued 0..7 pack to 0x75316420; keys and shapes", "[checkpoint][golden]") {
    // Row n of group 0: w[n, 0] = n/16, and the group spans [0, 15/16]: scale 1/16, zero 0, code n.
    constexpr std::int64_t rows = 8, cols = 32;
    std::vector<float> w(rows * cols, 0.0f);
    for (std::int64_t n = 0; n < rows; ++n) {
        w[static_cast<std::size_t>(n * cols)] = static_cast<float>(n) / 16.0f;
        w[static_cast<std::size_t>(n * cols + 1)] = 15.0f / 16.0f;
    }
    temp_dir dir;
    write_plain(dir / "p.safetensors", encode(w, sdt::F32), sdt::F32, rows, cols);
    const st::reader r(dir / "p.safetensors");
    const config awq32{dtype::int_asym, 4, 32, false, layout::awq_gemm, compute::f32};
    std::vector<entry> es = entries_of(ck::quantize_tensor(r.at(weight_name), awq32, {}));
    REQUIRE(es.size() == 3);
    const entry& qweight = find_entry(es, "model.layers.0.mlp.down_proj.qweight");
    CHECK(qweight.type == sdt::I32);
    CHECK(qweight.shape == st::shape_t{32, 1});  // [K, N/8]
    CHECK(word_at(qweight.bytes, 0) == 0x75316420u);
    CHECK(find_entry(es, "model.layers.0.mlp.down_proj.qzeros").shape == st::shape_t{1, 1});
    CHECK(find_entry(es, "model.layers.0.mlp.down_proj.qzeros").bytes == bytes_of(std::vector<std::int32_t>{0}));
    CHECK(find_entry(es, "model.layers.0.mlp.down_proj.scales").type == sdt::F16);
    CHECK(find_entry(es, "model.layers.0.mlp.down_proj.scales").shape == st::shape_t{1, 8});
}

TEST_CASE("FP8 and MXFP4 keys, dtypes and shapes", "[checkpoint][golden]") {
    // FP8: amax 448 gives scale 1: codes are the E4M3 encodings; scale_inv 1 per 128x128 tile.
    std::vector<float> w(130 * 4, 0.0f);
    w[0] = 448.0f;
    w[1] = -2.0f;
    w[2] = 1.0f;
    temp_dir dir;
    write_plain(dir / "p.safetensors", encode(w, sdt::F32), sdt::F32, 130, 4);
    const st::reader r(dir / "p.safetensors");
    std::vector<entry> es = entries_of(ck::quantize_tensor(r.at(weight_name), configs::fp8_block128, {}));
    const entry& codes = find_entry(es, weight_name);
    CHECK(codes.type == sdt::F8_E4M3);
    CHECK(codes.shape == st::shape_t{130, 4});
    CHECK(codes.bytes[0] == std::byte{0x7E});
    CHECK(codes.bytes[1] == std::byte{0xC0});
    CHECK(codes.bytes[2] == std::byte{0x38});
    const entry& scale_inv = find_entry(es, weight_name + "_scale_inv");
    CHECK(scale_inv.type == sdt::F32);
    CHECK(scale_inv.shape == st::shape_t{2, 1});
    CHECK(scale_inv.bytes == bytes_of(std::vector<float>{1.0f, 1.0f}));  // the all-zero edge tile stores 1

    // MXFP4: block [6, -0.5, 0, ...]: exponent 0 (scale byte 127), codes 7 and 9, low nibble first.
    std::vector<float> m(2 * 32, 0.0f);
    m[0] = 6.0f;
    m[1] = -0.5f;
    write_plain(dir / "m.safetensors", encode(m, sdt::F32), sdt::F32, 2, 32);
    const st::reader mr(dir / "m.safetensors");
    std::vector<entry> mx = entries_of(ck::quantize_tensor(mr.at(weight_name), configs::mxfp4, {}));
    REQUIRE(mx.size() == 2);
    const entry& blocks = find_entry(mx, "model.layers.0.mlp.down_proj.weight_blocks");
    CHECK(blocks.type == sdt::U8);
    CHECK(blocks.shape == st::shape_t{2, 1, 16});
    CHECK(blocks.bytes[0] == std::byte{0x97});
    const entry& scales = find_entry(mx, "model.layers.0.mlp.down_proj.weight_scales");
    CHECK(scales.shape == st::shape_t{2, 1});
    CHECK(scales.bytes == std::vector<std::byte>{std::byte{127}, std::byte{0}});
}

TEST_CASE("MXFP4 with gpt-oss expert dimensions: detected, imported and exported as is", "[checkpoint]") {
    const ck::quantized_weight flat = quantized(configs::mxfp4, 2 * 16, 64);
    ck::quantized_weight experts = flat;
    experts.name = "model.layers.0.mlp.experts.gate_up_proj";
    experts.shape = {2, 16, 64};
    std::vector<entry> es = entries_of(experts);
    CHECK(find_entry(es, "model.layers.0.mlp.experts.gate_up_proj_blocks").shape == st::shape_t{2, 16, 2, 16});
    CHECK(find_entry(es, "model.layers.0.mlp.experts.gate_up_proj_scales").shape == st::shape_t{2, 16, 2});
    temp_dir dir;
    write_entries(dir / "e.safetensors", es);
    const st::reader r(dir / "e.safetensors");
    const ck::tensor_set s(r);
    const ck::detection d = ck::detect(s);
    REQUIRE(d.weights.size() == 1);
    CHECK(d.weights[0].name == "model.layers.0.mlp.experts.gate_up_proj");
    const ck::quantized_weight back = ck::import_weight(s, d.weights[0]);
    CHECK(back.shape == st::shape_t{2, 16, 64});
    CHECK(same_bits(ref::dequantize(back.data), ref::dequantize(flat.data)));
    CHECK(reexport(r, std::nullopt) == file_bytes(dir / "e.safetensors"));
}

TEST_CASE("import validates every tensor against the others, naming it", "[checkpoint][errors]") {
    const std::string p = "model.layers.0.mlp.down_proj";
    SECTION("GPTQ") {
        const std::vector<entry> good = entries_of(quantized(configs::gptq_int4_g128, 64, 256));
        CHECK(import_error(good).empty());
        std::vector<entry> es = good;
        std::erase_if(es, [&](const entry& e) { return e.name == p + ".g_idx"; });
        CHECK_THAT(import_error(es), Catch::Contains(p + ".qweight") && Catch::Contains("'" + p + ".g_idx' is missing"));
        es = good;
        find_entry(es, p + ".scales") = {p + ".scales", sdt::F32, {2, 64}, std::vector<std::byte>(2 * 64 * 4)};
        CHECK_THAT(import_error(es), Catch::Contains(p + ".scales") && Catch::Contains("dtype is F32, expected F16"));
        es = good;
        std::vector<std::int32_t> g(256, 0);
        g[3] = 99;
        find_entry(es, p + ".g_idx").bytes = bytes_of(g);
        CHECK_THAT(import_error(es), Catch::Contains(p + ".g_idx") && Catch::Contains("g_idx[3] = 99 is outside [0, 2)"));
        es = good;
        find_entry(es, p + ".qzeros") = {p + ".qzeros", sdt::I32, {2, 5}, std::vector<std::byte>(2 * 5 * 4)};
        CHECK_THAT(import_error(es), Catch::Contains(p + ".qzeros") && Catch::Contains("[2, 5]"));
        es = good;
        find_entry(es, p + ".qweight") = {p + ".qweight", sdt::I32, {31, 64}, std::vector<std::byte>(31 * 64 * 4)};
        CHECK_THAT(import_error(es), Catch::Contains(p + ".qweight") && Catch::Contains("[31, 64]"));
        // The config must agree with what the tensors say.
        CHECK_THAT(import_error(good, configs::qlora_nf4),
                   Catch::Contains("stored as gptq, but the quantization_config is bnb 4-bit"));
        CHECK_THAT(import_error(good, config{dtype::int_sym, 4, 64, false, layout::gptq_v1, compute::f32}),
                   Catch::Contains(p + ".scales") && Catch::Contains("group_size 64"));
        CHECK_THAT(import_error(good, config{dtype::int_sym, 8, 128, false, layout::gptq_v1, compute::f32}),
                   Catch::Contains("4-bit zeros") && Catch::Contains("bits 8"));
    }
    SECTION("AWQ") {
        const std::vector<entry> good = entries_of(quantized(configs::awq_int4_g128, 64, 256));
        CHECK(import_error(good).empty());
        std::vector<entry> es = good;
        find_entry(es, p + ".qzeros") = {p + ".qzeros", sdt::I32, {3, 8}, std::vector<std::byte>(3 * 8 * 4)};
        CHECK_THAT(import_error(es), Catch::Contains(p + ".qzeros") && Catch::Contains("[K/group, N/8]"));
        std::erase_if(es, [&](const entry& e) { return e.name == p + ".qzeros"; });
        CHECK_THAT(import_error(es), Catch::Contains("'" + p + ".qzeros' is missing"));
        CHECK_THAT(import_error(good, config{dtype::int_asym, 4, 64, false, layout::awq_gemm, compute::f32}),
                   Catch::Contains("group_size 64"));
    }
    SECTION("bnb 4-bit") {
        const std::vector<entry> good = entries_of(quantized(configs::qlora_nf4, 8, 64));
        const std::string blob = weight_name + ".quant_state.bitsandbytes__nf4";
        std::vector<entry> es = good;
        set_text(find_entry(es, blob), std::string("{\"quant_type\": \"nf4\""));
        CHECK_THAT(import_error(es), Catch::Contains(blob) && Catch::Contains("not valid JSON"));
        es = good;
        set_text(find_entry(es, blob), std::string(
            R"({"quant_type": "fp4", "blocksize": 64, "dtype": "float32", "shape": [8, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.5})"));
        CHECK_THAT(import_error(es), Catch::Contains("contradicts the key's suffix"));
        es = good;
        set_text(find_entry(es, blob), std::string(
            R"({"quant_type": "nf4", "blocksize": 48, "dtype": "float32", "shape": [8, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.5})"));
        CHECK_THAT(import_error(es), Catch::Contains("\"blocksize\" 48"));
        es = good;
        set_text(find_entry(es, blob), std::string(
            R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [8, 128], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.5})"));
        CHECK_THAT(import_error(es), Catch::Contains("'" + weight_name + "'") && Catch::Contains("expected [512, 1]"));
        es = good;
        std::erase_if(es, [&](const entry& e) { return e.name == weight_name + ".nested_quant_map"; });
        CHECK_THAT(import_error(es), Catch::Contains("nested_quant_map' is missing"));
        es = good;
        find_entry(es, weight_name + ".absmax").type = sdt::I8;
        CHECK_THAT(import_error(es), Catch::Contains(weight_name + ".absmax") && Catch::Contains("expected U8"));
    }
    SECTION("FP8 and MXFP4") {
        std::vector<entry> es = entries_of(quantized(configs::fp8_block128, 200, 300));
        find_entry(es, weight_name + "_scale_inv") = {weight_name + "_scale_inv", sdt::F32, {2, 2}, std::vector<std::byte>(16)};
        CHECK_THAT(import_error(es), Catch::Contains(weight_name + "_scale_inv") && Catch::Contains("expected [2, 3]"));
        es = entries_of(quantized(configs::mxfp4, 8, 64));
        find_entry(es, weight_name + "_scales") = {weight_name + "_scales", sdt::U8, {8, 3}, std::vector<std::byte>(24)};
        CHECK_THAT(import_error(es), Catch::Contains(weight_name + "_scales") && Catch::Contains("expected [8, 2]"));
    }
}

// Shapes the reader accepts (another dimension is 0) or that a blob states: errors, never overflow
// (the sanitizer build of the tests traps signed overflow).
TEST_CASE("hostile shapes are refused without overflow", "[checkpoint][errors]") {
    constexpr std::int64_t big = std::int64_t{1} << 62;
    SECTION("MXFP4 with a zero dimension") {
        CHECK_THAT(import_error({{weight_name + "_blocks", sdt::U8, {2, big, 0, 16}, {}},
                                 {weight_name + "_scales", sdt::U8, {2, big, 0}, {}}}),
                   Catch::Contains(weight_name + "_blocks") && Catch::Contains("empty"));
        CHECK_THAT(import_error({{weight_name + "_blocks", sdt::U8, {0, big / 8, 16}, {}},
                                 {weight_name + "_scales", sdt::U8, {0, big / 8}, {}}}),
                   Catch::Contains(weight_name + "_blocks") && Catch::Contains("empty"));
    }
    SECTION("GPTQ / AWQ qweight [0, 2^61]") {
        const std::string p = "model.layers.0.mlp.down_proj";
        CHECK_THAT(import_error({{p + ".qweight", sdt::I32, {0, big / 2}, {}},
                                 {p + ".qzeros", sdt::I32, {1, 1}, std::vector<std::byte>(4)},
                                 {p + ".scales", sdt::F16, {1, 8}, std::vector<std::byte>(16)}}),
                   Catch::Contains(p + "."));
    }
    SECTION("bnb 4-bit quant_state shape [1, 2^63 - 1]") {
        std::vector<entry> es = entries_of(quantized(configs::qlora_nf4, 8, 64));
        set_text(find_entry(es, weight_name + ".quant_state.bitsandbytes__nf4"), std::string(
            R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [1, 9223372036854775807], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.5})"));
        CHECK_THAT(import_error(es), Catch::Contains("'" + weight_name + "'") && Catch::Contains("expected [4611686018427387904, 1]"));
    }
}

TEST_CASE("bnb 4-bit blocksize is checked before narrowing", "[checkpoint][errors]") {
    std::vector<entry> es = entries_of(quantized(configs::qlora_nf4, 8, 64));
    const std::string blob = weight_name + ".quant_state.bitsandbytes__nf4";
    const auto with_blocksize = [&](const std::string& b) {
        set_text(find_entry(es, blob), R"({"quant_type": "nf4", "blocksize": )" + b +
                                           R"(, "dtype": "float32", "shape": [8, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.5})");
        return import_error(es);
    };
    CHECK(with_blocksize("64").empty());
    CHECK_THAT(with_blocksize("-4294967232"), Catch::Contains(blob) && Catch::Contains("\"blocksize\" -4294967232"));  // was read as 64
    CHECK_THAT(with_blocksize("18446744073709551615"), Catch::Contains(blob) && Catch::Contains("not a 64-bit integer"));
    CHECK_THAT(with_blocksize("16"), Catch::Contains("\"blocksize\" 16"));
}

TEST_CASE("non-finite scales, tables and codes are refused at import, naming tensor and index", "[checkpoint][errors]") {
    const std::string p = "model.layers.0.mlp.down_proj";
    const auto poke = [](std::vector<entry>& es, const std::string& name, std::size_t at, auto value) {
        entry& e = find_entry(es, name);
        REQUIRE((at + 1) * sizeof(value) <= e.bytes.size());
        std::memcpy(e.bytes.data() + at * sizeof(value), &value, sizeof(value));
    };
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    SECTION("GPTQ and AWQ f16 scales") {
        std::vector<entry> es = entries_of(quantized(configs::gptq_int4_g128, 64, 256));
        poke(es, p + ".scales", 5, std::uint16_t{0x7E00});  // f16 NaN
        CHECK_THAT(import_error(es), Catch::Contains(p + ".scales") && Catch::Contains("value [5] is NaN"));
        es = entries_of(quantized(configs::awq_int4_g128, 64, 256));
        poke(es, p + ".scales", 7, std::uint16_t{0xFC00});  // f16 -Inf
        CHECK_THAT(import_error(es), Catch::Contains(p + ".scales") && Catch::Contains("value [7] is infinite"));
    }
    SECTION("bnb 4-bit absmax, nested absmax, tables; bnb 8-bit SCB") {
        std::vector<entry> es = entries_of(quantized(config{dtype::nf4, 4, 64, false, layout::bnb4, compute::f32}, 8, 64));
        poke(es, weight_name + ".absmax", 3, nan);
        CHECK_THAT(import_error(es), Catch::Contains(weight_name + ".absmax") && Catch::Contains("value [3] is NaN"));
        es = entries_of(quantized(configs::qlora_nf4, 8, 64));
        poke(es, weight_name + ".nested_absmax", 0, inf);
        CHECK_THAT(import_error(es), Catch::Contains(weight_name + ".nested_absmax") && Catch::Contains("value [0] is infinite"));
        es = entries_of(quantized(configs::qlora_nf4, 8, 64));
        poke(es, weight_name + ".quant_map", 15, nan);
        CHECK_THAT(import_error(es), Catch::Contains(weight_name + ".quant_map") && Catch::Contains("value [15] is NaN"));
        es = entries_of(quantized(configs::llm_int8, 8, 64));
        poke(es, p + ".SCB", 2, nan);
        CHECK_THAT(import_error(es), Catch::Contains(p + ".SCB") && Catch::Contains("value [2] is NaN"));
    }
    SECTION("FP8 NaN codes and Inf scale_inv; MXFP4 NaN scale") {
        std::vector<entry> es = entries_of(quantized(configs::fp8_block128, 200, 300));
        poke(es, weight_name, 301, std::uint8_t{0x7F});  // E4M3 NaN
        CHECK_THAT(import_error(es), Catch::Contains("'" + weight_name + "'") && Catch::Contains("value [301] is NaN"));
        es = entries_of(quantized(configs::fp8_block128, 200, 300));
        poke(es, weight_name + "_scale_inv", 4, inf);
        CHECK_THAT(import_error(es), Catch::Contains(weight_name + "_scale_inv") && Catch::Contains("value [4] is infinite"));
        es = entries_of(quantized(configs::mxfp4, 8, 64));
        poke(es, weight_name + "_scales", 9, std::uint8_t{0xFF});  // E8M0 NaN
        CHECK_THAT(import_error(es), Catch::Contains(weight_name + "_scales") && Catch::Contains("value [9] is NaN"));
    }
    SECTION("finite scales whose products overflow: dequantize refuses, naming the element") {
        std::vector<entry> es = entries_of(quantized(configs::fp8_block128, 200, 300));
        std::vector<float> huge(6, 3e38f);
        find_entry(es, weight_name + "_scale_inv").bytes = bytes_of(huge);
        CHECK(import_error(es).empty());
        temp_dir dir;
        write_entries(dir / "f.safetensors", es);
        const ck::quantized_weight q = ck::import_module(st::reader(dir / "f.safetensors"), "model.layers.0.mlp.down_proj");
        CHECK_THROWS_WITH(ck::dequantize_weight(q, sdt::F32),
                          Catch::Contains("weight '" + weight_name + "'") && Catch::Contains("not finite in F32"));
    }
    SECTION("the element named is the first one that overflows, with and without a thread pool") {
        std::vector<float> scale_inv(9, 1.0f);
        scale_inv[4] = scale_inv[8] = 3e38f;  // blocks [1, 1] and [2, 2]: rows 128.. and 256..
        const auto [q, exact, first] = fp8_overflowing(300, scale_inv);
        REQUIRE(first / 300 >= 128);
        REQUIRE(first / 300 < 256);
        const std::string where = "[" + std::to_string(first / 300) + ", " + std::to_string(first % 300) + "]";
        thread_pool pool(4);
        CHECK_THROWS_WITH(ck::dequantize_weight(q, sdt::F32), Catch::Contains(where));
        CHECK_THROWS_WITH(ck::dequantize_weight(q, sdt::F32, &pool), Catch::Contains(where));
    }
}

TEST_CASE("dequantize_weight_pieces hands its pieces over in order, and none from the first non-finite one on",
          "[checkpoint]") {
    thread_pool one(1), two(2), four(4);
    for (thread_pool* pool : {static_cast<thread_pool*>(nullptr), &one, &two, &four}) {
        SECTION("pool of " + std::to_string(pool ? pool->size() : 0)) {
            // bnb 4-bit with double quantization (pieces of 64-blocks) and GPTQ (pieces of rows),
            // more pieces than the buffers they are made in: concatenated, the whole weight
            for (const config& cfg : {configs::qlora_nf4, configs::gptq_int4_g128}) {
                const ck::quantized_weight q = quantized(cfg, 4096, 1024, sdt::BF16);
                for (const sdt out : {sdt::BF16, sdt::F32}) {
                    const std::vector<std::byte> whole = ck::dequantize_weight(q, out);
                    std::vector<std::byte> handed;
                    std::size_t pieces = 0;
                    ck::dequantize_weight_pieces(q, out, pool, [&](std::span<const std::byte> piece) {
                        handed.insert(handed.end(), piece.begin(), piece.end());
                        ++pieces;
                    });
                    CHECK(pieces >= 32);  // more than the 8 buffers per thread
                    CHECK(handed == whole);
                }
            }
            // FP8 blocks whose scale_inv overflows from row 1024 on: the pieces before the one
            // holding the first non-finite value are handed over, that one and later ones never
            std::vector<float> scale_inv(30, 1.0f);
            scale_inv[8 * 3 + 1] = 3e38f;  // tile [8, 1]: rows 1024..1151, columns 128..255
            const auto [q, exact, first] = fp8_overflowing(1200, scale_inv);
            REQUIRE(first / 300 >= 1024);
            std::vector<std::byte> handed;
            CHECK_THROWS_WITH(ck::dequantize_weight_pieces(q, sdt::F32, pool,
                                                           [&](std::span<const std::byte> piece) {
                                                               handed.insert(handed.end(), piece.begin(), piece.end());
                                                           }),
                              Catch::Contains("[" + std::to_string(first / 300) + ", " + std::to_string(first % 300) + "]"));
            CHECK(!handed.empty());
            CHECK(handed.size() <= first * 4);
            CHECK(std::memcmp(handed.data(), exact.data(), handed.size()) == 0);
        }
    }
}

TEST_CASE("a quant_state blob in another JSON layout: same values, exported in bitsandbytes' layout", "[checkpoint]") {
    std::vector<entry> es = entries_of(quantized(configs::qlora_nf4, 8, 64));
    const std::string blob = weight_name + ".quant_state.bitsandbytes__nf4";
    const std::vector<std::byte> canonical = find_entry(es, blob).bytes;
    set_text(find_entry(es, blob), std::string(
        R"({"shape":[8,64],"blocksize":64,"quant_type":"nf4","dtype":"float32","nested_blocksize":256,"nested_dtype":"float32","nested_offset":)") +
        ck::python_float_repr(static_cast<double>(std::get<ref::bnb4_tensor>(quantized(configs::qlora_nf4, 8, 64).data).nested_offset)) + "}");
    temp_dir dir;
    write_entries(dir / "other.safetensors", es);
    const ck::quantized_weight q = ck::import_module(st::reader(dir / "other.safetensors"), "model.layers.0.mlp.down_proj");
    CHECK(same_bits(ref::dequantize(q.data), ref::dequantize(quantized(configs::qlora_nf4, 8, 64).data)));
    st::writer w;
    ck::export_weight(w, q);
    w.write(dir / "back.safetensors");
    const st::reader back(dir / "back.safetensors");
    const auto& v = back.at(blob);
    CHECK(std::vector<std::byte>(v.bytes.begin(), v.bytes.end()) == canonical);  // not the input's bytes
}

TEST_CASE("detect reports parts of quantized weights that belong to none", "[checkpoint][errors]") {
    temp_dir dir;
    write_entries(dir / "o.safetensors",
                  {{"a.qzeros", sdt::I32, {1, 1}, std::vector<std::byte>(4)},
                   {"b.weight.absmax", sdt::F32, {1}, std::vector<std::byte>(4)},
                   {"c.weight", sdt::F8_E4M3, {2, 2}, std::vector<std::byte>(4)},
                   {"d.weight_scales", sdt::U8, {1, 1}, std::vector<std::byte>(1)},
                   {"e.weight", sdt::F32, {1, 1}, std::vector<std::byte>(4)}});
    const st::reader r(dir / "o.safetensors");
    const ck::detection d = ck::detect(ck::tensor_set(r));
    CHECK(d.weights.empty());
    REQUIRE(d.orphans.size() == 4);
    const auto any = [&](const std::string& a, const std::string& b) {
        return std::ranges::any_of(d.orphans, [&](const std::string& o) {
            return o.find(a) != std::string::npos && o.find(b) != std::string::npos;
        });
    };
    CHECK(any("'a.qzeros'", "'a.qweight' is missing"));
    CHECK(any("'b.weight.absmax'", "b.weight.quant_state.bitsandbytes__nf4"));
    CHECK(any("'c.weight'", "'c.weight_scale_inv' is missing"));
    CHECK(any("'d.weight_scales'", "'d.weight_blocks' is missing"));
}

TEST_CASE("a tensor in two shards is refused", "[checkpoint][errors]") {
    temp_dir dir;
    write_entries(dir / "a.safetensors", {{"x", sdt::F32, {1}, std::vector<std::byte>(4)}});
    write_entries(dir / "b.safetensors", {{"x", sdt::F32, {1}, std::vector<std::byte>(4)}});
    const st::reader a(dir / "a.safetensors"), b(dir / "b.safetensors");
    ck::tensor_set s(a);
    CHECK_THROWS_WITH(s.add(b), Catch::Contains("'x'") && Catch::Contains("a.safetensors") && Catch::Contains("b.safetensors"));
}

TEST_CASE("quantize_tensor refuses NaN, shapes the layout cannot hold and other dtypes", "[checkpoint][errors]") {
    temp_dir dir;
    std::vector<float> w(64 * 256, 0.01f);
    w[300] = std::nanf("");
    write_plain(dir / "nan.safetensors", encode(w, sdt::F32), sdt::F32, 64, 256);
    const st::reader nan(dir / "nan.safetensors");
    CHECK_THROWS_WITH(ck::quantize_tensor(nan.at(weight_name), configs::gptq_int4_g128, {}),
                      Catch::Contains("nan.safetensors") && Catch::Contains(weight_name) &&
                          Catch::Contains("NaN at flat index 300"));
    write_plain(dir / "k.safetensors", encode(std::vector<float>(32 * 96, 0.5f), sdt::F32), sdt::F32, 32, 96);
    const st::reader k(dir / "k.safetensors");
    CHECK_THROWS_WITH(ck::quantize_tensor(k.at(weight_name), configs::gptq_int4_g128, {}),
                      Catch::Contains(weight_name) && Catch::Contains("not divisible by the group size 128"));
    CHECK_THROWS_WITH(ck::quantize_tensor(k.at(bias_name), configs::gptq_int4_g128, {}),
                      Catch::Contains(bias_name) && Catch::Contains("not 2-D"));
    write_entries(dir / "i.safetensors", {{weight_name, sdt::I32, {32, 32}, std::vector<std::byte>(32 * 32 * 4)}});
    const st::reader i(dir / "i.safetensors");
    CHECK_THROWS_WITH(ck::quantize_tensor(i.at(weight_name), configs::gptq_int4_g128, {}),
                      Catch::Contains("dtype I32 cannot be quantized"));
}

TEST_CASE("GPTQ v1 <-> v2 and AWQ -> GPTQ are lossless", "[checkpoint][convert]") {
    for (const config& c : {configs::gptq_int4_g128, config{dtype::int_asym, 4, 32, false, layout::gptq_v1, compute::f32},
                            config{dtype::int_asym, 3, 64, false, layout::gptq_v1, compute::f32},
                            config{dtype::int_asym, 2, 32, false, layout::gptq_v1, compute::f32}}) {
        INFO(canonical_name(c));
        // All-positive rows give xmin = 0, zero 0: the v1 field wraps to 2^b - 1.
        std::vector<float> w = weights(64, 128, 11);
        for (std::size_t i = 0; i < 128; ++i) w[i] = std::fabs(w[i]);
        temp_dir dir;
        write_plain(dir / "p.safetensors", encode(w, sdt::F32), sdt::F32, 64, 128);
        const st::reader r(dir / "p.safetensors");
        const ck::quantized_weight v1 = ck::quantize_tensor(r.at(weight_name), c, {});
        const ck::quantized_weight v2 = ck::convert(v1, layout::gptq_v2);
        CHECK(v2.cfg.storage == layout::gptq_v2);
        CHECK(std::get<ref::gptq_tensor>(v2.data).v2);
        CHECK(same_bits(ref::dequantize(v2.data), ref::dequantize(v1.data)));
        // v2 is what quantizing straight to v2 gives.
        config c2 = c;
        c2.storage = layout::gptq_v2;
        CHECK(std::get<ref::gptq_tensor>(v2.data).qzeros ==
              std::get<ref::gptq_tensor>(ck::quantize_tensor(r.at(weight_name), c2, {}).data).qzeros);
        const ck::quantized_weight back = ck::convert(v2, layout::gptq_v1);
        CHECK(std::get<ref::gptq_tensor>(back.data).qzeros == std::get<ref::gptq_tensor>(v1.data).qzeros);
    }
    const auto sym = std::get<ref::gptq_tensor>(ck::convert(quantized(configs::gptq_int4_g128, 32, 128), layout::gptq_v2).data);
    for (std::size_t i = 0; i < sym.qzeros.size(); ++i) CHECK(word(sym.qzeros, i) == 0x88888888u);

    for (const config& c : {configs::awq_int4_g128, config{dtype::int_asym, 4, 32, false, layout::awq_gemm, compute::f32}}) {
        const ck::quantized_weight awq = quantized(c, 64, 256, sdt::F16);
        thread_pool pool(3);  // each thread transposes its own runs of columns: the same words
        for (const layout target : {layout::gptq_v1, layout::gptq_v2}) {
            const ck::quantized_weight g = ck::convert(awq, target);
            CHECK(std::get<ref::gptq_tensor>(ck::convert(awq, target, &pool).data).qweight ==
                  std::get<ref::gptq_tensor>(g.data).qweight);
            CHECK(g.cfg == config{dtype::int_asym, 4, c.group, false, target, compute::f32});
            CHECK(same_bits(ref::dequantize(g.data), ref::dequantize(awq.data)));
            const auto& t = std::get<ref::gptq_tensor>(g.data);
            for (std::size_t k = 0; k < t.g_idx.size(); ++k) CHECK(t.g_idx[k] == static_cast<std::int32_t>(k) / c.group);
            // it is a valid GPTQ checkpoint: export, import with its config, same values
            temp_dir dir;
            write_entries(dir / "g.safetensors", entries_of(g));
            const st::reader r(dir / "g.safetensors");
            const ck::tensor_set s(r);
            CHECK(same_bits(ref::dequantize(ck::import_weight(s, ck::detect(s).weights.at(0), {g.cfg}).data),
                            ref::dequantize(awq.data)));
        }
    }
    CHECK_THROWS_WITH(ck::convert(quantized({dtype::int_asym, 4, 32, false, layout::awq_gemm, compute::f32}, 24, 64),
                                  layout::gptq_v1),
                      Catch::Contains(weight_name) && Catch::Contains("multiples of 32"));
    CHECK_THROWS_WITH(ck::convert(quantized(configs::qlora_nf4, 8, 64), layout::gptq_v1),
                      Catch::Contains("GPTQ and AWQ weights, not bnb 4-bit"));
}

TEST_CASE("quantize_plan gives the tensors quantize_tensor exports, by name, dtype and shape", "[checkpoint]") {
    temp_dir dir;
    const std::int64_t rows = 64, cols = 256;
    write_plain(dir / "p.safetensors", encode(weights(rows, cols, 5), sdt::BF16), sdt::BF16, rows, cols);
    const st::reader r(dir / "p.safetensors");
    // bytes: those of the tensors a plan holds in memory (the bnb 4-bit quant_state blob)
    using planned = std::tuple<std::string, sdt, st::shape_t, std::vector<std::byte>>;
    const auto listed = [](const st::writer& w, const st::writer* plan = nullptr) {
        std::set<std::string> in_plan_memory;
        if (plan)
            plan->for_each_in_memory([&](const std::string& name, sdt, const st::shape_t&, std::span<const std::byte> b) {
                if (!b.empty()) in_plan_memory.insert(name);
            });
        std::vector<planned> out;
        w.for_each_in_memory([&](const std::string& name, sdt type, const st::shape_t& shape, std::span<const std::byte> b) {
            const bool bytes = plan ? in_plan_memory.contains(name) : !b.empty();
            out.emplace_back(name, type, shape, bytes ? std::vector<std::byte>(b.begin(), b.end()) : std::vector<std::byte>{});
        });
        return out;
    };
    std::vector<config> cfgs;
    for (layout l : {layout::gptq_v1, layout::gptq_v2})
        for (dtype t : {dtype::int_sym, dtype::int_asym})
            for (int b : {2, 3, 4, 8})
                for (int g : {32, 128, per_channel}) cfgs.push_back({t, static_cast<std::uint8_t>(b), g, false, l, compute::f32});
    for (int g : {32, 128, per_channel}) cfgs.push_back({dtype::int_asym, 4, g, false, layout::awq_gemm, compute::f32});
    for (dtype t : {dtype::nf4, dtype::fp4})
        for (bool dq : {false, true})
            for (int g : {64, 256}) cfgs.push_back({t, 4, g, dq, layout::bnb4, compute::bf16});
    for (const config& cfg : cfgs) {
        if (check(cfg) != config_rule::ok) continue;
        INFO(canonical_name(cfg));
        REQUIRE(ck::plannable(cfg));
        st::writer made, plan;
        const ck::quantized_weight q = ck::quantize_tensor(r.at(weight_name), cfg, {});
        CHECK(ck::export_weight(made, q) == ck::export_weight_deferred(plan, ck::quantize_plan(r.at(weight_name), cfg, {})));
        CHECK(listed(made, &plan) == listed(plan));
    }
    CHECK_FALSE(ck::plannable(configs::llm_int8));
    CHECK_THROWS(ck::quantize_plan(r.at(weight_name), configs::llm_int8, {}));
    st::writer w;
    CHECK_THROWS_AS(ck::export_weight_deferred(w, ck::quantize_tensor(r.at(weight_name), configs::llm_int8, {})), io_error);
}

TEST_CASE("a planned bnb 4-bit file, each weight put in its place, equals the file written after quantizing", "[checkpoint]") {
    // The plan knows the quant_state blob (its length depends on the mean of the absmax with double
    // quantization) before the weight is quantized: the bytes must not depend on the way.
    temp_dir dir;
    thread_pool pool(3);
    struct weight_case {
        std::int64_t rows, cols;
        sdt input;
    };
    // 256 x 512 / 64: 2048 blocks, so the absmax pass splits; 3 x 50: a short last block.
    for (const weight_case c : {weight_case{256, 512, sdt::BF16}, {256, 512, sdt::F16}, {3, 50, sdt::F32}, {3, 50, sdt::BF16}}) {
        std::vector<float> w = weights(c.rows, c.cols, 11);
        std::fill_n(w.begin(), 64, 0.0f);  // a block of zeros, whose absmax is 0
        write_plain(dir / "p.safetensors", encode(w, c.input), c.input, c.rows, c.cols);
        const st::reader r(dir / "p.safetensors");
        const st::tensor_view& v = r.at(weight_name);
        for (const config& cfg : {configs::qlora_nf4, configs::bnb_fp4, config{dtype::fp4, 4, 128, true, layout::bnb4, compute::f32}}) {
            INFO(canonical_name(cfg) << " on " << st::to_string(c.input) << " [" << c.rows << ", " << c.cols << "]");
            const ck::quantized_weight q = ck::quantize_tensor(v, cfg, {}, &pool);
            st::writer made;
            ck::export_weight(made, q);
            made.write(dir / "made.safetensors");
            // As `qforge quantize` plans a file: every tensor of the plan deferred, then put.
            st::writer piece, plan;
            ck::export_weight_deferred(piece, ck::quantize_plan(v, cfg, {}, &pool));
            piece.for_each_in_memory([&](const std::string& name, sdt type, const st::shape_t& shape, std::span<const std::byte>) {
                plan.add_deferred(name, type, shape);
            });
            plan.write_deferred(dir / "planned.safetensors", [&](const st::writer::put_fn& put) {
                made.for_each_in_memory([&](const std::string& name, sdt, const st::shape_t&, std::span<const std::byte> b) {
                    put(name, b);
                });
            });
            CHECK(file_bytes(dir / "planned.safetensors") == file_bytes(dir / "made.safetensors"));
        }
    }
    // An empty weight is planned; quantizing it is the error, naming the tensor.
    write_plain(dir / "empty.safetensors", {}, sdt::BF16, 0, 64);
    const st::reader r(dir / "empty.safetensors");
    CHECK_NOTHROW(ck::quantize_plan(r.at(weight_name), configs::qlora_nf4));
    CHECK_THROWS_WITH(ck::quantize_tensor(r.at(weight_name), configs::qlora_nf4), Catch::Contains(weight_name));
}

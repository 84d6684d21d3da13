// The checkpoint quantizers and dequantizers (kernels/quantize.hpp) against the scalar reference,
// byte for byte, on the ISA named by QFORGE_ISA (Meson runs this binary once per ISA; an ISA this
// CPU lacks is skipped with a warning): every layout, input dtype and threading, on ties, edge
// values, zero blocks, denormals, and NaN / Inf refusal with the reference's own error.
#include <qforge/config/name.hpp>
#include <qforge/format/tables.hpp>
#include <qforge/isa.hpp>
#include <qforge/kernels/quantize.hpp>
#include <qforge/parallel.hpp>
#include <qforge/reference/layouts.hpp>

#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

using namespace qforge;
using qforge::element;

namespace {

bool isa_under_test_runs() {
    const char* forced = std::getenv("QFORGE_ISA");
    if (forced == nullptr || *forced == '\0') return true;
    const auto wanted = isa_from_string(forced);
    REQUIRE(wanted.has_value());
    if (!cpu_supports(*wanted)) {
        WARN("this CPU has no " << forced << ": skipped");
        return false;
    }
    return true;
}

// Bitwise equality of two vectors (floats compared as bits: -0.0 and NaN payloads count).
template <class T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}
template <class T, std::size_t N>
bool same_bytes(const std::array<T, N>& a, const std::array<T, N>& b) {
    return std::memcmp(a.data(), b.data(), N * sizeof(T)) == 0;
}

void check_same(const ref::quantized& got, const ref::quantized& want) {
    REQUIRE(got.index() == want.index());
    if (const auto* g = std::get_if<ref::bnb4_tensor>(&got)) {
        const auto& w = std::get<ref::bnb4_tensor>(want);
        CHECK(same_bytes(g->packed, w.packed));
        CHECK(same_bytes(g->absmax, w.absmax));
        CHECK(same_bytes(g->quant_map, w.quant_map));
        CHECK(g->nested == w.nested);
        CHECK(same_bytes(g->absmax_codes, w.absmax_codes));
        CHECK(same_bytes(g->nested_absmax, w.nested_absmax));
        CHECK(same_bytes(g->nested_quant_map, w.nested_quant_map));
        CHECK(std::bit_cast<std::uint32_t>(g->nested_offset) == std::bit_cast<std::uint32_t>(w.nested_offset));
        CHECK(g->blocksize == w.blocksize);
    } else if (const auto* g8 = std::get_if<ref::int8row_tensor>(&got)) {
        const auto& w = std::get<ref::int8row_tensor>(want);
        CHECK(same_bytes(g8->codes, w.codes));
        CHECK(same_bytes(g8->scb, w.scb));
    } else if (const auto* gq = std::get_if<ref::gptq_tensor>(&got)) {
        const auto& w = std::get<ref::gptq_tensor>(want);
        CHECK(same_bytes(gq->qweight, w.qweight));
        CHECK(same_bytes(gq->qzeros, w.qzeros));
        CHECK(same_bytes(gq->scales, w.scales));
        CHECK(same_bytes(gq->g_idx, w.g_idx));
        CHECK((gq->group == w.group && gq->v2 == w.v2 && gq->sym == w.sym && gq->bits == w.bits));
    } else if (const auto* ga = std::get_if<ref::awq_tensor>(&got)) {
        const auto& w = std::get<ref::awq_tensor>(want);
        CHECK(same_bytes(ga->qweight, w.qweight));
        CHECK(same_bytes(ga->qzeros, w.qzeros));
        CHECK(same_bytes(ga->scales, w.scales));
    } else if (const auto* gf = std::get_if<ref::fp8_tensor>(&got)) {
        const auto& w = std::get<ref::fp8_tensor>(want);
        CHECK(same_bytes(gf->codes, w.codes));
        CHECK(same_bytes(gf->scale_inv, w.scale_inv));
        CHECK((gf->tile_rows == w.tile_rows && gf->tile_cols == w.tile_cols));
    } else {
        const auto& gm = std::get<ref::mx_tensor>(got);
        const auto& w = std::get<ref::mx_tensor>(want);
        CHECK(same_bytes(gm.blocks, w.blocks));
        CHECK(same_bytes(gm.scales, w.scales));
    }
}

struct case_input {
    std::string what;
    std::int64_t rows, cols;
    std::vector<float> w;
};

// Gaussian weights (sigma 0.02) with rare outliers, some zero rows / blocks, and per-row scales
// spanning many binades (denormal-sized rows included).
std::vector<float> llm_like(std::int64_t rows, std::int64_t cols, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> g(0.0f, 0.02f);
    std::uniform_int_distribution<int> binade(-140, 60);
    std::vector<float> w(static_cast<std::size_t>(rows * cols));
    for (std::int64_t r = 0; r < rows; ++r) {
        const int kind = r % 7;
        const float row_scale = kind == 3 ? std::ldexp(1.0f, binade(rng)) : 1.0f;
        for (std::int64_t c = 0; c < cols; ++c) {
            float v = g(rng) * row_scale;
            if (kind == 5) v = 0.0f;                          // a zero row (zero blocks of every layout)
            if (kind == 6 && c % 3 == 0) v = -0.0f;           // signed zeros
            if (rng() % 997 == 0) v *= 200.0f;                 // outliers
            w[static_cast<std::size_t>(r * cols + c)] = v;
        }
    }
    return w;
}

// Values that sit exactly on rounding boundaries once a block's scale is 1: for each layout the
// first element of every block / group / row is its maximum (so absmax or the range gives scale 1)
// and the others are the thresholds and midpoints of its code values.
// `signed_values`: negative copies too (not for GPTQ / AWQ, whose range then would not be [0, top]).
std::vector<float> ties(std::int64_t rows, std::int64_t cols, const std::vector<float>& boundaries, float top,
                        bool signed_values) {
    std::vector<float> w(static_cast<std::size_t>(rows * cols));
    for (std::size_t i = 0; i < w.size(); ++i) {
        const float b = boundaries[i % boundaries.size()];
        if (i % 32 == 0) w[i] = top;
        else if (i % 32 == 1) w[i] = signed_values ? -top : 0.0f;
        else w[i] = signed_values && (i / boundaries.size()) % 2 ? -b : b;
    }
    return w;
}

bool integer_layout(const config& cfg) { return cfg.storage == layout::gptq_v1 || cfg.storage == layout::gptq_v2 || cfg.storage == layout::awq_gemm; }

std::vector<float> boundaries_of(const config& cfg) {
    std::vector<float> b;
    switch (cfg.storage) {
        case layout::bnb4: {
            const auto mids = midpoints(nf4_table);  // one array: begin() and end() of the same object
            if (cfg.type == dtype::nf4) b.assign(mids.begin(), mids.end());
            else b.assign(fp4_thresholds.begin(), fp4_thresholds.end());
            for (float t : nf4_table) b.push_back(t);
            break;
        }
        case layout::fp8_block:  // midpoints between neighbouring E4M3 / E5M2 values, normal and subnormal
            for (int e = -16; e < 8; ++e)
                for (int m = 0; m < 8; ++m) {
                    b.push_back(std::ldexp(1.0f + m / 8.0f + 1 / 16.0f, e));  // E4M3 ties
                    b.push_back(std::ldexp(1.0f + m / 8.0f, e));              // E5M2 ties at odd m
                }
            for (int m = 0; m < 9; ++m) b.push_back(std::ldexp(m + 0.5f, -9));
            for (int m = 0; m < 5; ++m) b.push_back(std::ldexp(m + 0.5f, -16));
            break;
        case layout::mx:
            for (float t : {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 0.5f, 1.0f, 6.0f, 0.0f}) b.push_back(t);
            break;
        default:  // integers: half-integers at scale 1
            for (int k = 0; k + 1 < (cfg.storage == layout::bnb8 ? 128 : 1 << cfg.bits); ++k) b.push_back(k + 0.5f);
    }
    return b;
}

// The top value giving each layout a scale of 1 (or as close as the layout allows).
float top_of(const config& cfg) {
    switch (cfg.storage) {
        case layout::bnb4: return 1.0f;
        case layout::bnb8: return 127.0f;
        case layout::fp8_block: return cfg.type == dtype::fp8_e4m3 ? 448.0f : 57344.0f;
        case layout::mx: return 6.0f;
        default: return static_cast<float>((1 << cfg.bits) - 1);
    }
}

std::vector<case_input> inputs_for(const config& cfg) {
    std::vector<case_input> in;
    in.push_back({"llm-like 96x256", 96, 256, llm_like(96, 256, 1)});
    in.push_back({"llm-like 32x4096", 32, 4096, llm_like(32, 4096, 2)});
    in.push_back({"ties", 64, 512, ties(64, 512, boundaries_of(cfg), top_of(cfg), !integer_layout(cfg))});
    if (cfg.storage == layout::bnb4 || cfg.storage == layout::bnb8 || cfg.storage == layout::fp8_block)
        in.push_back({"odd shape 37x203", 37, 203, llm_like(37, 203, 3)});  // partial blocks and tiles
    if (cfg.storage == layout::fp8_block || cfg.storage == layout::bnb8 || cfg.storage == layout::mx)
        in.push_back({"odd shape 200x160", 200, 160, llm_like(200, 160, 4)});
    // extreme magnitudes: largest floats, smallest denormals
    std::vector<float> extreme(64 * 256);
    for (std::size_t i = 0; i < extreme.size(); ++i) {
        const float m = (i / 256) % 3 == 0 ? std::numeric_limits<float>::max() : ((i / 256) % 3 == 1 ? 1e-44f : 1e30f);
        extreme[i] = (i % 5 == 0 ? -m : m) * ((i % 7) / 7.0f);
    }
    in.push_back({"extreme magnitudes", 64, 256, extreme});
    return in;
}

std::vector<config> configs_under_test() {
    using enum dtype;
    using enum layout;
    std::vector<config> c;
    for (bool dq : {false, true})
        for (dtype t : {nf4, fp4})
            for (int g : {32, 64, 128, 4096}) c.push_back({t, 4, g, dq, bnb4, compute::f32});
    c.push_back({int8_row, 8, per_channel, false, bnb8, compute::i8});
    for (layout l : {gptq_v1, gptq_v2})
        for (dtype t : {int_sym, int_asym})
            for (int b : {2, 3, 4, 8})
                for (int g : {32, 128, per_channel}) c.push_back({t, static_cast<std::uint8_t>(b), g, false, l, compute::f32});
    for (int g : {32, 64, 128}) c.push_back({int_asym, 4, g, false, awq_gemm, compute::f32});
    for (dtype t : {fp8_e4m3, fp8_e5m2})
        for (int g : {128, 32, per_tensor}) c.push_back({t, 8, g, false, fp8_block, compute::f32});
    c.push_back({e2m1, 4, 32, false, mx, compute::f32});
    std::vector<config> valid;
    for (const config& x : c)
        if (check(x) == config_rule::ok) valid.push_back(x);
    return valid;
}

template <class T>
std::vector<T> narrow(const std::vector<float>& w) {
    std::vector<T> out(w.size());
    for (std::size_t i = 0; i < w.size(); ++i) out[i] = from_float<T>(w[i]);
    return out;
}

// Runs `f(source, reference)` for the f32, bf16 and f16 versions of w.
template <class F>
void for_each_dtype(const std::vector<float>& w, F&& f) {
    f(kernels::tensor_source{w.data(), element::f32}, std::span<const float>(w), "f32");
    const auto b = narrow<bf16>(w);
    f(kernels::tensor_source{b.data(), element::bf16}, std::span<const bf16>(b), "bf16");
    const auto h = narrow<f16>(w);
    f(kernels::tensor_source{h.data(), element::f16}, std::span<const f16>(h), "f16");
}

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const std::invalid_argument& e) {
        return e.what();
    }
    return "(no error)";
}

void check_dequantize(const ref::quantized& q, thread_pool* pool) {
    const std::vector<float> want = ref::dequantize(q);
    std::vector<float> f(want.size());
    kernels::dequantize_checkpoint(q, element::f32, f.data(), pool);
    CHECK(same_bytes(f, want));
    std::vector<bf16> b(want.size());
    kernels::dequantize_checkpoint(q, element::bf16, b.data(), pool);
    CHECK(same_bytes(b, narrow<bf16>(want)));
    std::vector<unsigned char> odd(want.size() * 2 + 1);  // a misaligned destination: through a buffer
    kernels::dequantize_checkpoint(q, element::bf16, odd.data() + 1, pool);
    CHECK(std::memcmp(odd.data() + 1, b.data(), b.size() * 2) == 0);
    std::vector<f16> h(want.size());
    kernels::dequantize_checkpoint(q, element::f16, h.data(), pool);
    CHECK(same_bytes(h, narrow<f16>(want)));
}

}  // namespace

TEST_CASE("checkpoint quantizers equal the reference byte for byte") {
    if (!isa_under_test_runs()) return;
    thread_pool pool(3);
    for (const config& cfg : configs_under_test()) {
        for (const case_input& in : inputs_for(cfg)) {
            for_each_dtype(in.w, [&](kernels::tensor_source src, auto span, const char* type) {
                for (ref::mx_scale_rule rule : {ref::mx_scale_rule::ocp, ref::mx_scale_rule::round_up}) {
                    if (rule == ref::mx_scale_rule::round_up && cfg.storage != layout::mx) continue;
                    const ref::quantize_options opt{"w", rule};
                    INFO(canonical_name(cfg) << " on " << in.what << " " << type << (rule == ref::mx_scale_rule::ocp ? "" : " round_up"));
                    std::string want_error;
                    ref::quantized want;
                    try {
                        want = ref::quantize(cfg, span, in.rows, in.cols, opt);
                    } catch (const std::invalid_argument& e) {
                        want_error = e.what();
                    }
                    if (!want_error.empty()) {  // e.g. a scale fp16 cannot hold: the same error
                        CHECK(error_of([&] { kernels::quantize_checkpoint(cfg, src, in.rows, in.cols, opt); }) == want_error);
                        continue;
                    }
                    check_same(kernels::quantize_checkpoint(cfg, src, in.rows, in.cols, opt), want);
                    check_same(kernels::quantize_checkpoint(cfg, src, in.rows, in.cols, opt, &pool), want);
                    check_dequantize(want, &pool);
                }
            });
        }
    }
}

TEST_CASE("checkpoint quantizers refuse NaN and Inf with the reference's error") {
    if (!isa_under_test_runs()) return;
    thread_pool pool(2);
    const std::int64_t rows = 64, cols = 256;
    for (const config& cfg : configs_under_test()) {
        for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity()}) {
            for (std::size_t at : {std::size_t{0}, std::size_t{4097}, std::size_t{rows * cols - 1}}) {
                std::vector<float> w = llm_like(rows, cols, 7);
                w[at] = bad;
                w[w.size() / 2 + 3] = bad;  // a later one: the error names the first
                for_each_dtype(w, [&](kernels::tensor_source src, auto span, const char* type) {
                    INFO(canonical_name(cfg) << " " << type << " bad value at " << at);
                    const std::string want = error_of([&] { ref::quantize(cfg, span, rows, cols, {"layer.w"}); });
                    REQUIRE(want.find("flat index") != std::string::npos);
                    CHECK(error_of([&] { kernels::quantize_checkpoint(cfg, src, rows, cols, {"layer.w"}, &pool); }) == want);
                });
            }
        }
    }
}

TEST_CASE("checkpoint dequantizers equal the reference on special stored values") {
    if (!isa_under_test_runs()) return;
    // NaN / Inf / subnormal codes and scales as a foreign checkpoint may hold them.
    ref::fp8_tensor f8;
    f8.rows = 2;
    f8.cols = 256;
    f8.tile_rows = f8.tile_cols = 128;
    for (int i = 0; i < 512; ++i) f8.codes.push_back(static_cast<std::uint8_t>(i));
    f8.scale_inv = {1.0f, 1e-40f};
    check_dequantize(f8, nullptr);
    f8.type = dtype::fp8_e5m2;
    check_dequantize(f8, nullptr);

    ref::mx_tensor mx;
    mx.rows = 1;
    mx.cols = 64;
    for (int i = 0; i < 32; ++i) mx.blocks.push_back(static_cast<std::uint8_t>(i * 37));
    mx.scales = {0xFF, 0x00};
    check_dequantize(mx, nullptr);

    auto q = std::get<ref::bnb4_tensor>(ref::quantize(config{dtype::nf4, 4, 64, false, layout::bnb4, compute::f32},
                                                       std::span<const float>(llm_like(4, 64, 9)), 4, 64));
    q.absmax[1] = std::numeric_limits<float>::infinity();
    q.absmax[2] = 1e-42f;
    q.quant_map[3] = std::numeric_limits<float>::quiet_NaN();
    check_dequantize(q, nullptr);
}

TEST_CASE("blockwise 8-bit quantizer (double quantization) equals the reference") {
    if (!isa_under_test_runs()) return;
    thread_pool pool(3);
    const auto mids = midpoints(dynamic_map);
    std::vector<std::pair<std::string, std::vector<float>>> inputs;
    // Every block's first value is 1 (scale 1): the others sit exactly on the 255 thresholds
    // (ties: the even code wins) and on the map's own values, with both signs.
    std::vector<float> ties;
    for (int block = 0; block < 8; ++block) {
        ties.push_back(1.0f);
        for (std::size_t i = 1; i < 256; ++i) {
            const float v = block % 2 == 0 ? mids[(i + static_cast<std::size_t>(block)) % mids.size()]
                                           : dynamic_map[(i * 7 + static_cast<std::size_t>(block)) % 256];
            ties.push_back(block % 4 >= 2 ? -v : v);
        }
    }
    inputs.emplace_back("ties", ties);
    std::mt19937 rng(5);
    std::normal_distribution<float> g(0.0f, 0.003f);
    std::vector<float> absmax_like(256 * 40 + 77);  // a partial last block
    for (std::size_t i = 0; i < absmax_like.size(); ++i) absmax_like[i] = (i / 256) % 9 == 4 ? 0.0f : g(rng);
    inputs.emplace_back("absmax-like with zero blocks", absmax_like);
    std::vector<float> extreme(256 * 6);  // largest floats; denormal blocks (1 / absmax overflows: quotients)
    for (std::size_t i = 0; i < extreme.size(); ++i) {
        const float m = (i / 256) % 3 == 0 ? std::numeric_limits<float>::max() : ((i / 256) % 3 == 1 ? 1e-44f : 3e-39f);
        extreme[i] = (i % 5 == 0 ? -m : m) * static_cast<float>(i % 7) / 7.0f;
    }
    inputs.emplace_back("extreme magnitudes", extreme);
    std::vector<float> with_nan = absmax_like;
    with_nan[300] = std::numeric_limits<float>::quiet_NaN();
    inputs.emplace_back("a NaN", with_nan);
    for (const auto& [what, x] : inputs) {
        for (std::int32_t bs : {256, 64, 4096}) {
            INFO(what << ", blocksize " << bs);
            const ref::blockwise8 want = ref::quantize_blockwise8(x, bs);
            for (thread_pool* p : {static_cast<thread_pool*>(nullptr), &pool}) {
                const ref::blockwise8 got = kernels::quantize_blockwise8(x, bs, p);
                CHECK(got.blocksize == want.blocksize);
                CHECK(same_bytes(got.codes, want.codes));
                CHECK(same_bytes(got.absmax, want.absmax));
            }
        }
    }
    CHECK(error_of([&] { kernels::quantize_blockwise8(ties, 0); }) ==
          error_of([&] { ref::quantize_blockwise8(ties, 0); }));
}

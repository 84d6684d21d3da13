// The generic reference API: bits per weight, round trips of every real-world config through every
// input and output dtype, shape and NaN/Inf errors.
#include <qforge/config/aliases.hpp>
#include <qforge/config/name.hpp>
#include <qforge/reference/reference.hpp>
#include <qforge/synthetic.hpp>

#include <boost/hana/unpack.hpp>
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

using namespace qforge;

namespace {
// The configs of every alias of aliases.hpp.
const std::vector<config> alias_configs = boost::hana::unpack(
    all_aliases, [](auto... alias) { return std::vector<config>{decltype(alias)::type::cfg...}; });

double rmse(const std::vector<float>& a, const std::vector<float>& b) {
    double s = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) s += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    return std::sqrt(s / static_cast<double>(a.size()));
}
}  // namespace

TEST_CASE("bits per weight counts every stored scale, zero and nested absmax") {
    // The values of issue 2, worked out by hand from formats.md's storage.
    CHECK(ref::bits_per_weight({dtype::nf4, 4, 64, false, layout::bnb4, compute::f32}, 4096, 4096) == 4.5);
    CHECK(ref::bits_per_weight(configs::qlora_nf4, 4096, 4096) == 4.0 + 8.0 / 64 + 32.0 / (64 * 256));
    CHECK(std::round(ref::bits_per_weight(configs::qlora_nf4, 4096, 4096) * 1000) == 4127);
    CHECK(ref::bits_per_weight(configs::gptq_int4_g128, 4096, 4096) == 4.15625);
    CHECK(ref::bits_per_weight(configs::fp8_block128, 4096, 4096) == 8.0 + 32.0 / 16384);
    CHECK(ref::bits_per_weight(configs::mxfp4, 4096, 4096) == 4.25);
    CHECK(ref::bits_per_weight(configs::llm_int8, 4096, 4096) == 8.0 + 32.0 / 4096);
    CHECK(ref::bits_per_weight(configs::gptq_int8_pc, 11008, 4096) == 8.0 + 24.0 / 4096);
    CHECK(ref::bits_per_weight(configs::gptq_int3_g128, 4096, 4096) == 3.0 + 19.0 / 128);
}

TEST_CASE("every alias round-trips with error far below the weights' spread, from every input dtype") {
    const std::int64_t rows = 64, cols = 256;
    const std::vector<float> w = synthetic_weights({.rows = rows, .cols = cols, .seed = 7});
    std::vector<bf16> wb(w.size());
    std::vector<f16> wh(w.size());
    for (std::size_t i = 0; i < w.size(); ++i) {
        wb[i] = to_bf16(w[i]);
        wh[i] = to_f16(w[i]);
    }
    for (const config& cfg : alias_configs) {
        INFO(canonical_name(cfg));
        const auto q = ref::quantize(cfg, std::span<const float>(w), rows, cols);
        const std::vector<float> d = ref::dequantize(q);
        REQUIRE(d.size() == w.size());
        // A sanity ceiling (sigma is 0.02): a packing or scale mistake gives an error of the order of
        // the weights themselves. Each format's own tight bound is tested in its own file.
        CHECK(rmse(w, d) < 0.5 * 0.02);
        CHECK(rmse(w, d) > 0.0);

        // bf16 / f16 input: widened exactly, so the result is the f32 quantization of the widened values.
        std::vector<float> wbf(w.size()), whf(w.size());
        for (std::size_t i = 0; i < w.size(); ++i) {
            wbf[i] = to_float(wb[i]);
            whf[i] = to_float(wh[i]);
        }
        CHECK(ref::dequantize(ref::quantize(cfg, std::span<const bf16>(wb), rows, cols)) ==
              ref::dequantize(ref::quantize(cfg, std::span<const float>(wbf), rows, cols)));
        CHECK(ref::dequantize(ref::quantize(cfg, std::span<const f16>(wh), rows, cols)) ==
              ref::dequantize(ref::quantize(cfg, std::span<const float>(whf), rows, cols)));

        // bf16 / f16 output: the f32 result rounded to nearest even.
        const auto db = ref::dequantize_bf16(q);
        const auto dh = ref::dequantize_f16(q);
        for (std::size_t i = 0; i < d.size(); ++i) {
            REQUIRE(db[i] == to_bf16(d[i]));
            REQUIRE(dh[i] == to_f16(d[i]));
        }
    }
}

TEST_CASE("quantization refuses NaN and Inf naming the tensor and the first bad index") {
    std::vector<float> w(64 * 128, 0.5f);
    w[1000] = std::numeric_limits<float>::infinity();
    w[2000] = std::numeric_limits<float>::quiet_NaN();
    for (const config& cfg : alias_configs) {
        INFO(canonical_name(cfg));
        CHECK_THROWS_WITH(ref::quantize(cfg, std::span<const float>(w), 64, 128, {.tensor_name = "layers.0.q_proj.weight"}),
                          Catch::Contains("layers.0.q_proj.weight") && Catch::Contains("Inf at flat index 1000"));
    }
    w[1000] = 0.0f;
    CHECK_THROWS_WITH(ref::quantize(configs::qlora_nf4, std::span<const float>(w), 64, 128),
                      Catch::Contains("NaN at flat index 2000"));
}

TEST_CASE("shape mismatches and invalid configs are refused") {
    const std::vector<float> w(100, 1.0f);
    CHECK_THROWS_WITH(ref::quantize(configs::bnb_fp4, std::span<const float>(w), 10, 11), Catch::Contains("[10, 11]"));
    config bad = configs::awq_int4_g128;
    bad.bits = 3;
    CHECK_THROWS_AS(ref::quantize(bad, std::span<const float>(w), 10, 10), config_error_exception);
    // GPTQ, AWQ and MX need K to divide into their groups.
    const std::vector<float> w2(32 * 96, 1.0f);
    CHECK_THROWS_AS(ref::quantize(configs::gptq_int4_g128, std::span<const float>(w2), 32, 96), std::invalid_argument);
    CHECK_THROWS_AS(ref::quantize(configs::awq_int4_g128, std::span<const float>(w2), 32, 96), std::invalid_argument);
    const std::vector<float> w3(4 * 48, 1.0f);
    CHECK_THROWS_AS(ref::quantize(configs::mxfp4, std::span<const float>(w3), 4, 48), std::invalid_argument);
}

TEST_CASE("gemv and gemm oracles accumulate the dequantized weights in double") {
    const std::int64_t rows = 32, cols = 128, m = 3;
    const std::vector<float> w = synthetic_weights({.rows = rows, .cols = cols, .seed = 3});
    const std::vector<float> x = synthetic_weights({.rows = m, .cols = cols, .seed = 4});
    std::vector<float> bias(rows);
    for (std::int64_t n = 0; n < rows; ++n) bias[static_cast<std::size_t>(n)] = 0.25f * static_cast<float>(n);
    const auto q = ref::quantize(configs::gptq_int4_g128, std::span<const float>(w), rows, cols);
    const auto d = ref::dequantize(q);
    const auto y = ref::gemm(q, x, m, bias);
    REQUIRE(y.size() == static_cast<std::size_t>(m * rows));
    for (std::int64_t i = 0; i < m; ++i)
        for (std::int64_t n = 0; n < rows; ++n) {
            long double acc = bias[static_cast<std::size_t>(n)];
            for (std::int64_t k = 0; k < cols; ++k)
                acc += static_cast<long double>(d[static_cast<std::size_t>(n * cols + k)]) * x[static_cast<std::size_t>(i * cols + k)];
            CHECK(std::fabs(static_cast<double>(acc) - y[static_cast<std::size_t>(i * rows + n)]) < 1e-12);
        }
    const auto y0 = ref::gemv(q, std::span<const float>(x).first(cols));
    for (std::int64_t n = 0; n < rows; ++n)
        CHECK(std::fabs(y0[static_cast<std::size_t>(n)] + bias[static_cast<std::size_t>(n)] - y[static_cast<std::size_t>(n)]) < 1e-12);
    CHECK_THROWS_AS(ref::gemm(q, x, m + 1), std::invalid_argument);
}

#include <qforge/config/aliases.hpp>
#include <qforge/config/name.hpp>

#include <catch2/catch.hpp>

using namespace qforge;

namespace {
// Every combination of the vocabulary's values, valid or not.
std::vector<config> all_configs() {
    std::vector<config> out;
    const int bits[] = {2, 3, 4, 8};
    const std::int32_t groups[] = {per_channel, per_tensor, 16, 32, 64, 100, 128, 256, 4096, 8192};
    for (const auto& t : dtype_tokens)
        for (int b : bits)
            for (std::int32_t g : groups)
                for (bool dq : {false, true})
                    for (const auto& l : layout_tokens)
                        for (const auto& a : compute_tokens)
                            out.push_back(config{t.value, static_cast<std::uint8_t>(b), g, dq, l.value, a.value});
    return out;
}
}  // namespace

TEST_CASE("canonical names of the real-world aliases") {
    CHECK(canonical_name(configs::qlora_nf4) == "nf4_b64_dq_bnb_bf16");
    CHECK(canonical_name(configs::bnb_fp4) == "fp4_b64_bnb_f32");
    CHECK(canonical_name(configs::llm_int8) == "int8row_pc_bnb8_i8");
    CHECK(canonical_name(configs::gptq_int4_g128) == "int4sym_g128_gptq_f32");
    CHECK(canonical_name(configs::gptq_int3_g128) == "int3sym_g128_gptq_f32");
    CHECK(canonical_name(configs::gptq_int8_pc) == "int8sym_pc_gptq_f32");
    CHECK(canonical_name(configs::awq_int4_g128) == "int4asym_g128_awq_f32");
    CHECK(canonical_name(configs::fp8_block128) == "e4m3_t128_fp8blk_f32");
    CHECK(canonical_name(configs::mxfp4) == "e2m1_g32_mx_f32");
}

TEST_CASE("parse_name is the exact inverse of canonical_name over the whole vocabulary") {
    int valid = 0;
    for (const config& c : all_configs()) {
        if (check(c) != config_rule::ok) {
            CHECK_THROWS_AS(canonical_name(c), config_error_exception);
            continue;
        }
        ++valid;
        const std::string name = canonical_name(c);
        INFO(name);
        CHECK(parse_name(name) == c);
    }
    CHECK(valid > 100);
}

TEST_CASE("parse_name rejects malformed and non-canonical names") {
    for (const char* bad : {"", "nf4", "nf4_b64_bnb", "nf4_g64_bnb_f32", "nf4_b64_xx_bnb_f32", "int4_g128_gptq_f32",
                            "int4sym_g128_gptq_f64", "int4sym_g0128_gptq_f32", "nf4_b63_bnb_f32", "int4sym_gx_gptq_f32",
                            "int3sym_g128_awq_f32", "nf4_b64_dq_dq_bnb_f32", "int8row_pc_bnb8_f32"}) {
        INFO(bad);
        CHECK_THROWS_AS(parse_name(bad), std::invalid_argument);
    }
}

TEST_CASE("validate names the offending field") {
    config c = configs::awq_int4_g128;
    c.bits = 3;
    CHECK_THROWS_WITH(validate(c), Catch::Contains("'storage'") && Catch::Contains("4-bit"));
    c = configs::qlora_nf4;
    c.group = 96;
    CHECK_THROWS_WITH(validate(c), Catch::Contains("'group'") && Catch::Contains("power of two"));
    c = configs::gptq_int4_g128;
    c.double_quant = true;
    CHECK_THROWS_WITH(validate(c), Catch::Contains("'double_quant'"));
    c = configs::fp8_block128;
    c.act = compute::i8;
    CHECK_THROWS_WITH(validate(c), Catch::Contains("'act'"));
    c = configs::qlora_nf4;
    c.bits = 5;
    CHECK_THROWS_WITH(validate(c), Catch::Contains("'bits'"));
}

TEST_CASE("every rule has a field and a message") {
    for (int r = 0; r <= static_cast<int>(config_rule::act_int8row_needs_i8); ++r) {
        const rule_text t = describe(static_cast<config_rule>(r));
        CHECK(!t.message.empty());
        CHECK(t.message != "unknown rule");
    }
}

TEST_CASE("policies expose their config at compile time") {
    STATIC_REQUIRE(qlora_nf4::double_quant);
    STATIC_REQUIRE(qlora_nf4::group == 64);
    STATIC_REQUIRE(gptq_int3_g128::bits == 3);
    STATIC_REQUIRE(awq_int4_g128::storage == layout::awq_gemm);
    STATIC_REQUIRE(mxfp4::cfg == configs::mxfp4);
}

// HF quantization_config <-> qforge config. Expected values come from transformers'
// utils/quantization_config.py (defaults, checks) and formats.md §0-§8, never from the code under test.
#include <qforge/config/aliases.hpp>
#include <qforge/config/hf.hpp>
#include <qforge/config/name.hpp>

#include <catch2/catch.hpp>

#include <string>
#include <vector>

using namespace qforge;
using json = nlohmann::json;

namespace {

// formats.md §8: a real Llama-3-8B NF4 upload.
const char* const llama3_nf4_block =
    R"({"_load_in_4bit": true, "_load_in_8bit": false, "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": true, "llm_int8_enable_fp32_cpu_offload": false, "llm_int8_has_fp16_weight": false, "llm_int8_skip_modules": null, "llm_int8_threshold": 6.0, "load_in_4bit": true, "load_in_8bit": false, "quant_method": "bitsandbytes"})";

// formats.md §7: gpt-oss.
const char* const gpt_oss_block =
    R"({"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"], "quant_method": "mxfp4"})";

hf_quant_config parse(const char* text) { return parse_hf_quant_config(json::parse(text)); }

// The error a parse (or to_config) raises; fails the test when none is raised.
template <class F>
hf_config_error error_of(F&& f) {
    try {
        f();
    } catch (const hf_config_error& e) {
        return e;
    }
    FAIL("no hf_config_error was thrown");
    return hf_config_error("", "");
}

void require_rejected(const char* text, const std::string& key, const std::string& words = "") {
    INFO(text);
    const hf_config_error e = error_of([&] { parse(text); });
    const std::string what = e.what();
    INFO(what);
    CHECK(e.key == key);
    CHECK(what.find("'" + key + "'") != std::string::npos);
    if (!words.empty()) CHECK(what.find(words) != std::string::npos);
}

void require_to_config_rejected(const char* text, const std::string& key, const std::string& words = "") {
    INFO(text);
    const hf_quant_config q = parse(text);
    const hf_config_error e = error_of([&] { to_config(q); });
    const std::string what = e.what();
    INFO(what);
    CHECK(e.key == key);
    CHECK(what.find("'" + key + "'") != std::string::npos);
    if (!words.empty()) CHECK(what.find(words) != std::string::npos);
}

// parse -> write -> parse is the identity (unknown keys are dropped on write, as transformers does),
// and writing twice gives the same text.
void require_round_trip(const char* text) {
    INFO(text);
    hf_quant_config first = parse(text);
    const json written = to_json(first);
    const hf_quant_config second = parse_hf_quant_config(written);
    CHECK(second.unknown_keys.empty());
    first.unknown_keys.clear();
    CHECK(second == first);
    CHECK(to_json(second).dump() == written.dump());
}

}  // namespace

TEST_CASE("bitsandbytes defaults from a minimal JSON") {
    const hf_quant_config q = parse(R"({"quant_method": "bitsandbytes", "load_in_4bit": true})");
    REQUIRE(q.method() == hf_method::bitsandbytes);
    const auto& b = std::get<hf_bnb>(q.fields);
    CHECK(b.load_in_4bit);
    CHECK_FALSE(b.load_in_8bit);
    CHECK(b.llm_int8_threshold == 6.0);
    CHECK_FALSE(b.llm_int8_skip_modules.has_value());
    CHECK_FALSE(b.llm_int8_enable_fp32_cpu_offload);
    CHECK_FALSE(b.llm_int8_has_fp16_weight);
    CHECK(b.bnb_4bit_compute_dtype == "float32");
    CHECK(b.bnb_4bit_quant_type == "fp4");
    CHECK_FALSE(b.bnb_4bit_use_double_quant);
    CHECK(b.bnb_4bit_quant_storage == "uint8");
    CHECK(b.bnb_4bit_blocksize == 64);
    CHECK(q.unknown_keys.empty());

    // null compute dtype / storage mean the defaults (transformers: None -> torch.float32 / uint8).
    const hf_quant_config nulls =
        parse(R"({"load_in_4bit": true, "bnb_4bit_compute_dtype": null, "bnb_4bit_quant_storage": null})");
    const auto& n = std::get<hf_bnb>(nulls.fields);
    CHECK(n.bnb_4bit_compute_dtype == "float32");
    CHECK(n.bnb_4bit_quant_storage == "uint8");
}

TEST_CASE("GPTQ, AWQ, FP8 and MXFP4 defaults from a minimal JSON") {
    SECTION("gptq") {
        const hf_quant_config q = parse(R"({"quant_method": "gptq", "bits": 4})");
        REQUIRE(q.method() == hf_method::gptq);
        const auto& g = std::get<hf_gptq>(q.fields);
        CHECK(g.bits == 4);
        CHECK_FALSE(g.tokenizer.has_value());
        CHECK(std::holds_alternative<std::monostate>(g.dataset));
        CHECK(g.group_size == 128);
        CHECK(g.damp_percent == 0.1);
        CHECK_FALSE(g.desc_act);
        CHECK(g.act_group_aware);
        CHECK(g.sym);
        CHECK(g.true_sequential);
        CHECK(g.checkpoint_format == "gptq");
        CHECK(g.meta.is_null());
        CHECK(g.backend == "auto");
        CHECK_FALSE(g.model_seqlen.has_value());
        CHECK_FALSE(g.block_name_to_quantize.has_value());
        CHECK_FALSE(g.module_name_preceding_first_block.has_value());
        CHECK(g.batch_size == 1);
        CHECK_FALSE(g.pad_token_id.has_value());
        CHECK_FALSE(g.max_input_length.has_value());
        CHECK(g.cache_block_outputs);
        CHECK_FALSE(g.modules_in_block_to_quantize.has_value());
        CHECK_FALSE(g.use_exllama.has_value());
        CHECK(g.exllama_config.is_null());
        CHECK_FALSE(g.use_cuda_fp16.has_value());
    }
    SECTION("awq") {
        const hf_quant_config q = parse(R"({"quant_method": "awq"})");
        REQUIRE(q.method() == hf_method::awq);
        const auto& a = std::get<hf_awq>(q.fields);
        CHECK(a.bits == 4);
        CHECK(a.group_size == 128);
        CHECK(a.zero_point);
        CHECK(a.version == "gemm");
        CHECK(a.backend == "autoawq");
        CHECK_FALSE(a.fuse_max_seq_len.has_value());
        CHECK_FALSE(a.modules_to_not_convert.has_value());
        CHECK(a.exllama_config.is_null());
    }
    SECTION("fp8") {
        const hf_quant_config q = parse(R"({"quant_method": "fp8"})");
        REQUIRE(q.method() == hf_method::fp8);
        const auto& f = std::get<hf_fp8>(q.fields);
        CHECK(f.activation_scheme == "dynamic");
        CHECK(f.weight_block_size == std::array<int, 2>{128, 128});
        CHECK_FALSE(f.modules_to_not_convert.has_value());
        CHECK_FALSE(f.fmt.has_value());
    }
    SECTION("mxfp4") {
        const hf_quant_config q = parse(R"({"quant_method": "mxfp4"})");
        REQUIRE(q.method() == hf_method::mxfp4);
        const auto& m = std::get<hf_mxfp4>(q.fields);
        CHECK_FALSE(m.modules_to_not_convert.has_value());
        CHECK_FALSE(m.dequantize);
        CHECK(m.mx_scale_rule == ref::mx_scale_rule::ocp);
    }
}

TEST_CASE("the Llama-3 NF4 block is QLoRA's config and dumps back byte-identical") {
    const json input = json::parse(llama3_nf4_block);
    const hf_quant_config q = parse_hf_quant_config(input);
    const auto& b = std::get<hf_bnb>(q.fields);
    CHECK(b.bnb_4bit_quant_type == "nf4");
    CHECK(b.bnb_4bit_compute_dtype == "bfloat16");
    CHECK(b.bnb_4bit_use_double_quant);
    CHECK(q.unknown_keys.empty());
    CHECK(to_config(q) == configs::qlora_nf4);
    CHECK(to_json(q).dump() == input.dump());
    // floats stay floats: 6.0, not 6
    CHECK(to_json(q).dump().find("\"llm_int8_threshold\":6.0") != std::string::npos);
    // and qforge writes exactly this block for its QLoRA config
    CHECK(to_json(to_hf_quant_config(configs::qlora_nf4)).dump() == input.dump());
}

TEST_CASE("older bitsandbytes configs without _load_in_* and quant_storage") {
    // transformers 4.3x wrote no _load_in_* and no bnb_4bit_quant_storage; 4.2x wrote no quant_method.
    const char* older =
        R"({"bnb_4bit_compute_dtype": "float16", "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": false, "llm_int8_enable_fp32_cpu_offload": false, "llm_int8_has_fp16_weight": false, "llm_int8_skip_modules": null, "llm_int8_threshold": 6.0, "load_in_4bit": true, "load_in_8bit": false, "quant_method": "bitsandbytes"})";
    const hf_quant_config q = parse(older);
    const auto& b = std::get<hf_bnb>(q.fields);
    CHECK(b.bnb_4bit_quant_storage == "uint8");
    CHECK(q.unknown_keys.empty());
    CHECK(to_config(q) == config{dtype::nf4, 4, 64, false, layout::bnb4, compute::f16});
    const json written = to_json(q);
    CHECK(written.at("_load_in_4bit") == true);
    CHECK(written.at("_load_in_8bit") == false);
    CHECK(written.at("bnb_4bit_quant_storage") == "uint8");
    require_round_trip(older);

    const hf_quant_config no_method = parse(R"({"load_in_8bit": true, "llm_int8_threshold": 6.0})");
    CHECK(no_method.method() == hf_method::bitsandbytes);
    CHECK(to_config(no_method) == configs::llm_int8);
}

TEST_CASE("rejections name the key") {
    // bitsandbytes
    require_rejected(R"({"quant_method": "bitsandbytes", "load_in_4bit": true, "load_in_8bit": true})", "load_in_4bit", "both");
    require_rejected(R"({"quant_method": "bitsandbytes"})", "load_in_4bit", "neither");
    require_rejected(R"({"quant_method": "bitsandbytes", "load_in_4bit": false, "load_in_8bit": false})", "load_in_4bit");
    require_rejected(R"({"load_in_4bit": true, "llm_int8_threshold": 6})", "llm_int8_threshold", "integer");
    require_rejected(R"({"load_in_4bit": true, "llm_int8_threshold": "6.0"})", "llm_int8_threshold");
    require_rejected(R"({"load_in_4bit": true, "bnb_4bit_quant_type": "int4"})", "bnb_4bit_quant_type");
    require_rejected(R"({"load_in_4bit": true, "bnb_4bit_compute_dtype": "float64"})", "bnb_4bit_compute_dtype");
    require_rejected(R"({"load_in_4bit": true, "bnb_4bit_compute_dtype": 16})", "bnb_4bit_compute_dtype");
    require_rejected(R"({"load_in_4bit": true, "bnb_4bit_quant_storage": "int4"})", "bnb_4bit_quant_storage");
    require_rejected(R"({"load_in_4bit": true, "bnb_4bit_blocksize": 48})", "bnb_4bit_blocksize");
    require_rejected(R"({"load_in_4bit": true, "bnb_4bit_blocksize": 16})", "bnb_4bit_blocksize");
    require_rejected(R"({"load_in_4bit": true, "bnb_4bit_blocksize": 8192})", "bnb_4bit_blocksize");
    require_rejected(R"({"load_in_4bit": true, "bnb_4bit_blocksize": 64.0})", "bnb_4bit_blocksize");
    require_rejected(R"({"load_in_4bit": "yes"})", "load_in_4bit");
    require_rejected(R"({"load_in_4bit": true, "_load_in_4bit": false})", "_load_in_4bit");
    require_rejected(R"({"load_in_4bit": true, "bnb_4bit_use_double_quant": "true"})", "bnb_4bit_use_double_quant");
    require_rejected(R"({"load_in_4bit": true, "llm_int8_skip_modules": "lm_head"})", "llm_int8_skip_modules");
    require_rejected(R"({"load_in_4bit": true, "llm_int8_skip_modules": ["lm_head", 3]})", "llm_int8_skip_modules[1]");
    require_rejected(R"({"load_in_4bit": true, "llm_int8_skip_modules": ["model.("]})", "llm_int8_skip_modules[0]",
                     "regular expression");
    require_rejected(R"({"quant_method": "gptq", "bits": 4, "load_in_4bit": true})", "quant_method");

    // gptq
    require_rejected(R"({"quant_method": "gptq", "bits": 5})", "bits");
    require_rejected(R"({"quant_method": "gptq", "bits": 16})", "bits");
    require_rejected(R"({"quant_method": "gptq"})", "bits", "required");
    require_rejected(R"({"quant_method": "gptq", "bits": "4"})", "bits");
    require_rejected(R"({"quant_method": "gptq", "bits": 4.0})", "bits");
    require_rejected(R"({"quant_method": "gptq", "bits": 4, "damp_percent": 0})", "damp_percent");
    require_rejected(R"({"quant_method": "gptq", "bits": 4, "damp_percent": 1.0})", "damp_percent");
    require_rejected(R"({"quant_method": "gptq", "bits": 4, "damp_percent": -0.1})", "damp_percent");
    require_rejected(R"({"quant_method": "gptq", "bits": 4, "group_size": 0})", "group_size");
    require_rejected(R"({"quant_method": "gptq", "bits": 4, "group_size": -2})", "group_size");
    require_rejected(R"({"quant_method": "gptq", "bits": 4, "group_size": 99999999999})", "group_size");
    require_rejected(R"({"quant_method": "gptq", "bits": 4, "desc_act": "yes"})", "desc_act");
    require_rejected(R"({"quant_method": "gptq", "bits": 4, "sym": 1})", "sym");
    require_rejected(R"({"quant_method": "gptq", "bits": 4, "dataset": "ptb"})", "dataset");
    require_rejected(R"({"quant_method": "gptq", "bits": 4, "modules_in_block_to_quantize": [["a", 2]]})",
                     "modules_in_block_to_quantize[0][1]");
    require_rejected(R"({"quant_method": "gptq", "bits": 4, "use_exllama": true, "disable_exllama": false})",
                     "disable_exllama");
    require_rejected(R"({"quant_method": "gptq", "bits": 4, "exllama_config": {"max_input_len": 2048}})",
                     "exllama_config");
    require_rejected(R"({"quant_method": "gptq", "bits": 4, "exllama_config": {"version": 3}})", "exllama_config");
    require_rejected(R"({"quant_method": "gptq", "bits": 4, "meta": [1]})", "meta");

    // awq
    require_rejected(R"({"quant_method": "awq", "version": "gemm_v9"})", "version", "unknown AWQ version");
    require_rejected(R"({"quant_method": "awq", "backend": "vllm"})", "backend");
    require_rejected(R"({"quant_method": "awq", "do_fuse": true})", "do_fuse", "deprecated");
    require_rejected(R"({"quant_method": "awq", "modules_to_fuse": {"attention": ["q_proj"]}})", "modules_to_fuse");
    require_rejected(R"({"quant_method": "awq", "zero_point": null})", "zero_point");
    require_rejected(R"({"quant_method": "awq", "modules_to_not_convert": [1]})", "modules_to_not_convert[0]");

    // fp8
    require_rejected(R"({"quant_method": "fp8", "weight_block_size": [64, 64]})", "weight_block_size", "128x128");
    require_rejected(R"({"quant_method": "fp8", "weight_block_size": [128, 64]})", "weight_block_size", "128x128");
    require_rejected(R"({"quant_method": "fp8", "weight_block_size": [128]})", "weight_block_size");
    require_rejected(R"({"quant_method": "fp8", "weight_block_size": [0, 128]})", "weight_block_size", "positive");
    require_rejected(R"({"quant_method": "fp8", "weight_block_size": null})", "weight_block_size");
    require_rejected(R"({"quant_method": "fp8", "activation_scheme": "static"})", "activation_scheme");
    require_rejected(R"({"quant_method": "fp8", "fmt": "e5m2"})", "fmt");

    // mxfp4
    require_rejected(R"({"quant_method": "mxfp4", "mx_scale_rule": "floor"})", "mx_scale_rule");
    require_rejected(R"({"quant_method": "mxfp4", "mx_scale_rule": 1})", "mx_scale_rule");
    require_rejected(R"({"quant_method": "mxfp4", "dequantize": 0})", "dequantize");

    // the method itself
    require_rejected(R"({"bits": 4})", "quant_method", "missing");
    require_rejected(R"({"quant_method": "aqlm"})", "quant_method", "not supported");
    require_rejected(R"({"quant_method": 4})", "quant_method");
    require_rejected(R"([1, 2])", "quantization_config");
    require_rejected(R"({"quantization_config": "gptq"})", "quantization_config");
}

TEST_CASE("unknown keys are accepted and reported, then dropped on write") {
    // An AutoGPTQ quantize_config with keys GPTQConfig does not have.
    const char* autogptq =
        R"({"bits": 4, "damp_percent": 0.1, "desc_act": true, "group_size": 128, "model_file_base_name": "model", "model_name_or_path": null, "quant_method": "gptq", "static_groups": false, "sym": true, "true_sequential": true})";
    const hf_quant_config q = parse(autogptq);
    CHECK(q.unknown_keys == std::vector<std::string>{"model_file_base_name", "model_name_or_path"});
    const auto& g = std::get<hf_gptq>(q.fields);
    CHECK(g.desc_act);
    CHECK_FALSE(g.act_group_aware);  // transformers turns it off with desc_act
    CHECK_FALSE(g.static_groups);
    CHECK_FALSE(to_json(q).contains("static_groups"));  // false: transformers' field set
    require_round_trip(autogptq);
    // static_groups (AutoGPTQ / GPTQModel) is read, and written when true
    const hf_quant_config st = parse(R"({"quant_method": "gptq", "bits": 4, "static_groups": true})");
    CHECK(st.unknown_keys.empty());
    CHECK(std::get<hf_gptq>(st.fields).static_groups);
    CHECK(to_json(st)["static_groups"] == true);
    CHECK(parse(to_json(st).dump().c_str()) == st);
    require_rejected(R"({"quant_method": "gptq", "bits": 4, "static_groups": 1})", "static_groups");

    const hf_quant_config fp8 = parse(R"({"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]})");
    CHECK(fp8.unknown_keys.empty());
    CHECK(std::get<hf_fp8>(fp8.fields).fmt == "e4m3");

    // a qforge extension key is unknown to methods it does not belong to
    CHECK(parse(R"({"quant_method": "gptq", "bits": 4, "bnb_4bit_blocksize": 64})").unknown_keys ==
          std::vector<std::string>{"bnb_4bit_blocksize"});
}

TEST_CASE("a whole config.json is read through its quantization_config") {
    const json config_json = {
        {"architectures", {"GptOssForCausalLM"}},
        {"hidden_size", 2880},
        {"torch_dtype", "bfloat16"},
        {"quantization_config", json::parse(gpt_oss_block)},
    };
    const hf_quant_config q = parse_hf_quant_config(config_json);
    CHECK(q.method() == hf_method::mxfp4);
    CHECK(q.unknown_keys.empty());  // the model's own keys are not quantization_config keys
    CHECK(to_config(q) == configs::mxfp4);
    // Mxfp4Config.to_dict() has exactly quant_method and modules_to_not_convert
    CHECK(to_json(q).dump() == json::parse(gpt_oss_block).dump());
}

TEST_CASE("module exclusions follow transformers' rules") {
    SECTION("gpt-oss: regex patterns anchored at the start") {
        const hf_quant_config q = parse(gpt_oss_block);
        CHECK(is_excluded(q, "model.layers.0.self_attn.q_proj"));
        CHECK(is_excluded(q, "model.layers.23.self_attn.o_proj"));
        CHECK(is_excluded(q, "model.layers.12.mlp.router"));
        CHECK(is_excluded(q, "model.embed_tokens"));
        CHECK(is_excluded(q, "lm_head"));
        CHECK_FALSE(is_excluded(q, "model.layers.12.mlp.experts"));
        CHECK_FALSE(is_excluded(q, "model.layers.12.mlp.experts.gate_up_proj"));
    }
    SECTION("prefix with a dot, regex not anchored at the end, endswith") {
        const hf_quant_config q =
            parse(R"({"quant_method": "awq", "modules_to_not_convert": ["model.decoder.layer.11", "fc1"]})");
        CHECK(is_excluded(q, "model.decoder.layer.11.attn"));  // key + "\." at the start
        CHECK(is_excluded(q, "model.decoder.layer.11"));       // the whole name
        CHECK(is_excluded(q, "model.decoder.layer.110.attn"));  // re.match does not anchor at the end
        CHECK_FALSE(is_excluded(q, "model.decoder.layer.1.attn"));
        CHECK(is_excluded(q, "model.decoder.layers.23.fc1"));  // endswith
        CHECK_FALSE(is_excluded(q, "model.decoder.layers.23.fc2"));
        CHECK_FALSE(is_excluded(q, "lm_head"));  // an explicit list replaces the default
    }
    SECTION("a pattern is matched at the start, not searched") {
        const hf_quant_config q = parse(R"({"quant_method": "fp8", "modules_to_not_convert": ["self_attn"]})");
        CHECK_FALSE(is_excluded(q, "model.layers.0.self_attn.q_proj"));
        CHECK(is_excluded(q, "model.layers.0.self_attn"));  // but endswith still applies
    }
    SECTION("a null or absent list means lm_head") {
        for (const char* text : {R"({"load_in_4bit": true})", R"({"load_in_8bit": true, "llm_int8_skip_modules": null})",
                                 R"({"quant_method": "awq"})", R"({"quant_method": "fp8"})", R"({"quant_method": "mxfp4"})",
                                 R"({"quant_method": "gptq", "bits": 4})"}) {
            INFO(text);
            const hf_quant_config q = parse(text);
            CHECK(hf_module_filter(q).skip_patterns() == std::vector<std::string>{"lm_head"});
            CHECK(is_excluded(q, "lm_head"));
            CHECK_FALSE(is_excluded(q, "model.layers.0.mlp.down_proj"));
        }
    }
    SECTION("an explicit list without lm_head quantizes lm_head") {
        const hf_quant_config q = parse(R"({"load_in_4bit": true, "llm_int8_skip_modules": ["mlp.gate"]})");
        CHECK_FALSE(is_excluded(q, "lm_head"));
        CHECK(is_excluded(q, "model.layers.0.mlp.gate"));
        const hf_quant_config empty = parse(R"({"quant_method": "mxfp4", "modules_to_not_convert": []})");
        CHECK_FALSE(is_excluded(empty, "lm_head"));
    }
    SECTION("GPTQ keeps only modules ending with an entry of modules_in_block_to_quantize") {
        const hf_quant_config q = parse(
            R"({"quant_method": "gptq", "bits": 4, "modules_in_block_to_quantize": [["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"], ["self_attn.o_proj"]]})");
        CHECK_FALSE(is_excluded(q, "model.layers.3.self_attn.q_proj"));
        CHECK_FALSE(is_excluded(q, "model.layers.3.self_attn.o_proj"));
        CHECK(is_excluded(q, "model.layers.3.mlp.down_proj"));
        CHECK(is_excluded(q, "lm_head"));
    }
}

TEST_CASE("hostile module patterns are refused or run in linear time") {
    const auto awq_with = [](const std::string& pattern) {
        return parse_hf_quant_config(
            json{{"quant_method", "awq"}, {"bits", 4}, {"modules_to_not_convert", {"lm_head", pattern}}});
    };
    const auto refused = [&](const std::string& pattern) {
        INFO(pattern.substr(0, 60));
        try {
            awq_with(pattern);
            FAIL("accepted");
        } catch (const hf_config_error& e) {
            CHECK(e.key == "modules_to_not_convert[1]");
        }
    };
    SECTION("what Python's re rejects") {
        refused(".**x");                  // multiple repeat (std::regex ran > 100 s on it)
        refused("a+*");                   // multiple repeat
        refused("*x");                    // nothing to repeat
        refused("(ab");                   // missing )
        refused("\\88888888888888888888");  // invalid group reference (signed overflow in std::regex)
    }
    SECTION("too long or too complex") {
        refused(std::string(30000, '('));  // std::regex: stack overflow
        refused(std::string(max_pattern_length + 1, 'a'));
        refused("((((a{100}){100}){100}){100})");  // compiles beyond max_pattern_memory
    }
    SECTION("catastrophic backtracking patterns match in linear time") {
        const hf_quant_config q = awq_with("(.*)*x");
        CHECK(is_excluded(q, std::string(200, 'a') + "x"));
        CHECK_FALSE(is_excluded(q, std::string(5000, 'a')));  // exponential for a backtracking engine
        const hf_quant_config nested = awq_with("(a|aa)*b");
        CHECK_FALSE(is_excluded(nested, std::string(5000, 'a')));
    }
    SECTION("the patterns of real configs keep their meaning") {
        const hf_quant_config q = awq_with(R"(model\.layers\.\d+\.self_attn)");
        CHECK(is_excluded(q, "model.layers.12.self_attn.q_proj"));
        CHECK_FALSE(is_excluded(q, "model.layers.x.self_attn.q_proj"));
        CHECK(is_excluded(awq_with("re:.*"), "re:anything"));
        CHECK_FALSE(is_excluded(awq_with("mlp.*gate"), "model.mlp.gate"));  // anchored at the start
        CHECK(is_excluded(awq_with(".*mlp.*gate"), "model.mlp.gate"));
    }
}

TEST_CASE("to_config of every method equals the matching alias") {
    CHECK(to_config(parse(llama3_nf4_block)) == configs::qlora_nf4);
    CHECK(to_config(parse(R"({"load_in_4bit": true})")) == configs::bnb_fp4);
    CHECK(to_config(parse(R"({"quant_method": "bitsandbytes", "load_in_8bit": true})")) == configs::llm_int8);
    CHECK(to_config(parse(R"({"quant_method": "gptq", "bits": 4})")) == configs::gptq_int4_g128);
    CHECK(to_config(parse(R"({"quant_method": "gptq", "bits": 3, "group_size": 128})")) == configs::gptq_int3_g128);
    CHECK(to_config(parse(R"({"quant_method": "gptq", "bits": 8, "group_size": -1})")) == configs::gptq_int8_pc);
    CHECK(to_config(parse(R"({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"})")) ==
          configs::awq_int4_g128);
    CHECK(to_config(parse(R"({"quant_method": "fp8", "weight_block_size": [128, 128]})")) == configs::fp8_block128);
    CHECK(to_config(parse(gpt_oss_block)) == configs::mxfp4);

    // combinations without an alias
    CHECK(to_config(parse(R"({"quant_method": "gptq", "bits": 2, "group_size": 64, "sym": false, "checkpoint_format": "GPTQ_V2"})")) ==
          config{dtype::int_asym, 2, 64, false, layout::gptq_v2, compute::f32});
    CHECK(to_config(parse(R"({"load_in_4bit": true, "bnb_4bit_quant_type": "nf4", "bnb_4bit_blocksize": 128, "bnb_4bit_compute_dtype": "float16"})")) ==
          config{dtype::nf4, 4, 128, false, layout::bnb4, compute::f16});
    CHECK(to_config(parse(R"({"quant_method": "awq", "version": "exllama"})")) == configs::awq_int4_g128);
}

TEST_CASE("to_config refuses what qforge cannot run, naming the key") {
    require_to_config_rejected(R"({"quant_method": "awq", "zero_point": false})", "zero_point", "not supported");
    require_to_config_rejected(R"({"quant_method": "awq", "version": "gemv"})", "version");
    require_to_config_rejected(R"({"quant_method": "awq", "backend": "llm-awq"})", "backend");
    require_to_config_rejected(R"({"quant_method": "awq", "bits": 8})", "bits");
    require_to_config_rejected(R"({"quant_method": "awq", "group_size": -1})", "group_size");
    require_to_config_rejected(R"({"quant_method": "gptq", "bits": 4, "checkpoint_format": "marlin"})", "checkpoint_format");
    require_to_config_rejected(R"({"quant_method": "gptq", "bits": 4, "is_marlin_format": true})", "checkpoint_format");
    // group sizes transformers accepts but qforge's layouts do not: validate()'s rule, renamed to the JSON key
    require_to_config_rejected(R"({"quant_method": "gptq", "bits": 4, "group_size": 100})", "group_size", "power of two");
    require_to_config_rejected(R"({"quant_method": "gptq", "bits": 4, "group_size": 16})", "group_size");

    // hand-built values get the parser's checks
    CHECK(error_of([] { to_config(hf_quant_config{}); }).key == "load_in_4bit");  // bnb with neither flag
    hf_bnb typo;
    typo.load_in_4bit = true;
    typo.bnb_4bit_quant_type = "int4";
    CHECK(error_of([&] { to_config(hf_quant_config{typo, {}}); }).key == "bnb_4bit_quant_type");
}

TEST_CASE("parse -> write -> parse is the identity") {
    for (const char* text : {
             llama3_nf4_block,
             gpt_oss_block,
             R"({"load_in_8bit": true, "llm_int8_threshold": 4.5, "llm_int8_skip_modules": ["lm_head", "model.layers.*.mlp"]})",
             R"({"load_in_4bit": true, "bnb_4bit_blocksize": 256, "bnb_4bit_quant_storage": "bfloat16"})",
             R"({"quant_method": "gptq", "bits": 3, "group_size": -1, "desc_act": true, "dataset": ["some text"], "meta": {"quantizer": ["gptqmodel:2.0"]}, "backend": "Marlin", "modules_in_block_to_quantize": [["q_proj"], ["o_proj"]], "pad_token_id": 0})",
             R"({"quant_method": "gptq", "bits": 4, "disable_exllama": true, "use_cuda_fp16": false, "exllama_config": {"version": 1}})",
             R"({"quant_method": "gptq", "bits": 8, "dataset": "c4", "tokenizer": "meta-llama/Llama-2-7b-hf"})",
             R"({"quant_method": "awq", "version": "exllama", "modules_to_not_convert": ["visual"], "fuse_max_seq_len": 512, "do_fuse": false, "modules_to_fuse": null})",
             R"({"quant_method": "fp8", "fmt": "e4m3", "modules_to_not_convert": ["lm_head"]})",
             R"({"quant_method": "mxfp4", "mx_scale_rule": "round_up", "dequantize": true})",
         })
        require_round_trip(text);

    // legacy fields: disable_exllama becomes use_exllama, the AWQ exllama version gets its default config
    const json gptq = to_json(parse(R"({"quant_method": "gptq", "bits": 4, "disable_exllama": true})"));
    CHECK(gptq.at("use_exllama") == false);
    CHECK_FALSE(gptq.contains("disable_exllama"));
    const json awq = to_json(parse(R"({"quant_method": "awq", "version": "EXLLAMA"})"));
    CHECK(awq.at("version") == "exllama");
    CHECK(awq.at("exllama_config") == json{{"version", 2}, {"max_input_len", 2048}, {"max_batch_size", 8}});
    CHECK(to_json(parse(R"({"quant_method": "mxfp4", "mx_scale_rule": "round_up"})")).at("mx_scale_rule") == "round_up");
    CHECK(to_json(parse(R"({"quant_method": "gptq", "bits": 4})")).at("damp_percent").is_number_float());
}

TEST_CASE("to_hf_quant_config writes transformers' defaults for a qforge config") {
    for (const config& c : {configs::qlora_nf4, configs::bnb_fp4, configs::llm_int8, configs::gptq_int4_g128,
                            configs::gptq_int3_g128, configs::gptq_int8_pc, configs::awq_int4_g128, configs::fp8_block128,
                            configs::mxfp4, config{dtype::int_asym, 2, 64, false, layout::gptq_v2, compute::f32},
                            config{dtype::fp4, 4, 4096, true, layout::bnb4, compute::f16}}) {
        INFO(canonical_name(c));
        const hf_quant_config q = to_hf_quant_config(c);
        CHECK(to_config(q) == c);
        CHECK(parse_hf_quant_config(to_json(q)) == q);
    }
    // BitsAndBytesConfig(load_in_4bit=True).to_dict(), written by hand from transformers' defaults
    CHECK(to_json(to_hf_quant_config(configs::bnb_fp4)) ==
          json::parse(R"({"_load_in_4bit": true, "_load_in_8bit": false, "bnb_4bit_compute_dtype": "float32", "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": false, "llm_int8_enable_fp32_cpu_offload": false, "llm_int8_has_fp16_weight": false, "llm_int8_skip_modules": null, "llm_int8_threshold": 6.0, "load_in_4bit": true, "load_in_8bit": false, "quant_method": "bitsandbytes"})"));
    // AwqConfig() and FineGrainedFP8Config() to_dict()
    CHECK(to_json(to_hf_quant_config(configs::awq_int4_g128)) ==
          json::parse(R"({"backend": "autoawq", "bits": 4, "exllama_config": null, "fuse_max_seq_len": null, "group_size": 128, "modules_to_not_convert": null, "quant_method": "awq", "version": "gemm", "zero_point": true})"));
    CHECK(to_json(to_hf_quant_config(configs::fp8_block128)) ==
          json::parse(R"({"activation_scheme": "dynamic", "modules_to_not_convert": null, "quant_method": "fp8", "weight_block_size": [128, 128]})"));
    CHECK(to_json(to_hf_quant_config(configs::mxfp4)) == json::parse(R"({"modules_to_not_convert": null, "quant_method": "mxfp4"})"));

    // int8 activations are a kernel choice; the checkpoint's config says float32
    CHECK(std::get<hf_bnb>(to_hf_quant_config(config{dtype::nf4, 4, 64, true, layout::bnb4, compute::i8}).fields)
              .bnb_4bit_compute_dtype == "float32");

    CHECK(error_of([] { to_hf_quant_config(config{dtype::int_sym, 4, 128, false, layout::qforge, compute::f32}); }).key ==
          "quant_method");
    CHECK(error_of([] { to_hf_quant_config(config{dtype::fp8_e4m3, 8, per_tensor, false, layout::fp8_block, compute::f32}); })
              .key == "weight_block_size");
    CHECK(error_of([] { to_hf_quant_config(config{dtype::fp8_e5m2, 8, 128, false, layout::fp8_block, compute::f32}); }).key ==
          "quant_method");
    CHECK_THROWS_AS(to_hf_quant_config(config{dtype::nf4, 8, 64, false, layout::bnb4, compute::f32}), config_error_exception);
}

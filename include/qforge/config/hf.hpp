// Hugging Face `quantization_config` JSON <-> qforge config, and module exclusions (formats.md §7).
//
// The JSON side mirrors transformers' BitsAndBytesConfig, GPTQConfig, AwqConfig,
// FineGrainedFP8Config and Mxfp4Config: the same fields, the same defaults, the same rejections
// (plus the qforge extension keys `bnb_4bit_blocksize` and `mx_scale_rule`, formats.md §0).
// Keys transformers does not know are accepted and reported in `unknown_keys`, as transformers
// logs and ignores them. Every rejection is an hf_config_error naming the JSON key.
#pragma once

#include <qforge/config/config.hpp>
#include <qforge/reference/reference.hpp>

#include <nlohmann/json.hpp>

#include <array>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace re2 {
class RE2;
}

namespace qforge {

// A quantization_config the JSON cannot express, or qforge cannot run. `key` is the JSON key at
// fault (e.g. "bits", "weight_block_size", "modules_to_not_convert[1]").
struct hf_config_error : std::invalid_argument {
    std::string key;
    hf_config_error(std::string key_, const std::string& message);
};

// `quant_method` values qforge reads; the order is the order of hf_quant_config::fields.
enum class hf_method : std::uint8_t { bitsandbytes, gptq, awq, fp8, mxfp4 };
std::string_view quant_method_name(hf_method m);

using hf_module_list = std::optional<std::vector<std::string>>;  // nullopt = JSON null / absent

// BitsAndBytesConfig. Exactly one of load_in_4bit / load_in_8bit is true after parsing.
struct hf_bnb {
    bool load_in_8bit = false;
    bool load_in_4bit = false;
    double llm_int8_threshold = 6.0;  // the LLM.int8 outlier threshold (a run-time kernel argument)
    hf_module_list llm_int8_skip_modules;
    bool llm_int8_enable_fp32_cpu_offload = false;
    bool llm_int8_has_fp16_weight = false;
    std::string bnb_4bit_compute_dtype = "float32";  // float32 | bfloat16 | float16 (null -> float32)
    std::string bnb_4bit_quant_type = "fp4";         // fp4 | nf4
    bool bnb_4bit_use_double_quant = false;
    std::string bnb_4bit_quant_storage = "uint8";  // float16 float32 int8 uint8 float64 bfloat16
    int bnb_4bit_blocksize = 64;                   // qforge extension; written only when not 64
    friend bool operator==(const hf_bnb&, const hf_bnb&) = default;
};

// GPTQConfig (current transformers fields, plus the legacy auto-gptq loader fields when present).
using hf_gptq_dataset = std::variant<std::monostate, std::string, std::vector<std::string>>;
struct hf_gptq {
    int bits = 4;  // required in the JSON (transformers has no default)
    std::optional<std::string> tokenizer;
    hf_gptq_dataset dataset;  // null | "wikitext2" | "c4" | "c4-new" | list of texts
    int group_size = 128;     // -1 = one group per row
    double damp_percent = 0.1;
    bool desc_act = false;
    bool act_group_aware = true;  // forced false when desc_act is true, as transformers does
    bool sym = true;
    bool true_sequential = true;
    // AutoGPTQ / GPTQModel's static_groups (default false there; transformers' GPTQConfig lacks it):
    // group parameters from the unpermuted weights. Written only when true.
    bool static_groups = false;
    std::string checkpoint_format = "gptq";  // lower-cased; "gptq" (v1) | "gptq_v2" | others qforge refuses
    nlohmann::json meta;                     // null or an object (free-form tool metadata)
    std::string backend = "auto";            // lower-cased; null -> "auto"
    std::optional<int> model_seqlen;
    std::optional<std::string> block_name_to_quantize;
    hf_module_list module_name_preceding_first_block;
    int batch_size = 1;
    std::optional<int> pad_token_id;
    std::optional<int> max_input_length;
    bool cache_block_outputs = true;
    std::optional<std::vector<std::vector<std::string>>> modules_in_block_to_quantize;
    // Legacy loader fields (auto-gptq era): kept and written only when the input had them.
    // `disable_exllama` is read as use_exllama = !disable_exllama and never written.
    std::optional<bool> use_exllama;
    nlohmann::json exllama_config;  // null or {"version": 1 | 2, ...}
    std::optional<bool> use_cuda_fp16;
    friend bool operator==(const hf_gptq&, const hf_gptq&) = default;
};

// AwqConfig. `version` gemm, and the loaders exllama / ipex that read gemm checkpoints, map to
// qforge's awq layout; gemv packs differently and is refused by to_config.
struct hf_awq {
    int bits = 4;
    int group_size = 128;
    bool zero_point = true;
    std::string version = "gemm";  // lower-cased; gemm | gemv | exllama | ipex
    std::string backend = "autoawq";  // autoawq | llm-awq
    std::optional<int> fuse_max_seq_len;
    hf_module_list modules_to_not_convert;
    nlohmann::json exllama_config;  // null or an object; defaulted when version is exllama
    friend bool operator==(const hf_awq&, const hf_awq&) = default;
};

// FineGrainedFP8Config. qforge supports 128x128 weight blocks only.
struct hf_fp8 {
    std::string activation_scheme = "dynamic";
    std::array<int, 2> weight_block_size{128, 128};
    hf_module_list modules_to_not_convert;
    std::optional<std::string> fmt;  // DeepSeek-V3 checkpoints say "e4m3"; any other value is refused
    friend bool operator==(const hf_fp8&, const hf_fp8&) = default;
};

// Mxfp4Config (gpt-oss).
struct hf_mxfp4 {
    hf_module_list modules_to_not_convert;
    bool dequantize = false;  // a loading option; written only when true
    ref::mx_scale_rule mx_scale_rule = ref::mx_scale_rule::ocp;  // qforge extension ("ocp" | "round_up")
    friend bool operator==(const hf_mxfp4&, const hf_mxfp4&) = default;
};

struct hf_quant_config {
    std::variant<hf_bnb, hf_gptq, hf_awq, hf_fp8, hf_mxfp4> fields;  // alternative i is hf_method i
    std::vector<std::string> unknown_keys;  // keys transformers ignores, in sorted order

    hf_method method() const { return static_cast<hf_method>(fields.index()); }
    friend bool operator==(const hf_quant_config&, const hf_quant_config&) = default;
};

// Parses a quantization_config object, or a whole config.json holding one under
// "quantization_config". Like transformers, a missing quant_method with load_in_4bit/8bit true
// means bitsandbytes. Throws hf_config_error naming the key.
hf_quant_config parse_hf_quant_config(const nlohmann::json& j);

// transformers' to_dict() field set (with quant_method; for bnb also _load_in_4bit/_load_in_8bit),
// as an nlohmann object, hence sorted keys; floats stay floats (6.0). Unknown keys are dropped,
// as transformers does; extension keys are written only when they differ from their default.
// parse_hf_quant_config(to_json(q)) equals q except for unknown_keys.
nlohmann::json to_json(const hf_quant_config& q);

// The qforge config of a checkpoint with this quantization_config; the result passes validate().
// Throws hf_config_error naming the JSON key when qforge cannot run it, or when a hand-built q
// breaks a rule parse_hf_quant_config enforces.
config to_config(const hf_quant_config& q);

// The quantization_config qforge writes for a checkpoint in layout c (`qforge quantize
// --config-out`): transformers' defaults plus what c says. The compute type is a kernel choice,
// not a checkpoint property: only bnb 4-bit records it (act i8 is written as float32).
// to_config(to_hf_quant_config(c)) == c for every valid c with act f32 (or bf16/f16 for bnb 4-bit).
// Throws hf_config_error (key "quant_method") for configs transformers cannot express: layout
// qforge, fp8 e5m2, per-tensor fp8.
hf_quant_config to_hf_quant_config(const config& c);

// Which modules stay unquantized (formats.md §7), as transformers' should_convert_module decides:
// a pattern `key` excludes `name` when the regular expression `key` matches at the start of name
// (Python re.match: anchored at the start, not at the end; this also covers transformers'
// `key + "\."` form) or name ends with key. A null or absent list means ["lm_head"]. For GPTQ,
// modules_in_block_to_quantize (flattened) additionally keeps only the modules whose name ends
// with one of its entries.
//
// Patterns come from configs that strangers publish, so they run on RE2: matching takes time
// linear in the name, with bounded memory and no recursion. A pattern is refused (hf_config_error
// naming the key and index) when it is longer than max_pattern_length bytes, when RE2 cannot
// compile it within max_pattern_memory bytes, or when its syntax is one Python's `re` rejects
// too (e.g. "multiple repeat" `.**`, an unbalanced parenthesis, a bad escape such as `\8`).
// RE2 also refuses the few Python constructs that need backtracking (backreferences, lookaround).
inline constexpr std::size_t max_pattern_length = 1024;
inline constexpr std::size_t max_patterns = 10'000;       // entries of one list
inline constexpr std::int64_t max_pattern_memory = 1 << 20;  // RE2's max_mem, per pattern

class hf_module_filter {
public:
    explicit hf_module_filter(const hf_quant_config& q);
    ~hf_module_filter();
    hf_module_filter(hf_module_filter&&) noexcept;
    hf_module_filter& operator=(hf_module_filter&&) noexcept;
    bool excluded(std::string_view module_name) const;
    const std::vector<std::string>& skip_patterns() const { return patterns_; }

private:
    std::vector<std::string> patterns_;
    std::vector<std::unique_ptr<const re2::RE2>> regexes_;
    std::optional<std::vector<std::string>> keep_suffixes_;
};

bool is_excluded(const hf_quant_config& q, std::string_view module_name);

}  // namespace qforge

// Hugging Face quantization_config <-> qforge config. The accepted values, defaults and refusals
// follow transformers' utils/quantization_config.py (BitsAndBytesConfig, GPTQConfig, AwqConfig,
// FineGrainedFP8Config, Mxfp4Config) and quantizers/auto.py; see formats.md §0-§8.
#include <qforge/config/hf.hpp>

#include <qforge/config/aliases.hpp>

#include <re2/re2.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>

namespace qforge {

hf_config_error::hf_config_error(std::string key_, const std::string& message)
    : std::invalid_argument("quantization_config key '" + key_ + "': " + message), key(std::move(key_)) {}

std::string_view quant_method_name(hf_method m) {
    switch (m) {
        case hf_method::bitsandbytes: return "bitsandbytes";
        case hf_method::gptq: return "gptq";
        case hf_method::awq: return "awq";
        case hf_method::fp8: return "fp8";
        case hf_method::mxfp4: return "mxfp4";
    }
    return "?";
}

namespace {

using json = nlohmann::json;

[[noreturn]] void fail(const std::string& key, const std::string& message) { throw hf_config_error(key, message); }

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
    return s;
}

template <std::size_t N>
bool one_of(const std::string& s, const std::array<std::string_view, N>& allowed) {
    return std::find(allowed.begin(), allowed.end(), s) != allowed.end();
}

template <std::size_t N>
std::string listing(const std::array<std::string_view, N>& allowed) {
    std::string out;
    for (const auto& a : allowed) out += (out.empty() ? "" : ", ") + std::string(a);
    return out;
}

// Python truthiness, used where transformers writes `if value:` or `.get(key, False)`.
bool truthy(const json& v) {
    if (v.is_boolean()) return v.get<bool>();
    if (v.is_number()) return v.get<double>() != 0.0;
    if (v.is_string() || v.is_array() || v.is_object()) return !v.empty();
    return false;
}

// One RE2 per exclusion pattern (hf.hpp: why RE2, and the limits). Python's re.match is an
// anchored search: RE2::ANCHOR_START at match time.
std::unique_ptr<const re2::RE2> compile_pattern(const std::string& key, std::size_t index, const std::string& pattern) {
    const std::string at = key + "[" + std::to_string(index) + "]";
    if (pattern.size() > max_pattern_length)
        fail(at, "the pattern is " + std::to_string(pattern.size()) + " bytes long; qforge accepts at most " +
                     std::to_string(max_pattern_length));
    re2::RE2::Options options;
    options.set_log_errors(false);
    options.set_max_mem(max_pattern_memory);
    auto re = std::make_unique<const re2::RE2>(pattern, options);
    if (!re->ok())
        fail(at, "'" + pattern + "' is not a valid regular expression (" + re->error() +
                     (re->error_code() == re2::RE2::ErrorPatternTooLarge ? ": too complex" : "") + ")");
    return re;
}

// Reads one quantization_config object key by key; every key looked up counts as known, the
// others are reported as unknown.
class object_reader {
public:
    explicit object_reader(const json& obj) : obj_(obj) {}

    const json* find(const std::string& key) {
        known_.push_back(key);
        const auto it = obj_.find(key);
        return it == obj_.end() ? nullptr : &*it;
    }
    // Absent or JSON null.
    const json* find_value(const std::string& key) {
        const json* v = find(key);
        return v && !v->is_null() ? v : nullptr;
    }

    bool boolean(const std::string& key, bool fallback) {
        const json* v = find(key);
        if (!v) return fallback;
        return as_bool(key, *v);
    }
    std::optional<bool> optional_boolean(const std::string& key) {
        const json* v = find_value(key);
        if (!v) return std::nullopt;
        return as_bool(key, *v);
    }
    int integer(const std::string& key, int fallback) {
        const json* v = find(key);
        if (!v) return fallback;
        return as_int(key, *v);
    }
    std::optional<int> optional_integer(const std::string& key) {
        const json* v = find_value(key);
        if (!v) return std::nullopt;
        return as_int(key, *v);
    }
    double number(const std::string& key, double fallback) {
        const json* v = find(key);
        if (!v) return fallback;
        if (!v->is_number()) fail(key, "must be a number (got " + v->dump() + ")");
        return v->get<double>();
    }
    std::string string(const std::string& key, const std::string& fallback) {
        const json* v = find(key);
        if (!v) return fallback;
        return as_string(key, *v);
    }
    std::optional<std::string> optional_string(const std::string& key) {
        const json* v = find_value(key);
        if (!v) return std::nullopt;
        return as_string(key, *v);
    }
    hf_module_list string_list(const std::string& key) {
        const json* v = find_value(key);
        if (!v) return std::nullopt;
        return as_string_list(key, *v);
    }
    // A list of exclusion patterns: strings that must compile as regular expressions.
    hf_module_list pattern_list(const std::string& key) {
        hf_module_list list = string_list(key);
        if (list && list->size() > max_patterns)
            fail(key, "lists " + std::to_string(list->size()) + " patterns; qforge accepts at most " +
                          std::to_string(max_patterns));
        if (list)
            for (std::size_t i = 0; i < list->size(); ++i) compile_pattern(key, i, (*list)[i]);
        return list;
    }
    json object_or_null(const std::string& key) {
        const json* v = find_value(key);
        if (!v) return nullptr;
        if (!v->is_object()) fail(key, "must be an object or null (got " + v->dump() + ")");
        return *v;
    }

    std::vector<std::string> unknown_keys() const {
        std::vector<std::string> out;
        for (const auto& item : obj_.items())
            if (std::find(known_.begin(), known_.end(), item.key()) == known_.end()) out.push_back(item.key());
        return out;
    }

    static bool as_bool(const std::string& key, const json& v) {
        if (!v.is_boolean()) fail(key, "must be true or false (got " + v.dump() + ")");
        return v.get<bool>();
    }
    static int as_int(const std::string& key, const json& v) {
        if (!v.is_number_integer()) fail(key, "must be an integer (got " + v.dump() + ")");
        const bool fits = v.is_number_unsigned()
                              ? v.get<std::uint64_t>() <= static_cast<std::uint64_t>(std::numeric_limits<int>::max())
                              : v.get<std::int64_t>() >= std::numeric_limits<int>::min() &&
                                    v.get<std::int64_t>() <= std::numeric_limits<int>::max();
        if (!fits) fail(key, "is out of range (got " + v.dump() + ")");
        return static_cast<int>(v.get<std::int64_t>());
    }
    static std::string as_string(const std::string& key, const json& v) {
        if (!v.is_string()) fail(key, "must be a string (got " + v.dump() + ")");
        return v.get<std::string>();
    }
    static std::vector<std::string> as_string_list(const std::string& key, const json& v) {
        if (!v.is_array()) fail(key, "must be a list of strings or null (got " + v.dump() + ")");
        std::vector<std::string> out;
        for (std::size_t i = 0; i < v.size(); ++i)
            out.push_back(as_string(key + "[" + std::to_string(i) + "]", v[i]));
        return out;
    }

private:
    const json& obj_;
    std::vector<std::string> known_;
};

// ---- bitsandbytes -------------------------------------------------------------------------------

constexpr std::array<std::string_view, 3> compute_dtypes{"float32", "bfloat16", "float16"};
constexpr std::array<std::string_view, 6> storage_dtypes{"float16", "float32", "int8", "uint8", "float64", "bfloat16"};
constexpr std::array<std::string_view, 2> bnb_quant_types{"fp4", "nf4"};

hf_bnb parse_bnb(object_reader& r) {
    hf_bnb b;
    b.load_in_8bit = r.boolean("load_in_8bit", false);
    b.load_in_4bit = r.boolean("load_in_4bit", false);
    if (b.load_in_4bit && b.load_in_8bit)
        fail("load_in_4bit", "load_in_4bit and load_in_8bit are both true, but only one can be used at the same time");
    if (!b.load_in_4bit && !b.load_in_8bit)
        fail("load_in_4bit", "neither load_in_4bit nor load_in_8bit is true: the config quantizes nothing");
    // transformers serializes the properties' backing fields too; they must agree with them.
    const auto check_shadow = [&](const std::string& property, bool value) {
        const std::optional<bool> v = r.optional_boolean("_" + property);
        if (v && *v != value)
            fail("_" + property, std::string("is ") + (*v ? "true" : "false") + " but " + property + " is " +
                                     (value ? "true" : "false"));
    };
    check_shadow("load_in_4bit", b.load_in_4bit);
    check_shadow("load_in_8bit", b.load_in_8bit);

    if (const json* t = r.find("llm_int8_threshold")) {
        if (!t->is_number_float())
            fail("llm_int8_threshold", "must be a float such as 6.0 (got " + t->dump() +
                                           (t->is_number() ? ", an integer: transformers rejects it too)" : ")"));
        b.llm_int8_threshold = t->get<double>();
    }
    b.llm_int8_skip_modules = r.pattern_list("llm_int8_skip_modules");
    b.llm_int8_enable_fp32_cpu_offload = r.boolean("llm_int8_enable_fp32_cpu_offload", false);
    b.llm_int8_has_fp16_weight = r.boolean("llm_int8_has_fp16_weight", false);

    if (const auto dt = r.optional_string("bnb_4bit_compute_dtype")) {  // null means float32
        if (!one_of(*dt, compute_dtypes))
            fail("bnb_4bit_compute_dtype", "must be one of " + listing(compute_dtypes) + " (got '" + *dt + "')");
        b.bnb_4bit_compute_dtype = *dt;
    }
    b.bnb_4bit_quant_type = r.string("bnb_4bit_quant_type", "fp4");
    if (!one_of(b.bnb_4bit_quant_type, bnb_quant_types))
        fail("bnb_4bit_quant_type", "must be 'nf4' or 'fp4' (got '" + b.bnb_4bit_quant_type + "')");
    b.bnb_4bit_use_double_quant = r.boolean("bnb_4bit_use_double_quant", false);
    if (const auto st = r.optional_string("bnb_4bit_quant_storage")) {  // null means uint8
        if (!one_of(*st, storage_dtypes))
            fail("bnb_4bit_quant_storage", "must be one of " + listing(storage_dtypes) + " (got '" + *st + "')");
        b.bnb_4bit_quant_storage = *st;
    }
    b.bnb_4bit_blocksize = r.integer("bnb_4bit_blocksize", 64);
    if (!is_power_of_two_group(b.bnb_4bit_blocksize))
        fail("bnb_4bit_blocksize",
             "must be a power of two from 32 to 4096 (got " + std::to_string(b.bnb_4bit_blocksize) + ")");
    return b;
}

// ---- GPTQ -----------------------------------------------------------------------------------

constexpr std::array<std::string_view, 3> gptq_dataset_names{"wikitext2", "c4", "c4-new"};

hf_gptq parse_gptq(object_reader& r) {
    hf_gptq g;
    const json* bits = r.find("bits");
    if (!bits) fail("bits", "is required for gptq (transformers' GPTQConfig has no default)");
    g.bits = object_reader::as_int("bits", *bits);
    if (g.bits != 2 && g.bits != 3 && g.bits != 4 && g.bits != 8)
        fail("bits", "only 2, 3, 4 and 8 bits are supported (got " + std::to_string(g.bits) + ")");
    g.tokenizer = r.optional_string("tokenizer");
    if (const json* d = r.find_value("dataset")) {
        if (d->is_string()) {
            const std::string name = d->get<std::string>();
            if (!one_of(name, gptq_dataset_names))
                fail("dataset", "must be one of " + listing(gptq_dataset_names) + " or a list of texts (got '" + name + "')");
            g.dataset = name;
        } else if (d->is_array()) {
            g.dataset = object_reader::as_string_list("dataset", *d);
        } else {
            fail("dataset", "must be a dataset name or a list of strings (got " + d->dump() + ")");
        }
    }
    g.group_size = r.integer("group_size", 128);
    if (g.group_size != -1 && g.group_size <= 0)
        fail("group_size", "must be greater than 0 or equal to -1 (got " + std::to_string(g.group_size) + ")");
    g.damp_percent = r.number("damp_percent", 0.1);
    if (!(g.damp_percent > 0.0 && g.damp_percent < 1.0))
        fail("damp_percent", "must be strictly between 0 and 1 (got " + r.find("damp_percent")->dump() + ")");
    g.desc_act = r.boolean("desc_act", false);
    g.act_group_aware = r.boolean("act_group_aware", true) && !g.desc_act;  // transformers disables it with desc_act
    g.sym = r.boolean("sym", true);
    g.true_sequential = r.boolean("true_sequential", true);
    g.static_groups = r.boolean("static_groups", false);
    g.checkpoint_format = lower(r.string("checkpoint_format", "gptq"));
    // AutoGPTQ <= 0.7.1 said is_marlin_format: true instead of checkpoint_format "marlin".
    if (r.optional_boolean("is_marlin_format").value_or(false)) g.checkpoint_format = "marlin";
    g.meta = r.object_or_null("meta");
    g.backend = lower(r.optional_string("backend").value_or("auto"));
    g.model_seqlen = r.optional_integer("model_seqlen");
    g.block_name_to_quantize = r.optional_string("block_name_to_quantize");
    g.module_name_preceding_first_block = r.string_list("module_name_preceding_first_block");
    g.batch_size = r.integer("batch_size", 1);
    g.pad_token_id = r.optional_integer("pad_token_id");
    g.max_input_length = r.optional_integer("max_input_length");
    g.cache_block_outputs = r.boolean("cache_block_outputs", true);
    if (const json* m = r.find_value("modules_in_block_to_quantize")) {
        if (!m->is_array()) fail("modules_in_block_to_quantize", "must be a list of lists of module names (got " + m->dump() + ")");
        std::vector<std::vector<std::string>> lists;
        for (std::size_t i = 0; i < m->size(); ++i)
            lists.push_back(object_reader::as_string_list("modules_in_block_to_quantize[" + std::to_string(i) + "]", (*m)[i]));
        g.modules_in_block_to_quantize = std::move(lists);
    }

    g.use_exllama = r.optional_boolean("use_exllama");
    if (const std::optional<bool> disable = r.optional_boolean("disable_exllama")) {
        if (g.use_exllama)
            fail("disable_exllama", "cannot be given together with use_exllama; use only use_exllama");
        g.use_exllama = !*disable;
    }
    g.exllama_config = r.object_or_null("exllama_config");
    if (!g.exllama_config.is_null()) {
        const auto v = g.exllama_config.find("version");
        if (v == g.exllama_config.end()) fail("exllama_config", "needs a 'version' key");
        if (*v != 1 && *v != 2) fail("exllama_config", "version must be 1 or 2 (got " + v->dump() + ")");
    }
    g.use_cuda_fp16 = r.optional_boolean("use_cuda_fp16");
    return g;
}

// ---- AWQ ------------------------------------------------------------------------------------

constexpr std::array<std::string_view, 4> awq_versions{"gemm", "gemv", "exllama", "ipex"};
constexpr std::array<std::string_view, 2> awq_backends{"autoawq", "llm-awq"};

hf_awq parse_awq(object_reader& r) {
    hf_awq a;
    a.bits = r.integer("bits", 4);
    a.group_size = r.integer("group_size", 128);
    a.zero_point = r.boolean("zero_point", true);
    a.version = lower(r.string("version", "gemm"));
    if (!one_of(a.version, awq_versions))
        fail("version", "unknown AWQ version '" + a.version + "' (known: " + listing(awq_versions) + ")");
    a.backend = r.string("backend", "autoawq");
    if (!one_of(a.backend, awq_backends))
        fail("backend", "must be one of " + listing(awq_backends) + " (got '" + a.backend + "')");
    if (r.optional_boolean("do_fuse").value_or(false))
        fail("do_fuse", "the AWQ fuse feature is deprecated (transformers refuses it)");
    if (truthy(r.object_or_null("modules_to_fuse")))
        fail("modules_to_fuse", "the AWQ fuse feature is deprecated (transformers refuses it)");
    a.fuse_max_seq_len = r.optional_integer("fuse_max_seq_len");
    a.modules_to_not_convert = r.pattern_list("modules_to_not_convert");
    a.exllama_config = r.object_or_null("exllama_config");
    if (a.version == "exllama") {
        if (a.exllama_config.is_null()) {
            a.exllama_config = {{"version", 2}, {"max_input_len", 2048}, {"max_batch_size", 8}};
        } else {
            const auto v = a.exllama_config.find("version");
            if (v == a.exllama_config.end()) fail("exllama_config", "needs a 'version' key");
            if (*v != 1 && *v != 2) fail("exllama_config", "version must be 1 or 2 (got " + v->dump() + ")");
        }
    }
    return a;
}

// ---- FP8 and MXFP4 ----------------------------------------------------------------------------

hf_fp8 parse_fp8(object_reader& r) {
    hf_fp8 f;
    f.activation_scheme = lower(r.string("activation_scheme", "dynamic"));
    if (f.activation_scheme != "dynamic")
        fail("activation_scheme", "only 'dynamic' is supported (got '" + f.activation_scheme + "')");
    if (const json* w = r.find("weight_block_size")) {
        if (!w->is_array() || w->size() != 2 || !(*w)[0].is_number_integer() || !(*w)[1].is_number_integer())
            fail("weight_block_size", "must be a list of two integers (got " + w->dump() + ")");
        for (std::size_t i = 0; i < 2; ++i) f.weight_block_size[i] = object_reader::as_int("weight_block_size", (*w)[i]);
        if (f.weight_block_size[0] <= 0 || f.weight_block_size[1] <= 0)
            fail("weight_block_size", "must be two positive integers (got " + w->dump() + ")");
        if (f.weight_block_size != std::array<int, 2>{128, 128})
            fail("weight_block_size", "qforge supports only 128x128 weight blocks (got " + w->dump() + ")");
    }
    f.modules_to_not_convert = r.pattern_list("modules_to_not_convert");
    f.fmt = r.optional_string("fmt");
    if (f.fmt && *f.fmt != "e4m3")
        fail("fmt", "qforge reads FineGrainedFP8 weights in e4m3 only (got '" + *f.fmt + "')");
    return f;
}

hf_mxfp4 parse_mxfp4(object_reader& r) {
    hf_mxfp4 m;
    m.modules_to_not_convert = r.pattern_list("modules_to_not_convert");
    m.dequantize = r.boolean("dequantize", false);
    const std::string rule = r.string("mx_scale_rule", "ocp");
    if (rule == "ocp")
        m.mx_scale_rule = ref::mx_scale_rule::ocp;
    else if (rule == "round_up")
        m.mx_scale_rule = ref::mx_scale_rule::round_up;
    else
        fail("mx_scale_rule", "must be 'ocp' or 'round_up' (got '" + rule + "')");
    return m;
}

// Which method a quantization_config describes, as transformers' AutoQuantizationConfig decides:
// a true load_in_4bit / load_in_8bit means bitsandbytes whatever quant_method says (qforge refuses
// a contradicting quant_method instead of overriding it).
hf_method detect_method(object_reader& r) {
    const json* qm = r.find_value("quant_method");
    const json* in4 = r.find("load_in_4bit");
    const json* in8 = r.find("load_in_8bit");
    if ((in4 && truthy(*in4)) || (in8 && truthy(*in8))) {
        if (qm && *qm != "bitsandbytes")
            fail("quant_method", "is " + qm->dump() + " but load_in_4bit/load_in_8bit is true (a bitsandbytes config)");
        return hf_method::bitsandbytes;
    }
    if (!qm) fail("quant_method", "is missing: this quantization_config does not say how the model was quantized");
    const std::string name = object_reader::as_string("quant_method", *qm);
    for (const hf_method m : {hf_method::bitsandbytes, hf_method::gptq, hf_method::awq, hf_method::fp8, hf_method::mxfp4})
        if (name == quant_method_name(m)) return m;
    fail("quant_method", "'" + name + "' is not supported by qforge (supported: bitsandbytes, gptq, awq, fp8, mxfp4)");
}

json list_json(const hf_module_list& list) { return list ? json(*list) : json(nullptr); }

template <class T>
json optional_json(const std::optional<T>& v) {
    return v ? json(*v) : json(nullptr);
}

// The JSON key behind a qforge config field, for errors from validate().
std::string key_of_field(std::string_view field, hf_method m) {
    using enum hf_method;
    if (field == "group")
        return m == bitsandbytes ? "bnb_4bit_blocksize" : m == fp8 ? "weight_block_size" : m == mxfp4 ? "quant_method" : "group_size";
    if (field == "bits") return m == bitsandbytes ? "load_in_4bit" : "bits";
    if (field == "double_quant") return "bnb_4bit_use_double_quant";
    if (field == "act") return "bnb_4bit_compute_dtype";
    switch (m) {
        case bitsandbytes: return "bnb_4bit_quant_type";
        case gptq: return "checkpoint_format";
        case awq: return "version";
        default: return "quant_method";
    }
}

config validated(const config& c, hf_method m) {
    try {
        return validate(c);
    } catch (const config_error_exception& e) {
        fail(key_of_field(describe(e.rule).field, m), std::string("qforge cannot run this config: ") + e.what());
    }
}

compute compute_of(const std::string& dtype_name) {
    if (dtype_name == "bfloat16") return compute::bf16;
    if (dtype_name == "float16") return compute::f16;
    return compute::f32;
}

std::int32_t group_of(int group_size) { return group_size == -1 ? per_channel : group_size; }

}  // namespace

hf_quant_config parse_hf_quant_config(const json& j) {
    if (!j.is_object()) fail("quantization_config", "must be a JSON object (got " + j.dump() + ")");
    const json* qc = &j;
    if (const auto it = j.find("quantization_config"); it != j.end()) {  // a whole config.json
        if (!it->is_object()) fail("quantization_config", "must be a JSON object (got " + it->dump() + ")");
        qc = &*it;
    }
    object_reader r(*qc);
    hf_quant_config q;
    switch (detect_method(r)) {
        case hf_method::bitsandbytes: q.fields = parse_bnb(r); break;
        case hf_method::gptq: q.fields = parse_gptq(r); break;
        case hf_method::awq: q.fields = parse_awq(r); break;
        case hf_method::fp8: q.fields = parse_fp8(r); break;
        case hf_method::mxfp4: q.fields = parse_mxfp4(r); break;
    }
    q.unknown_keys = r.unknown_keys();
    return q;
}

json to_json(const hf_quant_config& q) {
    json out = json::object();
    out["quant_method"] = quant_method_name(q.method());
    std::visit(
        [&](const auto& f) {
            using T = std::decay_t<decltype(f)>;
            if constexpr (std::is_same_v<T, hf_bnb>) {
                out["_load_in_4bit"] = f.load_in_4bit;
                out["_load_in_8bit"] = f.load_in_8bit;
                out["load_in_4bit"] = f.load_in_4bit;
                out["load_in_8bit"] = f.load_in_8bit;
                out["llm_int8_threshold"] = f.llm_int8_threshold;
                out["llm_int8_skip_modules"] = list_json(f.llm_int8_skip_modules);
                out["llm_int8_enable_fp32_cpu_offload"] = f.llm_int8_enable_fp32_cpu_offload;
                out["llm_int8_has_fp16_weight"] = f.llm_int8_has_fp16_weight;
                out["bnb_4bit_compute_dtype"] = f.bnb_4bit_compute_dtype;
                out["bnb_4bit_quant_type"] = f.bnb_4bit_quant_type;
                out["bnb_4bit_use_double_quant"] = f.bnb_4bit_use_double_quant;
                out["bnb_4bit_quant_storage"] = f.bnb_4bit_quant_storage;
                if (f.bnb_4bit_blocksize != 64) out["bnb_4bit_blocksize"] = f.bnb_4bit_blocksize;
            } else if constexpr (std::is_same_v<T, hf_gptq>) {
                out["bits"] = f.bits;
                out["tokenizer"] = optional_json(f.tokenizer);
                out["dataset"] = std::visit(
                    [](const auto& d) -> json {
                        if constexpr (std::is_same_v<std::decay_t<decltype(d)>, std::monostate>)
                            return nullptr;
                        else
                            return d;
                    },
                    f.dataset);
                out["group_size"] = f.group_size;
                out["damp_percent"] = f.damp_percent;
                out["desc_act"] = f.desc_act;
                out["act_group_aware"] = f.act_group_aware;
                out["sym"] = f.sym;
                out["true_sequential"] = f.true_sequential;
                if (f.static_groups) out["static_groups"] = true;  // not a GPTQConfig field
                out["checkpoint_format"] = f.checkpoint_format;
                out["meta"] = f.meta;
                out["backend"] = f.backend;
                out["model_seqlen"] = optional_json(f.model_seqlen);
                out["block_name_to_quantize"] = optional_json(f.block_name_to_quantize);
                out["module_name_preceding_first_block"] = list_json(f.module_name_preceding_first_block);
                out["batch_size"] = f.batch_size;
                out["pad_token_id"] = optional_json(f.pad_token_id);
                out["max_input_length"] = optional_json(f.max_input_length);
                out["cache_block_outputs"] = f.cache_block_outputs;
                out["modules_in_block_to_quantize"] = optional_json(f.modules_in_block_to_quantize);
                if (f.use_exllama) out["use_exllama"] = *f.use_exllama;
                if (!f.exllama_config.is_null()) out["exllama_config"] = f.exllama_config;
                if (f.use_cuda_fp16) out["use_cuda_fp16"] = *f.use_cuda_fp16;
            } else if constexpr (std::is_same_v<T, hf_awq>) {
                out["bits"] = f.bits;
                out["group_size"] = f.group_size;
                out["zero_point"] = f.zero_point;
                out["version"] = f.version;
                out["backend"] = f.backend;
                out["fuse_max_seq_len"] = optional_json(f.fuse_max_seq_len);
                out["modules_to_not_convert"] = list_json(f.modules_to_not_convert);
                out["exllama_config"] = f.exllama_config;
            } else if constexpr (std::is_same_v<T, hf_fp8>) {
                out["activation_scheme"] = f.activation_scheme;
                out["weight_block_size"] = f.weight_block_size;
                out["modules_to_not_convert"] = list_json(f.modules_to_not_convert);
                if (f.fmt) out["fmt"] = *f.fmt;
            } else {
                static_assert(std::is_same_v<T, hf_mxfp4>);
                out["modules_to_not_convert"] = list_json(f.modules_to_not_convert);
                if (f.dequantize) out["dequantize"] = true;
                if (f.mx_scale_rule == ref::mx_scale_rule::round_up) out["mx_scale_rule"] = "round_up";
            }
        },
        q.fields);
    return out;
}

config to_config(const hf_quant_config& q) {
    // Hand-built values get the same checks as parsed ones: one set of rules, in the parser.
    const hf_quant_config checked = parse_hf_quant_config(to_json(q));
    const config c = std::visit(
        [](const auto& f) -> config {
            using T = std::decay_t<decltype(f)>;
            if constexpr (std::is_same_v<T, hf_bnb>) {
                if (f.load_in_8bit) return configs::llm_int8;
                return config{f.bnb_4bit_quant_type == "nf4" ? dtype::nf4 : dtype::fp4, 4, f.bnb_4bit_blocksize,
                              f.bnb_4bit_use_double_quant, layout::bnb4, compute_of(f.bnb_4bit_compute_dtype)};
            } else if constexpr (std::is_same_v<T, hf_gptq>) {
                layout storage = layout::gptq_v1;
                if (f.checkpoint_format == "gptq_v2")
                    storage = layout::gptq_v2;
                else if (f.checkpoint_format != "gptq")
                    fail("checkpoint_format", "'" + f.checkpoint_format +
                                                  "' checkpoints are not supported: qforge reads 'gptq' (v1) and 'gptq_v2'");
                return config{f.sym ? dtype::int_sym : dtype::int_asym, static_cast<std::uint8_t>(f.bits),
                              group_of(f.group_size), false, storage, compute::f32};
            } else if constexpr (std::is_same_v<T, hf_awq>) {
                if (!f.zero_point)
                    fail("zero_point", "false (AWQ without zero points) is not supported: qforge's AWQ layout stores a zero point per group");
                if (f.version == "gemv")
                    fail("version", "'gemv' checkpoints pack weights differently and are not supported: qforge reads the gemm packing (gemm, exllama, ipex)");
                if (f.backend != "autoawq")
                    fail("backend", "'" + f.backend + "' checkpoints pack weights differently and are not supported: qforge reads autoawq checkpoints");
                if (f.bits != 4) fail("bits", "AWQ checkpoints are 4-bit only (got " + std::to_string(f.bits) + ")");
                return config{dtype::int_asym, 4, group_of(f.group_size), false, layout::awq_gemm, compute::f32};
            } else if constexpr (std::is_same_v<T, hf_fp8>) {
                return configs::fp8_block128;
            } else {
                return configs::mxfp4;
            }
        },
        checked.fields);
    return validated(c, checked.method());
}

hf_quant_config to_hf_quant_config(const config& c) {
    validate(c);
    hf_quant_config q;
    switch (c.storage) {
        case layout::bnb4: {
            hf_bnb b;
            b.load_in_4bit = true;
            b.bnb_4bit_quant_type = c.type == dtype::nf4 ? "nf4" : "fp4";
            b.bnb_4bit_blocksize = c.group;
            b.bnb_4bit_use_double_quant = c.double_quant;
            b.bnb_4bit_compute_dtype = c.act == compute::bf16 ? "bfloat16" : c.act == compute::f16 ? "float16" : "float32";
            q.fields = b;
            break;
        }
        case layout::bnb8: {
            hf_bnb b;
            b.load_in_8bit = true;
            q.fields = b;
            break;
        }
        case layout::gptq_v1:
        case layout::gptq_v2: {
            hf_gptq g;
            g.bits = c.bits;
            g.group_size = c.group == per_channel ? -1 : c.group;
            g.sym = c.type == dtype::int_sym;
            g.checkpoint_format = c.storage == layout::gptq_v2 ? "gptq_v2" : "gptq";
            q.fields = g;
            break;
        }
        case layout::awq_gemm: {
            hf_awq a;
            a.group_size = c.group;
            q.fields = a;
            break;
        }
        case layout::fp8_block:
            if (c.type != dtype::fp8_e4m3)
                fail("quant_method", "FineGrainedFP8 stores e4m3 weights; transformers has no config for e5m2 blocks");
            if (c.group != 128)
                fail("weight_block_size", "FineGrainedFP8 uses 2-D weight blocks; transformers has no config for per-tensor fp8");
            q.fields = hf_fp8{};
            break;
        case layout::mx: q.fields = hf_mxfp4{}; break;
        case layout::qforge:
            fail("quant_method", "the qf layout is qforge's own repacked layout; transformers has no quantization_config for it");
    }
    return q;
}

hf_module_filter::hf_module_filter(const hf_quant_config& q) {
    std::string key = "modules_to_not_convert";
    hf_module_list list;
    std::visit(
        [&](const auto& f) {
            using T = std::decay_t<decltype(f)>;
            if constexpr (std::is_same_v<T, hf_bnb>) {
                key = "llm_int8_skip_modules";
                list = f.llm_int8_skip_modules;
            } else if constexpr (std::is_same_v<T, hf_gptq>) {
                if (f.modules_in_block_to_quantize) {
                    keep_suffixes_.emplace();
                    for (const auto& group : *f.modules_in_block_to_quantize)
                        keep_suffixes_->insert(keep_suffixes_->end(), group.begin(), group.end());
                }
            } else {
                list = f.modules_to_not_convert;
            }
        },
        q.fields);
    patterns_ = list.value_or(std::vector<std::string>{"lm_head"});
    for (std::size_t i = 0; i < patterns_.size(); ++i) regexes_.push_back(compile_pattern(key, i, patterns_[i]));
}

hf_module_filter::~hf_module_filter() = default;
hf_module_filter::hf_module_filter(hf_module_filter&&) noexcept = default;
hf_module_filter& hf_module_filter::operator=(hf_module_filter&&) noexcept = default;

bool hf_module_filter::excluded(std::string_view name) const {
    for (std::size_t i = 0; i < patterns_.size(); ++i)
        if (regexes_[i]->Match(re2::StringPiece(name.data(), name.size()), 0, name.size(), re2::RE2::ANCHOR_START,
                               nullptr, 0) ||
            name.ends_with(patterns_[i]))
            return true;
    if (keep_suffixes_)
        return std::none_of(keep_suffixes_->begin(), keep_suffixes_->end(),
                            [&](const std::string& s) { return name.ends_with(s); });
    return false;
}

bool is_excluded(const hf_quant_config& q, std::string_view module_name) {
    return hf_module_filter(q).excluded(module_name);
}

}  // namespace qforge

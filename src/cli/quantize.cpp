// `qforge quantize`, `qforge dequantize` and `qforge convert`: a model rewritten tensor by tensor
// (model_files.hpp), every quantized weight in its method's checkpoint layout (io/checkpoint.hpp).
#include "calibration.hpp"
#include "commands.hpp"
#include "model_files.hpp"

#include <qforge/config/name.hpp>
#include <qforge/memory.hpp>
#include <qforge/parallel.hpp>

#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>

namespace qforge::cli {

namespace {

namespace fs = std::filesystem;
using sdt = safetensors::dtype;

// Embeddings are not nn.Linear and stay unquantized, as transformers' quantizers leave them: a
// dot-separated part of the module name containing "embed", or GPT-2's "wte" / "wpe".
bool is_embedding(std::string_view module) {
    while (!module.empty()) {
        const std::size_t dot = module.find('.');
        const std::string_view part = module.substr(0, dot);
        if (part.find("embed") != std::string_view::npos || part == "wte" || part == "wpe") return true;
        if (dot == std::string_view::npos) break;
        module.remove_prefix(dot + 1);
    }
    return false;
}

// A tensor `quantize` replaces: `<module>.weight`, 2-D, floating point, its module neither
// excluded by the config nor an embedding. F64 weights qualify and are then refused by name.
bool to_quantize(const safetensors::tensor_view& v, const hf_module_filter& filter) {
    constexpr std::string_view suffix = ".weight";
    if (!v.name.ends_with(suffix) || v.shape.size() != 2) return false;
    if (v.type != sdt::F32 && v.type != sdt::BF16 && v.type != sdt::F16 && v.type != sdt::F64) return false;
    const std::string_view module = v.name.substr(0, v.name.size() - suffix.size());
    return !filter.excluded(module) && !is_embedding(module);
}

// Every detected weight must be stored as the config says; the keys they consume are dropped
// from the output, and each anchor is replaced.
struct detected_model {
    std::map<std::string, checkpoint::detected_weight, std::less<>> by_anchor;
    std::set<std::string, std::less<>> keys;
};
detected_model detect_quantized(const input_model& in) {
    const checkpoint::detection d = detect_checked(in);
    if (d.weights.empty()) throw io_error("'" + in.path.string() + "' holds no quantized weight");
    detected_model m;
    for (const checkpoint::detected_weight& w : d.weights) {
        m.keys.insert(w.keys.begin(), w.keys.end());
        m.by_anchor.emplace(w.anchor, w);
    }
    return m;
}

std::optional<sdt> parse_out_dtype(const std::string& name) {
    if (name == "f32") return sdt::F32;
    if (name == "bf16") return sdt::BF16;
    if (name == "f16") return sdt::F16;
    return std::nullopt;  // the default: the original dtype when known
}

void print_summary(std::string_view verb, std::size_t weights, const std::string& what, std::size_t copied,
                   const fs::path& out) {
    std::printf("%.*s %zu weights%s; copied %zu other tensors unchanged -> %s\n", static_cast<int>(verb.size()),
                verb.data(), weights, what.empty() ? "" : (" (" + what + ")").c_str(), copied, out.c_str());
}

// Counts what a rewrite did, for the summary.
struct counts {
    std::size_t replaced = 0, total = 0, dropped = 0;
    std::size_t copied() const { return total - replaced - dropped; }
};

// The rewrite of dequantize and convert: each quantized weight of `model` is imported and handed
// to `emit`; its checkpoint tensors are dropped; every other tensor is copied. `emit` runs twice
// per weight (rewrite_model's `again`): first with plan_only, when it may add the output tensors
// with add_deferred instead of making them; with plan_reads_codes false, the weight it gets then
// has no codes (import_options::codes).
using weight_emitter = std::function<void(const checkpoint::quantized_weight&, const safetensors::tensor_view&,
                                          shard_output&, bool plan_only)>;
tensor_rewrite rewrite_quantized(const input_model& in, const detected_model& model, const config& cfg, counts& n,
                                 weight_emitter emit, bool plan_reads_codes) {
    tensor_rewrite rewrite;
    rewrite.dropped = model.keys;
    // Made twice (rewrite_model): once to plan the output, once to write it in place.
    const auto make = [&in, &model, cfg, emit = std::move(emit), plan_reads_codes](const safetensors::tensor_view& v,
                                                                                   shard_output& out, bool plan_only) {
        const auto it = model.by_anchor.find(v.name);
        if (it == model.by_anchor.end()) return false;
        const checkpoint::import_options opt{.expected = cfg, .codes = !plan_only || plan_reads_codes};
        emit(checkpoint::import_weight(in.tensors, it->second, opt), v, out, plan_only);
        return true;
    };
    rewrite.again = [make](const safetensors::tensor_view& v, shard_output& out) { return make(v, out, false); };
    rewrite.replace = [&model, &n, make](const safetensors::tensor_view& v, shard_output& out) {
        ++n.total;
        if (make(v, out, true)) {
            ++n.replaced;
            return true;
        }
        if (model.keys.contains(v.name)) ++n.dropped;
        return false;
    };
    return rewrite;
}

struct common_options {
    std::string config, in, out, config_out;
    int threads = 0;
};

// The workers of the SIMD quantizers and dequantizers: --threads, or one per hardware thread.
int thread_count(int requested) {
    return requested > 0 ? requested : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

void add_threads(CLI::App* cmd, int& threads, const std::string& what) {
    cmd->add_option("--threads", threads, what + " (default 0: one per hardware thread)")->check(CLI::NonNegativeNumber);
}

void add_common(CLI::App* cmd, common_options& o, const char* config_help) {
    cmd->add_option("--config", o.config, config_help)->required();
    cmd->add_option("IN", o.in, "input: a .safetensors file, or a model.safetensors.index.json of a sharded model")
        ->required();
    cmd->add_option("OUT", o.out, "output: a .safetensors file; for a sharded input a directory or an index path")
        ->required();
}

// The calibration data of the modules `quantize` replaces, checked against their weights before
// any work: K must agree (error naming the module and both shapes). Data for modules that are not
// quantized is ignored with a warning rather than refused, so that one calibration file of a
// whole model serves configs that exclude some modules (lm_head, modules_to_not_convert,
// modules_in_block_to_quantize); a misspelt module still shows, in the round-to-nearest warning
// of the module that lacks the data.
std::map<std::string, const module_calibration*, std::less<>> match_calibration(const input_model& in,
                                                                                const hf_module_filter& filter,
                                                                                const calibration_file& calib) {
    std::map<std::string, const module_calibration*, std::less<>> matched;
    std::set<std::string, std::less<>> quantized;
    for (const safetensors::tensor_view* v : in.tensors.all()) {
        if (!to_quantize(*v, filter)) continue;
        const std::string module(v->name.substr(0, v->name.size() - std::string_view(".weight").size()));
        quantized.insert(module);
        const auto it = calib.modules().find(module);
        if (it == calib.modules().end()) {
            std::fprintf(stderr, "qforge: warning: module '%s' has no calibration data in '%s': round-to-nearest\n",
                         module.c_str(), calib.path().c_str());
            continue;
        }
        if (it->second.cols() != v->shape[1])
            throw io_error("calibration '" + calib.path().string() + "': module '" + module + "': " + it->second.shape_text() +
                           " has K = " + std::to_string(it->second.cols()) + ", but its weight '" + std::string(v->name) +
                           "' is [" + std::to_string(v->shape[0]) + ", " + std::to_string(v->shape[1]) + "]");
        matched.emplace(module, &it->second);
    }
    for (const auto& [module, c] : calib.modules())
        if (!quantized.contains(module))
            std::fprintf(stderr,
                         "qforge: warning: calibration '%s': '%s' matches no module this config quantizes (ignored)\n",
                         calib.path().c_str(), module.c_str());
    return matched;
}

}  // namespace

void add_quantize(CLI::App& app) {
    struct options : common_options {
        std::string calibration;
    };
    auto opt = std::make_shared<options>();
    CLI::App* cmd = app.add_subcommand(
        "quantize",
        "quantization of every Linear weight into the config's checkpoint layout: round-to-nearest, or GPTQ with --calibration");
    add_common(cmd, *opt, "quantization_config JSON (the object, or a whole config.json)");
    cmd->add_option("--config-out", opt->config_out, "also write the normalized quantization_config here");
    cmd->add_option("--calibration", opt->calibration,
                    "GPTQ calibration file (gptq configs): per module <module>.inputs [tokens, K] activations, or "
                    "<module>.hessian [K, K] + <module>.nsamples from `qforge hessian`; modules without data are "
                    "rounded to nearest");
    add_threads(cmd, opt->threads, "worker threads of the quantizers and of GPTQ calibration");
    cmd->callback([opt] {
        const loaded_config cfg = load_config(opt->config);
        if (!opt->calibration.empty() && cfg.hf.method() != hf_method::gptq)
            throw CLI::ValidationError("--calibration", "calibration is GPTQ's: the config '" + opt->config + "' is " +
                                                            std::string(quant_method_name(cfg.hf.method())) +
                                                            ", not quant_method gptq");
        const input_model in = open_model(opt->in);
        const checkpoint::detection d = detect_checked(in);
        if (!d.weights.empty())
            throw io_error("'" + opt->in + "' is already quantized: weight '" + d.weights.front().name + "' is stored as " +
                           std::string(checkpoint::to_string(d.weights.front().kind)) + " (dequantize it first)");
        const hf_module_filter filter(cfg.hf);
        const checkpoint::quantize_settings settings = checkpoint::settings_of(cfg.hf);
        std::optional<calibration_file> calib;
        std::map<std::string, const module_calibration*, std::less<>> calibrated;
        if (!opt->calibration.empty()) {
            calib.emplace(opt->calibration);
            calibrated = match_calibration(in, filter, *calib);
        }
        counts n;
        std::size_t n_calibrated = 0;
        thread_pool pool(thread_count(opt->threads));
        tensor_rewrite rewrite;
        // GPTQ, AWQ and bnb 4-bit rounded to nearest: the file is planned first (from the shapes,
        // and for double quantization the mean of the absmax), then each weight is quantized once,
        // straight into its place (no temporary copy of the output).
        const bool in_place = !calib && checkpoint::plannable(cfg.cfg);
        if (in_place)
            rewrite.again = [&](const safetensors::tensor_view& v, shard_output& out) {
                checkpoint::export_weight(out.writer,
                                          out.keep.emplace_back(checkpoint::quantize_tensor(v, cfg.cfg, settings, &pool)));
                return true;
            };
        rewrite.replace = [&](const safetensors::tensor_view& v, shard_output& out) {
            ++n.total;
            if (!to_quantize(v, filter)) return false;
            const auto it = calibrated.find(v.name.substr(0, v.name.size() - std::string_view(".weight").size()));
            if (in_place) {
                checkpoint::export_weight_deferred(out.writer, checkpoint::quantize_plan(v, cfg.cfg, settings, &pool));
            } else if (it == calibrated.end()) {
                checkpoint::export_weight(out.writer,
                                          out.keep.emplace_back(checkpoint::quantize_tensor(v, cfg.cfg, settings, &pool)));
            } else {
                checkpoint::export_weight(out.writer, out.keep.emplace_back(quantize_calibrated(
                                                          v, it->first, *it->second, calib->path(), cfg, opt->threads)));
                ++n_calibrated;
            }
            ++n.replaced;
            return true;
        };
        output_files files;
        rewrite_model(in, opt->out, "quantize", rewrite, files);
        if (!opt->config_out.empty()) files.stage_text(opt->config_out, json_text(to_json(cfg.hf)));
        files.commit();
        std::string what = canonical_name(cfg.cfg);
        if (calib) what += ", " + std::to_string(n_calibrated) + " calibrated with GPTQ";
        print_summary("quantized", n.replaced, what, n.copied(), opt->out);
    });
}

void add_dequantize(CLI::App& app) {
    struct options : common_options {
        std::string dtype;
    };
    auto opt = std::make_shared<options>();
    CLI::App* cmd = app.add_subcommand("dequantize", "turn every quantized weight back into a plain <module>.weight");
    add_common(cmd, *opt, "the checkpoint's quantization_config (object or config.json)");
    cmd->add_option("--dtype", opt->dtype,
                    "output dtype of the weights (default: the original dtype where the checkpoint records it, "
                    "bnb 4-bit does; otherwise bf16)")
        ->check(CLI::IsMember({"f32", "bf16", "f16"}));
    add_threads(cmd, opt->threads, "worker threads");
    cmd->callback([opt] {
        const loaded_config cfg = load_config(opt->config);
        const input_model in = open_model(opt->in);
        const detected_model model = detect_quantized(in);
        const std::optional<sdt> forced = parse_out_dtype(opt->dtype);
        thread_pool pool(thread_count(opt->threads));
        counts n;
        const tensor_rewrite rewrite =
            rewrite_quantized(in, model, cfg.cfg, n, [&](const auto& q, const auto& v, auto& out, bool plan_only) {
                if (!q.name.ends_with(".weight"))
                    throw io_error("weight '" + q.name + "': a gpt-oss expert tensor (" + std::string(v.name) +
                                   "); transformers transposes those when it dequantizes, which qforge does not do");
                const sdt type = forced.value_or(q.original_dtype.value_or(sdt::BF16));
                if (plan_only) return out.writer.add_deferred(q.name, type, q.shape);
                // written piece by piece while the pool makes the next pieces (a buffer of the
                // whole weight, fresh memory, cost up to a third of the time in page faults)
                checkpoint::dequantize_weight_pieces(q, type, &pool,
                                                     [&](std::span<const std::byte> piece) { out.put(q.name, piece); });
            }, /*plan_reads_codes=*/false);
        output_files files;
        rewrite_model(in, opt->out, "dequantize", rewrite, files);
        files.commit();
        print_summary("dequantized", n.replaced, "", n.copied(), opt->out);
    });
}

void add_convert(CLI::App& app) {
    struct options : common_options {
        std::string to;
    };
    auto opt = std::make_shared<options>();
    CLI::App* cmd = app.add_subcommand(
        "convert", "lossless layout conversion: GPTQ v1 <-> v2, AWQ gemm -> GPTQ (same dequantized values)");
    add_common(cmd, *opt, "the input checkpoint's quantization_config (object or config.json)");
    cmd->add_option("--to", opt->to, "target layout: gptq (v1 zeros, z - 1) or gptq_v2 (zeros as is)")
        ->required()
        ->check(CLI::IsMember({"gptq", "gptq_v2"}));
    cmd->add_option("--config-out", opt->config_out, "also write the output's quantization_config here");
    add_threads(cmd, opt->threads, "worker threads");
    cmd->callback([opt] {
        const loaded_config cfg = load_config(opt->config);
        const layout target = opt->to == "gptq_v2" ? layout::gptq_v2 : layout::gptq_v1;
        const input_model in = open_model(opt->in);
        const detected_model model = detect_quantized(in);
        thread_pool pool(thread_count(opt->threads));
        counts n;
        const tensor_rewrite rewrite = rewrite_quantized(in, model, cfg.cfg, n, [&](const auto& q, const auto&, auto& out, bool) {
            checkpoint::export_weight(out.writer, out.keep.emplace_back(checkpoint::convert(q, target, &pool)));
        }, /*plan_reads_codes=*/true);
        output_files files;
        rewrite_model(in, opt->out, "convert", rewrite, files);
        if (!opt->config_out.empty()) {
            hf_quant_config out_cfg;
            if (auto* g = std::get_if<hf_gptq>(&cfg.hf.fields)) {
                out_cfg.fields = *g;  // every other field stays as the input had it
                std::get<hf_gptq>(out_cfg.fields).checkpoint_format = target == layout::gptq_v2 ? "gptq_v2" : "gptq";
            } else {
                out_cfg = to_hf_quant_config(config{dtype::int_asym, 4, cfg.cfg.group, false, target, compute::f32});
            }
            files.stage_text(opt->config_out, json_text(to_json(out_cfg)));
        }
        files.commit();
        print_summary("converted", n.replaced, opt->to == "gptq_v2" ? "to gptq_v2" : "to gptq", n.copied(), opt->out);
    });
}

}  // namespace qforge::cli

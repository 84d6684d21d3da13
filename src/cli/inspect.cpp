// `qforge inspect`: the tensors of a checkpoint, the method and config of every quantized weight,
// its size in bits per weight, and every inconsistency (exit status 1 when there is one).
#include "commands.hpp"
#include "model_files.hpp"

#include <qforge/config/name.hpp>

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <string>

namespace qforge::cli {

namespace {

std::string shape_text(std::span<const std::int64_t> shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

// What a weight's layout says, in words.
std::string describe(const checkpoint::quantized_weight& q, bool config_given) {
    const config& c = q.cfg;
    const std::string group = c.group == per_channel ? "one group per row" : "group " + std::to_string(c.group);
    switch (c.storage) {
        case layout::bnb4: {
            std::string s = std::string(to_string(c.type)) + ", blocksize " + std::to_string(c.group);
            if (c.double_quant) s += ", double quant";
            s += ", stored as " + std::string(safetensors::to_string(q.bnb4_storage));
            if (q.original_dtype) s += ", from " + std::string(checkpoint::torch_dtype_name(*q.original_dtype));
            return s;
        }
        case layout::bnb8: return "LLM.int8 rows, one SCB per row";
        case layout::gptq_v1:
        case layout::gptq_v2: {
            const auto& t = std::get<ref::gptq_tensor>(q.data);
            bool act_order = false;
            for (std::size_t k = 0; k < t.g_idx.size() && !act_order; ++k)
                act_order = t.g_idx[k] != static_cast<std::int32_t>(k / static_cast<std::size_t>(t.group));
            return std::to_string(c.bits) + "-bit, " + group + (c.type == dtype::int_sym ? ", sym" : ", asym") +
                   (c.storage == layout::gptq_v2 ? ", v2 (zeros z)" : ", v1 (zeros z - 1)") +
                   (config_given ? "" : " assumed without --config") + (act_order ? ", act-order g_idx" : "");
        }
        case layout::awq_gemm: return "4-bit, " + group + ", zero point";
        case layout::fp8_block: return std::string(to_string(c.type)) + ", 128x128 blocks, f32 scale_inv";
        case layout::mx: return "e2m1, blocks of 32 along K, E8M0 scales";
        case layout::qforge: break;
    }
    return "";
}

}  // namespace

void add_inspect(CLI::App& app) {
    struct options {
        std::string file, config;
    };
    auto opt = std::make_shared<options>();
    CLI::App* cmd = app.add_subcommand(
        "inspect", "list tensors, the method and config of every quantized weight, and inconsistencies");
    cmd->add_option("FILE", opt->file, "a .safetensors file or a model.safetensors.index.json")->required();
    cmd->add_option("--config", opt->config,
                    "the checkpoint's quantization_config: checked against the tensors, and tells GPTQ v1 from v2");
    cmd->callback([opt] {
        std::optional<loaded_config> cfg;
        if (!opt->config.empty()) cfg = load_config(opt->config);
        const input_model in = open_model(opt->file);

        for (const safetensors::reader& r : in.shards) {
            std::uint64_t bytes = 0;
            for (const safetensors::tensor_view& v : r.tensors()) bytes += v.bytes.size();
            std::printf("%s: %zu tensors, %llu bytes of data\n", r.path().c_str(), r.tensors().size(),
                        static_cast<unsigned long long>(bytes));
            std::vector<const safetensors::tensor_view*> by_name;
            for (const safetensors::tensor_view& v : r.tensors()) by_name.push_back(&v);
            std::ranges::sort(by_name, {}, &safetensors::tensor_view::name);
            for (const safetensors::tensor_view* p : by_name) {
                const safetensors::tensor_view& v = *p;
                std::printf("  %-60.*s %-8.*s %s\n", static_cast<int>(v.name.size()), v.name.data(),
                            static_cast<int>(safetensors::to_string(v.type).size()), safetensors::to_string(v.type).data(),
                            shape_text(v.shape).c_str());
            }
        }

        const checkpoint::detection d = checkpoint::detect(in.tensors);
        std::vector<std::string> problems = d.orphans;
        std::map<std::string, std::size_t> per_config;
        std::printf("\nquantized weights: %zu\n", d.weights.size());
        for (const checkpoint::detected_weight& w : d.weights) {
            try {
                const checkpoint::quantized_weight q = checkpoint::import_weight(
                    in.tensors, w, {cfg ? std::optional<config>(cfg->cfg) : std::nullopt});
                std::uint64_t bytes = 0;
                for (const std::string& k : w.keys) bytes += in.tensors.at(k).bytes.size();
                const double numel = static_cast<double>(q.rows()) * static_cast<double>(q.cols());
                const std::string name = canonical_name(q.cfg);
                ++per_config[name];
                std::printf("  %s %s  %s  %.4f bits/weight (%.4f as stored, tables and g_idx included)  %s: %s\n", q.name.c_str(),
                            shape_text(q.shape).c_str(), name.c_str(), ref::bits_per_weight(q.cfg, q.rows(), q.cols()),
                            8.0 * static_cast<double>(bytes) / numel, std::string(checkpoint::to_string(w.kind)).c_str(),
                            describe(q, cfg.has_value()).c_str());
                if (cfg && q.cfg != cfg->cfg)
                    std::printf("    note: the quantization_config says %s; the file's layout is what loaders use\n",
                                canonical_name(cfg->cfg).c_str());
            } catch (const io_error& e) {
                problems.push_back(e.what());
                std::printf("  %s  (%s, inconsistent: see below)\n", w.name.c_str(),
                            std::string(checkpoint::to_string(w.kind)).c_str());
            }
        }
        if (!per_config.empty()) {
            std::printf("configs:");
            for (const auto& [name, count] : per_config) std::printf(" %s (%zu)", name.c_str(), count);
            std::printf("\n");
        }
        if (cfg) std::printf("quantization_config: %s\n", canonical_name(cfg->cfg).c_str());
        if (problems.empty()) {
            std::printf("inconsistencies: none\n");
            return;
        }
        std::printf("inconsistencies: %zu\n", problems.size());
        for (const std::string& p : problems) std::printf("  %s\n", p.c_str());
        std::fflush(stdout);
        throw io_error("'" + opt->file + "' has " + std::to_string(problems.size()) + " inconsistencies (listed above)");
    });
}

}  // namespace qforge::cli

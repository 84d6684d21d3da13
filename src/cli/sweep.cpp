// `qforge sweep`: accuracy and size of every config of a set on one weight matrix.
#include "commands.hpp"

#include <qforge/config/aliases.hpp>
#include <qforge/config/name.hpp>
#include <qforge/reference/reference.hpp>
#include <qforge/synthetic.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

namespace qforge::cli {

namespace {

// The default set: the real-world aliases plus the variants people compare them with.
const std::vector<config> default_set = {
    configs::qlora_nf4,
    {dtype::nf4, 4, 64, false, layout::bnb4, compute::f32},
    configs::bnb_fp4,
    {dtype::nf4, 4, 128, false, layout::bnb4, compute::f32},
    configs::llm_int8,
    configs::gptq_int8_pc,
    configs::gptq_int4_g128,
    {dtype::int_asym, 4, 128, false, layout::gptq_v2, compute::f32},
    {dtype::int_sym, 4, 32, false, layout::gptq_v1, compute::f32},
    configs::gptq_int3_g128,
    {dtype::int_sym, 2, 64, false, layout::gptq_v1, compute::f32},
    configs::awq_int4_g128,
    configs::fp8_block128,
    {dtype::fp8_e5m2, 8, 128, false, layout::fp8_block, compute::f32},
    configs::mxfp4,
};

struct row {
    std::string name;
    double bits_per_weight, rmse, max_abs_error, sqnr_db;
};

row measure(const config& cfg, const std::vector<float>& w, std::int64_t rows, std::int64_t cols) {
    const ref::quantized q = ref::quantize(cfg, std::span<const float>(w), rows, cols, {.tensor_name = "sweep.weight"});
    const std::vector<float> d = ref::dequantize(q);
    double signal = 0.0, noise = 0.0, max_err = 0.0;
    for (std::size_t i = 0; i < w.size(); ++i) {
        const double e = static_cast<double>(d[i]) - w[i];
        signal += static_cast<double>(w[i]) * w[i];
        noise += e * e;
        max_err = std::max(max_err, std::fabs(e));
    }
    return {canonical_name(cfg), ref::bits_per_weight(cfg, rows, cols), std::sqrt(noise / static_cast<double>(w.size())),
            max_err, noise > 0.0 ? 10.0 * std::log10(signal / noise) : INFINITY};
}

void write_json(const std::filesystem::path& path, const std::vector<row>& rows, const synthetic_spec& spec) {
    nlohmann::json j;
    j["weights"] = {{"rows", spec.rows}, {"cols", spec.cols}, {"seed", spec.seed}, {"sigma", spec.sigma}};
    for (const row& r : rows)
        j["configs"].push_back({{"name", r.name},
                                {"bits_per_weight", r.bits_per_weight},
                                {"rmse", r.rmse},
                                {"max_abs_error", r.max_abs_error},
                                {"sqnr_db", r.sqnr_db}});
    // Write beside the target and rename, so a failure never leaves a half-written file.
    const std::filesystem::path tmp = path.string() + ".tmp";
    {
        std::ofstream out(tmp);
        out << j.dump(2) << '\n';
        if (!out.flush()) {
            std::filesystem::remove(tmp);
            throw std::runtime_error("cannot write '" + tmp.string() + "'");
        }
    }
    std::filesystem::rename(tmp, path);
}

}  // namespace

void add_sweep(CLI::App& app) {
    struct options {
        synthetic_spec spec;
        std::vector<std::string> names;
        std::string json;
    };
    auto opt = std::make_shared<options>();
    CLI::App* cmd = app.add_subcommand("sweep", "quantize a weight matrix with each config; print size and error");
    cmd->add_option("--rows", opt->spec.rows, "rows (N) of the synthetic weights")->capture_default_str()->check(CLI::PositiveNumber);
    cmd->add_option("--cols", opt->spec.cols, "columns (K) of the synthetic weights")->capture_default_str()->check(CLI::PositiveNumber);
    cmd->add_option("--seed", opt->spec.seed, "seed of the synthetic weights")->capture_default_str();
    cmd->add_option("--configs", opt->names, "canonical config names (default: the built-in set)");
    cmd->add_option("--json", opt->json, "also write the table as JSON to this file");
    cmd->callback([opt] {
        std::vector<config> cfgs;
        for (const std::string& n : opt->names) cfgs.push_back(parse_name(n));
        if (cfgs.empty()) cfgs = default_set;
        const std::vector<float> w = synthetic_weights(opt->spec);
        std::printf("weights: %lld x %lld synthetic (sigma %.3g, seed %llu)\n", static_cast<long long>(opt->spec.rows),
                    static_cast<long long>(opt->spec.cols), static_cast<double>(opt->spec.sigma),
                    static_cast<unsigned long long>(opt->spec.seed));
        std::printf("%-26s %9s %12s %12s %9s\n", "config", "bits/w", "rmse", "max|err|", "sqnr dB");
        std::vector<row> rows;
        for (const config& c : cfgs) {
            const row r = measure(c, w, opt->spec.rows, opt->spec.cols);
            std::printf("%-26s %9.4f %12.4e %12.4e %9.2f\n", r.name.c_str(), r.bits_per_weight, r.rmse, r.max_abs_error,
                        r.sqnr_db);
            std::fflush(stdout);
            rows.push_back(r);
        }
        if (!opt->json.empty()) write_json(opt->json, rows, opt->spec);
    });
}

}  // namespace qforge::cli

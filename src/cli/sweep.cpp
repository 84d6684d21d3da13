// `qforge sweep`: accuracy and size of every config of a set on one weight matrix.
#include "commands.hpp"

#include <qforge/config/aliases.hpp>
#include <qforge/config/name.hpp>
#include <qforge/kernels/pack.hpp>
#include <qforge/reference/reference.hpp>
#include <qforge/registry.hpp>
#include <qforge/speed.hpp>
#include <qforge/synthetic.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace qforge::cli {

namespace {

// The default set: the real-world aliases plus the variants people compare them with (the i8
// rows quantize the weights as their f32 twins; they differ in GEMV speed).
const std::vector<config> default_set = {
    configs::qlora_nf4,
    {dtype::nf4, 4, 64, false, layout::bnb4, compute::f32},
    {dtype::nf4, 4, 64, false, layout::bnb4, compute::i8},
    configs::bnb_fp4,
    {dtype::nf4, 4, 128, false, layout::bnb4, compute::f32},
    configs::llm_int8,
    configs::gptq_int8_pc,
    configs::gptq_int4_g128,
    {dtype::int_sym, 4, 128, false, layout::gptq_v1, compute::i8},
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
    std::optional<gemv_speed> speed;  // when a GEMV kernel exists for the config
};

// GPTQ and AWQ checkpoints run on qforge's repacked layout; every other layout runs as stored.
config kernel_config(config c) {
    if (is_gptq(c.storage) || c.storage == layout::awq_gemm) c.storage = layout::qforge;
    return c;
}

std::optional<gemv_speed> measure_speed(const config& cfg, const ref::quantized& q, int threads) {
    const config kcfg = kernel_config(cfg);
    if (check(kcfg) != config_rule::ok) return std::nullopt;
    const kernel* k = nullptr;
    try {
        k = &registry::global().find(kcfg, op::gemv);
    } catch (const unsupported_config&) {
        return std::nullopt;
    }
    try {
        return measure_gemv_cold(*k, pack_weights(kcfg, q), threads);
    } catch (const std::invalid_argument&) {
        return std::nullopt;  // e.g. a checkpoint the kernel layout cannot hold
    }
}

row measure(const config& cfg, const std::vector<float>& w, std::int64_t rows, std::int64_t cols, int threads) {
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
            max_err, noise > 0.0 ? 10.0 * std::log10(signal / noise) : INFINITY,
            threads > 0 ? measure_speed(cfg, q, threads) : std::nullopt};
}

void write_json(const std::filesystem::path& path, const std::vector<row>& rows, const synthetic_spec& spec,
                int threads, double membw) {
    nlohmann::json j;
    j["weights"] = {{"rows", spec.rows}, {"cols", spec.cols}, {"seed", spec.seed}, {"sigma", spec.sigma}};
    if (threads > 0) j["speed"] = {{"threads", threads}, {"read_bandwidth_bytes_per_second", membw}};
    for (const row& r : rows) {
        nlohmann::json c = {{"name", r.name},
                            {"bits_per_weight", r.bits_per_weight},
                            {"rmse", r.rmse},
                            {"max_abs_error", r.max_abs_error},
                            {"sqnr_db", r.sqnr_db}};
        if (r.speed)
            c["gemv"] = {{"seconds", r.speed->seconds},
                         {"bytes_per_second", r.speed->bytes_per_second},
                         {"fraction_of_read_bandwidth", r.speed->bytes_per_second / membw}};
        j["configs"].push_back(c);
    }
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
        int threads = 1;
    };
    auto opt = std::make_shared<options>();
    CLI::App* cmd = app.add_subcommand("sweep", "quantize a weight matrix with each config; print size and error");
    cmd->add_option("--rows", opt->spec.rows, "rows (N) of the synthetic weights")->capture_default_str()->check(CLI::PositiveNumber);
    cmd->add_option("--cols", opt->spec.cols, "columns (K) of the synthetic weights")->capture_default_str()->check(CLI::PositiveNumber);
    cmd->add_option("--seed", opt->spec.seed, "seed of the synthetic weights")->capture_default_str();
    cmd->add_option("--configs", opt->names, "canonical config names (default: the built-in set)");
    cmd->add_option("--json", opt->json, "also write the table as JSON to this file");
    cmd->add_option("--threads", opt->threads, "threads of the GEMV timing; 0 skips the speed columns")
        ->capture_default_str()
        ->check(CLI::Range(0, 256));
    cmd->callback([opt] {
        std::vector<config> cfgs;
        for (const std::string& n : opt->names) cfgs.push_back(parse_name(n));
        if (cfgs.empty()) cfgs = default_set;
        const std::vector<float> w = synthetic_weights(opt->spec);
        std::printf("weights: %lld x %lld synthetic (sigma %.3g, seed %llu)\n", static_cast<long long>(opt->spec.rows),
                    static_cast<long long>(opt->spec.cols), static_cast<double>(opt->spec.sigma),
                    static_cast<unsigned long long>(opt->spec.seed));
        const int threads = opt->threads;
        const double membw = threads > 0 ? read_bandwidth(threads) : 0.0;
        if (threads > 0)
            std::printf("GEMV y = W x, weights cold (from DRAM), %d thread(s), isa %s; read bandwidth %.1f GB/s\n", threads,
                        std::string(to_string(active_isa())).c_str(), membw * 1e-9);
        std::printf("%-26s %8s %11s %11s %8s %10s %8s %8s\n", "config", "bits/w", "rmse", "max|err|", "sqnr dB",
                    "gemv us", "GB/s", "of bw");
        std::vector<row> rows;
        for (const config& c : cfgs) {
            const row r = measure(c, w, opt->spec.rows, opt->spec.cols, threads);
            std::printf("%-26s %8.4f %11.4e %11.4e %8.2f", r.name.c_str(), r.bits_per_weight, r.rmse, r.max_abs_error,
                        r.sqnr_db);
            if (r.speed)
                std::printf(" %10.1f %8.1f %7.0f%%\n", r.speed->seconds * 1e6, r.speed->bytes_per_second * 1e-9,
                            100.0 * r.speed->bytes_per_second / membw);
            else
                std::printf(" %10s %8s %8s\n", "-", "-", "-");
            std::fflush(stdout);
            rows.push_back(r);
        }
        if (!opt->json.empty()) write_json(opt->json, rows, opt->spec, threads, membw);
    });
}

}  // namespace qforge::cli

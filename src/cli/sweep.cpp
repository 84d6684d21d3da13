// `qforge sweep`: accuracy and size of every config of a set on one weight matrix, or on a sample
// of a model's weights (with the output error on calibration inputs), with GEMV / GEMM speed.
#include "calibration.hpp"
#include "commands.hpp"
#include "model_files.hpp"
#include "pareto_plot.hpp"

#include <qforge/config/aliases.hpp>
#include <qforge/config/name.hpp>
#include <qforge/kernels/pack.hpp>
#include <qforge/kernels/quantize.hpp>
#include <qforge/parallel.hpp>
#include <qforge/reference/reference.hpp>
#include <qforge/registry.hpp>
#include <qforge/speed.hpp>
#include <qforge/synthetic.hpp>

#include <nlohmann/json.hpp>

#include <fnmatch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
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
    std::string tier;                 // kernels::kernel_tier ("compiled", "regrouped", "widened") or "-"
};

// The kernel config that runs cfg on K columns (kernel_config_for: GPTQ and AWQ repacked into
// qforge's layout, groups without a compiled kernel regrouped), or none.
std::optional<config> kernel_config(const config& cfg, std::int64_t cols) {
    if (check(cfg) != config_rule::ok) return std::nullopt;
    try {
        return kernel_config_for(cfg, cfg.act, cols);
    } catch (const unsupported_config&) {
        return std::nullopt;
    }
}

// Which tier of kernels runs cfg (kernels::kernel_tier; "-": the scalar reference only).
std::string tier_of(const config& cfg, std::int64_t cols) {
    const std::optional<config> k = kernel_config(cfg, cols);
    return k ? std::string(kernels::kernel_tier(cfg, *k)) : "-";
}

// A config name as --configs takes it: a checkpoint's (int4sym_g128_gptq_f32), or a kernel
// layout's as registry.names() lists them (int4sym_g128_qf_i8), which no checkpoint is stored in:
// that one is measured on the GPTQ checkpoint that repacks into it, said before the table.
config checkpoint_config(const std::string& name) {
    config c = parse_name(name);
    if (c.storage != layout::qforge) return c;
    c.storage = layout::gptq_v1;
    std::printf("%s is qforge's kernel layout: measured on its GPTQ checkpoint %s\n", name.c_str(),
                canonical_name(c).c_str());
    return c;
}

std::optional<gemv_speed> measure_speed(const config& cfg, const ref::quantized& q, std::int64_t cols, int threads) {
    const std::optional<config> kcfg = kernel_config(cfg, cols);
    if (!kcfg) return std::nullopt;
    try {
        return measure_gemv_cold(registry::global().find(*kcfg, op::gemv), pack_weights(*kcfg, q), threads);
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
            threads > 0 ? measure_speed(cfg, q, cols, threads) : std::nullopt, tier_of(cfg, cols)};
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
                            {"sqnr_db", r.sqnr_db},
                            {"tier", r.tier}};
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

// ---- sweep on a model's weights ----------------------------------------------------------------

std::vector<float> as_f32(const safetensors::tensor_view& v, std::size_t first, std::size_t count) {
    std::vector<float> out(count);
    const std::size_t item = safetensors::itemsize(v.type);
    const std::byte* p = v.bytes.data() + first * item;
    for (std::size_t i = 0; i < count; ++i) {
        if (v.type == safetensors::dtype::F32) {
            std::memcpy(&out[i], p + 4 * i, 4);
        } else {
            std::uint16_t h;
            std::memcpy(&h, p + 2 * i, 2);
            out[i] = v.type == safetensors::dtype::BF16 ? to_float(bf16{h}) : to_float(f16{h});
        }
    }
    return out;
}

bool floating(safetensors::dtype t) {
    return t == safetensors::dtype::F32 || t == safetensors::dtype::BF16 || t == safetensors::dtype::F16;
}

// One sampled weight, with the first calibration tokens of its module when the file has them.
struct model_sample {
    std::string name;
    std::int64_t rows = 0, cols = 0, tokens = 0;
    std::vector<float> w, x;  // [N, K], [tokens, K]
    std::vector<double> xw;   // X W^T [tokens, N] of the unquantized weights, in f64
};

// Y[t, n] = sum_k X[t, k] W[n, k] in f64 (rows split over the pool).
std::vector<double> exact_product(const std::vector<float>& x, std::int64_t tokens, const std::vector<float>& w,
                                  std::int64_t rows, std::int64_t cols, thread_pool& pool) {
    std::vector<double> y(static_cast<std::size_t>(tokens * rows));
    pool.parallel_for(0, rows, 16, [&](std::int64_t n0, std::int64_t n1) {
        for (std::int64_t n = n0; n < n1; ++n) {
            const float* wn = w.data() + n * cols;
            for (std::int64_t t = 0; t < tokens; ++t) {
                const float* xt = x.data() + t * cols;
                double acc[8] = {};
                std::int64_t k = 0;
                for (; k + 8 <= cols; k += 8)
                    for (int j = 0; j < 8; ++j) acc[j] += static_cast<double>(xt[k + j]) * wn[k + j];
                for (; k < cols; ++k) acc[0] += static_cast<double>(xt[k]) * wn[k];
                y[static_cast<std::size_t>(t * rows + n)] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
            }
        }
    });
    return y;
}

struct model_options {
    std::string model, tensors, calibration, plot;
    int max_tensors = 4;
    std::int64_t tokens = 128;
    std::int64_t m = 16;
};

// The weights a sweep takes from a model: 2-D F32/BF16/F16 `*.weight` tensors matching the glob
// (default: every one but embeddings and lm_head), at most max_tensors of them evenly spaced in
// file order.
std::vector<const safetensors::tensor_view*> pick_weights(const input_model& in, const model_options& o,
                                                          std::size_t& candidates) {
    std::vector<const safetensors::tensor_view*> all;
    for (const safetensors::tensor_view* v : in.tensors.all()) {
        const std::string name(v->name);
        if (!name.ends_with(".weight") || v->shape.size() != 2 || !floating(v->type)) continue;
        if (!o.tensors.empty() ? ::fnmatch(o.tensors.c_str(), name.c_str(), 0) != 0
                               : (name.find("embed") != std::string::npos || name.find("lm_head") != std::string::npos))
            continue;
        all.push_back(v);
    }
    candidates = all.size();
    if (all.empty())
        throw io_error("model '" + in.path.string() + "': no 2-D F32/BF16/F16 '*.weight' tensor" +
                       (o.tensors.empty() ? std::string() : " matches '" + o.tensors + "'"));
    const std::size_t k = std::min<std::size_t>(all.size(), static_cast<std::size_t>(std::max(1, o.max_tensors)));
    std::vector<const safetensors::tensor_view*> picked;
    for (std::size_t i = 0; i < k; ++i) picked.push_back(all[k == 1 ? 0 : i * (all.size() - 1) / (k - 1)]);
    return picked;
}

struct model_row {
    std::string name, note;  // note: why the config could not run on the sample
    double bits_per_weight = 0, rmse = 0, max_abs_error = 0, sqnr_db = 0;
    std::optional<double> output_error;
    bool output_by_reference = false;  // no GEMM kernel: Y from the exact product of the dequantized weights
    std::optional<gemv_speed> m1;
    std::optional<double> mm_seconds;
};

const kernel* find_kernel(const config& cfg, std::int64_t cols, op o) {
    const std::optional<config> k = kernel_config(cfg, cols);
    if (!k) return nullptr;
    try {
        return &registry::global().find(*k, o);
    } catch (const unsupported_config&) {
        return nullptr;
    }
}

// Median time of Y = X W^T for M rows of X, weights hot, rows split over `threads`.
std::optional<double> gemm_seconds(const config& cfg, const ref::quantized& q, std::int64_t cols, std::int64_t m,
                                   int threads) {
    const kernel* k = find_kernel(cfg, cols, op::gemm);
    if (k == nullptr) return std::nullopt;
    try {
        const packed_weights w = pack_weights(k->cfg, q);
        std::vector<float> x(static_cast<std::size_t>(m * w.cols)), y(static_cast<std::size_t>(m * w.rows));
        for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(static_cast<float>(i) * 0.37f);
        thread_pool pool(threads);
        std::vector<double> times;
        for (int r = 0; r < 7; ++r) {
            const auto start = std::chrono::steady_clock::now();
            pool.parallel_for(0, w.rows, 16, [&](std::int64_t n0, std::int64_t n1) {
                k->gemm(w.view(), x.data(), m, nullptr, y.data(), n0, n1);
            });
            times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        }
        std::nth_element(times.begin(), times.begin() + 3, times.end());
        return times[3];
    } catch (const std::invalid_argument&) {
        return std::nullopt;
    }
}

model_row measure_model(const config& cfg, const std::vector<model_sample>& samples, std::size_t timed, int threads,
                        std::int64_t m, thread_pool& pool) {
    model_row r;
    r.name = canonical_name(cfg);
    double signal = 0, noise = 0, weights = 0, out_signal = 0, out_noise = 0;
    for (std::size_t i = 0; i < samples.size(); ++i) {
        const model_sample& s = samples[i];
        ref::quantized q;
        try {
            q = kernels::quantize_checkpoint(cfg, {s.w.data(), element::f32}, s.rows, s.cols, {.tensor_name = s.name}, &pool);
        } catch (const std::invalid_argument& e) {
            r.note = e.what();
            return r;
        }
        std::vector<float> d(s.w.size());
        kernels::dequantize_checkpoint(q, element::f32, d.data(), &pool);
        for (std::size_t j = 0; j < d.size(); ++j) {
            const double e = static_cast<double>(d[j]) - s.w[j];
            signal += static_cast<double>(s.w[j]) * s.w[j];
            noise += e * e;
            r.max_abs_error = std::max(r.max_abs_error, std::fabs(e));
        }
        const double n = static_cast<double>(d.size());
        r.bits_per_weight += ref::bits_per_weight(cfg, s.rows, s.cols) * n;
        weights += n;
        if (s.tokens > 0) {  // Y from the config's own kernel, as an engine computes it
            std::vector<double> y;
            const kernel* k = find_kernel(cfg, s.cols, op::gemm);
            std::optional<packed_weights> packed;
            if (k != nullptr) {
                try {
                    packed.emplace(pack_weights(k->cfg, q));
                } catch (const std::invalid_argument&) {
                }
            }
            if (packed) {
                std::vector<float> yf(static_cast<std::size_t>(s.tokens * s.rows));
                pool.parallel_for(0, s.rows, 16, [&](std::int64_t n0, std::int64_t n1) {
                    k->gemm(packed->view(), s.x.data(), s.tokens, nullptr, yf.data(), n0, n1);
                });
                y.assign(yf.begin(), yf.end());
            } else {
                r.output_by_reference = true;
                y = exact_product(s.x, s.tokens, d, s.rows, s.cols, pool);
            }
            for (std::size_t j = 0; j < y.size(); ++j) {
                out_signal += s.xw[j] * s.xw[j];
                out_noise += (s.xw[j] - y[j]) * (s.xw[j] - y[j]);
            }
        }
        if (i == timed && threads > 0) {
            r.m1 = measure_speed(cfg, q, s.cols, threads);
            r.mm_seconds = gemm_seconds(cfg, q, s.cols, m, threads);
        }
    }
    r.bits_per_weight /= weights;
    r.rmse = std::sqrt(noise / weights);
    r.sqnr_db = noise > 0.0 ? 10.0 * std::log10(signal / noise) : INFINITY;
    if (out_signal > 0.0) r.output_error = std::sqrt(out_noise / out_signal);
    return r;
}

void run_model_sweep(const model_options& o, const std::vector<config>& cfgs, int threads, const std::string& json_path) {
    const input_model in = open_model(o.model);
    std::size_t candidates = 0;
    const std::vector<const safetensors::tensor_view*> picked = pick_weights(in, o, candidates);
    std::optional<calibration_file> calib;
    if (!o.calibration.empty()) calib.emplace(o.calibration);
    thread_pool pool(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));

    std::vector<model_sample> samples;
    std::size_t timed = 0;
    std::printf("weights: %zu of %zu matching tensors of %s (evenly spaced in file order):\n", picked.size(), candidates,
                o.model.c_str());
    for (const safetensors::tensor_view* v : picked) {
        model_sample s;
        s.name = std::string(v->name);
        s.rows = v->shape[0];
        s.cols = v->shape[1];
        s.w = as_f32(*v, 0, static_cast<std::size_t>(s.rows * s.cols));
        std::string calib_note;
        if (calib) {
            const std::string module = s.name.substr(0, s.name.size() - std::string_view(".weight").size());
            const auto it = calib->modules().find(module);
            if (it == calib->modules().end() || it->second.inputs == nullptr) {
                calib_note = " (no <module>.inputs in the calibration file)";
            } else if (it->second.cols() != s.cols) {
                throw io_error("calibration '" + calib->path().string() + "': module '" + module + "': " +
                               it->second.shape_text() + " does not match the weight's K = " + std::to_string(s.cols));
            } else {
                const safetensors::tensor_view& x = *it->second.inputs;
                const std::int64_t available = x.numel() / s.cols;
                s.tokens = std::min(available, o.tokens);
                s.x = as_f32(x, 0, static_cast<std::size_t>(s.tokens * s.cols));
                for (float f : s.x)
                    if (!std::isfinite(f))
                        throw io_error("calibration '" + calib->path().string() + "': '" + std::string(x.name) + "' holds NaN or Inf");
                s.xw = exact_product(s.x, s.tokens, s.w, s.rows, s.cols, pool);
                calib_note = ", " + std::to_string(s.tokens) + " calibration tokens";
            }
        }
        std::printf("  %s [%lld, %lld]%s\n", s.name.c_str(), static_cast<long long>(s.rows), static_cast<long long>(s.cols),
                    calib_note.c_str());
        if (samples.empty() || s.rows * s.cols > samples[timed].rows * samples[timed].cols) timed = samples.size();
        samples.push_back(std::move(s));
    }
    const bool with_output = std::any_of(samples.begin(), samples.end(), [](const model_sample& s) { return s.tokens > 0; });
    const double membw = threads > 0 ? read_bandwidth(threads) : 0.0;
    if (threads > 0)
        std::printf("speed on %s: M=1 GEMV with cold weights, M=%lld GEMM with hot weights; %d thread(s), isa %s; read "
                    "bandwidth %.1f GB/s\n",
                    samples[timed].name.c_str(), static_cast<long long>(o.m), threads,
                    std::string(to_string(active_isa())).c_str(), membw * 1e-9);
    if (with_output)
        std::printf("out err = ||X W^T - Y|| / ||X W^T|| over the calibration tokens, Y by the config's GEMM kernel "
                    "(* : no kernel, Y = X Wq^T exactly)\n");
    std::printf("%-26s %8s %11s %8s %9s %10s %8s %10s\n", "config", "bits/w", "rmse", "sqnr dB", "out err", "M=1 us",
                "GB/s", ("M=" + std::to_string(o.m) + " us").c_str());
    std::vector<model_row> rows;
    for (const config& c : cfgs) {
        const model_row r = measure_model(c, samples, timed, threads, o.m, pool);
        if (!r.note.empty()) {
            std::printf("%-26s cannot hold these weights: %s\n", r.name.c_str(), r.note.c_str());
            rows.push_back(r);
            continue;
        }
        std::printf("%-26s %8.4f %11.4e %8.2f", r.name.c_str(), r.bits_per_weight, r.rmse, r.sqnr_db);
        if (r.output_error)
            std::printf(" %8.4f%s", *r.output_error, r.output_by_reference ? "*" : " ");
        else
            std::printf(" %9s", "-");
        if (r.m1)
            std::printf(" %10.1f %8.1f", r.m1->seconds * 1e6, r.m1->bytes_per_second * 1e-9);
        else
            std::printf(" %10s %8s", "-", "-");
        if (r.mm_seconds)
            std::printf(" %10.1f\n", *r.mm_seconds * 1e6);
        else
            std::printf(" %10s\n", "-");
        std::fflush(stdout);
        rows.push_back(r);
    }
    if (!json_path.empty()) {
        nlohmann::json j;
        j["model"] = o.model;
        for (const model_sample& s : samples)
            j["weights"].push_back({{"name", s.name}, {"rows", s.rows}, {"cols", s.cols}, {"calibration_tokens", s.tokens}});
        if (threads > 0) j["speed"] = {{"threads", threads}, {"m", o.m}, {"read_bandwidth_bytes_per_second", membw}};
        for (const model_row& r : rows) {
            nlohmann::json c = {{"name", r.name}};
            if (!r.note.empty()) {
                c["error"] = r.note;
            } else {
                c.update({{"bits_per_weight", r.bits_per_weight}, {"rmse", r.rmse}, {"max_abs_error", r.max_abs_error},
                          {"sqnr_db", r.sqnr_db}});
                if (r.output_error) c["output_error"] = {{"value", *r.output_error}, {"by_kernel", !r.output_by_reference}};
                if (r.m1) c["gemv_m1"] = {{"seconds", r.m1->seconds}, {"bytes_per_second", r.m1->bytes_per_second}};
                if (r.mm_seconds) c["gemm"] = {{"m", o.m}, {"seconds", *r.mm_seconds}};
            }
            j["configs"].push_back(c);
        }
        const std::filesystem::path tmp = json_path + ".tmp";
        std::ofstream(tmp) << j.dump(2) << '\n';
        std::filesystem::rename(tmp, json_path);
    }
    if (!o.plot.empty()) {
        std::vector<pareto_point> points;
        for (const model_row& r : rows) {
            if (!r.note.empty()) continue;
            std::string speed;
            if (r.m1) speed = std::to_string(static_cast<int>(std::lround(r.m1->seconds * 1e6))) + " us";
            if (r.mm_seconds) speed += (speed.empty() ? "" : ", ") + ("M=" + std::to_string(o.m) + ": " +
                                       std::to_string(static_cast<int>(std::lround(*r.mm_seconds * 1e6))) + " us");
            points.push_back({r.name, r.bits_per_weight, r.output_error ? *r.output_error : std::pow(10.0, -r.sqnr_db / 20.0), speed,
                              r.m1 ? r.m1->bytes_per_second * 1e-9 : 0.0});
        }
        write_pareto_plot(o.plot, points,
                          with_output ? "output error ||X W^T - Y|| / ||X W^T||" : "weight error ||W - Wq|| / ||W||",
                          "qforge sweep: " + std::filesystem::path(o.model).filename().string());
        std::printf("plot: %s\n", o.plot.c_str());
    }
}

}  // namespace

void add_sweep(CLI::App& app) {
    struct options {
        synthetic_spec spec;
        std::vector<std::string> names;
        std::string json;
        int threads = 1;
        model_options model;
    };
    auto opt = std::make_shared<options>();
    CLI::App* cmd = app.add_subcommand("sweep", "quantize a weight matrix with each config; print size and error");
    cmd->add_option("--rows", opt->spec.rows, "rows (N) of the synthetic weights")->capture_default_str()->check(CLI::PositiveNumber);
    cmd->add_option("--cols", opt->spec.cols, "columns (K) of the synthetic weights")->capture_default_str()->check(CLI::PositiveNumber);
    cmd->add_option("--seed", opt->spec.seed, "seed of the synthetic weights")->capture_default_str();
    cmd->add_option("--configs", opt->names,
                    "canonical config names, of checkpoints or of kernels (default: the built-in set)");
    cmd->add_option("--json", opt->json, "also write the table as JSON to this file");
    cmd->add_option("--threads", opt->threads, "threads of the GEMV timing; 0 skips the speed columns")
        ->capture_default_str()
        ->check(CLI::Range(0, 256));
    cmd->add_option("--model", opt->model.model,
                    "take the weights from this model (.safetensors, or the model.safetensors.index.json of a sharded one)");
    cmd->add_option("--tensors", opt->model.tensors,
                    "with --model: a glob on tensor names (default: every 2-D '*.weight' but embeddings and lm_head)");
    cmd->add_option("--max-tensors", opt->model.max_tensors, "with --model: sample at most this many, evenly spaced")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    cmd->add_option("--calibration", opt->model.calibration,
                    "with --model: inputs per module (<module>.inputs [tokens, K], as quantize --calibration reads) "
                    "for the output error ||X W^T - Y|| / ||X W^T||");
    cmd->add_option("--tokens", opt->model.tokens, "with --calibration: the first this many tokens of each module")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    cmd->add_option("--m", opt->model.m, "with --model: the batch (rows of X) of the second speed column")
        ->capture_default_str()
        ->check(CLI::Range(1, 4096));
    cmd->add_option("--plot", opt->model.plot,
                    "with --model: draw bits per weight against error, the Pareto front and the speeds (.svg; .png needs "
                    "python3-matplotlib)");
    cmd->callback([opt] {
        std::vector<config> cfgs;
        for (const std::string& n : opt->names) cfgs.push_back(checkpoint_config(n));
        if (cfgs.empty()) cfgs = default_set;
        if (!opt->model.model.empty()) return run_model_sweep(opt->model, cfgs, opt->threads, opt->json);
        if (!opt->model.calibration.empty() || !opt->model.plot.empty() || !opt->model.tensors.empty())
            throw CLI::ValidationError("--calibration, --plot and --tensors need --model");
        const std::vector<float> w = synthetic_weights(opt->spec);
        std::printf("weights: %lld x %lld synthetic (sigma %.3g, seed %llu)\n", static_cast<long long>(opt->spec.rows),
                    static_cast<long long>(opt->spec.cols), static_cast<double>(opt->spec.sigma),
                    static_cast<unsigned long long>(opt->spec.seed));
        const int threads = opt->threads;
        const double membw = threads > 0 ? read_bandwidth(threads) : 0.0;
        if (threads > 0)
            std::printf("GEMV y = W x, weights cold (from DRAM), %d thread(s), isa %s; read bandwidth %.1f GB/s\n", threads,
                        std::string(to_string(active_isa())).c_str(), membw * 1e-9);
        std::printf("%-26s %8s %11s %11s %8s %10s %8s %8s  %s\n", "config", "bits/w", "rmse", "max|err|", "sqnr dB",
                    "gemv us", "GB/s", "of bw", "kernels");
        std::vector<row> rows;
        for (const config& c : cfgs) {
            const row r = measure(c, w, opt->spec.rows, opt->spec.cols, threads);
            std::printf("%-26s %8.4f %11.4e %11.4e %8.2f", r.name.c_str(), r.bits_per_weight, r.rmse, r.max_abs_error,
                        r.sqnr_db);
            if (r.speed)
                std::printf(" %10.1f %8.1f %7.0f%%", r.speed->seconds * 1e6, r.speed->bytes_per_second * 1e-9,
                            100.0 * r.speed->bytes_per_second / membw);
            else
                std::printf(" %10s %8s %8s", "-", "-", "-");
            std::printf("  %s\n", r.tier.c_str());
            std::fflush(stdout);
            rows.push_back(r);
        }
        if (!opt->json.empty()) write_json(opt->json, rows, opt->spec, threads, membw);
    });
}

}  // namespace qforge::cli

// GPTQ calibration files, the calibrated quantization of one weight, and `qforge hessian`.
#include "calibration.hpp"

#include "commands.hpp"
#include "progress.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <set>
#include <vector>

namespace qforge::cli {

namespace {

namespace fs = std::filesystem;
using sdt = safetensors::dtype;

constexpr std::string_view inputs_suffix = ".inputs", hessian_suffix = ".hessian", nsamples_suffix = ".nsamples";
constexpr std::int64_t input_slice_rows = 8192;  // rows widened to f32 at a time

std::string shape_string(std::span<const std::int64_t> shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

[[noreturn]] void fail(const fs::path& file, std::string_view tensor, const std::string& what) {
    throw io_error("calibration '" + file.string() + "': tensor '" + std::string(tensor) + "': " + what);
}

std::int64_t read_nsamples(const safetensors::tensor_view& v, const fs::path& file) {
    if (v.numel() != 1 || v.shape.size() > 1)
        fail(file, v.name, "shape " + shape_string(v.shape) + ": nsamples is one integer (shape [] or [1])");
    double value = 0.0;
    switch (v.type) {
        case sdt::I64: value = static_cast<double>(v.to_vector<std::int64_t>()[0]); break;
        case sdt::I32: value = static_cast<double>(v.to_vector<std::int32_t>()[0]); break;
        case sdt::F32: value = static_cast<double>(v.to_vector<float>()[0]); break;
        default: fail(file, v.name, "dtype " + std::string(safetensors::to_string(v.type)) + ": nsamples is I64, I32 or F32");
    }
    if (!(value >= 0.0) || value != std::floor(value) || value > 9.0e15)
        fail(file, v.name, "nsamples must be a non-negative integer, got " + std::to_string(value));
    return static_cast<std::int64_t>(value);
}

// Rows [r0, r0 + count) of an [rows, k] F32 / BF16 / F16 tensor as f32 (copied: the data may be
// unaligned), checked finite.
std::vector<float> rows_as_f32(const safetensors::tensor_view& v, std::int64_t k, std::int64_t r0, std::int64_t count,
                               const fs::path& file) {
    const auto n = static_cast<std::size_t>(count * k), first = static_cast<std::size_t>(r0 * k);
    std::vector<float> out(n);
    const auto widen = [&]<class T>(T) {
        std::vector<T> raw(n);
        std::memcpy(raw.data(), v.bytes.data() + first * sizeof(T), n * sizeof(T));
        std::transform(raw.begin(), raw.end(), out.begin(), [](T x) { return to_float(x); });
    };
    switch (v.type) {
        case sdt::F32: std::memcpy(out.data(), v.bytes.data() + first * sizeof(float), n * sizeof(float)); break;
        case sdt::BF16: widen(bf16{}); break;
        case sdt::F16: widen(f16{}); break;
        default: fail(file, v.name, "dtype " + std::string(safetensors::to_string(v.type)) + " is not F32, BF16 or F16");
    }
    for (std::size_t i = 0; i < n; ++i)
        if (!std::isfinite(out[i]))
            fail(file, v.name, std::string(std::isnan(out[i]) ? "NaN" : "Inf") + " at flat index " + std::to_string(first + i));
    return out;
}

std::string seconds(double s) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f s", s);
    return buf;
}

double since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The library's two stages on one bar: the factorization (K^3/3 flops each for the Cholesky and
// the triangular inverse) and the column loop (N K^2), weighted by their flops.
class layer_bar {
public:
    layer_bar(std::string_view module, std::int64_t rows, std::int64_t cols)
        : bar_("gptq " + std::string(module), total_),
          factorize_share_(2.0 * static_cast<double>(cols) / (2.0 * static_cast<double>(cols) + 3.0 * static_cast<double>(rows))) {}
    void operator()(std::string_view stage, std::int64_t done, std::int64_t total) {
        const double fraction = total > 0 ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
        const double at = stage == "factorize" ? factorize_share_ * fraction : factorize_share_ + (1.0 - factorize_share_) * fraction;
        const auto units = static_cast<std::uint64_t>(at * static_cast<double>(total_));
        bar_.advance(units > drawn_ ? units - drawn_ : 0, stage);
        drawn_ = std::max(drawn_, units);
    }

private:
    static constexpr std::uint64_t total_ = 1000;
    progress bar_;
    double factorize_share_;
    std::uint64_t drawn_ = 0;
};

}  // namespace

// ---- calibration files ---------------------------------------------------------------------

std::int64_t module_calibration::cols() const {
    if (hessian) return hessian->shape[1];
    return inputs->shape.back();
}

std::string module_calibration::shape_text() const {
    std::string s;
    if (inputs) s = "inputs " + shape_string(inputs->shape);
    if (hessian) s += (s.empty() ? "" : ", ") + std::string("hessian ") + shape_string(hessian->shape);
    return s;
}

calibration_file::calibration_file(const fs::path& file) : reader_(file) {
    std::map<std::string, const safetensors::tensor_view*, std::less<>> nsamples;
    for (const safetensors::tensor_view& v : reader_.tensors()) {
        const auto module_of = [&](std::string_view suffix) { return std::string(v.name.substr(0, v.name.size() - suffix.size())); };
        if (v.name.ends_with(inputs_suffix) && v.name.size() > inputs_suffix.size()) {
            if (v.shape.size() < 2)
                fail(file, v.name, "shape " + shape_string(v.shape) + ": inputs are [tokens, K] (or [batch, seq, K])");
            if (v.type != sdt::F32 && v.type != sdt::BF16 && v.type != sdt::F16)
                fail(file, v.name, "dtype " + std::string(safetensors::to_string(v.type)) + ": inputs are F32, BF16 or F16");
            if (v.shape.back() == 0) fail(file, v.name, "shape " + shape_string(v.shape) + " has K = 0");
            // Without tokens, K is not backed by data, and H would be K^2 doubles of nothing.
            if (v.numel() == 0) fail(file, v.name, "shape " + shape_string(v.shape) + " holds no tokens");
            modules_[module_of(inputs_suffix)].inputs = &v;
        } else if (v.name.ends_with(hessian_suffix) && v.name.size() > hessian_suffix.size()) {
            if (v.shape.size() != 2 || v.shape[0] != v.shape[1] || v.shape[0] == 0)
                fail(file, v.name, "shape " + shape_string(v.shape) + ": a Hessian is a non-empty square [K, K]");
            if (v.type != sdt::F32)
                fail(file, v.name, "dtype " + std::string(safetensors::to_string(v.type)) + ": a Hessian is F32");
            modules_[module_of(hessian_suffix)].hessian = &v;
        } else if (v.name.ends_with(nsamples_suffix) && v.name.size() > nsamples_suffix.size()) {
            nsamples[module_of(nsamples_suffix)] = &v;
        } else {
            fail(file, v.name, "not a calibration tensor (<module>.inputs, <module>.hessian or <module>.nsamples)");
        }
    }
    for (const auto& [module, v] : nsamples) {
        const auto it = modules_.find(module);
        if (it == modules_.end() || !it->second.hessian)
            fail(file, v->name, "has no '" + module + std::string(hessian_suffix) + "' beside it");
        it->second.nsamples = read_nsamples(*v, file);
    }
    for (const auto& [module, c] : modules_) {
        if (c.cols() > max_calibration_cols)
            fail(file, c.hessian ? c.hessian->name : c.inputs->name,
                 "K = " + std::to_string(c.cols()) + " is above qforge's limit of " + std::to_string(max_calibration_cols) +
                     " (GPTQ holds 16 K^2 bytes)");
        if (c.hessian && !nsamples.contains(module))
            fail(file, c.hessian->name, "its '" + module + std::string(nsamples_suffix) + "' is missing");
        if (c.hessian && c.inputs && c.inputs->shape.back() != c.hessian->shape[0])
            fail(file, c.inputs->name, "shape " + shape_string(c.inputs->shape) + " does not match the module's hessian " +
                                           shape_string(c.hessian->shape));
    }
}

void accumulate(std::optional<gptq::hessian>& h, std::string_view module, const module_calibration& c,
                const fs::path& file, int threads) {
    const std::int64_t k = c.cols();
    if (h && h->cols() != k)
        throw io_error("calibration '" + file.string() + "': module '" + std::string(module) + "': " + c.shape_text() +
                       " has K = " + std::to_string(k) + ", but earlier calibration data of the module has K = " +
                       std::to_string(h->cols()));
    if (c.hessian) {
        const std::vector<float> stored = rows_as_f32(*c.hessian, k, 0, k, file);
        if (h)
            h->merge(gptq::hessian(k, stored, c.nsamples));
        else
            h.emplace(k, stored, c.nsamples);
    }
    if (!h) h.emplace(k);
    if (c.inputs) {
        const std::int64_t rows = c.inputs->numel() / k;
        for (std::int64_t r0 = 0; r0 < rows; r0 += input_slice_rows) {
            const std::int64_t count = std::min(input_slice_rows, rows - r0);
            h->add_batch(rows_as_f32(*c.inputs, k, r0, count, file), count, threads);
        }
    }
}

// ---- one calibrated weight -----------------------------------------------------------------

checkpoint::quantized_weight quantize_calibrated(const safetensors::tensor_view& weight, std::string_view module,
                                                 const module_calibration& c, const fs::path& file,
                                                 const loaded_config& cfg, int threads) {
    const auto& g = std::get<hf_gptq>(cfg.hf.fields);
    const std::int64_t rows = weight.shape[0], cols = weight.shape[1];
    const auto where = [&] { return "checkpoint '" + std::string(weight.file) + "': tensor '" + std::string(weight.name) + "': "; };
    // What the checkpoint cannot hold is refused before the expensive part.
    if (weight.type != sdt::F32 && weight.type != sdt::BF16 && weight.type != sdt::F16)
        throw io_error(where() + "dtype " + std::string(safetensors::to_string(weight.type)) +
                       " cannot be quantized (F32, BF16 and F16 can)");
    if (rows % 32 != 0 || cols % 32 != 0)
        throw io_error(where() + "shape " + shape_string(weight.shape) + ": GPTQ needs N and K to be multiples of 32");
    if (g.group_size > 0 && cols % g.group_size != 0)
        throw io_error(where() + "K = " + std::to_string(cols) + " is not divisible by the group size " +
                       std::to_string(g.group_size));

    const auto t0 = std::chrono::steady_clock::now();
    std::optional<gptq::hessian> accumulated;
    accumulate(accumulated, module, c, file, threads);
    // A stored Hessian alone is already in the stored form.
    const gptq::hessian h = c.inputs ? gptq::hessian(accumulated->cols(), accumulated->to_f32(), accumulated->nsamples())
                                     : std::move(*accumulated);
    accumulated.reset();
    const double hessian_seconds = since(t0);

    gptq::options opt = gptq::options_from(cfg.cfg);
    opt.desc_act = g.desc_act;
    opt.act_group_aware = g.act_group_aware;  // the parser turns it off with desc_act
    opt.static_groups = g.static_groups;
    opt.damp_percent = g.damp_percent;
    opt.threads = threads;
    opt.layer_name = std::string(module);
    auto bar = std::make_shared<layer_bar>(module, rows, cols);
    opt.progress = [bar](std::string_view stage, std::int64_t done, std::int64_t total) { (*bar)(stage, done, total); };

    const auto t1 = std::chrono::steady_clock::now();
    gptq::result r;
    if (weight.type == sdt::F32)
        r = gptq::quantize_layer(weight.to_vector<float>(), rows, cols, h, opt);
    else if (weight.type == sdt::BF16)
        r = gptq::quantize_layer(weight.to_vector<bf16>(), rows, cols, h, opt);
    else
        r = gptq::quantize_layer(weight.to_vector<f16>(), rows, cols, h, opt);
    const double gptq_seconds = since(t1);
    opt.progress = nullptr;
    bar.reset();  // erases the bar before the lines below

    for (const std::string& w : r.warnings) std::fprintf(stderr, "qforge: warning: %s\n", w.c_str());
    std::string notes;
    if (r.dead_columns > 0) notes += ", " + std::to_string(r.dead_columns) + " dead columns (zero weights)";
    if (r.f64_factorization) notes += ", factorized in f64";
    std::fprintf(stderr, "qforge: gptq '%.*s' %s: Hessian %s, GPTQ %s; %lld calibration rows, damping %g%s\n",
                 static_cast<int>(module.size()), module.data(), shape_string(weight.shape).c_str(),
                 seconds(hessian_seconds).c_str(), seconds(gptq_seconds).c_str(), static_cast<long long>(h.nsamples()),
                 r.damp, notes.c_str());

    checkpoint::quantized_weight q;
    q.name = std::string(weight.name);
    q.cfg = cfg.cfg;
    q.shape = {rows, cols};
    q.original_dtype = weight.type;
    q.data = gptq::to_gptq_tensor(r, cfg.cfg.storage == layout::gptq_v2);
    return q;
}

// ---- qforge hessian ------------------------------------------------------------------------

void add_hessian(CLI::App& app) {
    struct options {
        std::vector<std::string> inputs;
        std::string out;
        int threads = 0;
    };
    auto opt = std::make_shared<options>();
    CLI::App* cmd = app.add_subcommand(
        "hessian", "accumulate GPTQ Hessians (<module>.hessian, <module>.nsamples) from calibration files, for quantize --calibration");
    cmd->add_option("IN", opt->inputs,
                    "calibration files: <module>.inputs [tokens, K] activations and/or earlier <module>.hessian "
                    "+ <module>.nsamples, merged over all files")
        ->required();
    cmd->add_option("-o,--output", opt->out, "the hessian file to write (.safetensors)")->required();
    cmd->add_option("--threads", opt->threads, "worker threads (default 0: one per hardware thread)")
        ->check(CLI::NonNegativeNumber);
    cmd->callback([opt] {
        std::vector<calibration_file> files;
        for (const std::string& in : opt->inputs) files.emplace_back(in);
        for (const calibration_file& f : files) {
            std::error_code ec;
            if (fs::equivalent(f.path(), opt->out, ec))
                throw io_error("output '" + opt->out + "' is the input '" + f.path().string() + "': write elsewhere");
        }
        std::set<std::string, std::less<>> modules;
        std::uint64_t total_bytes = 0;
        for (const calibration_file& f : files)
            for (const auto& [module, c] : f.modules()) {
                modules.insert(module);
                total_bytes += (c.inputs ? c.inputs->bytes.size() : 0) + (c.hessian ? c.hessian->bytes.size() : 0);
            }

        safetensors::writer writer;
        {
            progress bar("hessian", total_bytes);
            for (const std::string& module : modules) {  // one f64 Hessian in memory at a time
                std::optional<gptq::hessian> h;
                for (const calibration_file& f : files) {
                    const auto it = f.modules().find(module);
                    if (it == f.modules().end()) continue;
                    accumulate(h, module, it->second, f.path(), opt->threads);
                    bar.advance((it->second.inputs ? it->second.inputs->bytes.size() : 0) +
                                    (it->second.hessian ? it->second.hessian->bytes.size() : 0),
                                module);
                }
                const std::int64_t k = h->cols();
                writer.add_owned(module + std::string(hessian_suffix), sdt::F32, {k, k}, h->to_f32());
                writer.add_owned(module + std::string(nsamples_suffix), sdt::I64, {}, std::vector<std::int64_t>{h->nsamples()});
            }
        }
        output_files out;
        writer.write(out.stage(opt->out));
        out.commit();
        std::printf("accumulated %zu Hessian%s from %zu file%s -> %s\n", modules.size(), modules.size() == 1 ? "" : "s",
                    files.size(), files.size() == 1 ? "" : "s", opt->out.c_str());
    });
}

}  // namespace qforge::cli

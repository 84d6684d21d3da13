// GPTQ calibration cost per layer (issue 5): quantize_layer on W [N, K] with 2 threads, for the
// LLaMA-7B shapes q/k/v/o [4096, 4096], gate/up [11008, 4096] and down [4096, 11008], plus the
// Hessian accumulation of 2048 calibration rows. One iteration takes seconds; `meson test
// --benchmark` runs the [4096, 4096] layer only, run build/bench/bench_gptq_calib for all.
#include <qforge/quantize/gptq.hpp>
#include <qforge/synthetic.hpp>

#include <benchmark/benchmark.h>

#include <map>
#include <memory>
#include <random>
#include <utility>

namespace {

constexpr std::int64_t calibration_rows = 2048;

// Activations with a few dominant channels, as LLM layer inputs have.
std::vector<float> activations(std::int64_t tokens, std::int64_t k) {
    std::mt19937_64 rng(42);
    std::normal_distribution<float> normal;
    std::vector<float> x(static_cast<std::size_t>(tokens * k));
    for (auto& v : x) v = normal(rng);
    for (std::int64_t t = 0; t < tokens; ++t)
        for (std::int64_t c = 0; c < k; c += 97) x[t * k + c] *= 20.0f;
    return x;
}

const qforge::gptq::hessian& hessian_for(std::int64_t k) {
    static std::map<std::int64_t, std::unique_ptr<qforge::gptq::hessian>> cache;
    auto& h = cache[k];
    if (!h) {
        h = std::make_unique<qforge::gptq::hessian>(k);
        h->add_batch(activations(calibration_rows, k), calibration_rows, 2);
    }
    return *h;
}

void quantize_layer(benchmark::State& state) {
    const std::int64_t n = state.range(0), k = state.range(1);
    const bool act_order = state.range(2) != 0;
    qforge::synthetic_spec spec;
    spec.rows = n;
    spec.cols = k;
    const auto w = qforge::synthetic_weights(spec);
    const auto& h = hessian_for(k);
    qforge::gptq::options opt;  // 4-bit, g128, sym, damp 0.1
    opt.desc_act = act_order;
    opt.threads = 2;
    for (auto _ : state) benchmark::DoNotOptimize(qforge::gptq::quantize_layer(w, n, k, h, opt));
}

void hessian_batch(benchmark::State& state) {
    const std::int64_t k = state.range(0);
    const auto x = activations(calibration_rows, k);
    qforge::gptq::hessian h(k);
    for (auto _ : state) h.add_batch(x, calibration_rows, 2);
    state.SetItemsProcessed(state.iterations() * calibration_rows);
}

}  // namespace

BENCHMARK(quantize_layer)
    ->ArgNames({"N", "K", "act"})
    ->Args({4096, 4096, 0})
    ->Args({11008, 4096, 0})
    ->Args({4096, 11008, 0})
    ->Args({4096, 4096, 1})
    ->Iterations(1)
    ->Unit(benchmark::kSecond)
    ->UseRealTime();
BENCHMARK(hessian_batch)->ArgName("K")->Arg(4096)->Arg(11008)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();

BENCHMARK_MAIN();

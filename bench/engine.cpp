// Benchmarks of the engine calls (engine.hpp) and of start-up.
//
//   qkv/<name>/K4096xN4096x3/t<threads>/<three_calls|one_call|one_call_prepared>
//       Q, K and V (4096 x 4096 each) on one x: three GEMV calls (each prepares x; with two
//       threads, each thread prepares it for each matrix), one call over the three (x prepared
//       once per thread), or one call on x prepared once for all threads (prepare included)
//   prepare/<name>/K4096          preparing x alone (the i8 path: quantized per block)
//   startup/<name>/7B_block/<checkpoint|packed_file>
//       the 7 matrices of one 7B transformer block (q, k, v, o 4096 x 4096; gate, up 11008 x 4096;
//       down 4096 x 11008), GPTQ 4-bit g128: from the safetensors checkpoint (read, repack, find
//       kernels) or from a packed file (map, validate, find kernels), each followed by one GEMV
//       over every matrix (the mapped pages are read then); the files in the page cache
//
// Counters: bytes_per_second (weight bytes per pass), and for qkv GFLOPS (2 N K per matrix).
#include <qforge/config/name.hpp>
#include <qforge/engine.hpp>
#include <qforge/io/checkpoint.hpp>
#include <qforge/io/packed_file.hpp>
#include <qforge/kernels/kernels.hpp>
#include <qforge/kernels/pack.hpp>
#include <qforge/parallel.hpp>
#include <qforge/reference/reference.hpp>
#include <qforge/synthetic.hpp>

#include <benchmark/benchmark.h>

#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

using namespace qforge;

namespace {

ref::quantized checkpoint_tensor(const config& stored, std::int64_t n, std::int64_t k, std::uint64_t seed) {
    synthetic_spec spec;
    spec.rows = n;
    spec.cols = k;
    spec.seed = seed;
    const std::vector<float> w = synthetic_weights(spec);
    return ref::quantize(stored, std::span<const float>(w), n, k);
}

config stored_of(config c) {
    if (c.storage == layout::qforge) c.storage = layout::gptq_v1;
    return c;
}

std::vector<float> input(std::int64_t k) {
    std::vector<float> x(static_cast<std::size_t>(k));
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.1f * static_cast<float>(i));
    return x;
}

enum class qkv_mode { three_calls, one_call, one_call_prepared };

void qkv(benchmark::State& state, config cfg, int threads, qkv_mode mode) {
    constexpr std::int64_t n = 4096, k = 4096;
    std::vector<matrix> m;
    for (int i = 0; i < 3; ++i) m.emplace_back(pack_weights(cfg, checkpoint_tensor(stored_of(cfg), n, k, 40 + i)));
    const std::vector<float> x = input(k);
    std::vector<float> y[3];
    for (auto& v : y) v.resize(n);
    const gemv_target targets[3] = {{&m[0], nullptr, {y[0].data()}}, {&m[1], nullptr, {y[1].data()}},
                                    {&m[2], nullptr, {y[2].data()}}};
    thread_pool pool(threads);
    prepared_x px;
    for (auto _ : state) {
        switch (mode) {
            case qkv_mode::three_calls:
                for (int i = 0; i < 3; ++i)
                    pool.parallel_for(0, n, 16, [&](std::int64_t a, std::int64_t b) {
                        m[i].gemv(activations{x.data()}, nullptr, {y[i].data()}, a, b);
                    });
                break;
            case qkv_mode::one_call:
                pool.parallel_for(0, 3 * n, 16, [&](std::int64_t a, std::int64_t b) {
                    gemv(targets, activations{x.data()}, a, b);
                });
                break;
            case qkv_mode::one_call_prepared:
                px.prepare(m[0], {x.data()});
                pool.parallel_for(0, 3 * n, 16, [&](std::int64_t a, std::int64_t b) { gemv(targets, px, a, b); });
                break;
        }
        benchmark::DoNotOptimize(y[2].data());
    }
    const double bytes = 3.0 * static_cast<double>(m[0].packed()->weight_bytes());
    state.counters["bytes_per_second"] = benchmark::Counter(bytes * state.iterations(), benchmark::Counter::kIsRate);
    state.counters["GFLOPS"] =
        benchmark::Counter(3.0 * 2.0 * n * k * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}

void prepare(benchmark::State& state, config cfg) {
    constexpr std::int64_t k = 4096;
    const matrix m(pack_weights(cfg, checkpoint_tensor(stored_of(cfg), 64, k, 7)));
    const std::vector<float> x = input(k);
    prepared_x px;
    for (auto _ : state) {
        px.prepare(m, {x.data()});
        benchmark::ClobberMemory();
    }
}

// ---- start-up -------------------------------------------------------------------------------

struct block_files {
    std::filesystem::path checkpoint, packed;
    std::vector<std::string> names;
    ~block_files() {
        std::error_code ec;
        std::filesystem::remove(checkpoint, ec);
        std::filesystem::remove(packed, ec);
    }
};

// The 7B block as a GPTQ checkpoint and as a packed file (made once per process).
const block_files& files_for(const config& cfg) {
    static std::unique_ptr<block_files> made;
    if (made) return *made;
    made = std::make_unique<block_files>();
    const auto dir = std::filesystem::temp_directory_path();
    made->checkpoint = dir / ("qforge_bench_block_" + std::to_string(::getpid()) + ".safetensors");
    made->packed = dir / ("qforge_bench_block_" + std::to_string(::getpid()) + ".qfpack");
    struct shape {
        const char* name;
        std::int64_t n, k;
    };
    const shape shapes[] = {{"self_attn.q_proj", 4096, 4096}, {"self_attn.k_proj", 4096, 4096},
                            {"self_attn.v_proj", 4096, 4096}, {"self_attn.o_proj", 4096, 4096},
                            {"mlp.gate_proj", 11008, 4096},  {"mlp.up_proj", 11008, 4096},
                            {"mlp.down_proj", 4096, 11008}};
    std::vector<checkpoint::quantized_weight> qs;
    std::vector<matrix> ms;
    for (std::size_t i = 0; i < std::size(shapes); ++i) {
        checkpoint::quantized_weight q;
        q.name = std::string("model.layers.0.") + shapes[i].name + ".weight";
        q.cfg = stored_of(cfg);
        q.data = checkpoint_tensor(q.cfg, shapes[i].n, shapes[i].k, 100 + i);
        q.shape = {shapes[i].n, shapes[i].k};
        made->names.push_back(q.name);
        ms.emplace_back(pack_weights(cfg, q.data, q.name));
        qs.push_back(std::move(q));
    }
    safetensors::writer w;
    for (const auto& q : qs) checkpoint::export_weight(w, q);
    w.write(made->checkpoint);
    std::vector<packed_file::named_weights> list;
    for (std::size_t i = 0; i < ms.size(); ++i) list.push_back({made->names[i], ms[i].view()});
    packed_file::save(made->packed, list);
    return *made;
}

void run_all(const std::vector<matrix>& ms) {
    std::vector<float> x(11008), y(11008);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.1f * static_cast<float>(i));
    for (const matrix& m : ms) m.gemv(activations{x.data()}, nullptr, {y.data()}, 0, m.rows());
    benchmark::DoNotOptimize(y.data());
}

void startup_checkpoint(benchmark::State& state, config cfg) {
    const block_files& f = files_for(cfg);
    for (auto _ : state) {
        const safetensors::reader r(f.checkpoint);
        const checkpoint::tensor_set s(r);
        std::vector<matrix> ms;
        for (const checkpoint::detected_weight& d : checkpoint::detect(s).weights) {
            const checkpoint::quantized_weight q = checkpoint::import_weight(s, d);
            ms.emplace_back(pack_weights(kernel_config_for(q.cfg, cfg.act, q.cols()), q.data, q.name));
        }
        run_all(ms);
    }
}

void startup_packed(benchmark::State& state, config cfg) {
    const block_files& f = files_for(cfg);
    for (auto _ : state) {
        const auto file = packed_file::open(f.packed);
        std::vector<matrix> ms;
        for (const std::string& name : file->names()) ms.emplace_back(file->view(name), file);
        run_all(ms);
    }
}

const int registered = [] {
    const config qf_i8{dtype::int_sym, 4, 128, false, layout::qforge, compute::i8};
    const config nf4_i8{dtype::nf4, 4, 64, false, layout::bnb4, compute::i8};
    for (const config& c : {qf_i8, nf4_i8}) {
        if (!kernels::kernel_built(c)) continue;
        const std::string name = canonical_name(c);
        for (const int t : {1, 2}) {
            const std::string base = "qkv/" + name + "/K4096xN4096x3/t" + std::to_string(t) + "/";
            benchmark::RegisterBenchmark((base + "three_calls").c_str(), qkv, c, t, qkv_mode::three_calls)->UseRealTime();
            benchmark::RegisterBenchmark((base + "one_call").c_str(), qkv, c, t, qkv_mode::one_call)->UseRealTime();
            benchmark::RegisterBenchmark((base + "one_call_prepared").c_str(), qkv, c, t, qkv_mode::one_call_prepared)
                ->UseRealTime();
        }
        benchmark::RegisterBenchmark(("prepare/" + name + "/K4096").c_str(), prepare, c);
    }
    if (kernels::kernel_built(qf_i8)) {
        const std::string base = "startup/" + canonical_name(qf_i8) + "/7B_block/";
        benchmark::RegisterBenchmark((base + "checkpoint").c_str(), startup_checkpoint, qf_i8)
            ->UseRealTime()->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark((base + "packed_file").c_str(), startup_packed, qf_i8)
            ->UseRealTime()->Unit(benchmark::kMillisecond);
    }
    return 0;
}();

}  // namespace

BENCHMARK_MAIN();

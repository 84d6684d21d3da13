// Kernels and the thread pool used from several threads at once, for ThreadSanitizer (.ci/test
// builds this test with -fsanitize=thread): the registry's first use, one packed weight shared by
// concurrent GEMVs / GEMMs / dequantizes, and pools run side by side. Every result must equal the
// single-threaded one bit for bit.
#include <qforge/config/aliases.hpp>
#include <qforge/config/name.hpp>
#include <qforge/kernels/pack.hpp>
#include <qforge/parallel.hpp>
#include <qforge/registry.hpp>
#include <qforge/synthetic.hpp>

#include <catch2/catch.hpp>

#include <cstring>
#include <thread>
#include <vector>

using namespace qforge;

namespace {

constexpr std::int64_t rows = 96, cols = 512, batch = 3;
constexpr int threads = 4;

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Runs fn(t) on `threads` threads started together.
template <class F>
void together(F fn) {
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) pool.emplace_back([&fn, t] { fn(t); });
    for (std::thread& th : pool) th.join();
}

}  // namespace

TEST_CASE("the registry's first use from several threads", "[threads]") {
    std::vector<std::size_t> sizes(threads);
    together([&](int t) { sizes[static_cast<std::size_t>(t)] = registry::global().names().size(); });
    for (const std::size_t n : sizes) CHECK(n == sizes[0]);
}

TEST_CASE("one packed weight, concurrent kernels and pools", "[threads]") {
    int tested = 0;
    for (const std::string& name : registry::global().names()) {
        const config cfg = parse_name(name);
        if (cfg.storage != layout::bnb4 && cfg.storage != layout::qforge) continue;
        INFO(name);
        ++tested;
        // the best kernel for this CPU, as an engine gets it
        const kernel* gemv = &registry::global().find(cfg, op::gemv);
        const kernel* gemm = &registry::global().find(cfg, op::gemm);
        const kernel* deq = &registry::global().find(cfg, op::dequantize);
        config source = cfg;
        if (source.storage == layout::qforge) source.storage = layout::gptq_v1;
        const std::vector<float> w = synthetic_weights({.rows = rows, .cols = cols, .seed = 5});
        const packed_weights packed = pack_weights(cfg, ref::quantize(source, std::span<const float>(w), rows, cols));
        const std::vector<float> x = synthetic_weights({.rows = batch, .cols = cols, .seed = 6});

        std::vector<float> y1(rows), ym(static_cast<std::size_t>(batch * rows)), d(static_cast<std::size_t>(rows * cols));
        gemv->gemv(packed.view(), x.data(), nullptr, y1.data(), 0, rows);
        gemm->gemm(packed.view(), x.data(), batch, nullptr, ym.data(), 0, rows);
        deq->dequantize(packed.view(), 0, rows, d.data());

        std::vector<int> ok(threads, 0);
        together([&](int t) {
            std::vector<float> a(rows), b(ym.size()), c(d.size());
            thread_pool pool(2);  // each thread its own pool: pools side by side
            for (int round = 0; round < 3; ++round) {
                pool.parallel_for(0, rows, 16, [&](std::int64_t n0, std::int64_t n1) {
                    gemv->gemv(packed.view(), x.data(), nullptr, a.data(), n0, n1);
                    gemm->gemm(packed.view(), x.data(), batch, nullptr, b.data(), n0, n1);
                    deq->dequantize(packed.view(), n0, n1, c.data());  // out holds all N rows
                });
            }
            ok[static_cast<std::size_t>(t)] = same_bits(a, y1) && same_bits(b, ym) && same_bits(c, d);
        });
        for (const int r : ok) CHECK(r == 1);
    }
    CHECK(tested > 0);
}

// Kernels and the thread pool used from several threads at once, for ThreadSanitizer (.ci/test
// builds this test with -fsanitize=thread): the registry's first use, one packed weight shared by
// concurrent GEMVs / GEMMs / dequantizes, pools run side by side, and activations prepared once
// (engine.hpp's prepared_x, the C API's qforge_prepared) shared by every thread while each thread
// also prepares its own, and a dequantization in pieces (the pool makes pieces into a ring while
// the calling thread hands them over). Every result must equal the single-threaded one bit for bit.
#include <qforge/config/aliases.hpp>
#include <qforge/config/name.hpp>
#include <qforge/engine.hpp>
#include <qforge/io/packed_file.hpp>
#include <qforge/kernels/pack.hpp>
#include <qforge/kernels/quantize.hpp>
#include <qforge/parallel.hpp>
#include <qforge/qforge.h>
#include <qforge/registry.hpp>
#include <qforge/synthetic.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <thread>
#include <unistd.h>
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

// The kernel configs of the layouts this test packs (rows with their scales: bnb4, qforge).
std::vector<config> row_configs() {
    std::vector<config> out;
    for (const std::string& name : registry::global().names()) {
        const config cfg = parse_name(name);
        if (cfg.storage == layout::bnb4 || cfg.storage == layout::qforge) out.push_back(cfg);
    }
    return out;
}

packed_weights make(const config& cfg, std::uint64_t seed) {
    config source = cfg;
    if (source.storage == layout::qforge) source.storage = layout::gptq_v1;
    const std::vector<float> w = synthetic_weights({.rows = rows, .cols = cols, .seed = seed});
    return pack_weights(cfg, ref::quantize(source, std::span<const float>(w), rows, cols));
}

}  // namespace

TEST_CASE("the registry's first use from several threads", "[threads]") {
    std::vector<std::size_t> sizes(threads);
    together([&](int t) { sizes[static_cast<std::size_t>(t)] = registry::global().names().size(); });
    for (const std::size_t n : sizes) CHECK(n == sizes[0]);
}

TEST_CASE("one packed weight, concurrent kernels and pools", "[threads]") {
    int tested = 0;
    for (const config& cfg : row_configs()) {
        INFO(canonical_name(cfg));
        ++tested;
        // the best kernel for this CPU, as an engine gets it
        const kernel* gemv = &registry::global().find(cfg, op::gemv);
        const kernel* gemm = &registry::global().find(cfg, op::gemm);
        const kernel* deq = &registry::global().find(cfg, op::dequantize);
        const packed_weights packed = make(cfg, 5);
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

TEST_CASE("activations prepared once, shared by threads: engine calls and the C API", "[threads]") {
    const std::vector<config> cfgs = row_configs();
    REQUIRE(!cfgs.empty());
    for (const config& cfg : cfgs) {
        const std::string name = canonical_name(cfg);
        INFO(name);
        const matrix q(make(cfg, 5)), k(make(cfg, 7));  // Q and K: one kernel, one K, one prepared x
        const std::vector<float> x = synthetic_weights({.rows = 1, .cols = cols, .seed = 6});
        const activations raw{x.data()};
        std::vector<float> yq(rows), yk(rows);
        q.gemv(raw, nullptr, {yq.data()}, 0, rows);
        k.gemv(raw, nullptr, {yk.data()}, 0, rows);
        const prepared_x shared(q, raw);

        // the C API's handles over the same weights, through a packed file
        const auto path = std::filesystem::temp_directory_path() /
                          ("qforge_test_threads_" + std::to_string(::getpid()) + "_" + name + ".qfpack");
        packed_file::save(path, {{"q", q.view()}, {"k", k.view()}});
        qforge_matrix *cq = nullptr, *ck = nullptr;
        qforge_prepared* cx = nullptr;
        REQUIRE(qforge_packed_load(path.c_str(), "q", &cq) == QFORGE_OK);
        REQUIRE(qforge_packed_load(path.c_str(), "k", &ck) == QFORGE_OK);
        REQUIRE(qforge_prepare(cq, x.data(), QFORGE_F32, &cx) == QFORGE_OK);
        // the file holds rows: the handles' results are those of rows (q and k may run on their
        // kernels' own arrangement, whose sums round differently)
        const auto file = packed_file::open(path);
        std::vector<float> cyq(rows), cyk(rows);
        matrix(file->view("q"), file).gemv(raw, nullptr, {cyq.data()}, 0, rows);
        matrix(file->view("k"), file).gemv(raw, nullptr, {cyk.data()}, 0, rows);

        std::vector<int> ok(threads, 0);
        together([&](int t) {
            std::vector<float> a(rows), b(rows), c(rows), own_y(rows), ca(rows), cb(rows), cc(rows);
            const gemv_target targets[] = {{&q, nullptr, {a.data()}}, {&k, nullptr, {b.data()}}};
            const qforge_gemv_target ctargets[] = {{cq, nullptr, ca.data(), QFORGE_F32, 0.0f},
                                                   {ck, nullptr, cb.data(), QFORGE_F32, 0.0f}};
            prepared_x own;  // prepared again every round, in this thread's scratch memory
            thread_pool pool(2);
            std::atomic<int> c_failed{0};  // C calls that failed (pool workers count them)
            for (int round = 0; round < 3; ++round) {
                own.prepare(q, raw);
                pool.parallel_for(0, 2 * rows, 16, [&](std::int64_t n0, std::int64_t n1) {
                    gemv(targets, shared, n0, n1);
                    c_failed += qforge_gemv_many(ctargets, 2, cx, n0, n1) != QFORGE_OK;
                });
                pool.parallel_for(0, rows, 16, [&](std::int64_t n0, std::int64_t n1) {
                    q.gemv(shared, nullptr, {c.data()}, n0, n1);
                    k.gemv(own, nullptr, {own_y.data()}, n0, n1);
                    c_failed += qforge_gemv_prepared(cq, cx, nullptr, 0.0f, cc.data(), QFORGE_F32, n0, n1) != QFORGE_OK;
                });
            }
            ok[static_cast<std::size_t>(t)] = c_failed == 0 && same_bits(a, yq) && same_bits(b, yk) && same_bits(c, yq) &&
                                              same_bits(own_y, yk) && same_bits(ca, cyq) && same_bits(cb, cyk) &&
                                              same_bits(cc, cyq);
        });
        for (const int r : ok) CHECK(r == 1);
        qforge_prepared_free(cx);
        qforge_matrix_free(cq);
        qforge_matrix_free(ck);
        std::filesystem::remove(path);
    }
}

TEST_CASE("a dequantization in pieces: made on the pool into a ring, handed over in order", "[threads]") {
    const std::vector<float> w = synthetic_weights({.rows = 256, .cols = 1024, .seed = 5});
    const ref::quantized q = ref::quantize(configs::qlora_nf4, std::span<const float>(w), 256, 1024);
    std::vector<float> whole(w.size());
    kernels::dequantize_checkpoint(q, element::f32, whole.data());
    for (const int n : {2, 4}) {
        thread_pool pool(n);
        // pieces of 4096 values: 64 pieces, the ring of 8 per thread wraps several times
        std::vector<float> out(w.size());
        std::atomic<std::size_t> made{0};
        std::size_t next = 0;
        kernels::dequantize_in_pieces(
            q, element::f32, &pool, 4096, [&](const kernels::dequantized_piece& p) { made += p.count; },
            [&](const kernels::dequantized_piece& p) {
                CHECK(p.first == next);
                std::memcpy(out.data() + p.first, p.bytes.data(), p.bytes.size());
                next = p.first + p.count;
            });
        CHECK(made == w.size());
        CHECK(same_bits(out, whole));
        // an exception from the writer stops every thread and comes back to the caller
        std::size_t handed = 0;
        CHECK_THROWS_WITH(kernels::dequantize_in_pieces(q, element::f32, &pool, 4096, {},
                                                        [&](const kernels::dequantized_piece&) {
                                                            if (++handed == 20) throw std::runtime_error("disk full");
                                                        }),
                          "disk full");
        CHECK(handed == 20);
    }
}

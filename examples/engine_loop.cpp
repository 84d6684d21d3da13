// An engine's decode loop over qforge, with the engine's own threads: Q, K and V (GPTQ 4-bit,
// i8 compute path) packed once; per token, x (bf16, as the engine holds it) prepared once, then
// every thread runs its range of the stacked Q/K/V rows in one call. Checks the result against
// one plain call per matrix (the same bits) and prints the time per token.
//
//   engine_loop [THREADS]     (exit status 77: this build has no int4sym_g128_qf_i8 kernel)
#include <qforge/engine.hpp>
#include <qforge/format/float.hpp>
#include <qforge/kernels/pack.hpp>
#include <qforge/reference/reference.hpp>
#include <qforge/synthetic.hpp>

#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
    const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
    constexpr std::int64_t n = 1024, k = 1024, tokens = 100;
    const qforge::config stored{qforge::dtype::int_sym, 4, 128, false, qforge::layout::gptq_v1, qforge::compute::f32};
    qforge::config kernel;
    try {
        kernel = qforge::kernel_config_for(stored, qforge::compute::i8);
    } catch (const qforge::unsupported_config& e) {  // left out of this build by -Dkernels
        std::printf("skipped: %s\n", e.what());
        return 77;
    }

    // load time: each weight packed once (an engine reads them with checkpoint::import_weight)
    std::vector<qforge::matrix> w;
    for (std::uint64_t seed : {1, 2, 3}) {
        qforge::synthetic_spec spec{n, k, seed};
        const std::vector<float> f = qforge::synthetic_weights(spec);
        w.emplace_back(qforge::pack_weights(kernel, qforge::ref::quantize(stored, std::span<const float>(f), n, k)));
    }
    std::vector<float> yq(n), yk(n), yv(n);
    const qforge::gemv_target qkv[] = {{&w[0], nullptr, {yq.data()}}, {&w[1], nullptr, {yk.data()}},
                                       {&w[2], nullptr, {yv.data()}}};
    const std::int64_t rows = qforge::stacked_rows(qkv);  // 3 n

    std::vector<qforge::bf16> hidden(k);
    qforge::prepared_x x;
    // The engine's pool: threads wait at a barrier, run their rows, meet again.
    std::barrier start(threads), done(threads);
    bool stop = false;
    auto work = [&](int t) {
        for (;;) {
            start.arrive_and_wait();
            if (stop) return;
            qforge::gemv(qkv, x, rows * t / threads, rows * (t + 1) / threads);
            done.arrive_and_wait();
        }
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back(work, t);

    const auto t0 = std::chrono::steady_clock::now();
    for (std::int64_t token = 0; token < tokens; ++token) {
        for (std::int64_t i = 0; i < k; ++i) hidden[i] = qforge::to_bf16(std::sin(0.01f * static_cast<float>(token * k + i)));
        x.prepare(w[0], {hidden.data(), qforge::element::bf16});  // once per token, for all three and all threads
        start.arrive_and_wait();
        qforge::gemv(qkv, x, 0, rows / threads);  // this thread's share (t = 0)
        done.arrive_and_wait();
    }
    const std::chrono::duration<double, std::micro> dt = std::chrono::steady_clock::now() - t0;
    stop = true;
    start.arrive_and_wait();
    for (std::thread& t : pool) t.join();

    // The last token again, one plain call per matrix: the same bits.
    int differ = 0;
    std::vector<float> y(n);
    for (int m = 0; m < 3; ++m) {
        w[m].gemv(qforge::activations{hidden.data(), qforge::element::bf16}, nullptr, {y.data()}, 0, n);
        differ += std::memcmp(y.data(), qkv[m].y.data, n * sizeof(float)) != 0;
    }
    std::printf("%s, %d threads: %.1f us per token (Q/K/V %lld x %lld each); %d of 3 outputs differ from plain calls\n",
                w[0].gemv_kernel().full_name().c_str(), threads, dt.count() / tokens, static_cast<long long>(n),
                static_cast<long long>(k), differ);
    return differ == 0 ? 0 : 1;
}

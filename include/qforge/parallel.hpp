// A small built-in thread pool for the CLI and the benchmarks: it splits output rows over
// std::threads. Engines with their own pool call the kernels on row ranges directly instead.
//
//   qforge::thread_pool pool(2);
//   pool.parallel_for(0, n, 16, [&](std::int64_t n0, std::int64_t n1) { k.gemv(w, x, bias, y, n0, n1); });
//
// Workers spin briefly on a generation counter before sleeping, so back-to-back calls (one
// GEMV per layer) do not pay a condition-variable wake-up each time.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

namespace qforge {

class thread_pool {
public:
    explicit thread_pool(int threads) {
        if (threads < 1) throw std::invalid_argument("thread_pool: need at least 1 thread");
        for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { work(i); });
    }
    thread_pool(const thread_pool&) = delete;
    thread_pool& operator=(const thread_pool&) = delete;
    ~thread_pool() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
            generation_.fetch_add(1, std::memory_order_release);
        }
        wake_.notify_all();
        for (std::thread& t : workers_) t.join();
    }

    int size() const { return static_cast<int>(workers_.size()) + 1; }

    // Runs task(i) for every i in [0, size()), i = 0 on the calling thread; returns when all
    // are done. Not reentrant: one run at a time.
    void run(const std::function<void(int)>& task) {
        if (workers_.empty()) return task(0);
        task_ = &task;
        pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            generation_.fetch_add(1, std::memory_order_release);
        }
        wake_.notify_all();
        task(0);
        for (int spin = 0; spin < spin_limit && pending_.load(std::memory_order_acquire) > 0; ++spin) pause();
        if (pending_.load(std::memory_order_acquire) > 0) {
            std::unique_lock<std::mutex> lock(mutex_);
            done_.wait(lock, [&] { return pending_.load(std::memory_order_acquire) == 0; });
        }
    }

    // Splits [n0, n1) into size() contiguous chunks whose sizes are multiples of `grain` (but the
    // last) and runs fn(begin, end) on each non-empty chunk.
    void parallel_for(std::int64_t n0, std::int64_t n1, std::int64_t grain,
                      const std::function<void(std::int64_t, std::int64_t)>& fn) {
        const std::int64_t threads = size(), total = n1 - n0;
        if (total <= 0) return;
        if (grain < 1) grain = 1;
        const std::int64_t chunk = ((total + threads - 1) / threads + grain - 1) / grain * grain;
        run([&](int t) {
            const std::int64_t begin = n0 + t * chunk, end = begin + chunk < n1 ? begin + chunk : n1;
            if (begin < end) fn(begin, end);
        });
    }

private:
    static constexpr int spin_limit = 20000;  // roughly 50-100 us of pause instructions

    static void pause() {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }

    void work(int index) {
        std::uint64_t seen = 0;
        for (;;) {
            std::uint64_t now = generation_.load(std::memory_order_acquire);
            for (int spin = 0; spin < spin_limit && now == seen; ++spin) {
                pause();
                now = generation_.load(std::memory_order_acquire);
            }
            if (now == seen) {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
                now = generation_.load(std::memory_order_acquire);
            }
            seen = now;
            if (stop_) return;
            (*task_)(index);
            if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
                std::lock_guard<std::mutex> lock(mutex_);
                done_.notify_one();
            }
        }
    }

    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_, done_;
    std::atomic<std::uint64_t> generation_{0};
    std::atomic<int> pending_{0};
    const std::function<void(int)>* task_ = nullptr;
    bool stop_ = false;
};

}  // namespace qforge

#include <qforge/parallel.hpp>
#include <qforge/speed.hpp>

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

namespace qforge {

namespace {

using clock_type = std::chrono::steady_clock;

// Plain sums of 64-bit lanes: enough work to keep the loads alive, far too little to bound them.
__attribute__((target("avx512f"))) std::uint64_t read_avx512(const std::uint8_t* p, std::size_t bytes) {
    __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
    for (std::size_t i = 0; i < bytes; i += 256) {
        a = _mm512_add_epi64(a, _mm512_load_si512(p + i));
        b = _mm512_add_epi64(b, _mm512_load_si512(p + i + 64));
        c = _mm512_add_epi64(c, _mm512_load_si512(p + i + 128));
        d = _mm512_add_epi64(d, _mm512_load_si512(p + i + 192));
    }
    alignas(64) std::uint64_t lanes[8];
    _mm512_store_si512(lanes, _mm512_add_epi64(_mm512_add_epi64(a, b), _mm512_add_epi64(c, d)));
    std::uint64_t sum = 0;
    for (std::uint64_t l : lanes) sum += l;
    return sum;
}

__attribute__((target("avx2"))) std::uint64_t read_avx2(const std::uint8_t* p, std::size_t bytes) {
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    for (std::size_t i = 0; i < bytes; i += 128) {
        a = _mm256_add_epi64(a, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
        b = _mm256_add_epi64(b, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
        c = _mm256_add_epi64(c, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
        d = _mm256_add_epi64(d, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
    }
    alignas(32) std::uint64_t lanes[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d)));
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

std::uint64_t read_sse(const std::uint8_t* p, std::size_t bytes) {
    __m128i a = _mm_setzero_si128(), b = a;
    for (std::size_t i = 0; i < bytes; i += 32) {
        a = _mm_add_epi64(a, _mm_load_si128(reinterpret_cast<const __m128i*>(p + i)));
        b = _mm_add_epi64(b, _mm_load_si128(reinterpret_cast<const __m128i*>(p + i + 16)));
    }
    alignas(16) std::uint64_t lanes[2];
    _mm_store_si128(reinterpret_cast<__m128i*>(lanes), _mm_add_epi64(a, b));
    return lanes[0] + lanes[1];
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

}  // namespace

std::uint64_t read_pass(const std::uint8_t* p, std::size_t bytes) {
    static const auto read = cpu().avx512bw ? read_avx512 : cpu().avx2_fma ? read_avx2 : read_sse;
    return read(p, bytes);
}

double read_bandwidth(int threads, std::size_t bytes, int passes) {
    bytes = bytes / (256 * static_cast<std::size_t>(threads)) * 256 * static_cast<std::size_t>(threads);
    const weight_buffer buf(bytes, 1);  // allocated as the weights are (huge pages), every page touched
    thread_pool pool(threads);
    const std::size_t per_thread = bytes / static_cast<std::size_t>(threads);
    std::vector<std::uint64_t> sink(static_cast<std::size_t>(threads));
    std::vector<double> rates;
    for (int pass = 0; pass < passes; ++pass) {
        const auto start = clock_type::now();
        pool.run([&](int t) { sink[static_cast<std::size_t>(t)] = read_pass(buf.data() + static_cast<std::size_t>(t) * per_thread, per_thread); });
        const std::chrono::duration<double> s = clock_type::now() - start;
        rates.push_back(static_cast<double>(bytes) / s.count());
    }
    volatile std::uint64_t keep = sink[0];
    (void)keep;
    return *std::max_element(rates.begin(), rates.end());
}

gemv_speed measure_gemv_cold(const kernel& k, const packed_weights& w, int threads, double min_seconds) {
    const std::size_t bytes = w.weight_bytes();
    packed_weights as_run = w;  // as qforge::matrix holds them: in the kernel's own arrangement, if any
    arrange(k, as_run);
    const std::vector<packed_weights> copies(256 * mib / bytes + 2, as_run);
    const std::vector<float> x(static_cast<std::size_t>(w.cols), 0.5f);
    std::vector<float> y(static_cast<std::size_t>(w.rows));
    thread_pool pool(threads);
    std::vector<double> times;
    const auto begin = clock_type::now();
    for (std::size_t i = 0; times.size() < 5 || std::chrono::duration<double>(clock_type::now() - begin).count() < min_seconds; ++i) {
        const weights_view v = copies[i % copies.size()].view();
        const auto start = clock_type::now();
        pool.parallel_for(0, w.rows, 16, [&](std::int64_t n0, std::int64_t n1) { k.gemv(v, x.data(), nullptr, y.data(), n0, n1); });
        times.push_back(std::chrono::duration<double>(clock_type::now() - start).count());
    }
    const double s = median(times);
    return {s, static_cast<double>(bytes) / s};
}

}  // namespace qforge

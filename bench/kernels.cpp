// Benchmarks of every generated GEMV and GEMM kernel (driven by generated/qforge_kernel_list.inc)
// on LLM shapes, with the read bandwidth of the same run as the yardstick.
//
//   <op>/<canonical name>/K<k>xN<n>/M<m>/t<threads>/<hot|cold>
//                                             K x N: 4096 x 4096, 4096 x 11008, 11008 x 4096, and for the
//                                             GEMV also 1024 x 4096 (short rows)
//                                             M = 8, 32, 128; at 4096 x 11008 also M = 1, 2, 4, 16, 512
//   membw/read/t<threads>                     512 MiB read with 512-bit (or 256-bit) loads, from memory
//                                             allocated as the weights are (huge pages, memory.hpp)
//   peak/<vnni|fma|bf16>/t<threads>           the arithmetic peak of the GEMMs' compute paths: 12
//                                             independent zmm chains of vpdpbusd (int8 ops, 2 per
//                                             multiply-add), vfmadd231ps or vdpbf16ps (flops), the
//                                             fastest iteration; skipped on CPUs without the instruction
//   repack/<int4sym|int2asym|int3asym|int4asym>_g128_<gptq|gptq_actorder|awq>_to_qf/K<k>xN<n>
//                                             the one-time checkpoint -> qforge layout repack
//   repack/nf4_b64_bnb_to_rows/K<k>xN<n>     pack_weights of a bitsandbytes NF4 tensor: each row's
//                                             absmax moved in front of its codes (rows_with_scales)
//                                             (the GPTQ / AWQ repacks include that step)
//   gemv_dense/<name>/K4096xN11008/M1/t<threads>/cold
//                                             the GEMV on dense arrays (row_stride 0, e.g. a zero-copy
//                                             view of a bnb checkpoint) instead of pack_weights' rows
//   <gemv|gemm>_rows/<name>/K4096xN11008/M<m>/t1/cold
//                                             kernels with an arrangement of their own (the avx512_vnni
//                                             i8 panels) on W in rows, as a mapped packed file runs them;
//                                             the others above run on the arranged W, as qforge::matrix
//
// Counters, from the wall clock: bytes_per_second (weight bytes: codes + scales + nested absmax + zeros,
// per pass over W), GFLOPS (2 M N K), frac_membw (bytes_per_second / membw/read of the same
// thread count), and roofline: the time the machine needs, max(weight bytes / membw/read, 2 M N K /
// peak of the kernel's compute path; i8: vnni, bf16 on avx512_bf16: bf16, else fma), over the
// measured time. The yardsticks are the last membw/read and peak/<path> run earlier in the same
// process, else measured once when first needed (so a filtered run has them too; listing the
// yardstick benchmarks first in the filter shows their numbers). "cold" rotates over copies of the
// weights totalling more than 256 MiB, so each pass streams W from DRAM; "hot" reuses one copy.
// The kernel is the registry's pick for the active ISA (QFORGE_ISA forces another one).
#include <qforge/config/name.hpp>
#include <qforge/isa.hpp>
#include <qforge/format/tables.hpp>
#include <qforge/kernels/kernels.hpp>
#include <qforge/kernels/pack.hpp>
#include <qforge/parallel.hpp>
#include <qforge/registry.hpp>
#include <qforge/speed.hpp>

#include <benchmark/benchmark.h>

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

using namespace qforge;

namespace {

constexpr std::size_t cold_bytes = 256 * mib;
constexpr std::size_t membw_bytes = 512 * mib;

struct listed_kernel {
    const char* name;
    config cfg;
};
const listed_kernel kernel_list[] = {
#define QFORGE_KERNEL(name, family, type, bits, group, dq, storage, act) \
    {#name, QFORGE_KERNEL_CONFIG(type, bits, group, dq, storage, act)},
#include <qforge_kernel_list.inc>
#undef QFORGE_KERNEL
};

// Read bandwidth per thread count, as measured by membw/read in this process.
std::map<int, double>& measured_membw() {
    static std::map<int, double> m;
    return m;
}

// The arithmetic peaks (op/s) per (compute path, thread count), as measured by peak/<path>.
enum class peak_kind { vnni, fma, bf16 };
std::map<std::pair<peak_kind, int>, double>& measured_peak() {
    static std::map<std::pair<peak_kind, int>, double> m;
    return m;
}

// ---- weights with random codes and plausible scales (speed does not depend on the values) ---

struct xorshift {
    std::uint64_t s;
    std::uint64_t next() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        return s;
    }
    float uniform(float lo, float hi) { return lo + (hi - lo) * static_cast<float>(next() >> 40) / static_cast<float>(1 << 24); }
};

void fill_random(weight_buffer& v, xorshift& rng) {
    std::size_t i = 0;
    for (; i + 8 <= v.size(); i += 8) {
        const std::uint64_t r = rng.next();
        std::memcpy(v.data() + i, &r, 8);
    }
    for (; i < v.size(); ++i) v[i] = static_cast<std::uint8_t>(rng.next());
}

packed_weights random_weights(const config& cfg, std::int64_t n, std::int64_t k, std::uint64_t seed, bool dense = false) {
    xorshift rng{seed * 0x9E3779B97F4A7C15ull + 1};
    packed_weights p;
    p.cfg = cfg;
    p.rows = n;
    p.cols = k;
    p.codes.resize(static_cast<std::size_t>(n * k * cfg.bits / 8));
    fill_random(p.codes, rng);
    const std::size_t blocks = static_cast<std::size_t>(n * (k / (cfg.group == per_channel ? k : cfg.group)));
    if (cfg.storage == layout::bnb4) {
        p.code_table.assign(cfg.type == dtype::nf4 ? nf4_table.begin() : fp4_table.begin(),
                            cfg.type == dtype::nf4 ? nf4_table.end() : fp4_table.end());
        if (cfg.double_quant) {
            p.scales.resize(blocks);
            fill_random(p.scales, rng);
            p.nested_map.assign(dynamic_map.begin(), dynamic_map.end());
            p.nested_absmax.resize((blocks + nested_blocksize - 1) / nested_blocksize);
            for (float& a : p.nested_absmax) a = rng.uniform(0.01f, 0.05f);
            p.nested_offset = 0.03f;
        } else {
            std::vector<float> absmax(blocks);
            for (float& a : absmax) a = rng.uniform(0.01f, 0.2f);
            p.scales.resize(blocks * sizeof(float));
            std::memcpy(p.scales.data(), absmax.data(), p.scales.size());
        }
    } else if (cfg.storage == layout::fp8_block) {  // f32 scale_inv per tile, around 5e-4
        std::vector<float> scale_inv(static_cast<std::size_t>((n + cfg.group - 1) / cfg.group * (k / cfg.group)));
        for (float& a : scale_inv) a = rng.uniform(1e-4f, 1e-3f);
        p.scales.resize(scale_inv.size() * sizeof(float));
        std::memcpy(p.scales.data(), scale_inv.data(), p.scales.size());
    } else if (cfg.storage == layout::bnb8) {  // LLM.int8: f32 SCB per row
        std::vector<float> scb(static_cast<std::size_t>(n));
        for (float& a : scb) a = rng.uniform(0.05f, 0.5f);
        p.scales.resize(scb.size() * sizeof(float));
        std::memcpy(p.scales.data(), scb.data(), p.scales.size());
    } else if (cfg.storage == layout::mx) {  // E8M0 scale bytes around 2^-8
        p.scales.resize(blocks);
        for (auto& e : p.scales) e = static_cast<std::uint8_t>(118 + rng.next() % 4);
    } else {  // qforge layout: f16 scales around 0.01
        std::vector<std::uint16_t> scales(blocks);
        for (auto& s : scales) s = static_cast<std::uint16_t>(0x2000 + rng.next() % 0x400);
        p.scales.resize(blocks * sizeof(std::uint16_t));
        std::memcpy(p.scales.data(), scales.data(), p.scales.size());
        if (cfg.type == dtype::int_asym) {  // zero points around the middle
            p.zeros.resize(blocks);
            for (auto& z : p.zeros) z = static_cast<std::uint8_t>(6 + rng.next() % 4);
        }
    }
    if (!dense) rows_with_scales(p);  // as pack_weights arranges them
    return p;
}

std::vector<float> random_floats(std::size_t n, std::uint64_t seed) {
    xorshift rng{seed + 7};
    std::vector<float> v(n);
    for (float& e : v) e = rng.uniform(-1.0f, 1.0f);
    return v;
}

// LLM.int8 activations: 4 outlier feature columns (|x| = 8 >= the default threshold 6 in every
// row, as the systematic outlier features of LLMs), so the decomposition runs on 4 of K columns.
void plant_activation_outliers(std::vector<float>& x, std::int64_t m, std::int64_t k) {
    for (std::int64_t j = 1; j <= 4; ++j)
        for (std::int64_t i = 0; i < m; ++i) x[static_cast<std::size_t>(i * k + j * k / 5)] = j % 2 ? 8.0f : -8.0f;
}

// Rates are computed from the wall clock (steady_clock around the timed loop): the library's
// rate counters use the main thread's CPU time unless UseRealTime(), which would append
// "/real_time" to the names. threads = 0: no frac_membw (the yardstick itself, the repacks).
double read_bandwidth(int threads);

void set_wall_clock_rates(benchmark::State& state, double bytes_per_second, double gflops, int threads) {
    state.counters["bytes_per_second"] = bytes_per_second;
    if (gflops > 0) state.counters["GFLOPS"] = gflops;
    if (threads > 0) state.counters["frac_membw"] = bytes_per_second / read_bandwidth(threads);
}

// ---- peak/<vnni|fma|bf16> -------------------------------------------------------------------
// 12 independent accumulator chains hide the instruction's latency (4-5 cycles at 2 per cycle).
// Returns the operations of `reps` passes of 12 instructions.

__attribute__((target("avx512f,avx512vnni"))) double peak_vnni_loop(std::int64_t reps, float* sink) {
    __m512i acc[12];
    for (auto& a : acc) a = _mm512_setzero_si512();
    __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-5);
    for (std::int64_t r = 0; r < reps; ++r) {
        for (auto& c : acc) c = _mm512_dpbusd_epi32(c, a, b);
        __asm__("" : "+v"(a), "+v"(b));  // an opaque use per pass: keeps every chain in the loop
    }
    alignas(64) std::int32_t lanes[16];
    _mm512_store_si512(lanes, acc[0]);
    for (int i = 1; i < 12; ++i) _mm512_store_si512(lanes, _mm512_add_epi32(_mm512_load_si512(lanes), acc[i]));
    *sink += static_cast<float>(lanes[0]);
    return static_cast<double>(reps) * 12 * 64 * 2;
}

__attribute__((target("avx512f"))) double peak_fma_loop(std::int64_t reps, float* sink) {
    __m512 acc[12];
    for (auto& a : acc) a = _mm512_setzero_ps();
    __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-3f);
    for (std::int64_t r = 0; r < reps; ++r) {
        for (auto& c : acc) c = _mm512_fmadd_ps(c, a, b);
        __asm__("" : "+v"(a), "+v"(b));
    }
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, acc[0]);
    for (int i = 1; i < 12; ++i) _mm512_store_ps(lanes, _mm512_add_ps(_mm512_load_ps(lanes), acc[i]));
    *sink += lanes[0];
    return static_cast<double>(reps) * 12 * 16 * 2;
}

__attribute__((target("avx512f,avx512bf16"))) double peak_bf16_loop(std::int64_t reps, float* sink) {
    __m512 acc[12];
    for (auto& a : acc) a = _mm512_setzero_ps();
    __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3a83);  // 1, 1e-3
    for (std::int64_t r = 0; r < reps; ++r) {
        for (auto& c : acc) c = _mm512_dpbf16_ps(c, a, b);
        __asm__("" : "+v"(a), "+v"(b));
    }
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, acc[0]);
    for (int i = 1; i < 12; ++i) _mm512_store_ps(lanes, _mm512_add_ps(_mm512_load_ps(lanes), acc[i]));
    *sink += lanes[0];
    return static_cast<double>(reps) * 12 * 32 * 2;
}

bool has_peak(peak_kind kind) {
    const cpu_features& f = cpu();
    return f.avx512bw && (kind != peak_kind::vnni || f.avx512_vnni) && (kind != peak_kind::bf16 || f.avx512_bf16);
}

// One pass of the peak loop on every thread of the pool: op/s.
double peak_pass(peak_kind kind, thread_pool& pool, std::vector<float>& sink) {
    constexpr std::int64_t reps = 1 << 20;  // about 2 ms per thread
    std::vector<double> done(static_cast<std::size_t>(pool.size()));
    const auto start = std::chrono::steady_clock::now();
    pool.run([&](int t) {
        float* s = sink.data() + 16 * t;
        done[static_cast<std::size_t>(t)] = kind == peak_kind::vnni  ? peak_vnni_loop(reps, s)
                                            : kind == peak_kind::fma ? peak_fma_loop(reps, s)
                                                                     : peak_bf16_loop(reps, s);
    });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    double ops = 0.0;
    for (double d : done) ops += d;
    benchmark::DoNotOptimize(sink.data());
    return ops / seconds;
}

void peak(benchmark::State& state, peak_kind kind, int threads) {
    if (!has_peak(kind)) {
        state.SkipWithError("the CPU lacks the instruction");
        for (auto _ : state) {
        }
        return;
    }
    thread_pool pool(threads);
    std::vector<float> sink(static_cast<std::size_t>(threads) * 16);  // a cache line each
    // the fastest iteration: a shared machine's noise (other processes on the core) only ever
    // slows one down, and the peak is what the core attains
    double rate = 0.0;
    for (auto _ : state) rate = std::max(rate, peak_pass(kind, pool, sink));
    state.counters[kind == peak_kind::vnni ? "GOPS" : "GFLOPS"] = rate * 1e-9;
    measured_peak()[{kind, threads}] = rate;
}

// The peak of the last peak/<path>/t<threads> in this process, else the best of 20 passes made
// now (0 when the CPU lacks the instruction).
double peak_rate(peak_kind kind, int threads) {
    const auto known = measured_peak().find({kind, threads});
    if (known != measured_peak().end()) return known->second;
    double rate = 0.0;
    if (has_peak(kind)) {
        thread_pool pool(threads);
        std::vector<float> sink(static_cast<std::size_t>(threads) * 16);
        for (int i = 0; i < 20; ++i) rate = std::max(rate, peak_pass(kind, pool, sink));
    }
    return measured_peak()[{kind, threads}] = rate;
}

// ---- membw/read ---------------------------------------------------------------------------

// One read of the whole buffer split over the pool's threads.
void read_buffer(const weight_buffer& buf, thread_pool& pool, std::vector<std::uint64_t>& sink) {
    const std::size_t per_thread = buf.size() / static_cast<std::size_t>(pool.size());
    pool.run([&](int t) {
        const std::uint8_t* p = buf.data() + static_cast<std::size_t>(t) * per_thread;
        sink[static_cast<std::size_t>(t)] = read_pass(p, per_thread);
    });
    benchmark::DoNotOptimize(sink.data());
}

void membw_read(benchmark::State& state, int threads) {
    const weight_buffer buf(membw_bytes, 1);  // allocated as the weights are (huge pages), every page touched
    thread_pool pool(threads);
    std::vector<std::uint64_t> sink(static_cast<std::size_t>(threads));
    const auto start = std::chrono::steady_clock::now();
    for (auto _ : state) read_buffer(buf, pool, sink);
    // The last (measured) run's rate is the yardstick of the kernels that follow (frac_membw).
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    const double rate = static_cast<double>(membw_bytes) * static_cast<double>(state.iterations()) / elapsed.count();
    set_wall_clock_rates(state, rate, 0.0, 0);
    measured_membw()[threads] = rate;
}

// The rate of the last membw/read/t<threads> in this process, else of 5 reads made now (after
// one that warms the pages): a run filtered to some kernels still gets frac_membw and roofline.
double read_bandwidth(int threads) {
    const auto known = measured_membw().find(threads);
    if (known != measured_membw().end()) return known->second;
    const weight_buffer buf(membw_bytes, 1);
    thread_pool pool(threads);
    std::vector<std::uint64_t> sink(static_cast<std::size_t>(threads));
    read_buffer(buf, pool, sink);
    constexpr int reads = 5;
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < reads; ++i) read_buffer(buf, pool, sink);
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    return measured_membw()[threads] = static_cast<double>(membw_bytes) * reads / elapsed.count();
}

// ---- kernels ------------------------------------------------------------------------------

struct shape {
    std::int64_t k, n;
};

// The weights as the kernel runs them: in the kernel's own arrangement when it has one (as
// qforge::matrix arranges them), in rows with their scales (pack_weights; a mapped packed file), or
// in the checkpoint's dense arrays.
enum class form { arranged, rows, dense };

void run_kernel(benchmark::State& state, const config cfg, op kind, shape s, std::int64_t m, int threads, bool cold,
                form f) {
    const kernel& k = registry::global().find(cfg, kind);
    packed_weights base = random_weights(cfg, s.n, s.k, 1, f == form::dense);
    if (f == form::arranged) arrange(k, base);
    const std::size_t bytes = base.weight_bytes();
    const std::size_t copies = cold ? cold_bytes / bytes + 2 : 1;
    std::vector<packed_weights> weights(copies, base);
    std::vector<weights_view> views;
    for (const packed_weights& w : weights) views.push_back(w.view());
    std::vector<float> x = random_floats(static_cast<std::size_t>(m * s.k), 3);
    if (cfg.storage == layout::bnb8) plant_activation_outliers(x, m, s.k);
    std::vector<float> y(static_cast<std::size_t>(m * s.n));
    thread_pool pool(threads);
    std::size_t next = 0;
    const auto start = std::chrono::steady_clock::now();
    for (auto _ : state) {
        const weights_view& w = views[next];
        next = next + 1 == views.size() ? 0 : next + 1;
        pool.parallel_for(0, s.n, 16, [&](std::int64_t n0, std::int64_t n1) {
            if (kind == op::gemv) k.gemv(w, x.data(), nullptr, y.data(), n0, n1);
            else k.gemm(w, x.data(), m, nullptr, y.data(), n0, n1);
        });
        benchmark::ClobberMemory();
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double passes = static_cast<double>(state.iterations());
    const double ops = 2.0 * static_cast<double>(m * s.n * s.k);
    set_wall_clock_rates(state, passes * static_cast<double>(bytes) / seconds, passes * 1e-9 * ops / seconds, threads);
    const peak_kind path = cfg.act == compute::i8                                     ? peak_kind::vnni
                           : cfg.act == compute::bf16 && k.arch == isa::avx512_bf16 ? peak_kind::bf16
                                                                                    : peak_kind::fma;
    const double top = peak_rate(path, threads);
    if (top > 0)
        state.counters["roofline"] =
            std::max(static_cast<double>(bytes) / read_bandwidth(threads), ops / top) / (seconds / passes);
    state.SetLabel(k.full_name());
}

void time_repack(benchmark::State& state, const config& cfg, const ref::quantized& q, shape s) {
    const auto start = std::chrono::steady_clock::now();
    for (auto _ : state) {
        packed_weights p = pack_weights(cfg, q);
        benchmark::DoNotOptimize(p.codes.data());
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double code_bytes = static_cast<double>(s.k * s.n * cfg.bits / 8);  // of the checkpoint
    set_wall_clock_rates(state, static_cast<double>(state.iterations()) * code_bytes / seconds, 0.0, 0);
}

// The one-time repack of a GPTQ g128 checkpoint tensor into the qforge layout: int4 v1
// symmetric; asymmetric (random zero points, also int2 and int3); asymmetric with a random
// act-order g_idx.
enum class gptq_kind { sym, asym, asym_act_order };

void repack_gptq(benchmark::State& state, shape s, int bits, gptq_kind kind) {
    ref::gptq_tensor t;
    t.rows = s.n;
    t.cols = s.k;
    t.bits = bits;
    t.group = 128;
    const std::int64_t groups = s.k / 128;
    xorshift rng{5};
    t.qweight.resize(static_cast<std::size_t>(s.k * bits / 32 * s.n));
    for (auto& w : t.qweight) w = static_cast<std::int32_t>(rng.next());
    t.qzeros.assign(static_cast<std::size_t>(groups * s.n * bits / 32), 0x77777777);  // int4 v1 symmetric
    if (kind != gptq_kind::sym)
        for (auto& z : t.qzeros) z = static_cast<std::int32_t>(rng.next());
    t.scales.resize(static_cast<std::size_t>(groups * s.n));
    for (auto& sc : t.scales) sc = f16{static_cast<std::uint16_t>(0x2000 + rng.next() % 0x400)};
    t.g_idx.resize(static_cast<std::size_t>(s.k));
    for (std::int64_t i = 0; i < s.k; ++i) t.g_idx[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i / 128);
    if (kind == gptq_kind::asym_act_order) std::shuffle(t.g_idx.begin(), t.g_idx.end(), std::mt19937_64(9));
    const config cfg{kind == gptq_kind::sym ? dtype::int_sym : dtype::int_asym, static_cast<std::uint8_t>(bits), 128, false,
                     layout::qforge, compute::f32};
    time_repack(state, cfg, t, s);
}

// The one-time repack of an AWQ gemm int4 g128 checkpoint tensor (packed along N) into the qforge layout.
void repack_awq(benchmark::State& state, shape s) {
    ref::awq_tensor t;
    t.rows = s.n;
    t.cols = s.k;
    t.group = 128;
    xorshift rng{6};
    t.qweight.resize(static_cast<std::size_t>(s.k * s.n / 8));
    for (auto& w : t.qweight) w = static_cast<std::int32_t>(rng.next());
    t.qzeros.resize(static_cast<std::size_t>(s.k / 128 * s.n / 8));
    for (auto& w : t.qzeros) w = static_cast<std::int32_t>(rng.next());
    t.scales.resize(static_cast<std::size_t>(s.k / 128 * s.n));
    for (auto& sc : t.scales) sc = f16{static_cast<std::uint16_t>(0x2000 + rng.next() % 0x400)};
    time_repack(state, config{dtype::int_asym, 4, 128, false, layout::qforge, compute::f32}, t, s);
}

// pack_weights of a bitsandbytes NF4 block-64 tensor: a copy into rows with their scales.
void repack_bnb(benchmark::State& state, shape s) {
    const config cfg{dtype::nf4, 4, 64, false, layout::bnb4, compute::i8};
    const packed_weights dense = random_weights(cfg, s.n, s.k, 4, true);
    ref::bnb4_tensor t;
    t.rows = s.n;
    t.cols = s.k;
    t.packed.assign(dense.codes.begin(), dense.codes.end());
    t.absmax.resize(dense.scales.size() / sizeof(float));
    std::memcpy(t.absmax.data(), dense.scales.data(), dense.scales.size());
    std::copy(nf4_table.begin(), nf4_table.end(), t.quant_map.begin());
    time_repack(state, cfg, t, s);
}

std::string shape_name(shape s) { return "K" + std::to_string(s.k) + "xN" + std::to_string(s.n); }

void register_all() {
    for (int t : {1, 2})
        benchmark::RegisterBenchmark(("membw/read/t" + std::to_string(t)).c_str(), membw_read, t)
            ->Unit(benchmark::kMillisecond);
    for (const auto& [kind, name] : {std::pair{peak_kind::vnni, "vnni"}, std::pair{peak_kind::fma, "fma"}, std::pair{peak_kind::bf16, "bf16"}})
        for (int t : {1, 2})
            benchmark::RegisterBenchmark(("peak/" + std::string(name) + "/t" + std::to_string(t)).c_str(), peak, kind, t)
                ->Unit(benchmark::kMillisecond);
    const std::vector<shape> shapes = {{4096, 4096}, {4096, 11008}, {11008, 4096}};
    // the GEMV also on short rows (a small model's hidden size), where the work per row counts
    std::vector<shape> gemv_shapes = shapes;
    gemv_shapes.push_back({1024, 4096});
    for (const listed_kernel& l : kernel_list) {
        if (!kernels::kernel_built(l.cfg)) continue;  // filtered out by -Dkernels
        for (op kind : {op::gemv, op::gemm})
            for (shape s : kind == op::gemv ? gemv_shapes : shapes)
                for (std::int64_t m : kind == op::gemv ? std::vector<std::int64_t>{1}
                                      : s.n == 11008 && s.k == 4096 ? std::vector<std::int64_t>{1, 2, 4, 8, 16, 32, 128, 512}
                                                                    : std::vector<std::int64_t>{8, 32, 128})
                    for (int t : {1, 2})
                        for (bool cold : {true, false}) {
                            const std::string name = std::string(to_string(kind)) + "/" + l.name + "/" + shape_name(s) +
                                                     "/M" + std::to_string(m) + "/t" + std::to_string(t) +
                                                     (cold ? "/cold" : "/hot");
                            benchmark::RegisterBenchmark(name.c_str(), run_kernel, l.cfg, kind, s, m, t, cold, form::arranged)
                                ->Unit(benchmark::kMicrosecond);
                        }
    }
    for (const listed_kernel& l : kernel_list)
        if (rows_can_carry_scales(l.cfg) && kernels::kernel_built(l.cfg))
            for (int t : {1, 2})
                benchmark::RegisterBenchmark((std::string("gemv_dense/") + l.name + "/K4096xN11008/M1/t" + std::to_string(t) + "/cold").c_str(),
                                             run_kernel, l.cfg, op::gemv, shape{4096, 11008}, 1, t, true, form::dense)
                    ->Unit(benchmark::kMicrosecond);
    // the configs with an arrangement also in rows, as a mapped packed file runs them
    for (const listed_kernel& l : kernel_list)
        if (has_vnni_panels(l.cfg) && kernels::kernel_built(l.cfg))
            for (std::int64_t m : {1, 2, 4, 8, 16, 32, 128, 512})
                benchmark::RegisterBenchmark((std::string(m == 1 ? "gemv" : "gemm") + "_rows/" + l.name + "/K4096xN11008/M" +
                                              std::to_string(m) + "/t1/cold").c_str(),
                                             run_kernel, l.cfg, m == 1 ? op::gemv : op::gemm, shape{4096, 11008}, m, 1, true, form::rows)
                    ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark("repack/nf4_b64_bnb_to_rows/K4096xN11008", repack_bnb, shape{4096, 11008})
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("repack/int4sym_g128_gptq_to_qf/K4096xN11008", repack_gptq, shape{4096, 11008}, 4,
                                 gptq_kind::sym)
        ->Unit(benchmark::kMillisecond);
    for (int bits : {2, 3, 4})
        benchmark::RegisterBenchmark(("repack/int" + std::to_string(bits) + "asym_g128_gptq_to_qf/K4096xN11008").c_str(),
                                     repack_gptq, shape{4096, 11008}, bits, gptq_kind::asym)
            ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("repack/int4asym_g128_gptq_actorder_to_qf/K4096xN11008", repack_gptq,
                                 shape{4096, 11008}, 4, gptq_kind::asym_act_order)
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("repack/int4asym_g128_awq_to_qf/K4096xN11008", repack_awq, shape{4096, 11008})
        ->Unit(benchmark::kMillisecond);
}

}  // namespace

int main(int argc, char** argv) {
    register_all();
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}

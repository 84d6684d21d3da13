// The checkpoint quantizers and dequantizers (kernels/quantize.hpp): shapes and buffers, the split
// over threads, the small scalar parts (double quantization of the absmax, zero-point packing,
// g_idx), and the per-ISA kernels (kernels/impl/quantize.hpp) for the elements.
#include <qforge/format/packing.hpp>
#include <qforge/format/tables.hpp>
#include <qforge/kernels/arch.hpp>
#include <qforge/kernels/impl/quantize_jobs.hpp>
#include <qforge/kernels/quantize.hpp>
#include <qforge/parallel.hpp>
#include <qforge/reference/layouts.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <utility>
#include <variant>
#include <vector>

namespace qforge::kernels {

namespace {

using std::size_t;
static_assert(sizeof(f16) == 2 && sizeof(bf16) == 2);

const quant::ops& active_ops() {
    static const quant::ops ops = [] {
        switch (active_isa()) {
            case isa::sse4_2: return quant::ops_for<arch_t<isa::sse4_2>>();
            case isa::avx2: return quant::ops_for<arch_t<isa::avx2>>();
            case isa::avx512:
            case isa::avx512_vnni:
            case isa::avx512_bf16: break;
        }
        return quant::ops_for<arch_t<isa::avx512>>();
    }();
    return ops;
}

// fn(u0, u1) on [0, units) split over the pool in multiples of grain; false if any part was.
bool split(thread_pool* pool, size_t units, size_t grain, const std::function<bool(size_t, size_t)>& fn) {
    if (pool == nullptr || pool->size() == 1 || units <= grain) return fn(0, units);
    std::atomic<bool> ok{true};
    pool->parallel_for(0, static_cast<std::int64_t>(units), static_cast<std::int64_t>(grain),
                       [&](std::int64_t u0, std::int64_t u1) {
                           if (!fn(static_cast<size_t>(u0), static_cast<size_t>(u1))) ok = false;
                       });
    return ok;
}
void split_void(thread_pool* pool, size_t units, size_t grain, const std::function<void(size_t, size_t)>& fn) {
    split(pool, units, grain, [&](size_t a, size_t b) {
        fn(a, b);
        return true;
    });
}

// The reference on the same input: the oracle's result, or its error for inputs the kernels refuse.
template <class T>
ref::quantized reference_as(const config& cfg, const void* data, size_t n, std::int64_t rows, std::int64_t cols,
                            const ref::quantize_options& opt) {
    std::vector<T> copy(n);  // the source may be misaligned for T
    if (n != 0) std::memcpy(copy.data(), data, n * sizeof(T));
    return ref::quantize(cfg, std::span<const T>(copy), rows, cols, opt);
}
ref::quantized reference(const config& cfg, tensor_source w, std::int64_t rows, std::int64_t cols,
                         const ref::quantize_options& opt) {
    const size_t n = rows > 0 && cols > 0 ? static_cast<size_t>(rows) * static_cast<size_t>(cols) : 0;
    switch (w.type) {
        case element::f32: return reference_as<float>(cfg, w.data, n, rows, cols, opt);
        case element::bf16: return reference_as<bf16>(cfg, w.data, n, rows, cols, opt);
        case element::f16: break;
    }
    return reference_as<f16>(cfg, w.data, n, rows, cols, opt);
}

// The shapes the kernels take: exactly those the reference quantizes without an error.
bool kernels_take(const config& cfg, std::int64_t rows, std::int64_t cols) {
    if (check(cfg) != config_rule::ok || rows <= 0 || cols <= 0) return false;
    const std::int64_t gs = cfg.group == per_channel ? cols : cfg.group;
    switch (cfg.storage) {
        case layout::bnb4: return (cfg.type == dtype::nf4 || cfg.type == dtype::fp4) && is_power_of_two_group(cfg.group);
        case layout::bnb8: return true;
        case layout::gptq_v1:
        case layout::gptq_v2:
            return gptq_bits_supported(cfg.bits) && rows % 32 == 0 && cols % 32 == 0 && gs > 0 && cols % gs == 0 &&
                   (cfg.type == dtype::int_sym || cfg.type == dtype::int_asym);
        case layout::awq_gemm:
            return cfg.bits == 4 && cfg.type == dtype::int_asym && gs > 0 && rows % awq_pack_codes == 0 && cols % gs == 0;
        case layout::fp8_block:
            return (cfg.type == dtype::fp8_e4m3 || cfg.type == dtype::fp8_e5m2) && (cfg.group == per_tensor || cfg.group > 0);
        case layout::mx: return cols % 32 == 0;
        case layout::qforge: return false;
    }
    return false;
}

std::uint16_t* bits_of(std::vector<f16>& v) { return reinterpret_cast<std::uint16_t*>(v.data()); }
const std::uint16_t* bits_of(const std::vector<f16>& v) { return reinterpret_cast<const std::uint16_t*>(v.data()); }

}  // namespace

ref::quantized quantize_checkpoint(const config& cfg, tensor_source w, std::int64_t rows, std::int64_t cols,
                                   const ref::quantize_options& opt, thread_pool* pool) {
    if (!kernels_take(cfg, rows, cols)) return reference(cfg, w, rows, cols, opt);
    const quant::ops& k = active_ops();
    const quant::source src{w.data, w.type};
    const size_t n_rows = static_cast<size_t>(rows), k_cols = static_cast<size_t>(cols), n = n_rows * k_cols;
    const size_t gs = cfg.group == per_channel ? k_cols : static_cast<size_t>(cfg.group);
    bool ok = true;
    ref::quantized result;
    switch (cfg.storage) {
        case layout::bnb4: {
            ref::bnb4_tensor q;
            const bool nf4 = cfg.type == dtype::nf4;
            q.type = cfg.type;
            q.rows = rows;
            q.cols = cols;
            q.blocksize = cfg.group;
            q.quant_map = nf4 ? nf4_table : fp4_table;
            q.packed.resize((n + 1) / 2);
            std::vector<float> absmax((n + gs - 1) / gs);
            const quant::bnb4_job job{src, n, gs, nf4, q.packed.data(), absmax.data()};
            ok = split(pool, absmax.size(), 64, [&](size_t b0, size_t b1) { return k.bnb4(job, b0, b1); });
            if (!ok) break;
            if (cfg.double_quant) {  // ref::double_quantize
                q.nested = true;
                q.nested_offset = ref::exact_mean(absmax);
                for (float& a : absmax) a -= q.nested_offset;
                ref::blockwise8 nested = quantize_blockwise8(absmax, nested_blocksize, pool);
                q.absmax_codes = std::move(nested.codes);
                q.nested_absmax = std::move(nested.absmax);
                q.nested_quant_map = dynamic_map;
            } else {
                q.absmax = std::move(absmax);
            }
            result = std::move(q);
            break;
        }
        case layout::bnb8: {
            ref::int8row_tensor q;
            q.rows = rows;
            q.cols = cols;
            q.codes.resize(n);
            q.scb.resize(n_rows);
            const quant::int8row_job job{src, n_rows, k_cols, q.codes.data(), q.scb.data()};
            ok = split(pool, n_rows, 16, [&](size_t r0, size_t r1) { return k.int8row(job, r0, r1); });
            result = std::move(q);
            break;
        }
        case layout::gptq_v1:
        case layout::gptq_v2: {
            ref::gptq_tensor q;
            q.rows = rows;
            q.cols = cols;
            q.bits = cfg.bits;
            q.group = static_cast<std::int32_t>(gs);
            q.v2 = cfg.storage == layout::gptq_v2;
            q.sym = cfg.type == dtype::int_sym;
            const size_t groups = k_cols / gs, b = static_cast<size_t>(cfg.bits);
            q.qweight.assign(k_cols * b / 32 * n_rows, 0);
            q.scales.resize(groups * n_rows);
            std::vector<std::uint8_t> zeros(groups * n_rows);
            const quant::gptq_job job{src, n_rows, k_cols, gs, cfg.bits, q.sym, q.qweight.data(), bits_of(q.scales), zeros.data()};
            ok = split(pool, n_rows, 32, [&](size_t r0, size_t r1) { return k.gptq(job, r0, r1); });
            if (!ok) break;
            for (std::uint8_t& z : zeros) z = static_cast<std::uint8_t>(gptq_zero_field(cfg.bits, z, q.v2));
            const size_t zero_words = n_rows * b / 32;
            q.qzeros.assign(groups * zero_words, 0);
            for (size_t g = 0; g < groups; ++g)
                pack_gptq_line(cfg.bits, std::span(zeros).subspan(g * n_rows, n_rows), q.qzeros, g * zero_words, 1);
            q.g_idx.resize(k_cols);
            for (size_t i = 0; i < k_cols; ++i) q.g_idx[i] = static_cast<std::int32_t>(i / gs);
            result = std::move(q);
            break;
        }
        case layout::awq_gemm: {
            ref::awq_tensor q;
            q.rows = rows;
            q.cols = cols;
            q.group = static_cast<std::int32_t>(gs);
            const size_t groups = k_cols / gs, words = n_rows / awq_pack_codes;
            q.qweight.resize(k_cols * words);
            q.scales.resize(groups * n_rows);
            std::vector<std::uint8_t> zeros(groups * n_rows);
            const quant::awq_job job{src, n_rows, k_cols, gs, q.qweight.data(), bits_of(q.scales), zeros.data()};
            ok = split(pool, words, 16, [&](size_t w0, size_t w1) {
                return k.awq(job, w0 * awq_pack_codes, w1 * awq_pack_codes);
            });
            if (!ok) break;
            q.qzeros.resize(groups * words);
            for (size_t i = 0; i < q.qzeros.size(); ++i)
                q.qzeros[i] = static_cast<std::int32_t>(
                    pack_awq_word(std::span<const std::uint8_t>(zeros).subspan(i * awq_pack_codes).first<awq_pack_codes>()));
            result = std::move(q);
            break;
        }
        case layout::fp8_block: {
            ref::fp8_tensor q;
            q.type = cfg.type;
            q.rows = rows;
            q.cols = cols;
            q.tile_rows = cfg.group == per_tensor ? rows : cfg.group;
            q.tile_cols = cfg.group == per_tensor ? cols : cfg.group;
            const size_t tr = static_cast<size_t>(q.tile_rows), tc = static_cast<size_t>(q.tile_cols);
            const size_t tiles_n = (n_rows + tr - 1) / tr, tiles_k = (k_cols + tc - 1) / tc;
            q.codes.resize(n);
            q.scale_inv.resize(tiles_n * tiles_k);
            const quant::fp8_job job{src, n_rows, k_cols, tr, tc, cfg.type == dtype::fp8_e4m3, q.codes.data(), q.scale_inv.data()};
            ok = split(pool, tiles_n, 1, [&](size_t t0, size_t t1) { return k.fp8(job, t0, t1); });
            result = std::move(q);
            break;
        }
        case layout::mx: {
            ref::mx_tensor q;
            q.rows = rows;
            q.cols = cols;
            const size_t blocks = n / 32;
            q.blocks.resize(blocks * 16);
            q.scales.resize(blocks);
            const quant::mx_job job{src, blocks, opt.mx_rule == ref::mx_scale_rule::round_up, q.blocks.data(), q.scales.data()};
            ok = split(pool, blocks, 1024, [&](size_t b0, size_t b1) { return k.mx(job, b0, b1); });
            result = std::move(q);
            break;
        }
        case layout::qforge: ok = false; break;
    }
    // A value the kernels refuse: the reference throws its own error (naming the tensor and index).
    if (!ok) return reference(cfg, w, rows, cols, opt);
    return result;
}

float bnb4_nested_offset(tensor_source w, size_t n, size_t blocksize, thread_pool* pool) {
    std::vector<float> absmax((n + blocksize - 1) / blocksize);
    const quant::bnb4_job job{{w.data, w.type}, n, blocksize, false, nullptr, absmax.data()};
    const quant::ops& k = active_ops();
    // NaN or Inf: no offset; quantizing the weight reports it
    if (!split(pool, absmax.size(), 64, [&](size_t b0, size_t b1) { return k.bnb4_absmax(job, b0, b1); })) return 0.0f;
    return ref::exact_mean(absmax);
}

ref::blockwise8 quantize_blockwise8(std::span<const float> x, std::int32_t blocksize, thread_pool* pool) {
    if (blocksize <= 0) return ref::quantize_blockwise8(x, blocksize);  // its error
    ref::blockwise8 q;
    q.blocksize = blocksize;
    q.codes.resize(x.size());
    q.absmax.resize((x.size() + static_cast<size_t>(blocksize) - 1) / static_cast<size_t>(blocksize));
    const quant::blockwise8_job job{x.data(), x.size(), static_cast<size_t>(blocksize), q.codes.data(), q.absmax.data()};
    const quant::ops& k = active_ops();
    if (!split(pool, q.absmax.size(), 4, [&](size_t b0, size_t b1) { return k.blockwise8(job, b0, b1); }))
        return ref::quantize_blockwise8(x, blocksize);  // NaN / Inf: as the reference treats them
    return q;
}

namespace {

std::vector<float> reference_dequantize(const ref::quantized& q) { return ref::dequantize(q); }

void store_reference(const ref::quantized& q, element out, void* dst) {
    const std::vector<float> v = reference_dequantize(q);
    auto* bytes = static_cast<unsigned char*>(dst);
    for (size_t i = 0; i < v.size(); ++i) {
        if (out == element::f32) {
            std::memcpy(bytes + 4 * i, &v[i], 4);
        } else {
            const std::uint16_t h = out == element::bf16 ? to_bf16(v[i]).bits : to_f16(v[i]).bits;
            std::memcpy(bytes + 2 * i, &h, 2);
        }
    }
}

template <class... F>
struct overloaded : F... {
    using F::operator()...;
};
template <class... F>
overloaded(F...) -> overloaded<F...>;

size_t count(std::int64_t rows, std::int64_t cols) { return static_cast<size_t>(rows) * static_cast<size_t>(cols); }

// Runs the kernel of q's layout through `each` (units: rows, blocks or tiles, each a contiguous
// run of output elements); false for what the kernels do not take (the reference does).
using unit_fn = std::function<void(size_t u0, size_t u1, const quant::sink& s)>;
using each_fn = std::function<void(size_t units, size_t unit, size_t n, size_t grain, const unit_fn& fn)>;

template <class Job>
Job with(Job job, const quant::sink& s) {
    job.out = s;
    return job;
}

bool dequantize_layout(const ref::quantized& q, const each_fn& each) {
    const quant::ops& k = active_ops();
    // Each layout's sizes are checked as the reference checks them; anything else goes to the
    // reference, which throws its error.
    return std::visit(
        overloaded{
            [&](const ref::bnb4_tensor& t) {
                if (t.rows <= 0 || t.cols <= 0 || t.blocksize <= 0 || t.blocksize > 4096 || t.blocksize % 2 != 0) return false;
                const size_t n = count(t.rows, t.cols), bs = static_cast<size_t>(t.blocksize), blocks = (n + bs - 1) / bs;
                if (t.packed.size() != (n + 1) / 2) return false;
                if (t.nested ? t.absmax_codes.size() != blocks || t.nested_absmax.size() != (blocks + 255) / 256
                             : t.absmax.size() != blocks)
                    return false;
                const std::vector<float> absmax = t.nested ? ref::bnb4_absmax(t) : std::vector<float>{};
                const quant::bnb4_dq_job job{t.packed.data(), t.nested ? absmax.data() : t.absmax.data(),
                                             t.quant_map.data(), n, bs, {}};
                each(blocks, bs, n, 64, [&](size_t b0, size_t b1, const quant::sink& s) { k.bnb4_dq(with(job, s), b0, b1); });
                return true;
            },
            [&](const ref::int8row_tensor& t) {
                if (t.rows <= 0 || t.cols <= 0 || t.codes.size() != count(t.rows, t.cols) ||
                    t.scb.size() != static_cast<size_t>(t.rows))
                    return false;
                const quant::int8row_dq_job job{t.codes.data(), t.scb.data(), static_cast<size_t>(t.rows),
                                                static_cast<size_t>(t.cols), {}};
                each(job.rows, job.cols, count(t.rows, t.cols), 16,
                     [&](size_t r0, size_t r1, const quant::sink& s) { k.int8row_dq(with(job, s), r0, r1); });
                return true;
            },
            [&](const ref::gptq_tensor& t) {
                if (!gptq_bits_supported(t.bits) || t.rows <= 0 || t.cols <= 0 || t.rows % 32 != 0 || t.cols % 32 != 0 ||
                    t.group <= 0)
                    return false;
                const size_t n_rows = static_cast<size_t>(t.rows), k_cols = static_cast<size_t>(t.cols);
                const size_t b = static_cast<size_t>(t.bits), gs = static_cast<size_t>(t.group);
                const size_t groups = (k_cols + gs - 1) / gs, zero_words = n_rows * b / 32;
                if (t.qweight.size() != k_cols * b / 32 * n_rows || t.qzeros.size() != groups * zero_words ||
                    t.scales.size() != groups * n_rows || t.g_idx.size() != k_cols)
                    return false;
                for (std::int32_t g : t.g_idx)
                    if (g < 0 || static_cast<size_t>(g) >= groups) return false;
                std::vector<std::int32_t> zeros(groups * n_rows);
                std::vector<std::uint8_t> fields(n_rows);
                for (size_t g = 0; g < groups; ++g) {
                    unpack_gptq_line(t.bits, t.qzeros, g * zero_words, 1, fields);
                    for (size_t r = 0; r < n_rows; ++r) zeros[g * n_rows + r] = gptq_zero_from_field(t.bits, fields[r], t.v2);
                }
                const quant::gptq_dq_job job{t.qweight.data(), bits_of(t.scales), zeros.data(), t.g_idx.data(), t.bits,
                                             n_rows, k_cols, groups, {}};
                each(n_rows, k_cols, n_rows * k_cols, 32,
                     [&](size_t r0, size_t r1, const quant::sink& s) { k.gptq_dq(with(job, s), r0, r1); });
                return true;
            },
            [&](const ref::awq_tensor& t) {
                if (t.group <= 0 || t.rows <= 0 || t.cols <= 0 || t.rows % awq_pack_codes != 0 || t.cols % t.group != 0)
                    return false;
                const size_t n_rows = static_cast<size_t>(t.rows), k_cols = static_cast<size_t>(t.cols);
                const size_t gs = static_cast<size_t>(t.group), groups = k_cols / gs, words = n_rows / awq_pack_codes;
                if (t.qweight.size() != k_cols * words || t.qzeros.size() != groups * words ||
                    t.scales.size() != groups * n_rows)
                    return false;
                const quant::awq_dq_job job{t.qweight.data(), t.qzeros.data(), bits_of(t.scales), n_rows, k_cols, gs, {}};
                each(n_rows, k_cols, n_rows * k_cols, 64,
                     [&](size_t r0, size_t r1, const quant::sink& s) { k.awq_dq(with(job, s), r0, r1); });
                return true;
            },
            [&](const ref::fp8_tensor& t) {
                if ((t.type != dtype::fp8_e4m3 && t.type != dtype::fp8_e5m2) || t.rows <= 0 || t.cols <= 0 ||
                    t.tile_rows <= 0 || t.tile_cols <= 0)
                    return false;
                const size_t n_rows = static_cast<size_t>(t.rows), k_cols = static_cast<size_t>(t.cols);
                const size_t tr = static_cast<size_t>(t.tile_rows), tc = static_cast<size_t>(t.tile_cols);
                if (t.codes.size() != n_rows * k_cols || t.scale_inv.size() != ((n_rows + tr - 1) / tr) * ((k_cols + tc - 1) / tc))
                    return false;
                std::array<float, 256> decode{};
                for (int c = 0; c < 256; ++c)
                    decode[static_cast<size_t>(c)] = t.type == dtype::fp8_e4m3 ? e4m3_to_float(static_cast<std::uint8_t>(c))
                                                                               : e5m2_to_float(static_cast<std::uint8_t>(c));
                const quant::fp8_dq_job job{t.codes.data(), t.scale_inv.data(), decode.data(), n_rows, k_cols, tr, tc, {}};
                each(n_rows, k_cols, n_rows * k_cols, 16,
                     [&](size_t r0, size_t r1, const quant::sink& s) { k.fp8_dq(with(job, s), r0, r1); });
                return true;
            },
            [&](const ref::mx_tensor& t) {
                if (t.rows <= 0 || t.cols <= 0 || t.cols % 32 != 0) return false;
                const size_t n_rows = static_cast<size_t>(t.rows), k_cols = static_cast<size_t>(t.cols);
                const size_t blocks = n_rows * (k_cols / 32);
                if (t.blocks.size() != blocks * 16 || t.scales.size() != blocks) return false;
                const quant::mx_dq_job job{t.blocks.data(), t.scales.data(), e2m1_table.data(), n_rows, k_cols, {}};
                each(n_rows, k_cols, n_rows * k_cols, 16,
                     [&](size_t r0, size_t r1, const quant::sink& s) { k.mx_dq(with(job, s), r0, r1); });
                return true;
            },
        },
        q);
}

}  // namespace

void dequantize_checkpoint(const ref::quantized& q, element out, void* dst, thread_pool* pool) {
    const bool done = dequantize_layout(q, [&](size_t units, size_t, size_t, size_t grain, const unit_fn& fn) {
        split_void(pool, units, grain, [&](size_t u0, size_t u1) { fn(u0, u1, quant::sink{dst, out}); });
    });
    if (!done) store_reference(q, out, dst);
}

// Pieces of `per` units, made in turn into the slots of a ring (piece i into slot i % slots, once
// piece i - slots was handed over); the calling thread hands the pieces over in order and makes
// pieces while the next one is not ready. Pieces are claimed in order, so the one to hand over is
// usually made already and still in cache, and the ring (a few MiB, reused) stays in cache too.
void dequantize_in_pieces(const ref::quantized& q, element out, thread_pool* pool, size_t elements,
                          const piece_fn& made, const piece_fn& ready) {
    const size_t item = out == element::f32 ? 4 : 2;
    const bool done = dequantize_layout(q, [&](size_t units, size_t unit, size_t n, size_t grain, const unit_fn& fn) {
        const size_t per = (std::max(elements / unit, grain) + grain - 1) / grain * grain;
        const size_t count = (units + per - 1) / per;
        const size_t threads = pool ? static_cast<size_t>(pool->size()) : 1;
        const size_t slots = std::min(count, 8 * threads), slot_bytes = per * unit * item;
        const std::unique_ptr<std::byte[]> ring(new std::byte[slots * slot_bytes]);  // no zero-filling
        const auto piece = [&](size_t i) {
            const size_t first = i * per * unit, end = std::min(n, (i + 1) * per * unit);
            return dequantized_piece{first, end - first, std::span(ring.get() + i % slots * slot_bytes, (end - first) * item)};
        };
        const auto make = [&](size_t i) {
            const dequantized_piece p = piece(i);
            fn(i * per, std::min(units, (i + 1) * per), quant::sink{p.bytes.data(), out, p.first});
            if (made) made(p);
        };
        if (threads == 1 || count == 1) {
            for (size_t i = 0; i < count; ++i) {
                make(i);
                if (ready) ready(piece(i));
            }
            return;
        }
        std::vector<std::atomic<bool>> finished(count);
        std::atomic<size_t> next{0}, handed{0};
        std::atomic<bool> stop{false};
        std::exception_ptr error;
        // Waits sleep on a condition variable, never in std::atomic::wait: libstdc++'s spins with
        // sched_yield, and on a busy machine each yield gave the core away for a time slice (2 ms):
        // the worker then made a fifth of the pieces.
        std::mutex mutex;
        std::condition_variable progress;  // a piece finished or handed over, or stop
        const auto wait_until = [&](const auto& ready_now) {
            std::unique_lock<std::mutex> lock(mutex);
            progress.wait(lock, [&] { return ready_now() || stop.load(); });
        };
        const auto announce = [&] {
            { const std::lock_guard<std::mutex> lock(mutex); }  // a waiter is asleep or sees the change
            progress.notify_all();
        };
        // Claims the next piece and makes it: false when none is left, or when its slot is still
        // in use and `wait` is false (the calling thread then hands over the piece holding it).
        const auto claim_and_make = [&](bool wait) {
            size_t i = next.load();
            do {
                if (i >= count || stop.load(std::memory_order_relaxed)) return false;
                if (i >= handed.load(std::memory_order_acquire) + slots && !wait) return false;
            } while (!next.compare_exchange_weak(i, i + 1));
            wait_until([&] { return i < handed.load() + slots; });  // its slot's piece is being handed over
            if (stop.load()) return false;
            make(i);
            finished[i].store(true, std::memory_order_release);
            announce();
            return true;
        };
        pool->run([&](int t) {
            try {
                if (t != 0) {
                    while (claim_and_make(true)) {
                    }
                    return;
                }
                for (size_t h = 0; h < count && !stop.load(std::memory_order_relaxed);) {
                    if (finished[h].load(std::memory_order_acquire)) {
                        if (ready) ready(piece(h));
                        handed.store(++h, std::memory_order_release);
                        announce();
                    } else if (!claim_and_make(false)) {
                        wait_until([&] { return finished[h].load(); });  // another thread is making piece h
                    }
                }
            } catch (...) {
                {
                    const std::lock_guard<std::mutex> lock(mutex);
                    if (!error) error = std::current_exception();
                    stop = true;
                }
                progress.notify_all();
            }
        });
        if (error) std::rethrow_exception(error);
    });
    if (!done) {  // the reference, whole (it throws for what it refuses)
        const size_t n = std::visit([](const auto& t) { return count(t.rows, t.cols); }, q);
        std::vector<std::byte> whole(n * item);
        store_reference(q, out, whole.data());
        const dequantized_piece p{0, n, whole};
        if (made) made(p);
        if (ready) ready(p);
    }
}

}  // namespace qforge::kernels
